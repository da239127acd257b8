"""Golden model of the zero-skipping sparse engine, running the compressed encoding itself.

:func:`sparse_accumulators` walks exactly what :class:`hoarfrost.hw.sparse_matvec.SparseMatVec`
walks: for each column whose activation differs from the zero point, each PE reads that
column's entries from its own list, adds the relative index to find the row, looks the weight
up in the codebook and accumulates. Its results must equal
:func:`hoarfrost.sim.golden.dense_int` on the decoded layer, and the RTL must equal it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hoarfrost.gen.ir import Dense, QParams
from hoarfrost.gen.sparse import SparseEncoding
from hoarfrost.sim.arith import requantize
from hoarfrost.sim.golden import _check_acc

__all__ = ["SparseCounts", "sparse_accumulators", "sparse_dense_int"]


@dataclass
class SparseCounts:
    """Events of one run, as the RTL counts them.

    Members
    -------
    columns : int
        Activations received.
    skipped : int
        Activations equal to the zero point, never broadcast.
    entries : int
        Entries read from the PEs' memories (padding included); one MAC slot each.
    macs : int
        Entries with a non-zero codebook index (the useful multiply-accumulates).
    pe_entries : numpy.ndarray
        Entries read per PE, shape ``(pes,)``.
    pe_slots : numpy.ndarray
        Multiply-accumulate cycles per PE, shape ``(pes,)``: entries, less the padding entries
        the PE folds into the entry after them.
    """

    columns: int = 0
    skipped: int = 0
    entries: int = 0
    macs: int = 0
    pe_entries: np.ndarray | None = None
    pe_slots: np.ndarray | None = None


def sparse_accumulators(x: np.ndarray, enc: SparseEncoding, zero_point: int,
                        counts: SparseCounts | None = None) -> np.ndarray:
    """The int64 sums ``sum_c (x[c] - zp) * w[r, c]`` over the encoding, shape ``(N, rows)``.

    ``x`` is ``(N, cols)`` int8. When ``counts`` is given, the events are added to it.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.int64))
    acc = np.zeros((x.shape[0], enc.rows), dtype=np.int64)
    if counts is not None and counts.pe_entries is None:
        counts.pe_entries = np.zeros(enc.pes, dtype=np.int64)
        counts.pe_slots = np.zeros(enc.pes, dtype=np.int64)
    pointers = [enc.pointers(pe) for pe in range(enc.pes)]
    for n, vector in enumerate(x - zero_point):
        for col, act in enumerate(vector):
            if counts is not None:
                counts.columns += 1
                counts.skipped += int(act == 0)
            if act == 0:                        # zero activations are never broadcast
                continue
            for pe in range(enc.pes):
                local = -1
                k, end = pointers[pe][col], pointers[pe][col + 1]
                while k < end:
                    # A padding entry shares its cycle with the entry after it, as in the PE.
                    fold = enc.index[pe][k] == 0 and k + 1 < end
                    if fold:
                        local += int(enc.rel[pe][k]) + 1
                        k += 1
                    local += int(enc.rel[pe][k]) + 1
                    weight = int(enc.codebook[enc.index[pe][k]])
                    acc[n, local * enc.pes + pe] += int(act) * weight
                    if counts is not None:
                        counts.entries += 1 + fold
                        counts.pe_entries[pe] += 1 + fold
                        counts.pe_slots[pe] += 1
                        counts.macs += int(enc.index[pe][k] != 0)
                    k += 1
    return acc


def sparse_dense_int(x: np.ndarray, enc: SparseEncoding, layer: Dense, qin: QParams,
                     counts: SparseCounts | None = None) -> np.ndarray:
    """int8 outputs ``(N, rows)`` of a compressed layer: the encoding's sums, plus
    ``layer.bias_q``, requantized with ``layer.requant`` (the :mod:`~hoarfrost.sim.arith` formula).
    """
    acc = _check_acc(sparse_accumulators(x, enc, qin.zero_point, counts) + layer.bias_q, layer)
    rq = layer.requant
    return requantize(acc, rq.multiplier, rq.shift, rq.zero_point, rq.lo, rq.hi)
