"""Analytic cycle model of :class:`hoarfrost.hw.backend.BackEnd`: cycles per command and layer.

Every term below is read off the sequencer's FSM (hw/backend.py), state by state (the serial
back end, ``BackendConfig.serial``, has its own: :mod:`hoarfrost.sim.serial_model`, which
:func:`predict_command_cycles` and :func:`predict_program` use for it). The DRAM
is the byte-stream model of ``hoarfrost sim`` (sim/tb/backend_tb.py) and of amaranth.sim
(:func:`hoarfrost.sim.backend_host.amaranth_dram`) without stalls: a request is taken in the
first cycle it is posted, its first byte is there ``dram_latency`` cycles later (0 for both
models) and one byte follows per cycle while the back end takes them; writes are taken
every cycle. Cycles are counted as the back end's ``cycles`` counter counts them (from the
cycle after ``start``), and a command's cycles as the testbench's trace does
(:func:`hoarfrost.sim.rtl_run.command_cycles`): from the cycle after its header word has
arrived to the cycle the next command's has, so the next command's fetch belongs to it and
the first command also gets its own.

Fetch. ``FETCH`` (1, the request) and ``HEADER`` (``4 + dram_latency``, the header bytes):
``H = 5 + lat``. A command with ``n`` fields then takes ``FIELDS_REQ`` and ``FIELDS``:
``1 + lat + 4n`` (none without fields), and ``DISPATCH`` 1. The execution states:

========  ======================================================================================
LOAD      ``LOAD_REQ`` 1, ``LOAD_DATA`` one byte a cycle after ``lat``, one cycle to see the
          count: ``length + 2 + lat``; ``LOADW`` the same (its bytes go to the weight cache)
STORE     ``STORE_REQ`` 1, per byte ``STORE_READ`` and ``STORE_SEND`` (the scratchpad read
          takes a cycle), one ``STORE_READ`` to see the count: ``2 * length + 2``
GEOM      ``GEOM_SETUP``: 9 products on the shared multiplier, one issued a cycle, each taken
          two cycles later: ``9 + 2``
SYNC      nothing: ``DISPATCH`` goes back to ``FETCH``
END       the ``END`` state: 1, and no next header
POOL      ``POOL_SETUP`` 1; with a table (``p_addr`` set) ``POOL_PARAMS_REQ`` 1 and ``PARAMS``
          ``4 * words + lat`` (``words`` 2 for max, ``2 * (kh * kw + 1)`` for average); per
          window of the ``in_c * out_h * out_w``: 3 per tap (address, read, take), one for the
          table read, one to push into the requantizer: ``3 * kh * kw + 2``; then 6 until the
          last result is written (the requantizer's 5 stages and the write), or 1 when there
          are no windows
ADD       ``ADD_SETUP`` 3 products: 5; per element ``ADD_A``, ``ADD_B``, ``ADD_TAKE_A``,
          ``ADD_TAKE_B``: 4 (the products and the push run behind them); then 8 in ``ADD_A``
          (the last element's product, push, requantizer and write): ``5 + 4 * length + 8``
          (``5 + 1`` for no elements). With ``add_shares_multiplier`` the four element
          products share the setup multiplier: ``ADD_SETUP`` 6 products, the push two cycles
          later: ``8 + 4 * length + 10`` (``8 + 1``)
RECV      ``stream_channels`` cycles per pixel (one byte-wide scratchpad write port), one to
          take the first beat, one to see the last written: ``lanes * pixels + 2``, when the
          stream offers every beat in time (a lower bound behind a slower frozen front end)
SEND      ``SEND_FIRST`` 1 (the first byte's read), then one beat a cycle (the next byte is
          read while a beat is taken): ``length + 1`` while the sparse engine takes every
          beat; each cycle its front end holds a beat (a PE queue full) adds one
RECVS     one result a cycle and one to see the count: ``length + 1`` when the results are
          ready, plus the cycles the engine makes it wait
          (both engine terms depend on the data: :mod:`hoarfrost.sim.sparse_model` replays
          the engine on the vector and gives them; this module leaves them out)
========  ======================================================================================

MATMUL. ``MM_DIVIDE`` ``m0 // out_w + 1`` (repeated subtraction), ``MM_SETUP`` 5 products:
``7``, ``MM_PARAMS_REQ`` 1, ``PARAMS`` ``12 * nt + lat`` (a bias, multiplier and shift word per
channel; neither for ``p_addr = KEEP_PARAMS``), ``MM_START`` 1, then ``MM_RUN``, in which the GEMM engine runs ``M = mt``,
``N = nt``, ``K = cg * kh * kw`` (:mod:`hoarfrost.sim.cycle_model`'s schedule) fed by three
producers and drained by one consumer, all concurrent. From the first ``MM_RUN`` cycle (0):

* the *gatherer* requests ``rows`` lanes, one a cycle (a padding tap or a lane past K takes
  its cycle too, it only skips the read), takes the last lane's byte the next cycle and offers
  the row the cycle after: activation row ``i`` (K-tile-major, as ``a_stream`` orders them) is
  written at the end of cycle ``(i + 1) * (rows + 2) - 1``; the engine's activation buffer
  holds all of A, so it never waits. ``rows + 2`` cycles per row whatever the geometry;
* the *weight feeder* takes ``cols`` bytes, one a cycle from ``lat`` on (from 0 when they come
  from the weight cache, whose read port has the first byte when ``MM_RUN`` starts), and
  offers the row the next cycle: row ``r`` goes at ``X_r = max(X_{r-1} + cols + 1, I(r - w_depth) + 1)``,
  ``X_0 = cols + lat``, waiting while the engine's weight ring is full (``I(r)``: the issue
  cycle of the slot that reads weight row ``r``);
* the *bias feeder* reads ``cols`` biases, one a cycle, and offers the beat two cycles later
  (``cols + 2`` per beat); the engine takes beat ``j`` when it releases tile ``j - 1``;
* the *drain* takes one output row of a tile from the engine, then per live lane (``L = min(cols,
  N - j * cols)``) a cycle to read the lane's multiplier and shift and a cycle to push it into
  the requantizer, one more cycle to read and one to finish: it is ready again
  ``2 * L + 3`` cycles after it took a row.

The engine's schedule is :func:`hoarfrost.sim.cycle_model.predict_gemm`'s, generalised to
operands that arrive when the producers above deliver them and an output taken when the
drain is ready (with ideal streams it *is* ``predict_gemm``, a test checks this). Per
(N tile ``j``, K tile ``t``) in issue order, with ``P = max(M, rows, cols)`` slots:

* slot 0 issues at ``S = max(previous slot + 1, B(rows of this tile), A(first min(M, rows)
  rows of K tile t), bank(j))``: the tile's weight rows are in the ring, its first activation
  rows are in the buffer and, for ``t = 0``, accumulator bank ``j % 2`` has drained N tile
  ``j - 2`` (``bank(j)`` is one cycle after that tile's last row left the bank's read port);
* slot ``s`` issues the cycle after slot ``s - 1``, and not before activation row ``t*M + s``
  is in the buffer when ``rows <= s < M`` (only the first N tile waits so: the others find
  all of A there);
* N tile ``j`` has accumulated at ``E_j = I(last K tile, slot M - 1) + rows + cols``; its rows
  are read from ``E_j + 1`` (and once its bias beat is there), one a cycle while the two-stage
  output pipeline (read port, ``o_stream`` register) has room: row ``b`` is read at
  ``D_b = max(D_{b-1} + 1, U_{b-1}, E_j + 1)``, moves into ``o_stream`` at the end of
  ``U_b = max(D_b + 1, Acc_{b-1})`` and is taken by the drain at
  ``Acc_b = max(U_b + 1, Acc_{b-1} + 2 * L + 3)``.

The engine stops after the last row is taken; ``MM_RUN`` ends when the drain has pushed its
last lane (``Acc_last + 2 * L``) and the requantizer has written it, 6 cycles later:
``MM_RUN = Acc_last + 2 * L_last + 7``. Which producer bounds a MATMUL shows in
:class:`MatmulPrediction`: the gatherer's ``KT * M * (rows + 2)``, the weights'
``NT * KT * rows * (cols + 1)``, the drain's ``M * sum_j (2 * L_j + 3)``; the schedule
overlaps them exactly as the FSM does.

The model is exact for the back end as it is (the tests compare it cycle for cycle with the
RTL in amaranth.sim); with DRAM stalls the RTL can only be slower.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from hoarfrost.firmware.isa import (FIELDS, KEEP_PARAMS, NO_PARAMS, POOL_MAX, WCACHE, Command,
                                    Op, decode)
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.serial_model import predict_serial_command_cycles

__all__ = ["EngineRun", "MatmulPrediction", "engine_schedule", "ideal_engine", "predict_matmul",
           "predict_command_cycles", "predict_program", "header_cycles"]

#: ``FETCH`` (the request) plus ``HEADER``'s four bytes.
FETCH_CYCLES = 1 + 4
#: Cycles from a requantizer push to the cycle after its result is written (the FSM sees
#: ``rq_inflight == 0`` then): five stages and the write.
REQUANT_DRAIN = 6


def products_cycles(steps: int) -> int:
    """A setup state of ``steps`` products on the shared multiplier: one issued a cycle, the
    last taken two cycles after it (``BackEnd``'s ``products``)."""
    return steps + 2


def header_cycles(dram_latency: int = 0) -> int:
    """Fetching one command's header word: ``FETCH`` and ``HEADER``."""
    return FETCH_CYCLES + dram_latency


@dataclasses.dataclass(frozen=True)
class EngineRun:
    """What :func:`engine_schedule` gives: the engine's cycles (first running cycle to the last
    output row taken, inclusive) and when the last output row was taken, with its live lanes."""

    cycles: int
    last_taken: int
    last_lanes: int


def engine_schedule(config: BackendConfig, m: int, n: int, k: int, *,
                    a_ready: Callable[[int], int], w_first: int, w_period: int,
                    bias_first: int, bias_period: int,
                    drain_gap: Callable[[int], int]) -> EngineRun:
    """The GEMM engine's schedule for ``C[m, n] = A[m, k] @ B[k, n]`` with given producers.

    Cycle 0 is the engine's first running cycle. ``a_ready(i)``: the first cycle activation row
    ``i`` is in the buffer. Weight row ``r`` is offered from ``w_first + r * w_period`` on
    (later when the ring was full), the bias beat ``j`` ``bias_period`` cycles after beat
    ``j - 1`` was taken (``bias_first`` for beat 0); the drain, after taking an output row with
    ``L`` live lanes, takes the next ``drain_gap(L)`` cycles later at the earliest. See the
    module docstring for the recurrences.
    """
    config.check_gemm(m, n, k)
    R, C = config.rows, config.cols
    kt_n, nt_n, p = config.tiles(m, n, k)
    first_rows = min(m, R)

    w_sent: list[int] = []            # X_r: the cycle weight row r goes into the ring
    w_read: list[int] = []            # I(r): the issue cycle of the slot that reads row r

    def weight_in(r: int) -> int:
        """First cycle weight row ``r`` counts in the ring (``X_r + 1``)."""
        while len(w_sent) <= r:
            i = len(w_sent)
            x = w_first if i == 0 else w_sent[-1] + w_period
            if i >= config.w_depth:
                x = max(x, w_read[i - config.w_depth] + 1)
            w_sent.append(x)
        return w_sent[r] + 1

    last_issue = -1
    bank_free = [0, 0]                # per bank: first cycle it may start a new N tile
    bias_full = bias_first            # first cycle the next bias beat is offered
    read = moved = taken = -1         # D, U, Acc of the previous output row
    gap = 0
    lanes = 0
    for j in range(nt_n):
        for t in range(kt_n):
            q = j * kt_n + t
            start = max(last_issue + 1, weight_in(q * R + R - 1),
                        a_ready(t * m + first_rows - 1))
            if t == 0:
                start = max(start, bank_free[j % 2])
            w_read.extend(start + s for s in range(R))     # slots s < rows never wait
            issue = last_wave = start
            for s in range(1, p):
                issue += 1
                if R <= s < m:
                    issue = max(issue, a_ready(t * m + s))
                if s == m - 1:
                    last_wave = issue
            last_issue = issue
        accumulated = last_wave + R + C
        # this tile's bias beat: taken when the previous tile was released (or when offered)
        if j == 0:
            bias_taken = bias_full
        else:
            bias_taken = max(bias_full, read)          # `read`: tile j-1's last row read
        bias_full = bias_taken + bias_period
        lanes = min(C, n - j * C)
        for _ in range(m):
            read = max(read + 1, moved, accumulated + 1, bias_taken + 1)
            moved = max(read + 1, taken)
            taken = max(moved + 1, taken + gap)
            gap = drain_gap(lanes)
        bank_free[j % 2] = moved + 1
    return EngineRun(cycles=taken + 1, last_taken=taken, last_lanes=lanes)


def ideal_engine(config: BackendConfig, m: int, n: int, k: int) -> EngineRun:
    """:func:`engine_schedule` with a beat on every stream every cycle and the output always
    taken: :func:`hoarfrost.sim.cycle_model.predict_gemm`'s assumptions."""
    return engine_schedule(config, m, n, k, a_ready=lambda i: i + 1, w_first=0, w_period=1,
                           bias_first=0, bias_period=1, drain_gap=lambda lanes: 1)


@dataclasses.dataclass(frozen=True)
class MatmulPrediction:
    """One ``MATMUL``'s cycles, from ``MM_DIVIDE`` to its last ``MM_RUN`` cycle.

    Parameters
    ----------
    setup : int
        ``MM_DIVIDE``, ``MM_SETUP``, ``MM_PARAMS_REQ``, ``PARAMS`` and ``MM_START``.
    run : int
        ``MM_RUN``: the engine and its producers, the drain and the requantizer's tail.
    gather, weights, drain : int
        Cycles each producer (consumer) needs on its own: the bounds ``run`` overlaps.
    """

    setup: int
    run: int
    gather: int
    weights: int
    drain: int

    @property
    def cycles(self) -> int:
        return self.setup + self.run

    @property
    def bound(self) -> str:
        """The producer or consumer that takes longest on its own."""
        return max(("gather", self.gather), ("weights", self.weights), ("drain", self.drain),
                   key=lambda item: item[1])[0]


def predict_matmul(command: Command, geom: Command, config: BackendConfig, *,
                   dram_latency: int = 0) -> MatmulPrediction:
    """One ``MATMUL`` under the geometry ``geom`` (the last ``GEOM`` command)."""
    R, C = config.rows, config.cols
    m, n, k = command.mt, command.nt, command.cg * geom.kh * geom.kw
    kt_n, nt_n, _ = config.tiles(m, n, k)
    params = 0 if command.p_addr == KEEP_PARAMS else 1 + 12 * n + dram_latency
    setup = command.m0 // geom.out_w + 1 + products_cycles(5) + params + 1
    cached = bool(command.w_addr & WCACHE)
    run = engine_schedule(
        config, m, n, k,
        a_ready=lambda i: (i + 1) * (R + 2),
        w_first=C + (0 if cached else dram_latency), w_period=C + 1,
        bias_first=C + 1, bias_period=C + 2,
        drain_gap=lambda lanes: 2 * lanes + 3)
    lanes = [min(C, n - j * C) for j in range(nt_n)]
    return MatmulPrediction(
        setup=setup, run=run.last_taken + 2 * run.last_lanes + 1 + REQUANT_DRAIN,
        gather=kt_n * m * (R + 2), weights=nt_n * kt_n * R * (C + 1),
        drain=m * sum(2 * lanes_j + 3 for lanes_j in lanes))


def _fields_cycles(command: Command, dram_latency: int) -> int:
    """``FIELDS_REQ`` and ``FIELDS`` (none for a command without fields) and ``DISPATCH``."""
    n = len(FIELDS[command.op])
    return (1 + dram_latency + 4 * n if n else 0) + 1


def predict_command_cycles(command: Command, geom: Command | None, config: BackendConfig, *,
                           dram_latency: int = 0, stream_channels: int = 0) -> int:
    """Cycles of one command from the cycle after its header arrived until the sequencer is
    back in ``FETCH`` (or, for ``END``, idle): its fields, ``DISPATCH`` and its execution.

    ``geom`` is the last ``GEOM`` command before it (``MATMUL`` and ``POOL`` read it);
    ``stream_channels`` the lanes of the feature stream (``RECV``). For a serial back end
    (``config.serial``) this is :func:`hoarfrost.sim.serial_model.predict_serial_command_cycles`."""
    if config.serial:
        return predict_serial_command_cycles(command, geom, config, dram_latency=dram_latency)
    op = command.op
    if op in (Op.MATMUL, Op.POOL) and geom is None:
        raise ValueError(f"{op.name} needs the geometry of a GEOM before it")
    cycles = _fields_cycles(command, dram_latency)
    if op in (Op.LOAD, Op.LOADW):
        return cycles + command.length + 2 + dram_latency
    if op == Op.STORE:
        return cycles + 2 * command.length + 2
    if op == Op.GEOM:
        return cycles + products_cycles(9)
    if op == Op.SYNC:
        return cycles
    if op == Op.END:
        return cycles + 1
    if op == Op.RECV:
        return cycles + stream_channels * command.pixels + 2
    if op in (Op.SEND, Op.RECVS):
        return cycles + command.length + 1
    if op == Op.ADD:
        if config.add_shares_multiplier:
            return cycles + products_cycles(6) + (4 * command.length + 4 + REQUANT_DRAIN
                                                  if command.length else 1)
        return cycles + products_cycles(3) + (4 * command.length + 2 + REQUANT_DRAIN
                                              if command.length else 1)
    if op == Op.POOL:
        taps = geom.kh * geom.kw
        cycles += 1                                        # POOL_SETUP
        if command.p_addr != NO_PARAMS:
            words = 2 if command.kind == POOL_MAX else 2 * (taps + 1)
            cycles += 1 + 4 * words + dram_latency         # POOL_PARAMS_REQ, PARAMS
        windows = geom.in_c * geom.out_h * geom.out_w
        return cycles + (windows * (3 * taps + 2) + REQUANT_DRAIN if windows else 1)
    if op == Op.MATMUL:
        return cycles + predict_matmul(command, geom, config, dram_latency=dram_latency).cycles
    raise ValueError(f"no cycle model for {op!r}")


def predict_program(program, config: BackendConfig, *, dram_latency: int = 0,
                    stream_channels: int = 0) -> list[int]:
    """Predicted cycles of each command of ``program`` (a compiled ``Program``, a list of
    commands or the firmware's bytes), counted as :func:`hoarfrost.sim.rtl_run.command_cycles`
    counts the RTL's trace: the first command also has its own header's fetch, every other
    command the next one's. The list sums to the run's ``cycles`` counter. A serial back end
    (``config.serial``) has its own model, :mod:`hoarfrost.sim.serial_model`, under the same
    conventions (its header fetch takes as long)."""
    if isinstance(program, (bytes, bytearray)):
        commands: Sequence[Command] = decode(bytes(program))
    else:
        commands = getattr(program, "commands", program)
    header = header_cycles(dram_latency)
    geom, out = None, []
    for i, command in enumerate(commands):
        if command.op == Op.GEOM:
            geom = command
        cycles = predict_command_cycles(command, geom, config, dram_latency=dram_latency,
                                        stream_channels=stream_channels)
        if i == 0:
            cycles += header
        if command.op != Op.END and i + 1 < len(commands):
            cycles += header
        out.append(cycles)
    return out
