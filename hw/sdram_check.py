"""A memory test for a board's SDRAM: bring-up of :class:`~hoarfrost.hw.sdram.AxiSdram` on
the ULX3S without the accelerator.

:class:`MemoryCheck` is a small AXI4 manager that, pass after pass, writes ``beats`` beats
from address 0 in 256-beat bursts with a pattern of the beat's index and the pass number, reads
them back in 256-beat bursts and counts the beats that differ (and non-OKAY responses). Each
pass's pattern differs from the last one's, so a write that never landed is seen.

Members
-------
m_axi : ``Out(AxiSignature(32, data_width, 4, wstrb=True))``
    To the memory's ``s_axi``.
passes, errors : ``Out(32)``
    Passes completed, and beats read wrong (or with an error response) in all of them.

:class:`SdramCheckTop` puts it on the ULX3S's SDRAM (the whole 32 MB, about 1.4 s a pass at
25 MHz): ``led 0`` to ``led 3`` count passes, ``led 6`` lights when the controller's power-up
sequence is done, ``led 7`` at the first error.
"""

from __future__ import annotations

from amaranth import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from hoarfrost.hw.axi import AxiBurst, AxiResp, AxiSignature
from hoarfrost.hw.sdram import ULX3S_32MB, AxiSdram, SdramTiming, connect_platform_sdram

__all__ = ["MemoryCheck", "SdramCheckTop", "check_pattern"]

BURST = 256


def check_pattern(beat, pass_number, data_width: int = 32):
    """The value of ``beat`` in pass ``pass_number``: an xorshift of both, so neighbouring
    beats and passes differ in many bits. Works on ints and on Amaranth values alike."""
    mask = (1 << data_width) - 1
    x = (beat * 2 + 1) ^ (pass_number << 20)
    if isinstance(x, int):
        x &= mask
        x ^= (x << 13) & mask
        x ^= x >> 7
        return (x ^ (x << 17)) & mask
    x = x[:data_width]
    x = x ^ (x << 13)[:data_width]
    x = x ^ (x >> 7)
    return (x ^ (x << 17))[:data_width]


class MemoryCheck(wiring.Component):
    """See the module docstring. ``beats`` is a multiple of 256."""

    def __init__(self, beats: int, *, data_width: int = 32):
        if beats < BURST or beats % BURST:
            raise ValueError(f"beats must be a positive multiple of {BURST}, not {beats!r}")
        self.beats, self.data_width = beats, data_width
        super().__init__({
            "m_axi": Out(AxiSignature(addr_width=32, data_width=data_width, id_width=4,
                                      wstrb=True)),
            "passes": Out(32), "errors": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.m_axi
        size = (self.data_width // 8 - 1).bit_length()
        burst_start = Signal(range(self.beats + 1))     # first beat of the current burst
        beat = Signal(range(self.beats + 1))            # the beat on W or expected on R
        expected = check_pattern(beat, self.passes, self.data_width)
        for ch in (axi.aw, axi.ar):
            m.d.comb += [ch.addr.eq(burst_start << size), ch.len.eq(BURST - 1),
                         ch.size.eq(size), ch.burst.eq(AxiBurst.INCR), ch.id.eq(0)]
        m.d.comb += [axi.w.data.eq(expected), axi.w.strb.eq(Const(-1, self.data_width // 8)),
                     axi.w.last.eq(beat == burst_start + BURST - 1)]
        with m.FSM(name="check"):
            with m.State("AW"):
                m.d.comb += axi.aw.valid.eq(1)
                with m.If(axi.aw.ready):
                    m.next = "W"
            with m.State("W"):
                m.d.comb += axi.w.valid.eq(1)
                with m.If(axi.w.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(axi.w.last):
                        m.next = "B"
            with m.State("B"):
                m.d.comb += axi.b.ready.eq(1)
                with m.If(axi.b.valid):
                    with m.If(axi.b.resp != AxiResp.OKAY):
                        m.d.sync += self.errors.eq(self.errors + 1)
                    with m.If(beat == self.beats):
                        m.d.sync += [beat.eq(0), burst_start.eq(0)]
                        m.next = "AR"
                    with m.Else():
                        m.d.sync += burst_start.eq(beat)
                        m.next = "AW"
            with m.State("AR"):
                m.d.comb += axi.ar.valid.eq(1)
                with m.If(axi.ar.ready):
                    m.next = "R"
            with m.State("R"):
                m.d.comb += axi.r.ready.eq(1)
                with m.If(axi.r.valid):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If((axi.r.data != expected) | (axi.r.resp != AxiResp.OKAY)):
                        m.d.sync += self.errors.eq(self.errors + 1)
                    with m.If(axi.r.last):
                        with m.If(beat + 1 == self.beats):
                            m.d.sync += [beat.eq(0), burst_start.eq(0),
                                         self.passes.eq(self.passes + 1)]
                            m.next = "AW"
                        with m.Else():
                            m.d.sync += burst_start.eq(beat + 1)
                            m.next = "AR"
        return m


class SdramCheckTop(wiring.Component):
    """:class:`MemoryCheck` on :class:`~hoarfrost.hw.sdram.AxiSdram`, against a platform with
    an ``sdram`` resource and LEDs (see the module docstring).

    Parameters
    ----------
    clk_freq : int
        The platform's clock in Hz.
    beats : int, optional
        Beats each pass covers; the whole memory by default.
    """

    def __init__(self, clk_freq: int, beats: int | None = None):
        self.clk_freq = clk_freq
        self.beats = beats or ULX3S_32MB.size // 4
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.check = check = MemoryCheck(self.beats)
        m.submodules.memory = memory = AxiSdram(ULX3S_32MB, SdramTiming(clk_freq=self.clk_freq))
        wiring.connect(m, check.m_axi, memory.s_axi)
        connect_platform_sdram(m, platform, memory.sdram)
        leds = [platform.request("led", i).o for i in range(8)]
        m.d.comb += [leds[i].eq(check.passes[i]) for i in range(4)]
        m.d.comb += [leds[6].eq(memory.ready), leds[7].eq(check.errors != 0)]
        return m
