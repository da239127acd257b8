"""A behavioural SDR SDRAM chip that checks every command it is given: the test partner of
:class:`hoarfrost.hw.sdram.AxiSdram`.

:class:`SdramChip` is plain Python, stepped once per clock with the pins' values in that
cycle (:meth:`SdramChip.step`); it returns what the chip drives on ``DQ`` in the next cycle.
:func:`amaranth_testbench` runs it against a controller's ``sdram`` pins in amaranth.sim;
:func:`cocotb_coroutine` against the same pins of the generated Verilog.

It raises :class:`SdramViolation` on the first broken rule:

- the power-up sequence: NOPs for ``t_powerup``, PRECHARGE ALL, ``init_refreshes`` AUTO
  REFRESH, LOAD MODE REGISTER (burst length 1, CAS latency 2 or 3), in that order;
- command legality: ACTIVE to a bank already open, READ/WRITE to a closed bank or a column
  past the row, REFRESH or LOAD MODE with a bank open, unsupported commands (auto
  precharge, burst stop, clock enable low);
- timing, measured in ns from the clock period (independently of the controller's rounding):
  tRCD, tRP, tRAS, tRC, tRRD, tRFC, tWR, tMRD, and the refresh interval (no gap between two
  AUTO REFRESH longer than ``t_refi``, checked every cycle);
- the data bus: the controller driving ``DQ`` while the chip does, a WRITE without the data
  driven, ``DQM`` masking a read's data.

Data is stored per word with ``DQM`` byte masks. Timing of reads (see
:mod:`hoarfrost.hw.sdram`): with the chip clocked by the inverted controller clock, a READ on
the pins in cycle ``c`` is driven on ``dq_i`` during cycle ``c + CL - 1`` only, and
``dq_i`` carries garbage in every other cycle the controller does not drive it, so a
controller that samples in the wrong cycle reads garbage. Memory starts filled with
:meth:`SdramChip.initial` (pseudo-random, as a real chip's is).
"""

from __future__ import annotations

import random

from hoarfrost.hw.sdram import SdramCommand, SdramGeometry, SdramTiming

__all__ = ["SdramChip", "SdramViolation", "amaranth_testbench", "cocotb_coroutine"]


class SdramViolation(AssertionError):
    """A command the chip would not accept, or accept with undefined results."""


_CMD = {c.value: c for c in SdramCommand}


