"""On-chip memory served straight on the back end's byte-stream DRAM port and the host's byte bus.

On the iCEBreaker the accelerator's "DRAM" is the UP5K's SPRAM, on the chip. The AXI path of
the ULX3S top (:class:`~hoarfrost.hw.dram_bridge.AxiDramBridge`,
:class:`~hoarfrost.hw.axi_share.AxiShare`, :class:`~hoarfrost.hw.axi_share.HostBusAxi`,
:class:`~hoarfrost.hw.axi_sram.AxiSram`) costs some 2,200 LUT4 there (yosys ``synth_ice40
-noabc -noflatten``; the chip has 5,280 logic cells) to carry bursts an on-chip RAM does not
need; this block takes about 210. :class:`StreamSram` is both ends at once: the server of the
back end's port (:class:`~hoarfrost.hw.dram_bridge.DramPortSignature`) and the target of the
host link's memory bus (:class:`~hoarfrost.hw.host_link.HostBusSignature`, 8-bit data), on one
storage with one port.

One transfer at a time. A request (read or write, a read first when both are offered, as the
bridge orders them) is taken only when the previous one has moved all its bytes; so the order
of requests is the order of the memory accesses, and a read after a write sees the written
bytes. A requester must therefore move all the bytes of a request before it waits for its next
one to be taken (the back end does: each of its transfers ends before it asks for the next).
The host bus is served only between transfers, when no request is offered: the host touches
memory while the accelerator is idle, and can never break into a transfer.

Reads move one byte per cycle for as long as ``rd_data`` is ready: the storage's registered
output holds the word of the byte offered, and the next word is read in the cycle the word's
last byte is taken (or while none is held), so a new word is there for the next cycle;
backpressure just holds the word. The first byte is offered two cycles after the request is
taken. Writes take a byte in every cycle ``wr_data`` offers one and write it at once with a
byte mask (a partial word leaves its other bytes untouched).

Addresses wrap: only the low ``log2(size)`` bits are used, so an address past the end reaches
the memory's start again (nothing is refused: the AXI memory answers such an access with an
error, this one has no error to give).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi_sram import SPRAM_BYTES, _Bank, _RamBank, _SpramBank
from hoarfrost.hw.dram_bridge import DRAM_PORT_STREAMS, DramPortSignature
from hoarfrost.hw.host_link import HostBusSignature

__all__ = ["StreamSram"]

#: Words of one SB_SPRAM256KA.
_SPRAM_DEPTH = SPRAM_BYTES // 2


class _SpramStack(_Bank):
    """``depth / 16384`` groups of :class:`~hoarfrost.hw.axi_sram._SpramBank` one above the
    other (the top address bits pick the group); ports as :class:`~hoarfrost.hw.axi_sram.
    _Bank`. The group read last is remembered, so ``rdata`` holds while ``en`` is low."""

    def elaborate(self, platform):
        m = Module()
        groups = self.depth // _SPRAM_DEPTH
        low = _SPRAM_DEPTH.bit_length() - 1
        chosen = Signal(range(groups))          # the group whose word rdata shows
        with m.If(self.en):
            m.d.sync += chosen.eq(self.addr[low:])
        outputs = []
        for g in range(groups):
            m.submodules[f"group{g}"] = group = _SpramBank(self.data_width, _SPRAM_DEPTH)
            here = self.addr[low:] == g
            m.d.comb += [group.addr.eq(self.addr[:low]), group.en.eq(self.en & here),
                         group.we.eq(Mux(here, self.we, 0)), group.wdata.eq(self.wdata)]
            outputs.append(group.rdata)
        m.d.comb += self.rdata.eq(outputs[0])
        for g in range(1, groups):
            with m.If(chosen == g):
                m.d.comb += self.rdata.eq(outputs[g])
        return m


class StreamSram(wiring.Component):
    """``size`` bytes of on-chip memory on the DRAM port and the host bus (see the module
    docstring).

    Parameters
    ----------
    size : int
        Bytes, a power of two of at least one word.
    data_width : int
        Bits of the storage's word, 16 or 32: the width of one access (a read supplies
        ``data_width / 8`` bytes of the stream).
    spram : bool
        Build the storage from iCE40 SB_SPRAM256KA primitives (16 bits x 16384 words each:
        ``data_width / 16`` side by side, as many groups of them stacked as ``size`` needs);
        else from :class:`~amaranth.lib.memory.Memory` (block RAM, or an array in simulation:
        Verilator cannot run the SPRAM primitive).
    addr_width : int
        Address bits of the host bus (the link's ``addr_width``; only the low ``log2(size)``
        are used).

    Members
    -------
    rd_cmd : ``In(stream.Signature(dram_request_layout()))``
        Read requests ``{addr, length}``.
    rd_data : ``Out(stream.Signature(8))``
        The bytes read, exactly ``length`` per request, in address order.
    wr_cmd : ``In(stream.Signature(dram_request_layout()))``
        Write requests.
    wr_data : ``In(stream.Signature(8))``
        The bytes to write, ``length`` per request.
    bus : ``In(HostBusSignature(addr_width=addr_width, data_width=8))``
        The host link's ``mem``: one byte per access, ``rvalid`` the cycle after a read is
        accepted.
    busy : ``Out(1)``
        A transfer has bytes still to move.
    """

    def __init__(self, size: int, *, data_width: int = 16, spram: bool = False,
                 addr_width: int = 32):
        if data_width not in (16, 32):
            raise ValueError(f"Data width must be 16 or 32, not {data_width!r}")
        self.bytes_per_word = data_width // 8
        if not isinstance(size, int) or size < self.bytes_per_word or size & (size - 1):
            raise ValueError(f"Size must be a power of two of at least one word "
                             f"({self.bytes_per_word} bytes), not {size!r}")
        group_bytes = SPRAM_BYTES * data_width // 16
        if spram and size % group_bytes:
            raise ValueError(f"SPRAM storage of {data_width}-bit words comes in multiples of "
                             f"{group_bytes} bytes, not {size!r}")
        self.size, self.data_width, self.spram = size, data_width, spram
        self.depth = size // self.bytes_per_word
        ports = DramPortSignature().flip().members
        super().__init__({
            **{name: ports[name] for name in DRAM_PORT_STREAMS},
            "bus": In(HostBusSignature(addr_width=addr_width, data_width=8)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        B = self.bytes_per_word
        lane_bits = B.bit_length() - 1
        addr_bits = self.size.bit_length() - 1
        bank_cls = _SpramStack if self.spram else _RamBank
        m.submodules.bank = bank = bank_cls(self.data_width, self.depth)
        rd_cmd, rd_data, wr_cmd, wr_data, bus = (self.rd_cmd, self.rd_data, self.wr_cmd,
                                                  self.wr_data, self.bus)

        left = Signal(32)                # bytes of the transfer still to move
        idle = Signal()
        writing = Signal()               # the transfer is a write
        word = Signal(range(self.depth))  # read: the next word to fetch; write: this byte's
        lane = Signal(lane_bits)         # the byte's lane in its word (the host's too)
        held = Signal()                  # read: bank.rdata holds the current byte's word
        m.d.comb += [idle.eq(left == 0), self.busy.eq(~idle)]

        # --- between transfers: take a request (a read first), else serve the host ---------
        take = Signal()                  # a request is taken this cycle
        host = Signal()                  # the host's access goes to the bank this cycle
        m.d.comb += [rd_cmd.ready.eq(idle), wr_cmd.ready.eq(idle & ~rd_cmd.valid),
                     take.eq(idle & (rd_cmd.valid | wr_cmd.valid)),
                     bus.ready.eq(idle & ~rd_cmd.valid & ~wr_cmd.valid),
                     host.eq(bus.valid & bus.ready)]
        addr = Mux(rd_cmd.valid, rd_cmd.payload.addr, wr_cmd.payload.addr)
        length = Mux(rd_cmd.valid, rd_cmd.payload.length, wr_cmd.payload.length)
        with m.If(take):
            m.d.sync += [writing.eq(~rd_cmd.valid), held.eq(0)]
        m.d.sync += bus.rvalid.eq(host & ~bus.we)

        # --- the bank: the transfer's word, or the host's between transfers -----------------
        moved = Signal()                 # a byte of the transfer moves this cycle
        fetch = Signal()                 # read: the next word is read this cycle
        m.d.comb += [
            bank.addr.eq(Mux(idle, bus.addr[lane_bits:addr_bits], word)),
            bank.wdata.eq(Mux(idle, bus.wdata, wr_data.payload).replicate(B)),
            bank.en.eq(Mux(idle, host & ~bus.we, fetch)),
            bank.we.eq(Mux(Mux(idle, host & bus.we, writing & wr_data.valid),
                           1 << Mux(idle, bus.addr[:lane_bits], lane), 0)),
        ]

        # --- the transfer's bytes ------------------------------------------------------------
        byte = bank.rdata.word_select(lane, 8)
        word_end = lane == B - 1
        m.d.comb += [
            rd_data.valid.eq(~idle & ~writing & held), rd_data.payload.eq(byte),
            bus.rdata.eq(byte),
            wr_data.ready.eq(~idle & writing),
            moved.eq((rd_data.valid & rd_data.ready) | (wr_data.valid & wr_data.ready)),
            # A word is read while none is held or as the held one's last byte leaves (one
            # more than needed at a request's end: reads have no side effects).
            fetch.eq(~idle & ~writing & (~held | (moved & word_end))),
        ]
        with m.If(fetch):
            m.d.sync += held.eq(1)
        # The counters load from the request when idle and step during the transfer. As left
        # is 0 when idle, left + (length or -1) is both, one LUT per bit in front of the adder.
        # The lane also keeps the host's, for rdata in the cycle after its read.
        with m.If(take | moved):
            m.d.sync += left.eq(left + Mux(idle, length, -1))
        with m.If(take | fetch | (moved & writing & word_end)):
            m.d.sync += word.eq(Mux(idle, addr[lane_bits:addr_bits], word + 1))
        with m.If(take | host | moved):
            m.d.sync += lane.eq(Mux(idle, Mux(take, addr, bus.addr)[:lane_bits], lane + 1))
        return m
