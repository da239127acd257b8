"""AxiSdram against the checking SDRAM chip model: power-up, random AXI bursts with random
strobes and stalls on every channel read back what was written while refreshes interrupt
them, DECERR past the end, the bandwidth of long bursts; and the model's own checks."""

import random

import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.axi import AxiResp
from hoarfrost.hw.sdram import (ULX3S_32MB, ULX3S_64MB, AxiSdram, SdramCommand, SdramGeometry,
                                SdramTiming, mode_register)
from hoarfrost.sim.sdram_model import SdramChip, SdramViolation, amaranth_testbench

from axi_manager import burst_coroutine

#: The ULX3S's clock with a short power-up wait, so tests spend their cycles on traffic.
QUICK = SdramTiming(t_powerup=2000)
#: A refresh every 2 us: refreshes interrupt most long bursts.
REFRESHY = SdramTiming(t_powerup=2000, t_refi=2000)
#: 100 MHz, CL 3: every rule takes several cycles, exercising the controller's timers (tRC
#: longer than tRAS + tRP, so it binds on its own).
FAST = SdramTiming(clk_freq=100_000_000, cas_latency=3, t_powerup=2000, t_refi=3000, t_rc=90)


def run_bursts(geometry, timing, bursts, *, seed, stall_prob, data_width=32):
    """Run ``bursts`` (see tests/axi_manager.py) after the power-up sequence; returns the
    reads, the write responses, the cycles from ready to the end, the DUT's counters and
    the chip."""
    dut = AxiSdram(geometry, timing, data_width=data_width)
    chip = SdramChip(geometry, timing, seed=seed)
    rng = random.Random(seed)
    reads, writes, result = [], [], {}

    async def manager(ctx):
        await ctx.tick().until(dut.ready)
        start = chip.cycle
        await burst_coroutine(ctx, dut.s_axi, bursts, dut.bytes_per_beat, rng, stall_prob,
                              reads, writes)
        result["cycles"] = chip.cycle - start
        for name in ("read_beats", "write_beats", "busy_cycles", "refreshes"):
            result[name] = ctx.get(getattr(dut, name))

    sim = Simulator(dut)
    sim.add_clock(1 / timing.clk_freq)
    sim.add_testbench(amaranth_testbench(chip, dut.sdram), background=True)
    sim.add_testbench(manager)
    sim.run()
    return reads, writes, result, chip