class SdramChip:
    """The chip (see the module docstring).

    Parameters
    ----------
    geometry : SdramGeometry
    timing : SdramTiming
        The rules (ns) and the clock; CAS latency comes from the mode register.
    seed : int
        Seeds the initial contents and the garbage on an undriven bus.

    Attributes
    ----------
    cycle : int
        Steps taken.
    counts : dict
        Commands seen, by name.
    ready : bool
        The power-up sequence is complete.
    """

    def __init__(self, geometry: SdramGeometry, timing: SdramTiming, *, seed: int = 0):
        self.g, self.t, self.seed = geometry, timing, seed
        self.period = 1e9 / timing.clk_freq
        self.rng = random.Random(seed ^ 0x5D)
        self.mask = (1 << geometry.dq_width) - 1
        self.words: dict[int, int] = {}
        self.cycle = 0
        self.counts = {c.name: 0 for c in SdramCommand}
        banks = 1 << geometry.bank_bits
        self.open_row: list[int | None] = [None] * banks
        never = -10 ** 12
        self.last_act = [never] * banks
        self.last_pre = [never] * banks
        self.last_write = [never] * banks
        self.last_any_act = never
        self.last_ref = never
        self.last_mode = never
        self.cas_latency: int | None = None
        self.init_refreshes = 0
        self.ready = False
        self.stage = "powerup"       # powerup, precharged, moded
        self.drive: dict[int, int] = {}     # cycle -> data the chip puts on DQ
        self.busy: set[int] = set()         # cycles the chip drives DQ
        self.dqm_zero: set[int] = set()     # cycles DQM must be 0 (read data out)

    # -- the contents --
    def initial(self, word: int) -> int:
        """The word's contents before any write (a fixed pseudo-random function)."""
        return random.Random(self.seed * 1_000_003 + word).getrandbits(self.g.dq_width)

    def peek(self, word: int) -> int:
        """The word's contents now."""
        return self.words[word] if word in self.words else self.initial(word)

    def word_address(self, bank: int, row: int, col: int) -> int:
        g = self.g
        return (row << (g.bank_bits + g.col_bits)) | (bank << g.col_bits) | col

    # -- checks --
    def _fail(self, what: str):
        raise SdramViolation(f"SDRAM cycle {self.cycle} ({self.cycle * self.period:.0f} ns): "
                             f"{what}")

    def _since(self, then: int, ns: float, rule: str, clocks: int = 0):
        elapsed = self.cycle - then
        if elapsed * self.period + 1e-6 < ns or elapsed < clocks:
            self._fail(f"{rule} violated: {elapsed} cycles ({elapsed * self.period:.1f} ns) "
                       f"after the previous command, {ns:g} ns needed")

    def step(self, *, clk_en=1, cs, ras, cas, we, ba, a, dqm, dq_o, dq_oe) -> int:
        """One clock with these pin values (commands active high, as the controller's
        ``sdram`` port); returns the value on ``DQ`` as the controller sees it next cycle."""
        t = self.t
        if not clk_en:
            self._fail("clock enable low (power-down and self refresh are not modelled)")
        if dq_oe and self.cycle in self.busy:
            self._fail("the controller drives DQ while the chip outputs read data")
        if self.cycle in self.dqm_zero and dqm:
            self._fail(f"DQM {dqm:#x} masks read data")
        if self.ready and (self.cycle - self.last_ref) * self.period > t.t_refi + 1e-6:
            self._fail(f"no AUTO REFRESH for {(self.cycle - self.last_ref) * self.period:.0f} "
                       f"ns, {t.t_refi:g} ns allowed")
        cmd = _CMD.get((cs << 3) | (ras << 2) | (cas << 1) | we) if cs else SdramCommand.NOP
        if cmd is not SdramCommand.NOP:
            self.counts[cmd.name] += 1
            self._since(self.last_ref, t.t_rfc, "tRFC (REFRESH to any command)")
            self._since(self.last_mode, 0, "tMRD (LOAD MODE to any command)", t.t_mrd_clocks)
            getattr(self, "_" + cmd.name.lower())(ba, a, dqm, dq_o, dq_oe)
        self.cycle += 1
        self.drive.pop(self.cycle - 1, None)
        self.busy.discard(self.cycle - 1)
        self.dqm_zero.discard(self.cycle - 1)
        if self.cycle in self.drive:
            return self.drive[self.cycle]
        if dq_oe:
            return dq_o          # the controller's own output, looped back by the pad
        return self.rng.getrandbits(self.g.dq_width)

    def _stage(self, needed: str, what: str):
        if self.stage != needed:
            self._fail(f"{what} out of the power-up order (stage {self.stage!r})")

    def _precharge(self, ba, a, dqm, dq_o, dq_oe):
        if self.stage == "powerup":
            self._since(0, self.t.t_powerup, "power-up wait")
            if not a >> 10 & 1:
                self._fail("the first command must be PRECHARGE ALL (A10 high)")
            self.stage = "precharged"
        banks = range(len(self.open_row)) if a >> 10 & 1 else [ba]
        t_wr = max(self.t.t_wr, self.t.t_wr_clocks * self.period)
        for b in banks:
            if self.open_row[b] is not None:
                self._since(self.last_act[b], self.t.t_ras, f"tRAS (ACTIVE to PRECHARGE, bank {b})")
                self._since(self.last_write[b], t_wr, f"tWR (WRITE to PRECHARGE, bank {b})")
                self.open_row[b] = None
                self.last_pre[b] = self.cycle

    def _refresh(self, ba, a, dqm, dq_o, dq_oe):
        if self.stage == "powerup":
            self._stage("precharged", "AUTO REFRESH")
        if any(r is not None for r in self.open_row):
            self._fail("AUTO REFRESH with a bank open")
        for b in range(len(self.open_row)):
            self._since(self.last_pre[b], self.t.t_rp, "tRP (PRECHARGE to REFRESH)")
        self._since(self.last_any_act, self.t.t_rc, "tRC (ACTIVE to REFRESH)")
        if self.stage == "precharged":
            self.init_refreshes += 1
        self.last_ref = self.cycle

    def _mode(self, ba, a, dqm, dq_o, dq_oe):
        self._stage("precharged", "LOAD MODE REGISTER")
        if self.init_refreshes < self.t.init_refreshes:
            self._fail(f"LOAD MODE REGISTER after {self.init_refreshes} AUTO REFRESH, "
                       f"{self.t.init_refreshes} needed")
        for b in range(len(self.open_row)):
            self._since(self.last_pre[b], self.t.t_rp, "tRP (PRECHARGE to LOAD MODE)")
        burst, cl = a & 0b111, a >> 4 & 0b111
        if burst != 0 or a >> 3 & 1 or ba or a >> 7:
            self._fail(f"mode {a:#x}: this model does burst length 1, sequential, standard "
                       f"operation only")
        if cl not in (2, 3):
            self._fail(f"mode {a:#x}: CAS latency {cl} is not 2 or 3")
        self.cas_latency = cl
        self.last_mode = self.cycle
        self.stage = "moded"
        self.ready = True

    def _active(self, ba, a, dqm, dq_o, dq_oe):
        self._stage("moded", "ACTIVE")
        if self.open_row[ba] is not None:
            self._fail(f"ACTIVE to bank {ba}, whose row {self.open_row[ba]} is open")
        if a >> self.g.row_bits:
            self._fail(f"row {a} past the chip's {1 << self.g.row_bits}")
        self._since(self.last_pre[ba], self.t.t_rp, f"tRP (PRECHARGE to ACTIVE, bank {ba})")
        self._since(self.last_act[ba], self.t.t_rc, f"tRC (ACTIVE to ACTIVE, bank {ba})")
        self._since(self.last_any_act, self.t.t_rrd, "tRRD (ACTIVE to ACTIVE)")
        self.open_row[ba] = a
        self.last_act[ba] = self.last_any_act = self.cycle

    def _column(self, what, ba, a):
        self._stage("moded", what)
        if self.open_row[ba] is None:
            self._fail(f"{what} to bank {ba}, which has no open row")
        self._since(self.last_act[ba], self.t.t_rcd, f"tRCD (ACTIVE to {what}, bank {ba})")
        if a >> 10 & 1:
            self._fail(f"{what} with auto precharge (not modelled)")
        col = a & ((1 << 10) - 1)
        if col >> self.g.col_bits:
            self._fail(f"{what} column {col} past the row's {1 << self.g.col_bits}")
        return self.word_address(ba, self.open_row[ba], col)

    def _read(self, ba, a, dqm, dq_o, dq_oe):
        word = self._column("READ", ba, a)
        out = self.cycle + self.cas_latency - 1
        self.drive[out] = self.peek(word)
        self.busy.update((out, out + 1))     # from mid-cycle out to mid-cycle out + 1
        self.dqm_zero.add(self.cycle + 2)    # DQM's read latency is 2 clocks

    def _write(self, ba, a, dqm, dq_o, dq_oe):
        word = self._column("WRITE", ba, a)
        if not dq_oe:
            self._fail("WRITE without the controller driving DQ")
        lanes = sum(0xFF << (8 * i) for i in range(self.g.dq_width // 8) if not dqm >> i & 1)
        self.words[word] = (self.peek(word) & ~lanes | dq_o & lanes) & self.mask
        self.last_write[ba] = self.cycle

    def _nop(self, *args):
        pass

    def _burst_stop(self, *args):
        self._fail("BURST STOP (not used with burst length 1)")


_PINS = ("clk_en", "cs", "ras", "cas", "we", "ba", "a", "dqm", "dq_o", "dq_oe")


def amaranth_testbench(chip: SdramChip, pins):
    """An amaranth.sim testbench (``sim.add_testbench(..., background=True)``) that steps
    ``chip`` every clock from the controller's ``sdram`` port ``pins``."""
    async def testbench(ctx):
        signals = [getattr(pins, name) for name in _PINS]
        async for _, _, *values in ctx.tick().sample(*signals):
            ctx.set(pins.dq_i, chip.step(**dict(zip(_PINS, values))))
    return testbench


async def cocotb_coroutine(chip: SdramChip, dut, clk, prefix: str = "sdram__"):
    """Step ``chip`` every clock from the Verilog ports ``<prefix><pin>`` (Amaranth's names
    for the ``sdram`` member: ``sdram__cs`` ...). Pins are sampled at the falling edge, in
    the middle of the cycle, as the chip on the inverted clock does; ``dq_i`` changes there
    too, half a cycle before the controller's edge that captures it."""
    from cocotb.triggers import FallingEdge

    handles = {name: getattr(dut, prefix + name) for name in _PINS}
    dq_i = getattr(dut, prefix + "dq_i")
    pending = 0
    while True:
        await FallingEdge(clk)
        dq_i.value = pending
        pending = chip.step(**{name: int(h.value) for name, h in handles.items()})
