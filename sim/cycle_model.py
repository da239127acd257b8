"""Analytic cycle model of :class:`hoarfrost.hw.gemm_engine.GemmEngine`.

Assumptions: the operand streams offer a beat every cycle from the first busy cycle on, and
``o_stream`` is always ready (with backpressure the engine can only be slower). Cycles are
counted from the first busy cycle (the one after ``start``), as the engine's ``cycles``
counter counts them. With ``P = max(M, rows, cols)`` slots per tile, ``KT = ceil(K / rows)``
and ``NT = ceil(N / cols)``:

* the first wave is issued at cycle ``S_0 = rows``, when the first ``rows`` weight rows
  have been loaded (one per cycle); A arrives at one row per cycle and, since ``P >= M``, it
  stays ahead of the waves that need it;
* N tile ``j`` is issued from ``S_j = max(S_{j-1} + KT*P, F_{j-2})``: ``KT*P`` slots after the
  previous one, unless it must wait for its accumulator bank, free at ``F_{j-2}``;
* its last accumulator write is at ``E_j = S_j + (KT-1)*P + (M-1) + rows + cols`` (the last
  wave's issue, one cycle of buffer read, ``rows`` to cross the column, ``cols - 1`` of skew
  to the last column, one to write);
* its drain reads rows from ``D_j = max(E_j + 1, D_{j-1} + M)``, one per cycle, and the bank
  is free from ``F_j = D_j + M + 1``;
* the last result leaves at ``D_{NT-1} + M + 1``, and the run takes ``D_{NT-1} + M + 2`` cycles.

The compute phase, first wave to last accumulator write, is ``E_{NT-1} - S_0 + 1`` cycles: for
one tile (``M <= rows``, ``K <= rows``, ``N <= cols``) it is ``P + rows + cols`` (``3n`` for an
``n x n x n`` GEMM on an ``n x n`` array, against the ``4n - 3`` target taken from SCALE-Sim's
weight-stationary figure, which counts ``n`` cycles of weight preload that here overlap the
skewed wavefront).
"""

from __future__ import annotations

import dataclasses

from hoarfrost.hw.config import BackendConfig

__all__ = ["GemmPrediction", "predict_gemm", "ideal_cycles", "compute_phase_bound"]


@dataclasses.dataclass(frozen=True)
class GemmPrediction:
    """Predicted figures of one GEMM on the engine (names as the engine's counters).

    Parameters
    ----------
    cycles : int
        Whole run, from the first busy cycle to the last result.
    compute_cycles : int
        First wave issued to last accumulator write, inclusive.
    stall_cycles : int
        Cycles the issue stage waits (first weight tile, accumulator banks).
    busy_cycles, macs_issued, macs_useful, a_reads, a_writes, w_reads, w_writes,
    acc_reads, acc_writes, out_beats : int
        Event counts, exact whatever the backpressure.
    ideal_cycles : float
        ``M * N * K / (rows * cols)``: every PE busy with a useful MAC every cycle.
    """

    cycles: int
    compute_cycles: int
    stall_cycles: int
    busy_cycles: int
    macs_issued: int
    macs_useful: int
    a_reads: int
    a_writes: int
    w_reads: int
    w_writes: int
    acc_reads: int
    acc_writes: int
    out_beats: int
    ideal_cycles: float

    @property
    def utilization(self) -> float:
        """Useful MACs over what ``rows * cols`` PEs could do in :attr:`cycles`."""
        return self.ideal_cycles / self.cycles


def predict_gemm(config: BackendConfig, m: int, n: int, k: int) -> GemmPrediction:
    """Predict the engine's cycles and event counts for ``C[m, n] = A[m, k] @ B[k, n]``."""
    config.check_gemm(m, n, k)
    R, C = config.rows, config.cols
    kt, nt, p = config.tiles(m, n, k)

    starts, ends, drains, frees = [], [], [], []
    for j in range(nt):
        if j == 0:
            start = R
        else:
            start = starts[-1] + kt * p
            if j >= 2:
                start = max(start, frees[j - 2])
        end = start + (kt - 1) * p + (m - 1) + R + C
        drain = end + 1 if j == 0 else max(end + 1, drains[-1] + m)
        starts.append(start)
        ends.append(end)
        drains.append(drain)
        frees.append(drain + m + 1)
    cycles = drains[-1] + m + 2
    stalls = starts[0] + sum(starts[j] - starts[j - 1] - kt * p for j in range(1, nt))

    waves = nt * kt * m
    return GemmPrediction(
        cycles=cycles,
        compute_cycles=ends[-1] - starts[0] + 1,
        stall_cycles=stalls,
        busy_cycles=waves,
        macs_issued=waves * R * C,
        macs_useful=m * n * k,
        a_reads=waves,
        a_writes=kt * m,
        w_reads=nt * kt * R,
        w_writes=nt * kt * R,
        # Every wave is written to all columns; all but the first K tile's read first.
        acc_writes=waves * C,
        acc_reads=nt * (kt - 1) * m * C + nt * m * C,
        out_beats=nt * m,
        ideal_cycles=m * n * k / (R * C),
    )


def ideal_cycles(config: BackendConfig, m: int, n: int, k: int) -> float:
    """``M * N * K / (rows * cols)``."""
    return m * n * k / config.pe_count


def compute_phase_bound(n: int) -> int:
    """The compute-phase target for an ``n x n x n`` GEMM on ``n x n`` PEs: ``4n - 3`` cycles
    (after SCALE-Sim's weight-stationary figure)."""
    return 4 * n - 3
