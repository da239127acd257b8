"""The back end's byte-stream DRAM port on an AXI4 manager port.

The programmable back end asks for DRAM with a request ``{addr, length}`` (any byte address,
any length) and moves the bytes one per cycle on a byte stream, one pair of streams per
direction (:class:`DramPortSignature`). :class:`AxiDramBridge` serves that port from AXI4
memory through the DMA engines (:class:`~hoarfrost.hw.axi_dma.AxiReadDma`,
:class:`~hoarfrost.hw.axi_dma.AxiWriteDma`): a request becomes the aligned beats that cover
it, cut into INCR bursts. Reads drop the bytes of the first and last beat that lie outside
the request; writes mark the bytes they carry with WSTRB, so a partial beat leaves its
neighbours in memory untouched.

:class:`BackEndAxi` is the back end with the bridge, whose only memory port is AXI4: the top
of the co-simulation against cocotbext-axi's ``AxiRam``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi import MAX_BURST_BEATS, AxiSignature
from hoarfrost.hw.axi_dma import DMA_COUNTERS, AxiReadDma, AxiWriteDma
# The request layout is the back end's own (re-exported here with the port it travels on).
from hoarfrost.hw.backend import dram_request_layout

__all__ = ["dram_request_layout", "DramPortSignature", "DRAM_PORT_STREAMS", "connect_dram",
           "BRIDGE_COUNTERS", "AxiDramBridge", "BackEndAxi"]

#: The four streams of the byte-stream DRAM port, as members of the requester and the bridge.
DRAM_PORT_STREAMS = ("rd_cmd", "rd_data", "wr_cmd", "wr_data")

#: Counters of :class:`AxiDramBridge` (all ``Out(32)``, wrapping): each DMA engine's
#: :data:`~hoarfrost.hw.axi_dma.DMA_COUNTERS` prefixed ``rd_`` / ``wr_`` (beats and bytes
#: moved on the bus, bursts, busy cycles, cycles waiting on memory, cycles stalled by the
#: byte side, error responses), then per direction the requests taken and the bytes moved on
#: the byte port (``rd_port_bytes <= rd_bytes``: the rest are the unused bytes of partial beats).
BRIDGE_COUNTERS = (
    *(f"{side}_{name}" for side in ("rd", "wr") for name in DMA_COUNTERS),
    "rd_requests", "rd_port_bytes", "wr_requests", "wr_port_bytes",
)

#: Requests a direction takes ahead of the one whose bytes are moving; enough to overlap the
#: next request's memory latency with the current one's bytes.
REQUESTS_AHEAD = 4


class DramPortSignature(wiring.Signature):
    """The byte-stream DRAM port, seen from the requester (the back end's sequencer).

    Reads and writes are independent pairs of streams. Each request is answered with exactly
    ``length`` bytes, in address order; a request of length 0 moves nothing.

    Members
    -------
    rd_cmd : ``Out(stream.Signature(dram_request_layout()))``
        Read requests.
    rd_data : ``In(stream.Signature(8))``
        The bytes read, in request order.
    wr_cmd : ``Out(stream.Signature(dram_request_layout()))``
        Write requests.
    wr_data : ``Out(stream.Signature(8))``
        The bytes to write, in request order.
    """

    def __init__(self):
        super().__init__({
            "rd_cmd": Out(stream.Signature(dram_request_layout())),
            "rd_data": In(stream.Signature(8)),
            "wr_cmd": Out(stream.Signature(dram_request_layout())),
            "wr_data": Out(stream.Signature(8)),
        })

    def __eq__(self, other):
        return type(other) is type(self)

    def __repr__(self):
        return "DramPortSignature()"


def connect_dram(m: Module, requester, server) -> None:
    """Join the four DRAM-port streams of ``requester`` (e.g. a ``BackEnd``) and ``server``
    (e.g. an :class:`AxiDramBridge`), which carry them as top-level members."""
    for name in DRAM_PORT_STREAMS:
        wiring.connect(m, getattr(requester, name), getattr(server, name))


def _plan_layout(beat_shift: int) -> data.StructLayout:
    """What the byte side keeps of a request: its first byte's lane and its length."""
    return data.StructLayout({"offset": beat_shift, "length": 32})


class AxiDramBridge(wiring.Component):
    """Serves the byte-stream DRAM port from an AXI4 memory through the DMA engines.

    A request ``{addr, length}`` becomes a DMA command for the beats that cover bytes
    ``addr .. addr + length - 1``; the DMA cuts it into INCR bursts (at most ``max_burst``
    beats, none across 4 KB) and keeps up to ``max_outstanding`` of them in flight. The byte
    side serializes each read beat to bytes, dropping the lanes before ``addr`` in the first
    beat and after the request's end in the last, and assembles written bytes into beats with
    WSTRB set on the lanes they fill.

    Throughput: the byte side moves one byte per cycle in each direction, a beat every
    ``data_width / 8`` bytes, so the bus (a beat per cycle) is never the bottleneck of a long
    transfer: the read engine requests bursts ahead while the bytes of earlier ones drain
    (``rready`` follows the byte side, so the memory holds the beats not yet taken). A request
    costs its memory latency once plus three cycles (the DMA's burst planning, two, and the
    byte register, one). Up to :data:`REQUESTS_AHEAD` requests per direction are taken ahead
    of the one whose bytes move, so back-to-back requests overlap their latencies.

    Memory order: the bridge keeps the order of the requests as the byte port saw them. A
    read request waits until every earlier write is in memory (its last write response has
    come back), and a write request until every earlier read has delivered its last byte
    (and yields to a read request offered in the same cycle), so a read after a write sees
    the written bytes, as with a byte-addressed memory. A requester must therefore not hold
    back the bytes of one direction while it waits for a request of the other to be taken
    (the back end never does: it finishes each transfer before its next request).

    Parameters
    ----------
    data_width : int
        AXI data width in bits, a power of two from 16 to 1024 (32 and 64 are the tested ones).
    id_width : int
        Width of AXI IDs.
    max_outstanding : int
        Bursts per direction in flight (requested, not yet fully answered), 1 to 64.
    max_burst : int
        Longest burst, 1 to 256 beats.
    read_id, write_id : int
        ARID and AWID of every request.

    Members
    -------
    rd_cmd : ``In(stream.Signature(dram_request_layout()))``
        Read requests.
    rd_data : ``Out(stream.Signature(8))``
        The bytes read, in request order.
    wr_cmd : ``In(stream.Signature(dram_request_layout()))``
        Write requests.
    wr_data : ``In(stream.Signature(8))``
        The bytes to write, in request order.
    m_axi : ``Out(AxiSignature(addr_width=32, data_width=data_width, id_width=id_width,
    wstrb=True))``
        The AXI4 manager port.
    rd_busy : ``Out(1)``
        A read request has not delivered all its bytes.
    wr_busy : ``Out(1)``
        A write request is not yet all in memory (bytes to come, or responses outstanding).
    rd_beats, rd_bytes, ..., wr_port_bytes : ``Out(32)``
        The counters of :data:`BRIDGE_COUNTERS`.
    """

    def __init__(self, *, data_width: int = 64, id_width: int = 4, max_outstanding: int = 4,
                 max_burst: int = MAX_BURST_BEATS, read_id: int = 0, write_id: int = 0):
        if (not isinstance(data_width, int) or not 16 <= data_width <= 1024
                or data_width & (data_width - 1)):
            raise ValueError(f"Data width must be a power of two from 16 to 1024, "
                             f"not {data_width!r}")
        self._data_width = data_width
        beat_shift = (data_width // 8).bit_length() - 1
        # Beats of the longest request, lane offset included: (B - 1 + 2**32 - 1 + B - 1) / B.
        dma = dict(addr_width=32, data_width=data_width, id_width=id_width,
                   len_width=33 - beat_shift, max_outstanding=max_outstanding,
                   max_burst=max_burst)
        # Made here so that they check the arguments.
        self._reader = AxiReadDma(**dma, axi_id=read_id)
        self._writer = AxiWriteDma(**dma, axi_id=write_id, wstrb=True)
        super().__init__({
            **{name: DramPortSignature().flip().members[name] for name in DRAM_PORT_STREAMS},
            "m_axi": Out(AxiSignature(addr_width=32, data_width=data_width, id_width=id_width,
                                      wstrb=True)),
            "rd_busy": Out(1),
            "wr_busy": Out(1),
            **{name: Out(32) for name in BRIDGE_COUNTERS},
        })

    @property
    def bytes_per_beat(self) -> int:
        return self._data_width // 8

    def elaborate(self, platform):
        m = Module()
        B = self.bytes_per_beat
        shift = B.bit_length() - 1
        plan = _plan_layout(shift)

        m.submodules.reader = reader = self._reader
        m.submodules.writer = writer = self._writer
        for channel in ("ar", "r"):
            wiring.connect(m, getattr(reader.m_axi, channel),
                           wiring.flipped(getattr(self.m_axi, channel)))
        for channel in ("aw", "w", "b"):
            wiring.connect(m, getattr(writer.m_axi, channel),
                           wiring.flipped(getattr(self.m_axi, channel)))
        # Each request accepted leaves its plan for the byte side, in request order.
        m.submodules.rd_plans = rd_plans = SyncFIFO(width=plan.size, depth=REQUESTS_AHEAD)
        m.submodules.wr_plans = wr_plans = SyncFIFO(width=plan.size, depth=REQUESTS_AHEAD)
        rd_head = data.View(plan, rd_plans.r_data)
        wr_head = data.View(plan, wr_plans.r_data)

        # --- requests: to DMA commands, in memory order ---------------------------------------
        reads_idle, writes_idle = Signal(), Signal()
        wr_out_valid = Signal()          # an assembled beat waits for the write engine
        m.d.comb += [
            reads_idle.eq(~reader.busy & ~rd_plans.r_rdy),
            writes_idle.eq(~writer.busy & ~wr_plans.r_rdy & ~wr_out_valid),
            self.rd_busy.eq(~reads_idle),
            self.wr_busy.eq(~writes_idle),
        ]
        # A write also yields to a read offered in the same cycle, so no two requests are
        # ever taken unordered.
        order = {"rd": writes_idle, "wr": reads_idle & ~self.rd_cmd.valid}
        for side, request, engine, plans in (("rd", self.rd_cmd, reader, rd_plans),
                                              ("wr", self.wr_cmd, writer, wr_plans)):
            offset = request.payload.addr[:shift]
            empty = request.payload.length == 0
            beats = Signal(33 - shift, name=f"{side}_beats")
            m.d.comb += beats.eq((offset + request.payload.length + (B - 1)) >> shift)
            # The engine and the plan queue take a request together; an empty one goes nowhere.
            both = Signal(name=f"{side}_both_ready")
            m.d.comb += [
                both.eq(engine.i_cmd.ready & plans.w_rdy),
                request.ready.eq(order[side] & (empty | both)),
                engine.i_cmd.valid.eq(request.valid & order[side] & ~empty & plans.w_rdy),
                engine.i_cmd.payload.addr.eq(request.payload.addr),   # low bits ignored
                engine.i_cmd.payload.beats.eq(beats),
                plans.w_en.eq(request.valid & request.ready & ~empty),
            ]
            entry = data.View(plan, plans.w_data)
            m.d.comb += [entry.offset.eq(offset), entry.length.eq(request.payload.length)]
            with m.If(request.valid & request.ready):
                m.d.sync += getattr(self, f"{side}_requests").eq(
                    getattr(self, f"{side}_requests") + 1)

        # --- read side: beats to bytes ---------------------------------------------------------
        rd_started = Signal()            # the head plan's length is in rd_left
        rd_first = Signal()              # the next beat taken is the request's first
        rd_left = Signal(32)
        rd_lane = Signal(shift)
        rd_have = Signal()
        rd_beat = Signal(self._data_width)
        with m.If(rd_plans.r_rdy & ~rd_started):
            m.d.sync += [rd_started.eq(1), rd_first.eq(1), rd_left.eq(rd_head.length)]
        m.d.comb += [self.rd_data.valid.eq(rd_have),
                     self.rd_data.payload.eq(rd_beat.word_select(rd_lane, 8))]
        rd_fire = self.rd_data.valid & self.rd_data.ready
        rd_last = rd_left == 1
        rd_beat_end = rd_lane == B - 1
        # A new beat is taken when none is held, or in the cycle the held one's last byte
        # leaves and the request has more: one byte per cycle across beats.
        m.d.comb += reader.o_data.ready.eq(
            rd_started & (~rd_have | (rd_fire & rd_beat_end & ~rd_last)))
        with m.If(rd_fire):
            m.d.sync += [rd_left.eq(rd_left - 1), rd_lane.eq(rd_lane + 1),
                         self.rd_port_bytes.eq(self.rd_port_bytes + 1)]
            with m.If(rd_last | rd_beat_end):
                m.d.sync += rd_have.eq(0)
            with m.If(rd_last):
                # The rest of the last beat is dropped; the next request starts afresh.
                m.d.sync += rd_started.eq(0)
                m.d.comb += rd_plans.r_en.eq(1)
        with m.If(reader.o_data.valid & reader.o_data.ready):
            m.d.sync += [rd_beat.eq(reader.o_data.payload), rd_have.eq(1), rd_first.eq(0),
                         rd_lane.eq(Mux(rd_first, rd_head.offset, 0))]

        # --- write side: bytes to strobed beats ------------------------------------------------
        wr_started = Signal()
        wr_left = Signal(32)
        wr_lane = Signal(shift)
        wr_beat = Signal(self._data_width)     # the beat being assembled
        wr_lanes = Signal(B)                   # and the lanes it has
        wr_out = writer.i_data
        m.d.comb += wr_out.valid.eq(wr_out_valid)
        with m.If(wr_plans.r_rdy & ~wr_started):
            m.d.sync += [wr_started.eq(1), wr_left.eq(wr_head.length),
                         wr_lane.eq(wr_head.offset)]
        completes = Signal()             # the next byte finishes a beat
        m.d.comb += completes.eq((wr_lane == B - 1) | (wr_left == 1))
        # Only a byte that finishes a beat needs room for it in the output register.
        m.d.comb += self.wr_data.ready.eq(
            wr_started & (~completes | ~wr_out_valid | wr_out.ready))
        merged_data, merged_strb = Signal.like(wr_beat), Signal.like(wr_lanes)
        m.d.comb += [merged_data.eq(wr_beat), merged_strb.eq(wr_lanes | (1 << wr_lane))]
        m.d.comb += merged_data.word_select(wr_lane, 8).eq(self.wr_data.payload)
        with m.If(wr_out.ready):
            m.d.sync += wr_out_valid.eq(0)
        with m.If(self.wr_data.valid & self.wr_data.ready):
            m.d.sync += [wr_left.eq(wr_left - 1), wr_lane.eq(wr_lane + 1),
                         wr_beat.eq(merged_data), wr_lanes.eq(merged_strb),
                         self.wr_port_bytes.eq(self.wr_port_bytes + 1)]
            with m.If(completes):
                m.d.sync += [wr_out_valid.eq(1), wr_out.payload.data.eq(merged_data),
                             wr_out.payload.strb.eq(merged_strb), wr_lanes.eq(0)]
            with m.If(wr_left == 1):
                m.d.sync += wr_started.eq(0)
                m.d.comb += wr_plans.r_en.eq(1)

        for side, engine in (("rd", reader), ("wr", writer)):
            for name in DMA_COUNTERS:
                m.d.comb += getattr(self, f"{side}_{name}").eq(getattr(engine, name))
        return m


class BackEndAxi(wiring.Component):
    """The back end with an :class:`AxiDramBridge`: its only memory port is AXI4.

    Convert with :func:`hoarfrost.hw.axi.convert` to get ``m_axi_*`` port names (the
    co-simulation puts cocotbext-axi's ``AxiRam`` there).

    Parameters
    ----------
    config : BackendConfig
        As for ``BackEnd``.
    scratch_bytes, param_depth : int
        As for ``BackEnd``.
    data_width, id_width, max_outstanding, max_burst
        As for :class:`AxiDramBridge`.

    Members
    -------
    start, program_addr, busy, done
        The back end's (see ``BackEnd``). ``done`` pulses when the sequencer reaches ``END``;
        a write may still be on its way to memory then (see ``dram_busy``).
    m_axi : ``Out(AxiSignature(..., wstrb=True))``
        The memory port.
    dram_busy : ``Out(1)``
        The bridge has a request in progress; low after ``done`` means every byte written is
        in memory.
    cycles, ..., engine_stall_cycles : ``Out(config.counter_width)``
        The back end's counters, ``BACKEND_COUNTERS``.
    rd_beats, ..., wr_port_bytes : ``Out(32)``
        The bridge's counters, :data:`BRIDGE_COUNTERS`.
    """

    def __init__(self, config, *, scratch_bytes: int = 4096, param_depth: int = 64,
                 data_width: int = 64, id_width: int = 4, max_outstanding: int = 4,
                 max_burst: int = MAX_BURST_BEATS):
        # Imported here: backend.py is to take DramPortSignature from this module.
        from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd

        self._backend = BackEnd(config, scratch_bytes=scratch_bytes, param_depth=param_depth)
        self._bridge = AxiDramBridge(data_width=data_width, id_width=id_width,
                                     max_outstanding=max_outstanding, max_burst=max_burst)
        self._counters = BACKEND_COUNTERS
        members = self._backend.signature.members
        super().__init__({
            **{name: members[name] for name in ("start", "program_addr", "busy", "done")},
            "m_axi": self._bridge.signature.members["m_axi"],
            "dram_busy": Out(1),
            **{name: members[name] for name in BACKEND_COUNTERS},
            **{name: Out(32) for name in BRIDGE_COUNTERS},
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.backend = backend = self._backend
        m.submodules.bridge = bridge = self._bridge
        connect_dram(m, backend, bridge)
        wiring.connect(m, bridge.m_axi, wiring.flipped(self.m_axi))
        m.d.comb += [backend.start.eq(self.start), backend.program_addr.eq(self.program_addr),
                     self.busy.eq(backend.busy), self.done.eq(backend.done),
                     self.dram_busy.eq(bridge.rd_busy | bridge.wr_busy)]
        for name in (*self._counters, *BRIDGE_COUNTERS):
            source = backend if name in self._counters else bridge
            m.d.comb += getattr(self, name).eq(getattr(source, name))
        return m
