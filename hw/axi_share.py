"""Two AXI4 managers sharing one subordinate, and the host link's byte bus as an AXI manager.

On a board the accelerator's memory (:class:`~hoarfrost.hw.axi_sram.AxiSram`) is written by the
host (inputs, firmware and weights, through the UART link) and used by the accelerator while it
runs. The two rarely want it at once, so :class:`AxiShare` hands the whole port to one manager
at a time and changes owner only when nothing is in flight, which keeps every AXI ordering rule
without IDs being rewritten or responses routed.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi import AxiBurst, AxiResp, AxiSignature
from hoarfrost.hw.host_link import HostBusSignature

__all__ = ["AxiShare", "HostBusAxi"]

_CHANNELS_TO_SUB = {"aw": ("valid", "id", "addr", "len", "size", "burst"),
                    "w": ("valid", "data", "strb", "last"),
                    "ar": ("valid", "id", "addr", "len", "size", "burst")}
_CHANNELS_TO_MGR = {"b": ("valid", "id", "resp"), "r": ("valid", "id", "data", "resp", "last")}


class AxiShare(wiring.Component):
    """One AXI4 subordinate port shared by managers ``a`` and ``b``, one owner at a time.

    The owner's channels pass straight through; the other's requests wait (``ready`` low).
    Ownership moves to the other manager when it has a request (AR or AW valid) and the owner
    has no burst in flight (every AR answered by its last R beat, every AW by its B) and no
    request of its own waiting; the move costs one cycle.

    Parameters
    ----------
    addr_width, data_width, id_width : int
        Of all three ports (the managers' ports have byte strobes).

    Members
    -------
    a, b : ``In(AxiSignature(..., wstrb=True))``
        The managers' ports (their ``m_axi`` connects here). ``a`` owns the port after reset.
    m_axi : ``Out(AxiSignature(..., wstrb=True))``
        To the subordinate.
    owner : ``Out(1)``
        0 while ``a`` owns the port, 1 while ``b`` does.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 32, id_width: int = 4):
        sig = AxiSignature(addr_width=addr_width, data_width=data_width, id_width=id_width,
                           wstrb=True)
        super().__init__({"a": In(sig), "b": In(sig), "m_axi": Out(sig), "owner": Out(1)})

    def elaborate(self, platform):
        m = Module()
        sub = self.m_axi
        reads = Signal(16)             # ARs accepted and not yet answered by a last R
        writes = Signal(16)            # AWs accepted and not yet answered by a B
        ar_go = sub.ar.valid & sub.ar.ready
        r_done = sub.r.valid & sub.r.ready & sub.r.last
        aw_go = sub.aw.valid & sub.aw.ready
        b_done = sub.b.valid & sub.b.ready
        m.d.sync += [reads.eq(reads + ar_go - r_done), writes.eq(writes + aw_go - b_done)]

        for index, mgr in enumerate((self.a, self.b)):
            mine = self.owner == index
            with m.If(mine):
                for channel, names in _CHANNELS_TO_SUB.items():
                    for name in names:
                        m.d.comb += getattr(getattr(sub, channel), name).eq(
                            getattr(getattr(mgr, channel), name))
                    m.d.comb += getattr(mgr, channel).ready.eq(getattr(sub, channel).ready)
                for channel, names in _CHANNELS_TO_MGR.items():
                    for name in names:
                        m.d.comb += getattr(getattr(mgr, channel), name).eq(
                            getattr(getattr(sub, channel), name))
                    m.d.comb += getattr(sub, channel).ready.eq(getattr(mgr, channel).ready)

        a_wants = self.a.ar.valid | self.a.aw.valid
        b_wants = self.b.ar.valid | self.b.aw.valid
        idle = (reads == 0) & (writes == 0) & ~ar_go & ~aw_go
        with m.If(idle):
            with m.If((self.owner == 0) & ~a_wants & b_wants):
                m.d.sync += self.owner.eq(1)
            with m.If((self.owner == 1) & ~b_wants & a_wants):
                m.d.sync += self.owner.eq(0)
        return m


class HostBusAxi(wiring.Component):
    """The host link's byte bus (:class:`~hoarfrost.hw.host_link.HostBusSignature`, 8-bit data,
    byte addresses) as an AXI4 manager: each access is one single-beat burst, a write with the
    strobe of its byte lane only.

    UART bytes arrive thousands of cycles apart, so one access at a time costs nothing.

    Members
    -------
    bus : ``In(HostBusSignature(addr_width=32, data_width=8))``
        From :class:`~hoarfrost.hw.host_link.HostLink`'s ``mem``.
    m_axi : ``Out(AxiSignature(..., wstrb=True))``
    errors : ``Out(16)``
        Accesses the memory answered with an error response (the data read is then 0).
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 32, id_width: int = 4):
        self._data_width = data_width
        super().__init__({
            "bus": In(HostBusSignature(addr_width=addr_width, data_width=8)),
            "m_axi": Out(AxiSignature(addr_width=addr_width, data_width=data_width,
                                      id_width=id_width, wstrb=True)),
            "errors": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        axi, bus = self.m_axi, self.bus
        bpb = self._data_width // 8
        lane_bits = (bpb - 1).bit_length()
        addr = Signal.like(bus.addr)
        data = Signal(8)
        lane = addr[:lane_bits] if lane_bits else Const(0, 1)
        beat_addr = addr & ~(bpb - 1)
        for channel in (axi.aw, axi.ar):
            m.d.comb += [channel.addr.eq(beat_addr), channel.len.eq(0),
                         channel.size.eq(lane_bits), channel.burst.eq(AxiBurst.INCR),
                         channel.id.eq(0)]
        m.d.comb += [axi.w.data.eq(data.replicate(bpb)), axi.w.strb.eq(1 << lane),
                     axi.w.last.eq(1)]
        with m.FSM(name="host_axi"):
            with m.State("IDLE"):
                m.d.comb += bus.ready.eq(1)
                with m.If(bus.valid):
                    m.d.sync += [addr.eq(bus.addr), data.eq(bus.wdata)]
                    with m.If(bus.we):
                        m.next = "AW"
                    with m.Else():
                        m.next = "AR"
            with m.State("AW"):
                m.d.comb += axi.aw.valid.eq(1)
                with m.If(axi.aw.ready):
                    m.next = "W"
            with m.State("W"):
                m.d.comb += axi.w.valid.eq(1)
                with m.If(axi.w.ready):
                    m.next = "B"
            with m.State("B"):
                m.d.comb += axi.b.ready.eq(1)
                with m.If(axi.b.valid):
                    with m.If(axi.b.resp != AxiResp.OKAY):
                        m.d.sync += self.errors.eq(self.errors + 1)
                    m.next = "IDLE"
            with m.State("AR"):
                m.d.comb += axi.ar.valid.eq(1)
                with m.If(axi.ar.ready):
                    m.next = "R"
            with m.State("R"):
                m.d.comb += axi.r.ready.eq(1)
                with m.If(axi.r.valid):
                    ok = axi.r.resp == AxiResp.OKAY
                    m.d.comb += [bus.rvalid.eq(1),
                                 bus.rdata.eq(Mux(ok, axi.r.data.word_select(lane, 8), 0))]
                    with m.If(~ok):
                        m.d.sync += self.errors.eq(self.errors + 1)
                    m.next = "IDLE"
        return m
