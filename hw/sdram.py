"""An AXI4 subordinate served by an SDR SDRAM: the ULX3S's off-chip memory.

The accelerator's AXI port sees the same subordinate as :class:`~hoarfrost.hw.axi_sram.AxiSram`
(one burst at a time, INCR bursts, ``WSTRB``, ``DECERR`` past the end); behind it a controller
drives a 16-bit single-data-rate SDRAM chip (ULX3S: AS4C16M16SA, 32 MB, or AS4C32M16SB, 64 MB).

Design choices, each for simplicity first:

- **Burst length 1.** Every 16-bit column is its own READ or WRITE command. SDR SDRAM accepts
  a column command every clock (tCCD = 1), so this loses nothing against programmed bursts,
  needs no burst-terminate, and turns any AXI burst, strobe pattern and stall into a plain
  sequence of commands. A ``data_width``-bit AXI beat is ``data_width / 16`` columns, low half
  first; ``WSTRB`` becomes the write's ``DQM`` (a byte lane not strobed is masked).
- **Closed rows, one bank at a time.** A burst opens its row (ACTIVE), streams its columns and
  closes it (PRECHARGE) when it ends, when it reaches the end of the row, or when a refresh is
  due. The DMAs move long bursts, so one ACTIVE and one PRECHARGE per burst costs little
  (about 4 cycles in 2 x beats at 25 MHz), and with every bank closed between bursts a
  refresh never waits for an open row; an open-row policy would save those cycles only for
  consecutive bursts in the same row.
- **Refresh first.** A timer raises a refresh request every ``refresh_period`` cycles (the
  refresh interval less the longest wait to serve it); a running burst gives way at its next
  column (PRECHARGE, AUTO REFRESH, ACTIVE again), even when the manager is stalling it.
- **Reads never overrun.** A READ is issued only when the read buffer (``read_buffer`` beats)
  has room for its data counting what is still in flight, so ``RREADY`` backpressure stops
  the commands, not the data.

Clocking and pins (25 MHz on the ULX3S): every command, address, ``DQM`` and write data is
registered; the chip's clock is the controller's clock inverted, so the chip samples each
command in the middle of the cycle it is on the pins (20 ns of setup and of hold). With CAS
latency ``CL`` a READ on the pins in cycle ``c`` puts its data out from the chip's edge
``CL - 1`` later plus tAC, held until tOH after the next edge: the controller's rising edge at
the end of cycle ``c + CL - 1`` falls inside that window (with tAC 6 ns and tOH 2.5 ns, 14 ns
after it opens and 22.5 ns before it closes, less the pads' and traces' few ns), so the input
register captures it there. This reasoning holds at the ULX3S's 25 MHz; a faster clock would
need the window recomputed (or a PLL phase) before trusting ``read_capture``. :class:`SdramTiming`'s
``read_capture`` states this; :class:`hoarfrost.sim.sdram_model.SdramChip` drives data in
that cycle only and garbage otherwise, so a controller capturing a cycle early or late fails.

Members
-------
s_axi : ``In(AxiSignature(addr_width, data_width, id_width, wstrb=True))``
    The subordinate port.
sdram : ``Out(SdramPinsSignature(geometry))``
    The chip's pins, active high (``cs``, ``ras``, ``cas``, ``we`` asserted = low on the
    board, as amaranth-boards' ``SDRAMResource`` inverts them), ``dq_o``/``dq_oe``/``dq_i``
    the data pins' output, output enable and input.
ready : ``Out(1)``
    The power-up sequence is done.
read_beats, write_beats, busy_cycles, refreshes : ``Out(32)``
    Beats served, cycles with a burst in progress, AUTO REFRESH commands issued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Cat, ClockSignal, Const, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.axi import AxiBurst, AxiResp, AxiSignature

__all__ = ["SdramGeometry", "SdramTiming", "SdramPinsSignature", "SdramCommand", "AxiSdram",
           "ULX3S_32MB", "ULX3S_64MB", "mode_register", "connect_platform_sdram"]


@dataclass(frozen=True)
class SdramGeometry:
    """Organisation of one SDR SDRAM chip.

    Parameters
    ----------
    dq_width : int
        Data pins (16 on the ULX3S).
    bank_bits, row_bits, col_bits : int
        Address bits of the bank, the row (ACTIVE's ``A``) and the column (READ/WRITE's ``A``).
    """
    dq_width: int = 16
    bank_bits: int = 2
    row_bits: int = 13
    col_bits: int = 9

    def __post_init__(self):
        if self.dq_width not in (8, 16, 32):
            raise ValueError(f"dq_width must be 8, 16 or 32, not {self.dq_width!r}")
        if not 11 <= self.row_bits <= 14 or not 8 <= self.col_bits <= 10:
            raise ValueError(f"row_bits must be 11 to 14 and col_bits 8 to 10, not "
                             f"{self.row_bits!r} and {self.col_bits!r}")

    @property
    def addr_bits(self) -> int:
        """Width of the ``A`` pins: the row, and at least A10 (the all-banks bit)."""
        return max(self.row_bits, 11)

    @property
    def words(self) -> int:
        """``dq_width``-bit words in the chip."""
        return 1 << (self.bank_bits + self.row_bits + self.col_bits)

    @property
    def size(self) -> int:
        """Bytes in the chip."""
        return self.words * self.dq_width // 8


#: ULX3S v3.0.x: AS4C16M16SA, 4 banks x 8192 rows x 512 columns x 16 bits.
ULX3S_32MB = SdramGeometry(col_bits=9)
#: ULX3S with AS4C32M16SB (some v3.1 boards): 4 banks x 8192 rows x 1024 columns x 16 bits.
ULX3S_64MB = SdramGeometry(col_bits=10)


@dataclass(frozen=True)
class SdramTiming:
    """The chip's timing rules in ns, and the clock; the ``*_cycles`` properties give each in
    controller cycles (rounded up, at least one). The defaults are PC133-class values that
    the AS4C16M16SA / AS4C32M16SB (-6 and -7 grades) meet with margin; check a new part's
    datasheet.

    Parameters
    ----------
    clk_freq : int
        Controller (and chip) clock in Hz.
    cas_latency : int
        CL in clocks, 2 or 3 (CL 2 is allowed up to 100 MHz or more on these parts).
    t_rcd, t_rp, t_ras, t_rc, t_rfc, t_wr, t_rrd : float
        ACTIVE to READ/WRITE, PRECHARGE to ACTIVE, ACTIVE to PRECHARGE, ACTIVE to ACTIVE,
        REFRESH to any command, last write data to PRECHARGE (at least ``t_wr_clocks``),
        ACTIVE to ACTIVE in another bank.
    t_mrd_clocks : int
        LOAD MODE REGISTER to any command, in clocks.
    t_refi : float
        Longest time between two AUTO REFRESH (64 ms / 8192 rows).
    t_powerup : float
        Power-up wait with NOPs before the first PRECHARGE ALL.
    init_refreshes : int
        AUTO REFRESH commands in the power-up sequence (the datasheets ask 2 or 8).
    """
    clk_freq: int = 25_000_000
    cas_latency: int = 2
    t_rcd: float = 20.0
    t_rp: float = 20.0
    t_ras: float = 45.0
    t_rc: float = 65.0
    t_rfc: float = 65.0
    t_wr: float = 15.0
    t_wr_clocks: int = 2
    t_rrd: float = 15.0
    t_mrd_clocks: int = 2
    t_refi: float = 64e6 / 8192
    t_powerup: float = 200_000.0
    init_refreshes: int = 8

    def __post_init__(self):
        if self.cas_latency not in (2, 3):
            raise ValueError(f"cas_latency must be 2 or 3, not {self.cas_latency!r}")
        if self.refresh_period < 16:
            raise ValueError(f"t_refi of {self.t_refi!r} ns leaves no time between refreshes "
                             f"at {self.clk_freq} Hz")

    def cycles(self, ns: float) -> int:
        """``ns`` in clock cycles, rounded up, at least 1."""
        return max(1, math.ceil(ns * self.clk_freq / 1e9 - 1e-9))

    @property
    def rcd(self): return self.cycles(self.t_rcd)
    @property
    def rp(self): return self.cycles(self.t_rp)
    @property
    def ras(self): return self.cycles(self.t_ras)
    @property
    def rc(self): return self.cycles(self.t_rc)
    @property
    def rfc(self): return self.cycles(self.t_rfc)
    @property
    def wr(self): return max(self.cycles(self.t_wr), self.t_wr_clocks)
    @property
    def mrd(self): return self.t_mrd_clocks
    @property
    def powerup(self): return self.cycles(self.t_powerup)

    @property
    def refresh_period(self) -> int:
        """Cycles between the controller's refresh requests: the interval less the longest
        time a request can wait (a column command, tRAS, tWR, tRP and tRC), so the gap
        between two AUTO REFRESH commands never exceeds ``t_refi``."""
        wait = 2 + self.rcd + self.ras + self.wr + self.rp + self.rc
        return math.floor(self.t_refi * self.clk_freq / 1e9) - wait

    @property
    def read_capture(self) -> int:
        """Cycles from the cycle a READ is on the pins to the cycle whose closing edge
        captures its data (see the module docstring): ``CL - 1`` with the inverted chip clock."""
        return self.cas_latency - 1


def mode_register(timing: SdramTiming) -> int:
    """The LOAD MODE REGISTER value: burst length 1, sequential, CAS latency, burst writes
    as programmed (so single-word writes too)."""
    return timing.cas_latency << 4


class SdramCommand(enum.Enum, shape=4):
    """Commands as ``Cat(we, cas, ras, cs)`` asserted (active high; the pins are low)."""
    NOP = 0b1000
    ACTIVE = 0b1100
    READ = 0b1010
    WRITE = 0b1011
    PRECHARGE = 0b1101
    REFRESH = 0b1110
    MODE = 0b1111
    BURST_STOP = 0b1001


class SdramPinsSignature(wiring.Signature):
    """The chip's pins, from the controller (see the module docstring)."""

    def __init__(self, geometry: SdramGeometry):
        self.geometry = geometry
        super().__init__({
            "clk_en": Out(1), "cs": Out(1), "ras": Out(1), "cas": Out(1), "we": Out(1),
            "ba": Out(geometry.bank_bits), "a": Out(geometry.addr_bits),
            "dqm": Out(geometry.dq_width // 8),
            "dq_o": Out(geometry.dq_width), "dq_oe": Out(1), "dq_i": In(geometry.dq_width),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.geometry == self.geometry

    def __repr__(self):
        return f"SdramPinsSignature({self.geometry!r})"


class AxiSdram(wiring.Component):
    """AXI4 subordinate over an SDR SDRAM chip (see the module docstring).

    Parameters
    ----------
    geometry : SdramGeometry
        The chip (``ULX3S_32MB`` or ``ULX3S_64MB`` on the ULX3S).
    timing : SdramTiming
        Its timing rules and the clock.
    addr_width, data_width, id_width : int
        As the manager's port; ``data_width`` a multiple of the chip's ``dq_width``.
    read_buffer : int
        Beats of read data the controller can hold while ``RREADY`` is low.
    """

    def __init__(self, geometry: SdramGeometry = ULX3S_32MB, timing: SdramTiming = SdramTiming(),
                 *, addr_width: int = 32, data_width: int = 32, id_width: int = 4,
                 read_buffer: int = 4):
        if data_width % geometry.dq_width:
            raise ValueError(f"data_width must be a multiple of the chip's {geometry.dq_width} "
                             f"bits, not {data_width!r}")
        if (1 << addr_width) < geometry.size:
            raise ValueError(f"addr_width {addr_width!r} cannot address {geometry.size} bytes")
        self.geometry, self.timing, self.read_buffer = geometry, timing, read_buffer
        self.bytes_per_beat = data_width // 8
        self.ratio = data_width // geometry.dq_width       # columns per beat
        self.size = geometry.size
        self.depth = geometry.size // self.bytes_per_beat  # beats
        super().__init__({
            "s_axi": In(AxiSignature(addr_width=addr_width, data_width=data_width,
                                     id_width=id_width, wstrb=True)),
            "sdram": Out(SdramPinsSignature(geometry)),
            "ready": Out(1),
            "read_beats": Out(32), "write_beats": Out(32), "busy_cycles": Out(32),
            "refreshes": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        g, t, axi, pins = self.geometry, self.timing, self.s_axi, self.sdram
        dq, lanes = g.dq_width, g.dq_width // 8
        shift = (self.bytes_per_beat - 1).bit_length()
        ratio_bits = (self.ratio - 1).bit_length()

        # -- command registers: what the FSM decides in a cycle is on the pins the next --
        cmd = Signal(SdramCommand, init=SdramCommand.NOP)   # comb: this cycle's command
        cmd_ba = Signal(g.bank_bits)
        cmd_a = Signal(g.addr_bits)
        cmd_dq = Signal(dq)
        cmd_dqm = Signal(lanes)
        cmd_oe = Signal()
        m.d.sync += [Cat(pins.we, pins.cas, pins.ras, pins.cs).eq(cmd),
                     pins.ba.eq(cmd_ba), pins.a.eq(cmd_a), pins.dq_o.eq(cmd_dq),
                     pins.dqm.eq(cmd_dqm), pins.dq_oe.eq(cmd_oe)]
        m.d.comb += pins.clk_en.eq(1)          # high from power-up (the datasheets ask it)

        # -- timers: each counts down to 0, the earliest cycle its rule allows --
        def timer(limit):
            sig = Signal(range(max(limit, 2) + 1))
            with m.If(sig != 0):
                m.d.sync += sig.eq(sig - 1)
            return sig
        # A command in cycle n that needs k cycles before the next sets the timer to k - 1.
        cmd_timer = timer(max(t.rcd, t.rp, t.rfc, t.mrd, t.powerup))
        ras_timer = timer(t.ras)               # ACTIVE -> PRECHARGE
        rc_timer = timer(t.rc)                 # ACTIVE -> ACTIVE / REFRESH
        wr_timer = timer(t.wr)                 # last WRITE -> PRECHARGE

        # -- refresh requests --
        refresh_timer = Signal(range(t.refresh_period))
        refresh_due = Signal()

        # -- the burst --
        word = Signal(range(g.words))          # next column's word address
        col, bank, row = (word[:g.col_bits], word[g.col_bits:g.col_bits + g.bank_bits],
                          word[g.col_bits + g.bank_bits:])
        sub = word[:ratio_bits] if ratio_bits else Const(0)
        to_issue = Signal(range(256 * self.ratio + 1))   # columns of the burst not yet issued
        beats_left = Signal(9)                 # beats not yet given to R / taken from W
        burst_id = Signal.like(axi.ar.id)
        error = Signal()
        in_burst = Signal()                    # a burst holds the controller (for REFRESH)
        is_write = Signal()
        open_bank = Signal(g.bank_bits)        # the bank whose row is open (for PRECHARGE)
        prefer_write = Signal()

        def accept(channel, write):
            first = channel.addr >> shift
            return [word.eq((first * self.ratio)[:len(word)]),
                    to_issue.eq((channel.len + 1) * self.ratio),
                    beats_left.eq(channel.len + 1), burst_id.eq(channel.id),
                    is_write.eq(write),
                    error.eq((first + channel.len >= self.depth)
                             | (channel.burst != AxiBurst.INCR))]

        # -- read data: a pipeline of "data arrives" flags, the beat assembler, the buffer --
        m.submodules.rbuf = rbuf = SyncFIFOBuffered(width=axi.r.data.shape().width,
                                                    depth=self.read_buffer)
        capture = Signal(dq)                   # the input register on the DQ pins
        m.d.sync += capture.eq(pins.dq_i)
        # issued in cycle n: on the pins in n + 1, captured at the end of n + 1 + read_capture
        arrive = Signal(t.read_capture + 2)
        issue_read = Signal()
        m.d.sync += arrive.eq(Cat(issue_read, arrive[:-1]))
        assembled = Signal(axi.r.data.shape().width)
        half = Signal(range(max(self.ratio, 2)))
        with m.If(arrive[-1]):
            m.d.sync += assembled.word_select(half, dq).eq(capture)
            m.d.sync += half.eq(Mux(half == self.ratio - 1, 0, half + 1))
        push = arrive[-1] & (half == self.ratio - 1)
        # the beat's last column goes to the buffer straight from the input register
        m.d.comb += [rbuf.w_data.eq(Cat(assembled[:len(assembled) - dq], capture)),
                     rbuf.w_en.eq(push)]
        pending = Signal(range(self.read_buffer + 1))    # beats issued, not yet in rbuf
        room = rbuf.level + pending < self.read_buffer
        with m.If(issue_read & (sub == 0) & ~push):
            m.d.sync += pending.eq(pending + 1)
        with m.Elif(push & ~(issue_read & (sub == 0))):
            m.d.sync += pending.eq(pending - 1)

        # R, W's handshakes in an out-of-range burst, and B are served whatever the FSM does
        # (it may be refreshing): AXI forbids withdrawing a VALID before its handshake.
        b_pending = Signal()                   # the write burst's response waits for B
        reading = in_burst & ~is_write & (beats_left != 0)
        m.d.comb += [axi.r.id.eq(burst_id), axi.b.id.eq(burst_id),
                     axi.r.last.eq(beats_left == 1),
                     axi.b.valid.eq(b_pending),
                     axi.b.resp.eq(Mux(error, AxiResp.DECERR, AxiResp.OKAY))]
        with m.If(reading & error):
            m.d.comb += [axi.r.valid.eq(1), axi.r.resp.eq(AxiResp.DECERR)]
        with m.Elif(reading):
            m.d.comb += [axi.r.valid.eq(rbuf.r_rdy), axi.r.data.eq(rbuf.r_data),
                         axi.r.resp.eq(AxiResp.OKAY), rbuf.r_en.eq(axi.r.ready)]
        with m.If(in_burst & is_write & error & (beats_left != 0)):
            m.d.comb += axi.w.ready.eq(1)     # out of range: taken, not written
        with m.If(axi.r.valid & axi.r.ready):
            m.d.sync += [beats_left.eq(beats_left - 1), self.read_beats.eq(self.read_beats + 1)]
        with m.If(axi.w.valid & axi.w.ready):
            m.d.sync += [beats_left.eq(beats_left - 1), self.write_beats.eq(self.write_beats + 1)]
            with m.If(axi.w.last):
                m.d.sync += b_pending.eq(1)
        with m.If(axi.b.valid & axi.b.ready):
            m.d.sync += b_pending.eq(0)

        with m.If(in_burst):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)

        def column_done():
            return [word.eq(word + 1), to_issue.eq(to_issue - 1)]

        with m.FSM(name="sdram"):
            with m.State("POWERUP"):
                m.d.sync += cmd_timer.eq(t.powerup - 1)
                m.next = "POWERUP_WAIT"
            with m.State("POWERUP_WAIT"):
                with m.If(cmd_timer == 0):
                    m.d.comb += [cmd.eq(SdramCommand.PRECHARGE), cmd_a.eq(1 << 10)]
                    m.d.sync += [cmd_timer.eq(t.rp - 1), to_issue.eq(t.init_refreshes)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(cmd_timer == 0):
                    with m.If(to_issue == 0):
                        m.d.comb += [cmd.eq(SdramCommand.MODE), cmd_a.eq(mode_register(t))]
                        m.d.sync += cmd_timer.eq(t.mrd - 1)
                        m.next = "INIT_DONE"
                    with m.Else():
                        m.d.comb += cmd.eq(SdramCommand.REFRESH)
                        m.d.sync += [cmd_timer.eq(t.rfc - 1), to_issue.eq(to_issue - 1),
                                     self.refreshes.eq(self.refreshes + 1),
                                     refresh_due.eq(0)]
            with m.State("INIT_DONE"):
                with m.If(cmd_timer == 0):
                    m.d.sync += self.ready.eq(1)
                    m.next = "IDLE"

            with m.State("IDLE"):
                take_write = axi.aw.valid & (prefer_write | ~axi.ar.valid)
                with m.If(refresh_due):
                    m.next = "REFRESH"
                with m.Elif(take_write):
                    m.d.comb += axi.aw.ready.eq(1)
                    m.d.sync += [*accept(axi.aw, 1), prefer_write.eq(0), in_burst.eq(1)]
                    m.next = "ACTIVE"
                with m.Elif(axi.ar.valid):
                    m.d.comb += axi.ar.ready.eq(1)
                    m.d.sync += [*accept(axi.ar, 0), prefer_write.eq(1), in_burst.eq(1)]
                    m.next = "ACTIVE"

            with m.State("REFRESH"):
                with m.If((cmd_timer == 0) & (rc_timer == 0)):
                    m.d.comb += cmd.eq(SdramCommand.REFRESH)
                    m.d.sync += [cmd_timer.eq(t.rfc - 1), refresh_due.eq(0),
                                 self.refreshes.eq(self.refreshes + 1)]
                    with m.If(in_burst & (to_issue != 0) & ~error):
                        m.next = "ACTIVE"
                    with m.Elif(in_burst):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "IDLE"

            with m.State("ACTIVE"):
                with m.If(error):
                    m.next = "DRAIN"
                with m.Elif(refresh_due):
                    m.next = "REFRESH"
                with m.Elif((cmd_timer == 0) & (rc_timer == 0)):
                    m.d.comb += [cmd.eq(SdramCommand.ACTIVE), cmd_ba.eq(bank), cmd_a.eq(row)]
                    m.d.sync += [cmd_timer.eq(t.rcd - 1), ras_timer.eq(t.ras - 1),
                                 rc_timer.eq(t.rc - 1), open_bank.eq(bank)]
                    m.next = "COLUMNS"

            with m.State("COLUMNS"):
                # One READ or WRITE per cycle while the row lasts, the burst has columns left,
                # no refresh is due and the data can move.
                last_col = col == (1 << g.col_bits) - 1
                with m.If(cmd_timer == 0):
                    with m.If((to_issue == 0) | refresh_due):
                        m.next = "PRECHARGE"
                    with m.Elif(is_write):
                        with m.If(axi.w.valid):
                            m.d.comb += [cmd.eq(SdramCommand.WRITE), cmd_ba.eq(bank),
                                         cmd_a.eq(col), cmd_oe.eq(1),
                                         cmd_dq.eq(axi.w.data.word_select(sub, dq)),
                                         cmd_dqm.eq(~axi.w.strb.word_select(sub, lanes)),
                                         axi.w.ready.eq(sub == self.ratio - 1)]
                            m.d.sync += [*column_done(), wr_timer.eq(t.wr - 1)]
                            with m.If(last_col):
                                m.next = "PRECHARGE"
                    with m.Elif((sub != 0) | room):
                        m.d.comb += [cmd.eq(SdramCommand.READ), cmd_ba.eq(bank),
                                     cmd_a.eq(col), issue_read.eq(1)]
                        m.d.sync += column_done()
                        with m.If(last_col):
                            m.next = "PRECHARGE"

            with m.State("PRECHARGE"):
                with m.If((ras_timer == 0) & (wr_timer == 0) & (cmd_timer == 0)):
                    m.d.comb += [cmd.eq(SdramCommand.PRECHARGE), cmd_ba.eq(open_bank)]
                    m.d.sync += cmd_timer.eq(t.rp - 1)
                    with m.If(refresh_due):
                        m.next = "REFRESH"
                    with m.Elif(to_issue != 0):
                        m.next = "ACTIVE"
                    with m.Else():
                        m.next = "DRAIN"

            with m.State("DRAIN"):
                # Every column is issued (or the burst is out of range): wait for R to take
                # the last beats or for B, refreshing meanwhile if the manager is slow.
                with m.If((beats_left == 0) & ~b_pending):
                    m.d.sync += in_burst.eq(0)
                    m.next = "IDLE"
                with m.Elif(refresh_due):
                    m.next = "REFRESH"
        # After the FSM, so a new request wins over the FSM clearing the one it serves.
        with m.If(refresh_timer == 0):
            m.d.sync += [refresh_timer.eq(t.refresh_period - 1), refresh_due.eq(1)]
        with m.Else():
            m.d.sync += refresh_timer.eq(refresh_timer - 1)
        return m


def connect_platform_sdram(m: Module, platform, pins, number: int = 0) -> None:
    """Wire a controller's ``sdram`` port ``pins`` to the platform's ``sdram`` resource
    (amaranth-boards' ``SDRAMResource``, which inverts the active-low command pins itself).
    The chip's clock is the controller's clock inverted, from a DDR output: low in the first
    half of each cycle, high in the second, so the chip's rising edge is the controller's
    falling edge."""
    res = platform.request("sdram", number, xdr={"clk": 2})
    m.d.comb += [res.clk.o_clk.eq(ClockSignal()), res.clk.o0.eq(0), res.clk.o1.eq(1),
                 res.clk_en.o.eq(pins.clk_en), res.cs.o.eq(pins.cs), res.ras.o.eq(pins.ras),
                 res.cas.o.eq(pins.cas), res.we.o.eq(pins.we), res.ba.o.eq(pins.ba),
                 res.a.o.eq(pins.a), res.dqm.o.eq(pins.dqm), res.dq.o.eq(pins.dq_o),
                 res.dq.oe.eq(pins.dq_oe), pins.dq_i.eq(res.dq.i)]