def random_bursts(rng, chip, depth, ratio, row_beats, count, data_width=32):
    """Random bursts, a third of them across a row's end, and the reads' expected data (the
    chip's initial contents where nothing was written)."""
    mem = {}
    lanes = data_width // 8

    def beat_value(beat):
        if beat not in mem:
            mem[beat] = sum(chip.initial(beat * ratio + i) << (16 * i) for i in range(ratio))
        return mem[beat]

    bursts, expected = [], []
    for _ in range(count):
        if rng.random() < 0.33:
            beat = rng.randrange(1, depth // row_beats) * row_beats - rng.randint(1, 6)
        else:
            beat = rng.randrange(depth)
        room = min(depth - beat, 1024 - beat % 1024)     # inside memory and a 4 KB page
        beats = rng.randint(1, min(room, rng.choice([4, 24, 80])))
        if rng.random() < 0.5:
            data = [rng.getrandbits(data_width) for _ in range(beats)]
            strobes = [rng.getrandbits(lanes) for _ in range(beats)]
            bursts.append(("w", beat, data, strobes))
            for i, (d, s) in enumerate(zip(data, strobes)):
                mask = sum(0xFF << (8 * b) for b in range(lanes) if s >> b & 1)
                mem[beat + i] = beat_value(beat + i) & ~mask | d & mask
        else:
            bursts.append(("r", beat, beats))
            expected.append([beat_value(beat + i) for i in range(beats)])
    return bursts, expected


def test_timing_in_cycles_at_25_mhz():
    t = SdramTiming()
    assert (t.rcd, t.rp, t.ras, t.rc, t.rfc, t.wr, t.mrd) == (1, 1, 2, 2, 2, 2, 2)
    assert t.powerup == 5000 and t.read_capture == 1
    assert t.refresh_period == 195 - (2 + 1 + 2 + 2 + 1 + 2)     # 7.8125 us less the wait
    assert mode_register(t) == 0x20
    f = SdramTiming(clk_freq=100_000_000, cas_latency=3)
    assert (f.rcd, f.rp, f.ras, f.rc, f.rfc, f.wr) == (2, 2, 5, 7, 7, 2)
    assert ULX3S_32MB.size == 32 << 20 and ULX3S_64MB.size == 64 << 20


def test_power_up_sequence_then_ready():
    t = SdramTiming()                  # the real 200 us wait
    _, _, result, chip = run_bursts(ULX3S_32MB, t, [("r", 0, 1)], seed=0, stall_prob=0.0)
    # PRECHARGE ALL after 200 us, 8 AUTO REFRESH, LOAD MODE; the model checked order and gaps
    assert chip.ready and chip.cas_latency == 2
    assert chip.counts["MODE"] == 1 and chip.init_refreshes == 8
    assert result["refreshes"] == chip.counts["REFRESH"] >= 8


@pytest.mark.parametrize("geometry, timing, seed, stall_prob", [
    (ULX3S_32MB, QUICK, 1, 0.0),
    (ULX3S_32MB, QUICK, 2, 0.4),
    (ULX3S_64MB, REFRESHY, 3, 0.3),
    (ULX3S_32MB, REFRESHY, 4, 0.7),
    (ULX3S_64MB, FAST, 5, 0.3),
])
def test_random_bursts_read_back_what_was_written(geometry, timing, seed, stall_prob):
    rng = random.Random(seed)
    probe = SdramChip(geometry, timing, seed=seed)      # same initial contents as the DUT's
    dut_depth = geometry.size // 4
    row_beats = (1 << geometry.col_bits) // 2
    bursts, expected = random_bursts(rng, probe, dut_depth, 2, row_beats, 24)
    reads, writes, result, chip = run_bursts(geometry, timing, bursts, seed=seed,
                                             stall_prob=stall_prob)
    assert [[d for d, *_ in got] for got in reads] == expected
    for got in reads:
        assert [last for _, _, last, _ in got] == [0] * (len(got) - 1) + [1]
        assert {(resp, rid) for _, resp, _, rid in got} == {(AxiResp.OKAY, 5)}
    assert writes == [[AxiResp.OKAY, 3]] * sum(b[0] == "w" for b in bursts)
    assert result["read_beats"] == sum(map(len, expected))
    assert result["write_beats"] == sum(len(b[2]) for b in bursts if b[0] == "w")
    # refresh kept its pace during the traffic (the model raised on any gap over t_refi)
    assert result["refreshes"] == chip.counts["REFRESH"]
    assert chip.counts["REFRESH"] - 8 >= result["cycles"] // timing.refresh_period - 1


def test_refresh_interrupts_a_stalled_burst():
    # A 256-beat write then read with the manager stalling half the time last far longer
    # than the refresh interval: the controller closes the row, refreshes and goes on.
    rng = random.Random(7)
    data = [rng.getrandbits(32) for _ in range(256)]
    reads, writes, result, chip = run_bursts(
        ULX3S_32MB, QUICK, [("w", 1024, data, [0xF] * 256), ("r", 1024, 256)], seed=7,
        stall_prob=0.5)
    assert [d for d, *_ in reads[0]] == data and writes == [[AxiResp.OKAY, 3]]
    assert result["cycles"] > 4 * QUICK.refresh_period
    assert result["refreshes"] - 8 >= result["cycles"] // QUICK.refresh_period
    # each refresh inside a burst closed the row and opened it again after
    assert chip.counts["ACTIVE"] == chip.counts["PRECHARGE"] - 1 >= 2 + 4


@pytest.mark.parametrize("kind", ["r", "w", "r-decerr"])
def test_refresh_goes_on_while_the_manager_withholds_rready_or_bready(kind):
    # Every column is issued but the manager takes neither R nor B for 5 refresh periods:
    # the controller refreshes meanwhile (the model raises on a late refresh), keeping VALID.
    geometry = SdramGeometry(row_bits=11, col_bits=8)
    dut = AxiSdram(geometry, QUICK)
    chip = SdramChip(geometry, QUICK, seed=3)
    beat = geometry.size // 4 - 2 if kind == "r-decerr" else 40
    got = {}

    async def manager(ctx):
        await ctx.tick().until(dut.ready)
        channel = dut.s_axi.aw if kind == "w" else dut.s_axi.ar
        for name, value in dict(addr=4 * beat, len=3, size=2, burst=1, id=1).items():
            ctx.set(getattr(channel, name), value)
        ctx.set(channel.valid, 1)
        await ctx.tick().until(channel.ready)
        ctx.set(channel.valid, 0)
        if kind == "w":
            for i in range(4):
                ctx.set(dut.s_axi.w.data, 0x1000 + i)
                ctx.set(dut.s_axi.w.strb, 0xF)
                ctx.set(dut.s_axi.w.last, i == 3)
                ctx.set(dut.s_axi.w.valid, 1)
                await ctx.tick().until(dut.s_axi.w.ready)
            ctx.set(dut.s_axi.w.valid, 0)
        refreshes = ctx.get(dut.refreshes)
        response = dut.s_axi.b if kind == "w" else dut.s_axi.r
        for k in range(5 * QUICK.refresh_period):
            await ctx.tick()
            if k >= 20:                                # the data has arrived by then
                assert ctx.get(response.valid)         # and VALID is held, never withdrawn
        got["refreshes"] = ctx.get(dut.refreshes) - refreshes
        ctx.set(response.ready, 1)
        got["beats"] = []
        for _ in range(1 if kind == "w" else 4):
            resp, data = await ctx.tick().sample(response.resp, response.data if
                                                       kind != "w" else response.id).until(
                                                           response.valid)
            got["beats"].append((resp, data))
        ctx.set(response.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1 / QUICK.clk_freq)
    sim.add_testbench(amaranth_testbench(chip, dut.sdram), background=True)
    sim.add_testbench(manager)
    sim.run()
    assert got["refreshes"] >= 5
    if kind == "r":
        assert got["beats"] == [(AxiResp.OKAY, chip.peek(2 * (beat + i)) |
                                 chip.peek(2 * (beat + i) + 1) << 16) for i in range(4)]
    elif kind == "w":
        assert got["beats"] == [(AxiResp.OKAY, 1)]
        assert [chip.peek(2 * (beat + i)) for i in range(4)] == [0x1000 + i for i in range(4)]
    else:
        assert got["beats"] == [(AxiResp.DECERR, 0)] * 4


def test_bursts_past_the_end_get_decerr_and_touch_nothing():
    geometry = SdramGeometry(row_bits=11, col_bits=8)      # 2 MB, to reach its end
    last = geometry.size // 4 - 1
    reads, writes, _, chip = run_bursts(
        geometry, QUICK, [("w", last, [1, 2], [0xF, 0xF]), ("r", last - 1, 3),
                          ("w", last, [0xABCD1234], [0xF]), ("r", last - 1, 2)],
        seed=0, stall_prob=0.2)
    assert writes == [[AxiResp.DECERR, 3], [AxiResp.OKAY, 3]]
    assert [(d, resp) for d, resp, _, _ in reads[0]] == [(0, AxiResp.DECERR)] * 3
    before = chip.initial(2 * (last - 1)) | chip.initial(2 * (last - 1) + 1) << 16
    assert [d for d, *_ in reads[1]] == [before, 0xABCD1234]


@pytest.mark.parametrize("kind", ["w", "r"])
def test_long_bursts_bandwidth(kind):
    """Sustained bandwidth at 25 MHz: four 256-beat (1 KB) bursts back to back, no stalls,
    refreshes included. The bus peak is one 16-bit word per cycle, 50 MB/s: a 32-bit beat
    per 2 cycles. Each burst costs ACTIVE, tRCD, PRECHARGE, and the AXI handshakes."""
    rng = random.Random(9)
    if kind == "w":
        bursts = [("w", 256 * i, [rng.getrandbits(32) for _ in range(256)], [0xF] * 256)
                  for i in range(4)]
    else:
        bursts = [("r", 256 * i, 256) for i in range(4)]
    _, _, result, _ = run_bursts(ULX3S_32MB, QUICK, bursts, seed=9, stall_prob=0.0)
    beats, cycles = 4 * 256, result["cycles"]
    mbps = beats * 4 / (cycles / QUICK.clk_freq) / 1e6
    print(f"sdram {kind}: {beats} beats in {cycles} cycles: {mbps:.1f} MB/s of 50 MB/s")
    assert cycles == EXPECTED_CYCLES[kind]
    assert cycles <= 2 * beats * 1.05   # within 5% of the peak


#: Measured (a change in the controller's scheduling shows here first).
EXPECTED_CYCLES = {"w": 2121, "r": 2129}


# -- the model's own checks, stepped by hand --

def nop(chip, n=1):
    for _ in range(n):
        chip.step(cs=0, ras=0, cas=0, we=0, ba=0, a=0, dqm=0, dq_o=0, dq_oe=0)


def command(chip, cmd, *, ba=0, a=0, dqm=0, dq_o=0, dq_oe=0):
    v = cmd.value
    return chip.step(cs=v >> 3 & 1, ras=v >> 2 & 1, cas=v >> 1 & 1, we=v & 1, ba=ba, a=a,
                     dqm=dqm, dq_o=dq_o, dq_oe=dq_oe)


def ready_chip(timing=QUICK):
    chip = SdramChip(ULX3S_32MB, timing, seed=1)
    nop(chip, timing.powerup)
    command(chip, SdramCommand.PRECHARGE, a=1 << 10)
    for _ in range(timing.init_refreshes):
        nop(chip, timing.rfc)
        command(chip, SdramCommand.REFRESH)
    nop(chip, timing.rfc)
    command(chip, SdramCommand.MODE, a=mode_register(timing))
    nop(chip, timing.mrd)
    return chip


def test_model_stores_and_returns_data_cl_minus_one_cycles_later():
    chip = ready_chip()
    command(chip, SdramCommand.ACTIVE, ba=2, a=77)
    command(chip, SdramCommand.WRITE, ba=2, a=5, dq_o=0xBEEF, dqm=0b10, dq_oe=1)
    assert command(chip, SdramCommand.READ, ba=2, a=5) == chip.initial(chip.word_address(
        2, 77, 5)) & 0xFF00 | 0xEF    # on DQ in the next cycle (CL 2 - 1)


@pytest.mark.parametrize("steps, message", [
    (lambda c: command(c, SdramCommand.READ, ba=1, a=3), "READ to bank 1, which has no open row"),
    (lambda c: (command(c, SdramCommand.ACTIVE, ba=0, a=1), nop(c, 2),
                command(c, SdramCommand.ACTIVE, ba=0, a=2)), "ACTIVE to bank 0, whose row 1"),
    (lambda c: (command(c, SdramCommand.ACTIVE, ba=0, a=1),
                command(c, SdramCommand.PRECHARGE, ba=0)), r"tRAS \(ACTIVE to PRECHARGE"),
    (lambda c: (command(c, SdramCommand.ACTIVE, ba=0, a=1), nop(c, 3),
                command(c, SdramCommand.WRITE, a=0, dq_oe=1),
                command(c, SdramCommand.PRECHARGE, ba=0)), r"tWR"),
    (lambda c: (command(c, SdramCommand.ACTIVE, ba=0, a=1),
                command(c, SdramCommand.REFRESH)), "AUTO REFRESH with a bank open"),
    (lambda c: nop(c, 200), "no AUTO REFRESH for"),
    (lambda c: (command(c, SdramCommand.ACTIVE, ba=0, a=1), command(c, SdramCommand.READ),
                command(c, SdramCommand.WRITE, a=1, dq_oe=1)), "drives DQ while the chip"),
    (lambda c: (command(c, SdramCommand.REFRESH), command(c, SdramCommand.ACTIVE, a=1)),
     r"tRFC"),
])
def test_model_raises_on_violations(steps, message):
    chip = ready_chip(SdramTiming(t_powerup=2000, t_refi=7000))
    with pytest.raises(SdramViolation, match=message):
        steps(chip)


def test_model_checks_the_power_up_order():
    chip = SdramChip(ULX3S_32MB, QUICK)
    nop(chip, 10)
    with pytest.raises(SdramViolation, match="power-up wait violated"):
        command(chip, SdramCommand.PRECHARGE, a=1 << 10)
    chip = SdramChip(ULX3S_32MB, QUICK)
    nop(chip, QUICK.powerup)
    command(chip, SdramCommand.PRECHARGE, a=1 << 10)
    nop(chip, 2)
    with pytest.raises(SdramViolation, match="after 0 AUTO REFRESH, 8 needed"):
        command(chip, SdramCommand.MODE, a=0x20)
    with pytest.raises(SdramViolation, match="ACTIVE out of the power-up order"):
        command(SdramChip(ULX3S_32MB, QUICK), SdramCommand.ACTIVE)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_on_the_ulx3s_the_chip_clock_is_a_ddr_output_on_its_pin():
    # (the board top with memory="sdram" runs the CNN in tests/test_board_cosim.py)
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    from hoarfrost.gen.config import PRESETS
    from hoarfrost.hw.board import BoardTop
    from hoarfrost.hw.sdram_check import SdramCheckTop

    with pytest.raises(ValueError, match="sdram on the ecp5 only"):
        BoardTop(PRESETS["icebreaker"], clk_freq=12_000_000, family="ice40", memory="sdram")
    top = BoardTop(PRESETS["ulx3s-85f"], clk_freq=25_000_000, family="ecp5", memory="sdram")
    assert top.memory_bytes == 32 << 20 and "sdram" in top.signature.members
    plan = ULX3S_85F_Platform().prepare(SdramCheckTop(25_000_000), name="top")
    lpf = plan.files["top.lpf"]
    assert 'LOCATE COMP "sdram_0__clk__io" SITE "F19";' in lpf
    assert 'LOCATE COMP "sdram_0__dq__io[0]" SITE "J16";' in lpf
    assert "ODDRX1F" in plan.files["top.il"]


@pytest.mark.parametrize("stuck_bit", [None, 3])
def test_the_memory_check_passes_on_a_good_chip_and_counts_a_stuck_bit(stuck_bit):
    from amaranth import Module
    from amaranth.lib import wiring

    from hoarfrost.hw.sdram_check import MemoryCheck

    m = Module()
    m.submodules.check = check = MemoryCheck(256)
    m.submodules.memory = memory = AxiSdram(ULX3S_32MB, QUICK)
    wiring.connect(m, check.m_axi, memory.s_axi)
    chip = SdramChip(ULX3S_32MB, QUICK, seed=2)
    if stuck_bit is not None:          # DQ3 reads 0 whatever the chip drives
        step = chip.step
        chip.step = lambda **pins: step(**pins) & ~(1 << stuck_bit)
    got = {}

    async def watch(ctx):
        await ctx.tick().until(check.passes == 2)
        got["errors"] = ctx.get(check.errors)

    sim = Simulator(m)
    sim.add_clock(1 / QUICK.clk_freq)
    sim.add_testbench(amaranth_testbench(chip, memory.sdram), background=True)
    sim.add_testbench(watch)
    sim.run()
    if stuck_bit is None:
        assert got["errors"] == 0
    else:                              # every beat whose pattern has bit 3 or bit 19 set
        from hoarfrost.hw.sdram_check import check_pattern
        wrong = sum(check_pattern(b, p) >> stuck_bit & 0x10001 != 0
                    for p in range(2) for b in range(256))
        assert got["errors"] == wrong
