"""GemmEngine in amaranth.sim: C = (A - zp) @ B + bias equals numpy's, in the modelled cycles."""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.gemm_engine import COUNTERS, GemmEngine
from hoarfrost.sim.cycle_model import compute_phase_bound, predict_gemm
from hoarfrost.sim.gemm_streams import (assemble_output, gemm_beats, random_gemm,
                                        reference_gemm)
from hoarfrost.sim.streams import stream_get, stream_put

#: Counters that count events, not time: the same whatever the backpressure.
EVENT_COUNTERS = ("busy_cycles", "macs_issued", "macs_useful", "a_writes", "a_reads",
                  "w_writes", "w_reads", "acc_writes", "acc_reads", "out_beats")


def engine_config(rows, cols, weight_bits=8):
    return BackendConfig(rows=rows, cols=cols, weight_bits=weight_bits, a_depth=256,
                         w_depth=max(4, 1 << (2 * rows - 1).bit_length()), acc_depth=64)


def run_gemms(config, gemms, *, seed=0, idle_prob=0.0, stall_prob=0.0, keep_counters=False):
    """Run the GEMMs ``gemms`` (dicts from random_gemm) one after another on one engine.

    A host process sets the sizes and pulses ``start``; three producers and a consumer move the
    streams concurrently, with random idle cycles and stalls. Returns per GEMM the result C,
    the counters read when ``busy`` fell, and the output stalls an observer counted.
    ``keep_counters``: the engine keeps counting over the runs, cleared before the first.
    """
    dut = GemmEngine(config, keep_counters=keep_counters)
    rng = random.Random(seed)
    shared = {"started": 0}
    runs = [{"out": [], "out_stalls": 0} for _ in gemms]
    sizes = [(g["a"].shape[0], g["b"].shape[1], g["a"].shape[1]) for g in gemms]
    beats = [gemm_beats(config, g["a"], g["b"], g["bias"]) for g in gemms]

    async def host(ctx):
        if keep_counters:
            ctx.set(dut.clear_counters, 1)
            await ctx.tick()
            ctx.set(dut.clear_counters, 0)
        for i, (g, (m, n, k)) in enumerate(zip(gemms, sizes)):
            ctx.set(dut.m, m)
            ctx.set(dut.n, n)
            ctx.set(dut.k, k)
            ctx.set(dut.zero_point, g["zero_point"])
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            shared["started"] = i + 1
            await ctx.tick().until(~dut.busy)
            runs[i]["counters"] = {name: ctx.get(getattr(dut, name)) for name in COUNTERS}

    def producer(stream, key):
        async def put_all(ctx):
            for i in range(len(gemms)):
                while shared["started"] <= i:
                    await ctx.tick()
                for row in beats[i][key]:
                    await stream_put(ctx, stream, [int(v) for v in row], rng=rng,
                                     idle_prob=idle_prob)
        return put_all

    async def consumer(ctx):
        for i, (m, n, _) in enumerate(sizes):
            for _ in range(-(-n // config.cols) * m):
                runs[i]["out"].append(list(await stream_get(ctx, dut.o_stream, rng=rng,
                                                            stall_prob=stall_prob)))

    async def observer(ctx):
        async for _clk, _rst, valid, ready in ctx.tick().sample(dut.o_stream.valid,
                                                                dut.o_stream.ready):
            runs[max(shared["started"] - 1, 0)]["out_stalls"] += valid and not ready

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(observer, background=True)
    sim.add_testbench(host)
    sim.add_testbench(producer(dut.a_stream, "a"))
    sim.add_testbench(producer(dut.b_stream, "b"))
    sim.add_testbench(producer(dut.bias_stream, "bias"))
    sim.add_testbench(consumer)
    sim.run()
    for run, (m, n, _) in zip(runs, sizes):
        run["c"] = assemble_output(config.cols, run["out"], m, n)
    return runs


def expected(g, config):
    return reference_gemm(g["a"], g["b"], g["bias"], g["zero_point"], config.acc_width)


# (rows, cols, weight_bits, M, N, K): 1x1 and non-square arrays, sizes that are not multiples
# of the array, K many times the array height, M below the array size, and K <= rows with many
# N tiles (the issue stage then waits for accumulator banks to drain).
SHAPES = [
    (1, 1, 8, 3, 2, 5),
    (2, 3, 4, 5, 7, 11),
    (4, 4, 8, 13, 10, 37),
    (2, 2, 2, 1, 3, 9),
    (3, 2, 8, 2, 5, 4),
    (4, 4, 4, 9, 9, 3),
    (4, 4, 8, 4, 4, 4),
]


@pytest.mark.parametrize("rows, cols, weight_bits, m, n, k", SHAPES)
def test_full_rate_gemm_matches_numpy_and_the_cycle_model(rows, cols, weight_bits, m, n, k):
    # Operands offered every cycle, results taken every cycle: C equals numpy's and every
    # counter, cycles included, equals the analytic model's prediction.
    config = engine_config(rows, cols, weight_bits)
    g = random_gemm(config, m, n, k, seed=rows * 1000 + m * 10 + k)
    (run,) = run_gemms(config, [g])

    np.testing.assert_array_equal(run["c"], expected(g, config))
    predicted = dataclasses.asdict(predict_gemm(config, m, n, k))
    assert {name: run["counters"][name] for name in predicted if name in COUNTERS} == \
        {name: value for name, value in predicted.items() if name in COUNTERS}
    assert run["counters"]["out_stall_cycles"] == 0


@pytest.mark.parametrize("rows, cols, weight_bits, m, n, k", SHAPES[:6])
@pytest.mark.parametrize("seed", [1, 2])
def test_gemm_under_random_backpressure(rows, cols, weight_bits, m, n, k, seed):
    # Producers idle 30% of cycles, the consumer stalls half of them: C is still exact, events
    # are counted exactly as modelled, time only grows, and the engine's count of output stalls
    # is what an observer outside saw.
    config = engine_config(rows, cols, weight_bits)
    g = random_gemm(config, m, n, k, seed=seed)
    (run,) = run_gemms(config, [g], seed=seed, idle_prob=0.3, stall_prob=0.5)

    np.testing.assert_array_equal(run["c"], expected(g, config))
    predicted = predict_gemm(config, m, n, k)
    counters = run["counters"]
    assert {name: counters[name] for name in EVENT_COUNTERS} == \
        {name: getattr(predicted, name) for name in EVENT_COUNTERS}
    assert counters["cycles"] > predicted.cycles
    assert counters["out_stall_cycles"] == run["out_stalls"]


def test_two_gemms_in_a_row_reset_state_and_counters():
    # A second start after the first GEMM finished begins from clean buffers and counters:
    # both results are exact and the second run's counters are its own.
    config = engine_config(2, 3, 8)
    first = random_gemm(config, 6, 7, 5, seed=5)
    second = random_gemm(config, 3, 2, 9, seed=6)
    runs = run_gemms(config, [first, second])

    for run, g in zip(runs, (first, second)):
        np.testing.assert_array_equal(run["c"], expected(g, config))
    assert runs[1]["counters"]["cycles"] == predict_gemm(config, 3, 2, 9).cycles
    assert runs[1]["counters"]["macs_useful"] == 3 * 2 * 9


def test_kept_counters_sum_the_runs():
    # keep_counters (the back end's engine): start leaves the counters running on, so after
    # two GEMMs every event counter is the sum of both runs' model counts.
    config = engine_config(2, 2, 8)
    first = random_gemm(config, 5, 3, 7, seed=8)
    second = random_gemm(config, 2, 4, 3, seed=9)
    runs = run_gemms(config, [first, second], keep_counters=True)

    for run, g in zip(runs, (first, second)):
        np.testing.assert_array_equal(run["c"], expected(g, config))
    one, two = predict_gemm(config, 5, 3, 7), predict_gemm(config, 2, 4, 3)
    assert {name: runs[1]["counters"][name] for name in EVENT_COUNTERS} == \
        {name: getattr(one, name) + getattr(two, name) for name in EVENT_COUNTERS}


@pytest.mark.parametrize("size", [4, 8])
def test_square_gemm_compute_phase_within_weight_stationary_bound(size):
    # An n x n x n GEMM on an n x n array: the compute phase (first wave to last accumulator
    # write) takes 3n cycles -- n waves, n to cross the rows, n of column skew -- within the
    # 4n - 3 of a weight-stationary array that preloads its weights.
    config = engine_config(size, size, 8)
    g = random_gemm(config, size, size, size, seed=size)
    (run,) = run_gemms(config, [g])

    np.testing.assert_array_equal(run["c"], expected(g, config))
    assert run["counters"]["compute_cycles"] == 3 * size <= compute_phase_bound(size)
    assert run["counters"]["macs_useful"] == run["counters"]["macs_issued"] == size ** 3


def test_accumulators_wrap_like_int32():
    # With the bias near the int32 limit the sums wrap, as an int32 accumulator does.
    config = engine_config(2, 2, 8)
    g = random_gemm(config, 3, 2, 4, seed=9)
    g["a"][:] = -128
    g["zero_point"] = 127
    g["b"][:] = -128
    g["bias"][:] = 2**31 - 1
    (run,) = run_gemms(config, [g])
    want = expected(g, config)
    assert (want < 0).all()          # wrapped
    np.testing.assert_array_equal(run["c"], want)
