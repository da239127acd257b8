"""An AXI4 subordinate backed by on-chip memory: the accelerator's "DRAM" on a board.

On the ULX3S the memory is block RAM (or its SDRAM, :class:`~hoarfrost.hw.sdram.AxiSdram`); the
block can also build it from the UP5K's single-port SPRAM (``SB_SPRAM256KA``, 16 bits x 16K
words each, four on the chip), though the iCEBreaker's top has no room for the AXI path and
serves its SPRAM with :class:`~hoarfrost.hw.stream_sram.StreamSram` instead. The accelerator's
AXI manager does not know the difference: this block serves the same AXI4 port as
cocotbext-axi's ``AxiRam`` in simulation.

One burst is served at a time, reads and writes alternating when both wait, because the
storage has one port (SPRAM has only one; block RAM would allow two, but the DMAs rarely read
and write at once and one port keeps the block the same on both boards). A read burst streams
one beat per cycle: the memory's output register is the R channel's payload register, and it
advances only when the beat is taken (or the register is empty), so backpressure costs no
bubble. Write bursts take one beat per cycle, with byte strobes. A burst that runs past the end
of the memory is answered with ``DECERR`` and writes nothing (reads return zeros).

Members
-------
s_axi : ``In(AxiSignature(addr_width, data_width, id_width, wstrb=True))``
    The subordinate port (the manager's ``m_axi`` connects to it).
read_beats, write_beats, busy_cycles : ``Out(32)``
    Beats served and cycles with a burst in progress (SRAM energy is priced per beat).
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi import AxiBurst, AxiResp, AxiSignature

__all__ = ["AxiSram", "SPRAM_BYTES"]

#: Bytes in one iCE40 SB_SPRAM256KA (16 bits x 16384 words).
SPRAM_BYTES = 32 * 1024


class _Bank(wiring.Component):
    """The storage's ports: ``addr``, ``en`` (read: ``rdata`` is the word at ``addr`` from the
    next cycle on, held while ``en`` is low), ``we`` (a strobe per byte) and ``wdata``."""

    def __init__(self, data_width: int, depth: int):
        self.data_width, self.depth = data_width, depth
        super().__init__({
            "addr": In(range(depth)), "en": In(1), "rdata": Out(data_width),
            "we": In(data_width // 8), "wdata": In(data_width),
        })


class _SpramBank(_Bank):
    """``data_width / 16`` SB_SPRAM256KA side by side: one ``data_width`` word per address,
    byte-granular writes (MASKWREN is per nibble). Read data is registered inside the primitive
    and held while ``en`` is low, as :class:`amaranth.lib.memory.ReadPort` with ``en`` does."""

    def elaborate(self, platform):
        m = Module()
        for i in range(self.data_width // 16):
            strobe = self.we[2 * i:2 * i + 2]
            m.submodules[f"spram{i}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=self.addr, i_DATAIN=self.wdata[16 * i:16 * i + 16],
                i_MASKWREN=Cat(strobe[0], strobe[0], strobe[1], strobe[1]),
                i_WREN=strobe.any(), i_CHIPSELECT=self.en | self.we.any(), i_CLOCK=ClockSignal(),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                o_DATAOUT=self.rdata[16 * i:16 * i + 16])
        return m


class _RamBank(_Bank):
    """The same on :class:`~amaranth.lib.memory.Memory` (block RAM on an FPGA, an array in
    simulation)."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(self.data_width), depth=self.depth, init=[])
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port(granularity=8)
        m.d.comb += [rd.addr.eq(self.addr), rd.en.eq(self.en), self.rdata.eq(rd.data),
                     wr.addr.eq(self.addr), wr.en.eq(self.we), wr.data.eq(self.wdata)]
        return m


