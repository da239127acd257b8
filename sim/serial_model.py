"""Exact cycle model of :class:`hoarfrost.hw.serial_backend.SerialBackEnd`: cycles per command.

Every term is read off the serial back end's FSM (hw/serial_backend.py), state by state, under
the same DRAM and counting conventions as :mod:`hoarfrost.sim.sequencer_model`: a request is
taken in the first cycle it is posted, its first byte is there ``dram_latency`` (``lat``)
cycles later (0 in amaranth.sim and in ``hoarfrost sim``), one byte follows a cycle, writes are
taken every cycle; a command's cycles run from the cycle after its header word arrived to the
cycle the next command's has (the first command also gets its own header's fetch), so the
list :func:`hoarfrost.sim.sequencer_model.predict_program` gives for a serial configuration
(it calls :func:`predict_serial_command_cycles` per command) sums to the ``cycles`` counter.

Fetch. ``FETCH`` 1 and ``HEADER`` ``4 + lat``: ``H = 5 + lat``; then ``FIELDS_REQ`` 1 and
``FIELDS`` ``4n + lat`` for a command with ``n`` fields (neither without fields), and
``DISPATCH`` 1 (as the systolic back end, whose
:func:`~hoarfrost.sim.sequencer_model.header_cycles` :func:`predict_program` adds).

The tap pipeline. A tap issued in cycle ``c`` (stage 0) is read in ``c + 1``, multiplied into
stage 2 in ``c + 2``; a window's last tap leaves stage 2 as ``v3`` in ``c + 3``, which is its
push into the requantizer (``MATMUL``, max ``POOL``, ``ADD``); the result is written 5 cycles
after a push, and the pipeline is *idle* (nothing in the taps' stages, nothing pushed and not
written) from the cycle after: ``push + 6``. A state that waits for idle after the last tap in
``c`` therefore leaves in ``c + 9``: :data:`TAIL` = 9 cycles after the last tap, whichever
states spend them.

========  ======================================================================================
LOAD      ``LOAD_REQ`` 1, ``LOAD_DATA`` one byte a cycle after ``lat`` and one cycle to see the
          count: ``length + 2 + lat``
STORE     ``STORE_REQ`` 1 (it also reads the first byte), ``STORE_DATA`` one byte a cycle and one
          cycle to see the count: ``length + 2``
GEOM      ``GEOM_SETUP``: 6 products on the shared multiplier, one issued a cycle, the last taken
          two cycles later: ``6 + 2``
SYNC      nothing: ``DISPATCH`` goes back to ``FETCH``
END       the ``END`` state: 1
MATMUL    ``MM_SETUP`` 3 products: ``5``; per output channel (``nt`` of them, ``K = cg * kh *
          kw``): ``MM_PARAMS_REQ`` (1, or for every channel after the first the wait for the
          last one's push to be written: the tail, 9 cycles from the previous ``MM_RUN``'s last
          tap), ``MM_PARAMS`` ``12 + lat``, ``MM_WEIGHTS_REQ`` 1, ``MM_WEIGHTS`` ``K + lat``,
          ``MM_SKIP`` ``m0 + 1`` (a pixel a cycle to pixel ``m0``, one to see it), ``MM_RUN``
          ``mt * K``; after the last channel ``MM_PARAMS_REQ`` 1 and ``DRAIN`` 8 (the tail):
          ``5 + 1 + nt * (m0 + 14 + 2 * lat + K * (mt + 1)) + 9 * nt`` (the ``9 * nt``: every
          channel's tail, in the next channel's ``MM_PARAMS_REQ`` or in ``DRAIN``)
POOL      ``W = in_c * out_h * out_w`` windows of ``T = kh * kw`` taps. None (``W = 0``):
          ``POOL_RUN`` 1, ``DRAIN`` 1 (after a max pooling's table, if it has one). Max: with a
          table (``p_addr`` set), ``TABLE_REQ`` 1 and ``TABLE`` ``8 + lat`` once; ``POOL_RUN``
          a tap a cycle, windows back to back, ``W * T``; ``DRAIN`` the tail, 9. Average, per
          window: ``POOL_RUN`` ``T``, ``TABLE_REQ`` 4 (waiting for stage 2's element count,
          which also lets the previous window's push be written: that took ``T + 5`` cycles
          ago), ``TABLE`` ``8 + lat`` (the count's multiplier and shift), ``POOL_PUSH`` 1,
          ``POOL_NEXT`` 1: ``T + 14 + lat``; then ``DRAIN`` until the last push is written, 5
ADD       ``ADD_RUN`` 2 per element (a's tap, b's tap) and one to see the count, ``DRAIN`` 8:
          ``2 * length + 9`` (``1 + 1`` for no elements)
========  ======================================================================================

The model is exact for the back end as it is (tests/test_serial_model.py compares it cycle
for cycle with the RTL in amaranth.sim); with DRAM stalls the RTL can only be slower.
"""

from __future__ import annotations

