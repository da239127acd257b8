"""DMA engines on an AXI4 manager port: reads and writes of whole buffers as INCR bursts.

A command names a byte address and a length in beats (one beat = one ``data_width`` word).
:class:`BurstSplitter` cuts it into AXI4 INCR bursts of at most 256 beats that never cross a
4 KB boundary. :class:`AxiReadDma` keeps several bursts in flight so that the memory's latency
overlaps the data of earlier bursts; :class:`AxiWriteDma` sends write data as soon as a burst is
planned and waits for every write response before it reports idle.

Counters (all ``Out(32)``, wrapping): every cycle in which an engine is busy is exactly one of
*a beat moved*, *the data stream stalled* (``stall_cycles``) or *waiting on memory*
(``mem_wait_cycles``), so ``busy_cycles == beats + stall_cycles + mem_wait_cycles``, and the
bandwidth an engine sustained is ``bytes / busy_cycles``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi import (BOUNDARY_BYTES, MAX_BURST_BEATS, AxiBurst, AxiReadSignature,
                              AxiResp, AxiSignature, AxiWriteSignature)

__all__ = ["dma_command_layout", "burst_layout", "strobed_beat_layout", "BurstSplitter",
           "AxiReadDma", "AxiWriteDma", "DmaTestTop", "split_bursts", "DMA_COUNTERS"]

#: Counter ports of both engines, in the order testbenches report them.
DMA_COUNTERS = ("beats", "bytes", "bursts", "busy_cycles", "mem_wait_cycles", "stall_cycles",
                "errors")


def dma_command_layout(addr_width: int, len_width: int) -> data.StructLayout:
    """Payload of a DMA command: first byte address and length in beats (0 = do nothing)."""
    return data.StructLayout({"addr": addr_width, "beats": len_width})


def strobed_beat_layout(data_width: int) -> data.StructLayout:
    """Payload of :class:`AxiWriteDma`'s ``i_data`` with ``wstrb=True``: a beat and its WSTRB."""
    return data.StructLayout({"data": data_width, "strb": data_width // 8})


def burst_layout(addr_width: int) -> data.StructLayout:
    """Payload of :class:`BurstSplitter`'s output: byte address and AXI ``len`` (beats - 1)."""
    return data.StructLayout({"addr": addr_width, "len": 8})


def split_bursts(addr: int, beats: int, bytes_per_beat: int,
                 max_burst: int = MAX_BURST_BEATS) -> list[tuple[int, int]]:
    """Reference model of :class:`BurstSplitter`: ``(byte address, beats)`` of each burst.

    The low address bits below one beat are ignored (the engines move whole beats).
    """
    addr -= addr % bytes_per_beat
    bursts = []
    while beats > 0:
        to_boundary = (BOUNDARY_BYTES - addr % BOUNDARY_BYTES) // bytes_per_beat
        n = min(beats, max_burst, to_boundary)
        bursts.append((addr, n))
        addr += n * bytes_per_beat
        beats -= n
    return bursts


def _check_dma_args(addr_width, data_width, len_width, max_burst):
    if not isinstance(len_width, int) or not 1 <= len_width <= 32:
        raise ValueError(f"Length width must be an integer from 1 to 32, not {len_width!r}")
    if not isinstance(max_burst, int) or not 1 <= max_burst <= MAX_BURST_BEATS:
        raise ValueError(f"Longest burst must be an integer from 1 to {MAX_BURST_BEATS} beats, "
                         f"not {max_burst!r}")
    # The signature checks addr_width and data_width.
    AxiSignature(addr_width=addr_width, data_width=data_width, id_width=1)


class BurstSplitter(wiring.Component):
    """Cuts each command into AXI4 INCR bursts: at most ``max_burst`` beats, none crossing 4 KB.

    One burst leaves per cycle while ``o_burst`` is ready. A command is taken only when the
    previous one has been fully split, so bursts leave in command order; a command of zero beats
    is taken and produces nothing.

    Parameters
    ----------
    addr_width : int
        Width of byte addresses.
    data_width : int
        Bits per beat; the low ``log2(data_width / 8)`` address bits are ignored.
    len_width : int
        Width of a command's length in beats.
    max_burst : int
        Longest burst, 1 to 256 beats.

    Members
    -------
    i_cmd : ``In(stream.Signature(dma_command_layout(addr_width, len_width)))``
        Commands: byte ``addr`` and ``beats``.
    o_burst : ``Out(stream.Signature(burst_layout(addr_width)))``
        Bursts: byte ``addr`` and ``len`` (beats - 1).
    busy : ``Out(1)``
        A command is being split or a burst waits on ``o_burst``.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, len_width: int = 24,
                 max_burst: int = MAX_BURST_BEATS):
        _check_dma_args(addr_width, data_width, len_width, max_burst)
        self._addr_width, self._data_width = addr_width, data_width
        self._len_width, self._max_burst = len_width, max_burst
        super().__init__({
            "i_cmd":   In(stream.Signature(dma_command_layout(addr_width, len_width))),
            "o_burst": Out(stream.Signature(burst_layout(addr_width))),
            "busy":    Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        beat_shift = (self._data_width // 8).bit_length() - 1
        page_beats = BOUNDARY_BYTES >> beat_shift
        page_bits = page_beats.bit_length() - 1

        active = Signal()
        # The address in beats, so that advancing by a burst is one add of its length.
        beat_addr = Signal(self._addr_width - beat_shift)
        remaining = Signal(self._len_width)

        to_boundary = Signal(range(page_beats + 1))
        m.d.comb += to_boundary.eq(page_beats - beat_addr[:page_bits])
        cap = Signal(range(max(page_beats, self._max_burst) + 1))
        m.d.comb += cap.eq(Mux(to_boundary < self._max_burst, to_boundary, self._max_burst))
        n = Signal(range(MAX_BURST_BEATS + 1))
        m.d.comb += n.eq(Mux(remaining < cap, remaining, cap))

        m.d.comb += [
            self.i_cmd.ready.eq(~active),
            self.busy.eq(active | self.o_burst.valid),
        ]
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            m.d.sync += [
                beat_addr.eq(self.i_cmd.payload.addr[beat_shift:]),
                remaining.eq(self.i_cmd.payload.beats),
                active.eq(self.i_cmd.payload.beats != 0),
            ]

        with m.If(self.o_burst.ready):
            m.d.sync += self.o_burst.valid.eq(0)
        with m.If(active & (~self.o_burst.valid | self.o_burst.ready)):
            m.d.sync += [
                self.o_burst.valid.eq(1),
                self.o_burst.payload.addr.eq(beat_addr << beat_shift),
                self.o_burst.payload.len.eq(n - 1),
                beat_addr.eq(beat_addr + n),
                remaining.eq(remaining - n),
                active.eq(remaining != n),
            ]
        return m


def _dma_members(kind, addr_width, data_width, id_width, len_width, data_flow, wstrb=False):
    port = AxiReadSignature if kind == "read" else AxiWriteSignature
    data_name = "o_data" if data_flow is Out else "i_data"
    beat = strobed_beat_layout(data_width) if wstrb else unsigned(data_width)
    return {
        "i_cmd": In(stream.Signature(dma_command_layout(addr_width, len_width))),
        data_name: data_flow(stream.Signature(beat)),
        "m_axi": Out(port(addr_width=addr_width, data_width=data_width, id_width=id_width,
                          wstrb=wstrb)),
        "busy": Out(1),
        **{name: Out(32) for name in DMA_COUNTERS},
    }


class _AxiDma(wiring.Component):
    """What the read and the write engine share: argument checks, ports, burst limits."""

    _kind: str
    _data_flow: object

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 4,
                 len_width: int = 24, max_outstanding: int = 4,
                 max_burst: int = MAX_BURST_BEATS, axi_id: int = 0, wstrb: bool = False):
        _check_dma_args(addr_width, data_width, len_width, max_burst)
        if wstrb and self._kind != "write":
            raise ValueError(f"Byte strobes are a write engine's, not a {self._kind} engine's")
        if not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 64:
            raise ValueError(f"Outstanding bursts must be an integer from 1 to 64, "
                             f"not {max_outstanding!r}")
        if not isinstance(axi_id, int) or not 0 <= axi_id < 1 << id_width:
            raise ValueError(f"AXI ID must fit {id_width} bits, not {axi_id!r}")
        self._addr_width, self._data_width, self._len_width = addr_width, data_width, len_width
        self._max_outstanding, self._max_burst, self._axi_id = max_outstanding, max_burst, axi_id
        self._wstrb = bool(wstrb)
        super().__init__(_dma_members(self._kind, addr_width, data_width, id_width, len_width,
                                      self._data_flow, self._wstrb))

    @property
    def max_outstanding(self) -> int:
        return self._max_outstanding

    @property
    def max_burst(self) -> int:
        return self._max_burst


class AxiReadDma(_AxiDma):
    """Reads buffers from AXI4 memory onto a stream, with several bursts in flight.

    Each command's bursts are requested on AR as early as the limit of ``max_outstanding``
    unfinished bursts allows, all with ID ``axi_id``, so the memory returns them in order. Read
    data passes from R to ``o_data`` without a register: ``rready`` is ``o_data.ready``, so a
    stalled consumer stalls the memory and no beat is buffered in the engine.

    To hide a read latency of ``L`` cycles the requests in flight must cover ``L`` beats:
    with bursts of ``b`` beats, ``max_outstanding >= 1 + L / b`` sustains one beat per cycle.

    Parameters
    ----------
    addr_width : int
        Width of byte addresses.
    data_width : int
        Bits per beat (AXI data width), e.g. 32, 64 or 128.
    id_width : int
        Width of AXI IDs.
    len_width : int
        Width of a command's length in beats.
    max_outstanding : int
        Most bursts requested and not yet fully received, 1 to 64.
    max_burst : int
        Longest burst, 1 to 256 beats.
    axi_id : int
        The ARID of every request.

    Members
    -------
    i_cmd : ``In(stream.Signature(dma_command_layout(addr_width, len_width)))``
        Commands: byte ``addr`` (beat-aligned; lower bits ignored) and ``beats`` to read.
    o_data : ``Out(stream.Signature(data_width))``
        The beats read, in command order.
    m_axi : ``Out(AxiReadSignature(...))``
        AR and R channels of the memory port.
    busy : ``Out(1)``
        A command is being split or a burst has not been fully received.
    beats : ``Out(32)``
        Beats read (R transfers).
    bytes : ``Out(32)``
        Bytes read, ``beats * data_width / 8``.
    bursts : ``Out(32)``
        Bursts requested (AR transfers).
    busy_cycles : ``Out(32)``
        Cycles with ``busy`` high.
    mem_wait_cycles : ``Out(32)``
        Busy cycles without read data offered by the memory (``rvalid`` low): latency, memory
        stalls, and the engine's own cycles before its first request.
    stall_cycles : ``Out(32)``
        Cycles in which a beat was offered on ``o_data`` and not taken.
    errors : ``Out(32)``
        Beats received with a response other than OKAY (their data is passed on as is).
    """

    _kind, _data_flow = "read", Out

    def elaborate(self, platform):
        m = Module()
        ar, r = self.m_axi.ar, self.m_axi.r
        beat_shift = (self._data_width // 8).bit_length() - 1

        m.submodules.splitter = splitter = BurstSplitter(
            addr_width=self._addr_width, data_width=self._data_width,
            len_width=self._len_width, max_burst=self._max_burst)
        wiring.connect(m, wiring.flipped(self.i_cmd), splitter.i_cmd)

        outstanding = Signal(range(self._max_outstanding + 1))
        can_issue = Signal()
        m.d.comb += can_issue.eq(outstanding < self._max_outstanding)
        # `outstanding` only falls while a request waits, so ARVALID never drops before ARREADY.
        m.d.comb += [
            ar.valid.eq(splitter.o_burst.valid & can_issue),
            ar.addr.eq(splitter.o_burst.payload.addr),
            ar.len.eq(splitter.o_burst.payload.len),
            ar.size.eq(beat_shift),
            ar.burst.eq(AxiBurst.INCR),
            ar.id.eq(self._axi_id),
            splitter.o_burst.ready.eq(ar.ready & can_issue),
        ]

        m.d.comb += [
            self.o_data.valid.eq(r.valid),
            self.o_data.payload.eq(r.data),
            r.ready.eq(self.o_data.ready),
        ]

        ar_fire = ar.valid & ar.ready
        r_fire = r.valid & r.ready
        burst_done = r_fire & r.last
        with m.If(ar_fire & ~burst_done):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(burst_done & ~ar_fire):
            m.d.sync += outstanding.eq(outstanding - 1)

        m.d.comb += [
            self.busy.eq(splitter.busy | (outstanding != 0)),
            self.bytes.eq(self.beats << beat_shift),
        ]
        with m.If(r_fire):
            m.d.sync += self.beats.eq(self.beats + 1)
            with m.If(r.resp != AxiResp.OKAY):
                m.d.sync += self.errors.eq(self.errors + 1)
        with m.If(ar_fire):
            m.d.sync += self.bursts.eq(self.bursts + 1)
        with m.If(self.busy):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
            with m.If(~r.valid):
                m.d.sync += self.mem_wait_cycles.eq(self.mem_wait_cycles + 1)
        with m.If(r.valid & ~r.ready):
            m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        return m


class AxiWriteDma(_AxiDma):
    """Writes buffers from a stream to AXI4 memory as INCR bursts, waiting for every response.

    A burst taken from the splitter is registered on AW and, in the same cycle, its length is
    queued for the W side, so write data can flow before the memory accepts the address (AXI
    lets a memory wait for WVALID before AWREADY). WLAST marks each burst's last beat. At most
    ``max_outstanding`` bursts are planned and not yet answered on B; ``busy`` stays high until
    the last response, so a low ``busy`` means every byte is in memory.

    Parameters
    ----------
    addr_width, data_width, id_width, len_width, max_burst
        As for :class:`AxiReadDma`.
    max_outstanding : int
        Most bursts planned and not yet answered on B, 1 to 64.
    axi_id : int
        The AWID of every request.
    wstrb : bool
        Give W byte strobes: ``i_data`` then carries :func:`strobed_beat_layout` beats (data
        and WSTRB, for partial-beat writes) instead of bare words written whole.

    Members
    -------
    i_cmd : ``In(stream.Signature(dma_command_layout(addr_width, len_width)))``
        Commands: byte ``addr`` (beat-aligned; lower bits ignored) and ``beats`` to write.
    i_data : ``In(stream.Signature(data_width))``
        The beats to write, in command order (``strobed_beat_layout(data_width)`` with
        ``wstrb``).
    m_axi : ``Out(AxiWriteSignature(...))``
        AW, W and B channels of the memory port.
    busy : ``Out(1)``
        A command is being split, or a burst has not been answered on B.
    beats : ``Out(32)``
        Beats written (W transfers).
    bytes : ``Out(32)``
        Bytes written, ``beats * data_width / 8``.
    bursts : ``Out(32)``
        Bursts requested (AW transfers).
    busy_cycles : ``Out(32)``
        Cycles with ``busy`` high.
    mem_wait_cycles : ``Out(32)``
        Busy cycles in which no W beat moved and the engine was not waiting for ``i_data``:
        AW or W not ready, waiting for write responses, and the engine's own start-up cycles.
    stall_cycles : ``Out(32)``
        Cycles in which a burst was open on W and ``i_data`` offered no beat.
    errors : ``Out(32)``
        Write responses other than OKAY.
    """

    _kind, _data_flow = "write", In

    def elaborate(self, platform):
        m = Module()
        aw, w, b = self.m_axi.aw, self.m_axi.w, self.m_axi.b
        beat_shift = (self._data_width // 8).bit_length() - 1

        m.submodules.splitter = splitter = BurstSplitter(
            addr_width=self._addr_width, data_width=self._data_width,
            len_width=self._len_width, max_burst=self._max_burst)
        wiring.connect(m, wiring.flipped(self.i_cmd), splitter.i_cmd)
        # Lengths of the bursts planned and not yet fully sent on W. It never overflows: it
        # holds at most `outstanding` entries and a burst is planned only below the limit.
        m.submodules.lengths = lengths = SyncFIFO(width=8, depth=self._max_outstanding)

        outstanding = Signal(range(self._max_outstanding + 1))
        plan = Signal()
        m.d.comb += [
            plan.eq(splitter.o_burst.valid & (~aw.valid | aw.ready)
                    & (outstanding < self._max_outstanding)),
            splitter.o_burst.ready.eq(plan),
            lengths.w_en.eq(plan),
            lengths.w_data.eq(splitter.o_burst.payload.len),
            aw.size.eq(beat_shift),
            aw.burst.eq(AxiBurst.INCR),
            aw.id.eq(self._axi_id),
        ]
        with m.If(aw.ready):
            m.d.sync += aw.valid.eq(0)
        with m.If(plan):
            m.d.sync += [
                aw.valid.eq(1),
                aw.addr.eq(splitter.o_burst.payload.addr),
                aw.len.eq(splitter.o_burst.payload.len),
            ]

        sent = Signal(8)  # beats of the current burst already sent on W
        m.d.comb += [
            w.valid.eq(lengths.r_rdy & self.i_data.valid),
            *([w.data.eq(self.i_data.payload.data), w.strb.eq(self.i_data.payload.strb)]
              if self._wstrb else [w.data.eq(self.i_data.payload)]),
            w.last.eq(sent == lengths.r_data),
            self.i_data.ready.eq(lengths.r_rdy & w.ready),
            b.ready.eq(1),
        ]
        w_fire = w.valid & w.ready
        with m.If(w_fire):
            m.d.sync += sent.eq(Mux(w.last, 0, sent + 1))
        m.d.comb += lengths.r_en.eq(w_fire & w.last)

        b_fire = b.valid & b.ready
        with m.If(plan & ~b_fire):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(b_fire & ~plan):
            m.d.sync += outstanding.eq(outstanding - 1)

        stalled = Signal()
        m.d.comb += [
            stalled.eq(lengths.r_rdy & ~self.i_data.valid),
            self.busy.eq(splitter.busy | aw.valid | (outstanding != 0)),
            self.bytes.eq(self.beats << beat_shift),
        ]
        with m.If(w_fire):
            m.d.sync += self.beats.eq(self.beats + 1)
        with m.If(aw.valid & aw.ready):
            m.d.sync += self.bursts.eq(self.bursts + 1)
        with m.If(b_fire & (b.resp != AxiResp.OKAY)):
            m.d.sync += self.errors.eq(self.errors + 1)
        with m.If(self.busy):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
            with m.If(stalled):
                m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
            with m.Elif(~w_fire):
                m.d.sync += self.mem_wait_cycles.eq(self.mem_wait_cycles + 1)
        return m


class DmaTestTop(wiring.Component):
    """One :class:`AxiReadDma` and one :class:`AxiWriteDma` sharing one AXI4 port.

    AXI's read and write channels are independent, so the reader owns AR/R and the writer
    AW/W/B. Convert with :func:`hoarfrost.hw.axi.convert` to get ``m_axi_*`` port names.

    Parameters
    ----------
    addr_width, data_width, id_width, len_width, max_outstanding, max_burst
        As for :class:`AxiReadDma`; both engines get the same.

    Members
    -------
    m_axi : ``Out(AxiSignature(...))``
        The memory port.
    rd_cmd, rd_data : streams
        The reader's ``i_cmd`` and ``o_data``.
    wr_cmd, wr_data : streams
        The writer's ``i_cmd`` and ``i_data``.
    rd_busy, wr_busy : ``Out(1)``
        The engines' ``busy``.
    rd_<counter>, wr_<counter> : ``Out(32)``
        The engines' counters, :data:`DMA_COUNTERS`.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 4,
                 len_width: int = 24, max_outstanding: int = 4,
                 max_burst: int = MAX_BURST_BEATS):
        self._params = dict(addr_width=addr_width, data_width=data_width, id_width=id_width,
                            len_width=len_width, max_outstanding=max_outstanding,
                            max_burst=max_burst)
        _check_dma_args(addr_width, data_width, len_width, max_burst)
        reader = _dma_members("read", addr_width, data_width, id_width, len_width, Out)
        writer = _dma_members("write", addr_width, data_width, id_width, len_width, In)
        super().__init__({
            "m_axi": Out(AxiSignature(addr_width=addr_width, data_width=data_width,
                                      id_width=id_width)),
            "rd_cmd": reader["i_cmd"], "rd_data": reader["o_data"],
            "wr_cmd": writer["i_cmd"], "wr_data": writer["i_data"],
            "rd_busy": Out(1), "wr_busy": Out(1),
            **{f"{side}_{name}": Out(32) for side in ("rd", "wr") for name in DMA_COUNTERS},
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = AxiReadDma(**self._params)
        m.submodules.writer = writer = AxiWriteDma(**self._params)
        wiring.connect(m, wiring.flipped(self.rd_cmd), reader.i_cmd)
        wiring.connect(m, reader.o_data, wiring.flipped(self.rd_data))
        wiring.connect(m, wiring.flipped(self.wr_cmd), writer.i_cmd)
        wiring.connect(m, wiring.flipped(self.wr_data), writer.i_data)
        for channel in ("ar", "r"):
            wiring.connect(m, getattr(reader.m_axi, channel),
                           wiring.flipped(getattr(self.m_axi, channel)))
        for channel in ("aw", "w", "b"):
            wiring.connect(m, getattr(writer.m_axi, channel),
                           wiring.flipped(getattr(self.m_axi, channel)))
        m.d.comb += [self.rd_busy.eq(reader.busy), self.wr_busy.eq(writer.busy)]
        for side, engine in (("rd", reader), ("wr", writer)):
            for name in DMA_COUNTERS:
                m.d.comb += getattr(self, f"{side}_{name}").eq(getattr(engine, name))
        return m
