"""Requantizer in amaranth.sim: every output equals sim/arith.py's ``requantize``."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.requant import Requantizer
from hoarfrost.sim.arith import MAX_SHIFT, MULTIPLIER_BITS, quantize_multiplier, requantize
from hoarfrost.sim.streams import stream_get, stream_put


def random_beats(seed, count):
    """Accumulators over the whole int32 range and realistic plus extreme parameters."""
    rng = np.random.default_rng(seed)
    beats = []
    for i in range(count):
        if i % 4 == 0:      # extremes: zero multiplier, no shift, largest shift, int32 limits
            acc = int(rng.choice([-(2**31), 2**31 - 1, 0, -1, 1]))
            mult = int(rng.choice([0, 1, 2**MULTIPLIER_BITS - 1]))
            shift = int(rng.choice([0, 1, MAX_SHIFT]))
        else:
            acc = int(rng.integers(-(2**20), 2**20))
            mult, shift = quantize_multiplier(float(rng.uniform(1e-5, 0.5)))
        zp = int(rng.integers(-128, 128))
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
        beats.append({"acc": acc, "multiplier": mult, "shift": shift, "zero_point": zp, "lo": lo, "hi": hi})
    return beats


def expected(beat):
    return int(requantize(beat["acc"], beat["multiplier"], beat["shift"], beat["zero_point"],
                          beat["lo"], beat["hi"]))


def boundary_beats(seed, count):
    """Products that land near the saturating shift's 18-, 12- and 10-bit limits, every shift."""
    rng = np.random.default_rng(seed)
    beats = []
    for i in range(count):
        shift = i % (MAX_SHIFT + 1)
        mult = int(rng.integers(1, 2**MULTIPLIER_BITS))
        target = (int(rng.choice([1, -1])) * int(rng.choice([2**9, 2**10, 2**11, 2**17]))
                  + int(rng.integers(-3, 4)))
        acc = max(-(2**31), min(2**31 - 1, (target << shift) // mult + int(rng.integers(-2, 3))))
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
        beats.append({"acc": acc, "multiplier": mult, "shift": shift,
                      "zero_point": int(rng.integers(-128, 128)), "lo": lo, "hi": hi})
    return beats


@pytest.mark.parametrize("saturating_shift", [False, True])
@pytest.mark.parametrize("seed, idle, stall", [(0, 0.0, 0.0), (1, 0.3, 0.0), (2, 0.0, 0.4), (3, 0.5, 0.5)])
def test_requantizer_matches_the_contract_under_backpressure(seed, idle, stall, saturating_shift):
    dut = Requantizer(saturating_shift=saturating_shift)
    beats = random_beats(seed, 200) + boundary_beats(seed, 200)
    rng = random.Random(seed)
    got = []

    async def producer(ctx):
        for beat in beats:
            await stream_put(ctx, dut.i_stream, beat, rng=rng, idle_prob=idle)

    async def consumer(ctx):
        for _ in beats:
            got.append(await stream_get(ctx, dut.o_stream, rng=rng, stall_prob=stall))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * 20 * len(beats))      # ample time: a lost beat leaves `got` short
    assert got == [expected(b) for b in beats]


@pytest.mark.parametrize("saturating_shift", [False, True])
def test_requantizer_streams_one_beat_per_cycle_with_five_cycle_latency(saturating_shift):
    dut = Requantizer(saturating_shift=saturating_shift)
    beats = random_beats(7, 50)
    accepted, received = [], []

    async def producer(ctx):
        for beat in beats:
            await stream_put(ctx, dut.i_stream, beat)
            accepted.append(ctx.get(cycle))

    async def consumer(ctx):
        for _ in beats:
            value = await stream_get(ctx, dut.o_stream)
            received.append((ctx.get(cycle), value))

    from amaranth import Module, Signal
    cycle = Signal(16)
    top = Module()
    top.submodules.dut = dut
    top.d.sync += cycle.eq(cycle + 1)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * 100)
    assert [v for _, v in received] == [expected(b) for b in beats]
    assert np.all(np.diff(accepted) == 1) and np.all(np.diff([c for c, _ in received]) == 1)
    assert received[0][0] - accepted[0] == 5


@pytest.mark.parametrize("seed", [0, 1])
def test_requantizer_with_held_parameters_matches_the_contract(seed):
    """``held_params``: runs of beats sharing their parameters, each run sent once the last
    run's results are all out (as the serial back end changes them), under backpressure."""
    dut = Requantizer(saturating_shift=True, held_params=True)
    rng = random.Random(seed)
    beats = random_beats(seed, 120) + boundary_beats(seed, 120)
    runs, i = [], 0
    while i < len(beats):
        size = rng.randint(1, 12)
        params = {k: v for k, v in beats[i].items() if k != "acc"}
        runs.append([{**b, **params} for b in beats[i:i + size]])
        i += size
    got, done = [], []

    async def producer(ctx):
        for run in runs:
            while len(done) < sum(len(r) for r in runs[:runs.index(run)]):
                await ctx.tick()
            for beat in run:
                await stream_put(ctx, dut.i_stream, beat, rng=rng, idle_prob=0.3)

    async def consumer(ctx):
        for _ in range(sum(map(len, runs))):
            got.append(await stream_get(ctx, dut.o_stream, rng=rng, stall_prob=0.3))
            done.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * 40 * len(beats))
    assert got == [expected(b) for run in runs for b in run]