from hoarfrost.firmware.isa import FIELDS, NO_PARAMS, POOL_MAX, Command, Op
from hoarfrost.hw.config import BackendConfig

__all__ = ["TAIL", "predict_serial_command_cycles"]

#: Cycles from a window's push into the requantizer to the first idle cycle (its result
#: written the cycle before): the requantizer's five stages and the write.
REQUANT_DRAIN = 6
#: Cycles from the last tap's issue to the first idle cycle (``v1``, ``v2``, ``v3``/push, then
#: :data:`REQUANT_DRAIN`), i.e. from the cycle after the last tap to the state that sees idle,
#: inclusive: the cycles a command spends after its last tap.
TAIL = 3 + REQUANT_DRAIN
#: ``MM_PARAMS``' bytes per output channel: its bias, multiplier and shift words.
PARAM_BYTES = 12
#: ``TABLE``'s bytes: one (multiplier, shift) pair.
TABLE_BYTES = 8


def products_cycles(steps: int) -> int:
    """A setup state of ``steps`` products on the shared multiplier: one issued a cycle, the
    last taken two cycles after it (``SerialBackEnd``'s ``products``)."""
    return steps + 2


def _fields_cycles(command: Command, dram_latency: int) -> int:
    """``FIELDS_REQ`` and ``FIELDS`` (none for a command without fields) and ``DISPATCH``."""
    n = len(FIELDS[command.op])
    return (1 + dram_latency + 4 * n if n else 0) + 1


def _matmul_cycles(command: Command, geom: Command, lat: int) -> int:
    """``MM_SETUP`` to the ``DRAIN`` cycle that sees the pipeline idle."""
    k = command.cg * geom.kh * geom.kw
    per_channel = (PARAM_BYTES + lat           # MM_PARAMS
                   + 1                         # MM_WEIGHTS_REQ
                   + k + lat                   # MM_WEIGHTS
                   + command.m0 + 1            # MM_SKIP
                   + command.mt * k)           # MM_RUN
    # MM_PARAMS_REQ: 1 for the first channel; every channel's tail (TAIL cycles after its
    # last tap) is the next one's MM_PARAMS_REQ, or the last's MM_PARAMS_REQ and DRAIN
    return products_cycles(3) + 1 + command.nt * (per_channel + TAIL)


def _pool_cycles(command: Command, geom: Command, lat: int) -> int:
    """The first ``POOL_RUN`` (or ``TABLE_REQ``) to the ``DRAIN`` cycle that sees idle."""
    taps = geom.kh * geom.kw
    windows = geom.in_c * geom.out_h * geom.out_w
    is_max = command.kind == POOL_MAX
    table = 1 + TABLE_BYTES + lat if is_max and command.p_addr != NO_PARAMS else 0
    if windows == 0:
        return table + 1 + 1                   # POOL_RUN sees no work, DRAIN sees idle
    if is_max:
        return table + windows * taps + TAIL
    # average: POOL_RUN, TABLE_REQ (until stage 2's count is there: 3 cycles after the last
    # tap, and the pipeline idle), TABLE, POOL_PUSH, POOL_NEXT; then DRAIN until the last
    # push is written (REQUANT_DRAIN after it, POOL_NEXT being the first of those)
    per_window = taps + 4 + TABLE_BYTES + lat + 1 + 1
    return windows * per_window + REQUANT_DRAIN - 1


def predict_serial_command_cycles(command: Command, geom: Command | None,
                                  config: BackendConfig | None = None, *,
                                  dram_latency: int = 0) -> int:
    """Cycles of one command on the serial back end from the cycle after its header arrived
    until the FSM is back in ``FETCH`` (or, for ``END``, idle): its fields, ``DISPATCH`` and
    its execution.

    ``geom`` is the last ``GEOM`` command before it (``MATMUL`` and ``POOL`` read it).
    ``config`` is accepted for symmetry with
    :func:`hoarfrost.sim.sequencer_model.predict_command_cycles`: no width of it changes the
    timing."""
    op = command.op
    lat = dram_latency
    if op in (Op.MATMUL, Op.POOL) and geom is None:
        raise ValueError(f"{op.name} needs the geometry of a GEOM before it")
    cycles = _fields_cycles(command, lat)
    if op == Op.LOAD:
        return cycles + 1 + command.length + lat + 1
    if op == Op.STORE:
        return cycles + 1 + command.length + 1
    if op == Op.GEOM:
        return cycles + products_cycles(6)
    if op == Op.SYNC:
        return cycles
    if op == Op.END:
        return cycles + 1
    if op == Op.ADD:
        return cycles + (2 * command.length + 1 + TAIL - 1 if command.length else 1 + 1)
    if op == Op.POOL:
        return cycles + _pool_cycles(command, geom, lat)
    if op == Op.MATMUL:
        return cycles + _matmul_cycles(command, geom, lat)
    # RECV, LOADW, SEND, RECVS and unknown ops stop the serial back end like END
    raise ValueError(f"the serial back end does not run {op!r}")
