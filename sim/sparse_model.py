"""Cycle model of a sparse engine behind the back end: how long ``SEND`` is held and ``RECVS``
waits for one input vector.

The sequencer model (:mod:`hoarfrost.sim.sequencer_model`) gives ``SEND`` and ``RECVS`` for an
engine that takes every beat and has its results ready. What the engine adds depends on the
data, so this model replays :class:`~hoarfrost.hw.sparse_matvec.SparseMatVec` for one vector,
cycle by cycle, from its state machine:

* the front end takes beat ``i`` in the first cycle in which the queue of every PE that has
  work for it (activation not the zero point, entries in that column) is not full
  (``level < fifo_depth``; a ``SyncFIFO``'s level counts what was written before this cycle
  and not read before it); the beat is readable from the next cycle;
* a PE takes its next work item when the queue has one and it is free: an item taken at ``T``
  whose column has ``s`` slots (entries, a padding entry folded into the one after it) uses
  slots ``T+1 .. T+s`` and the PE takes again from ``T+s`` on;
* after the last beat the end tokens go into every queue in the first cycle none is full; a PE
  takes its token at ``E_p`` (as an item), ``done`` follows two cycles later, and the drain
  starts one cycle after all are done: ``D = max_p E_p + 3``; result ``j`` is offered from
  ``D + 1 + j`` and ``RECVS`` takes one a cycle.

``SEND`` offers a beat every cycle from its second cycle (``SEND_PUSH``); ``RECVS``'s first
cycle comes ``gap + 1`` cycles after ``SEND``'s last (the next header and fields, ``DISPATCH``).
The engine starts idle (``RECVS`` drained the previous vector).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from hoarfrost.firmware.isa import FIELDS, Op
from hoarfrost.gen.sparse import SparseEncoding
from hoarfrost.sim.sequencer_model import header_cycles

__all__ = ["SparseTiming", "column_slots", "predict_sparse_vector", "send_recvs_gap"]


@dataclass(frozen=True)
class SparseTiming:
    """One vector through an engine.

    Members
    -------
    send_stalls : int
        Cycles ``SEND``'s beats were held (the engine's ``stall_cycles`` during ``SEND``).
    recvs_wait : int
        Cycles ``RECVS`` waited for the first result.
    """

    send_stalls: int
    recvs_wait: int


def column_slots(enc: SparseEncoding) -> np.ndarray:
    """``(pes, cols)`` multiply-accumulate slots of each column in each PE: its entries, a
    padding entry that has an entry after it sharing that one's slot."""
    slots = np.zeros((enc.pes, enc.cols), dtype=np.int64)
    for pe in range(enc.pes):
        ptr = enc.pointers(pe)
        index = enc.index[pe]
        for col in range(enc.cols):
            k, end = int(ptr[col]), int(ptr[col + 1])
            while k < end:
                k += 2 if index[k] == 0 and k + 1 < end else 1
                slots[pe, col] += 1
    return slots


def send_recvs_gap(dram_latency: int = 0) -> int:
    """Cycles from ``SEND``'s last cycle to ``RECVS``'s first, exclusive: the ``RECVS``
    header, its fields and ``DISPATCH``."""
    return header_cycles(dram_latency) + 1 + dram_latency + 4 * len(FIELDS[Op.RECVS]) + 1


def predict_sparse_vector(enc: SparseEncoding, x, zero_point: int, *, fifo_depth: int = 8,
                          gap: int | None = None, slots: np.ndarray | None = None
                          ) -> SparseTiming:
    """The timing of one int8 vector ``x`` (``enc.cols`` values) through the engine (see the
    module docstring). ``slots`` may pass :func:`column_slots` precomputed."""
    x = np.asarray(x, dtype=np.int64).reshape(-1)
    if slots is None:
        slots = column_slots(enc)
    if gap is None:
        gap = send_recvs_gap()
    pes = enc.pes
    queues = [deque() for _ in range(pes)]    # slots of the items waiting (None: end token)
    free = [0] * pes                          # first cycle each PE may take an item
    end_taken = [None] * pes
    beat, t, last_accept, ends_written = 0, 0, -1, False
    while not all(e is not None for e in end_taken):
        # what the front end sees this cycle: levels from writes and reads before it
        full = [len(q) >= fifo_depth for q in queues]
        accept = write_ends = False
        if beat < len(x):
            need = ([p for p in range(pes) if slots[p, beat]] if x[beat] != zero_point
                    else [])
            accept = not any(full[p] for p in need)
        elif not ends_written:
            write_ends = not any(full)          # pend_end: the cycle after the last beat on
        # PEs take from their queues (what was written before this cycle)
        for p in range(pes):
            if queues[p] and t >= free[p]:
                item = queues[p].popleft()
                if item is None:
                    end_taken[p] = t
                else:
                    free[p] = t + item
        if accept:
            for p in need:
                queues[p].append(int(slots[p, beat]))
            last_accept, beat = t, beat + 1
        if write_ends:
            for q in queues:
                q.append(None)
            ends_written = True
        t += 1
    drain = max(end_taken) + 3
    recvs_first = last_accept + 1 + gap
    return SparseTiming(send_stalls=last_accept + 1 - len(x),
                        recvs_wait=max(0, drain + 1 - recvs_first))