class AxiSram(wiring.Component):
    """AXI4 subordinate over ``size`` bytes of on-chip memory (see the module docstring).

    Parameters
    ----------
    size : int
        Bytes of memory, a power of two, at least one beat.
    addr_width, data_width, id_width : int
        As the manager's port (:class:`~hoarfrost.hw.axi.AxiSignature`).
    spram : bool
        Build the storage from iCE40 SB_SPRAM256KA primitives (needs ``data_width`` a multiple
        of 16 and ``size`` a multiple of 32 KB per 16 bits); else from
        :class:`~amaranth.lib.memory.Memory`.
    """

    def __init__(self, size: int, *, addr_width: int = 32, data_width: int = 32,
                 id_width: int = 4, spram: bool = False):
        self.bytes_per_beat = data_width // 8
        if size < self.bytes_per_beat or size & (size - 1):
            raise ValueError(f"size must be a power of two of at least one beat "
                             f"({self.bytes_per_beat} bytes), not {size!r}")
        if spram and (data_width % 16 or size != SPRAM_BYTES * data_width // 16):
            raise ValueError(f"SPRAM storage of {data_width}-bit beats holds exactly "
                             f"{SPRAM_BYTES * data_width // 16} bytes, not {size!r}")
        self.size, self.spram = size, spram
        self.depth = size // self.bytes_per_beat
        super().__init__({
            "s_axi": In(AxiSignature(addr_width=addr_width, data_width=data_width,
                                     id_width=id_width, wstrb=True)),
            "read_beats": Out(32), "write_beats": Out(32), "busy_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.s_axi
        shift = (self.bytes_per_beat - 1).bit_length()
        bank_cls = _SpramBank if self.spram else _RamBank
        m.submodules.bank = bank = bank_cls(axi.r.data.shape().width, self.depth)

        beat = Signal(range(self.depth))         # next beat's index in the memory
        left = Signal(9)                         # beats of the burst not yet issued
        burst_id = Signal.like(axi.ar.id)
        error = Signal()                         # the burst is out of range: DECERR
        r_full = Signal()                        # bank.rdata holds a beat for R
        r_last = Signal()

        def accept(channel):
            """Latch a burst from AR or AW; out of range bursts are answered with DECERR."""
            first = channel.addr >> shift
            return [beat.eq(first[:len(beat)]), left.eq(channel.len + 1),
                    burst_id.eq(channel.id),
                    error.eq((first + channel.len >= self.depth)
                             | (channel.burst != AxiBurst.INCR))]

        prefer_write = Signal()                  # alternate when both channels wait
        m.d.comb += [axi.r.id.eq(burst_id), axi.b.id.eq(burst_id), bank.wdata.eq(axi.w.data)]
        with m.FSM(name="axi_sram"):
            with m.State("IDLE"):
                take_write = axi.aw.valid & (prefer_write | ~axi.ar.valid)
                with m.If(take_write):
                    m.d.comb += axi.aw.ready.eq(1)
                    m.d.sync += [*accept(axi.aw), prefer_write.eq(0)]
                    m.next = "WRITE"
                with m.Elif(axi.ar.valid):
                    m.d.comb += axi.ar.ready.eq(1)
                    m.d.sync += [*accept(axi.ar), prefer_write.eq(1), r_full.eq(0)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
                # The bank's output register advances when R is empty or its beat is taken.
                advance = ~r_full | axi.r.ready
                m.d.comb += [axi.r.valid.eq(r_full), axi.r.last.eq(r_last),
                             axi.r.data.eq(Mux(error, 0, bank.rdata)),
                             axi.r.resp.eq(Mux(error, AxiResp.DECERR, AxiResp.OKAY)),
                             bank.addr.eq(beat), bank.en.eq(advance & (left != 0))]
                with m.If(r_full & axi.r.ready):
                    m.d.sync += self.read_beats.eq(self.read_beats + 1)
                with m.If(advance):
                    m.d.sync += [r_full.eq(left != 0), r_last.eq(left == 1)]
                    with m.If(left != 0):
                        m.d.sync += [beat.eq(beat + 1), left.eq(left - 1)]
                    with m.Elif(r_full):
                        m.next = "IDLE"          # the last beat was taken
            with m.State("WRITE"):
                m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
                m.d.comb += [axi.w.ready.eq(1), bank.addr.eq(beat)]
                with m.If(axi.w.valid):
                    m.d.comb += bank.we.eq(Mux(error, 0, axi.w.strb))
                    m.d.sync += [beat.eq(beat + 1), self.write_beats.eq(self.write_beats + 1)]
                    with m.If(axi.w.last):
                        m.next = "RESPOND"
            with m.State("RESPOND"):
                m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
                m.d.comb += [axi.b.valid.eq(1),
                             axi.b.resp.eq(Mux(error, AxiResp.DECERR, AxiResp.OKAY))]
                with m.If(axi.b.ready):
                    m.next = "IDLE"
        return m
