"""ProcessingElement and SystolicArray in amaranth.sim: column sums equal numpy's, on time."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.systolic_array import ProcessingElement, SystolicArray


def run_pe(steps):
    """Drive a lone PE with ``steps`` (dicts of its inputs) one per cycle; return its outputs,
    read in the cycle after each step."""
    dut = ProcessingElement(x_bits=9, weight_bits=8, acc_width=32)
    seen = []

    async def tb(ctx):
        for step in steps:
            for name in ("x_in", "valid_in", "first_in", "psum_in", "w_load", "w_data"):
                ctx.set(getattr(dut, f"{name}"), step.get(name, 0))
            await ctx.tick()
            seen.append({name: ctx.get(getattr(dut, name))
                         for name in ("psum_out", "x_out", "valid_out", "first_out")})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return seen


def test_pe_switches_weights_with_the_first_wave():
    # The shadow weight 3 is loaded; the first wave switches to it. A second load (weight -5)
    # goes to the shadow only: the waves that follow keep multiplying by 3 until the next
    # first wave, which uses -5. A load in the cycle of a first wave is used at once (bypass).
    seen = run_pe([
        {"w_load": 1, "w_data": 3},
        {"x_in": 10, "valid_in": 1, "first_in": 1, "psum_in": 7},
        {"x_in": -255, "valid_in": 1, "psum_in": 1, "w_load": 1, "w_data": -5},
        {"x_in": 255, "valid_in": 1, "psum_in": 0},
        {"x_in": 2, "valid_in": 1, "first_in": 1, "psum_in": 100},
        {"x_in": 4, "valid_in": 1, "first_in": 1, "psum_in": 0, "w_load": 1, "w_data": -128},
        {"x_in": 1, "valid_in": 0, "first_in": 1, "psum_in": 0, "w_load": 1, "w_data": 9},
        {"x_in": 1, "valid_in": 1, "psum_in": 0},
    ])
    assert [s["psum_out"] for s in seen[1:]] == [
        7 + 10 * 3, 1 - 255 * 3, 255 * 3, 100 + 2 * -5, 4 * -128,
        -128,            # a bubble's "first" does not switch
        -128,            # so the shadow's 9 is not used yet
    ]
    assert [s["x_out"] for s in seen[1:4]] == [10, -255, 255]
    assert [(s["valid_out"], s["first_out"]) for s in seen[1:3]] == [(1, 1), (1, 0)]


def run_array(config, tiles, gap=None):
    """Feed ``tiles`` (list of (X[M, rows], W[rows, cols])) back to back, ``gap`` cycles apart
    (default max(M, rows, cols)), each weight row ``r`` loaded just as the tile's first wave
    reaches row ``r``. Returns, per column, the (cycle, value) of every valid output."""
    dut = SystolicArray(config)
    R, C = config.rows, config.cols
    schedule = {}     # cycle -> inputs
    t = 0
    for x, w in tiles:
        period = gap or max(len(x), R, C)
        for s in range(period):
            step = schedule.setdefault(t + s, {})
            if s < len(x):
                step.update(x=x[s], valid=1, first=int(s == 0))
            if s < R:
                step.update(w_row=w[s], w_row_index=s, w_load=1)
        t += period
    end = t + R + C + 2
    outputs = [[] for _ in range(C)]

    async def tb(ctx):
        for cycle in range(end):
            step = schedule.get(cycle, {})
            ctx.set(dut.x, [int(v) for v in step.get("x", [0] * R)])
            ctx.set(dut.valid, step.get("valid", 0))
            ctx.set(dut.first, step.get("first", 0))
            ctx.set(dut.w_row, [int(v) for v in step.get("w_row", [0] * C)])
            ctx.set(dut.w_row_index, step.get("w_row_index", 0))
            ctx.set(dut.w_load, step.get("w_load", 0))
            valid = ctx.get(dut.y_valid)
            for c in range(C):
                if valid >> c & 1:
                    outputs[c].append((cycle, ctx.get(dut.y[c])))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return outputs


def random_tile(rng, config, m):
    w_lo, w_hi = -(1 << config.weight_bits - 1), 1 << config.weight_bits - 1
    x = rng.integers(-255, 256, (m, config.rows))           # x - zp spans 9 bits signed
    w = rng.integers(w_lo, w_hi, (config.rows, config.cols))
    return x, w


@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 3), (4, 4)])
@pytest.mark.parametrize("weight_bits", [8, 4, 2])
def test_column_sums_of_back_to_back_tiles(rows, cols, weight_bits):
    # Three tiles of different heights go through without a bubble between them: each wave's
    # column sums equal numpy's, and column c of wave i of a tile starting at cycle t leaves
    # at cycle t + i + rows + c, although the next tile's weights were loading meanwhile.
    config = BackendConfig(rows=rows, cols=cols, weight_bits=weight_bits)
    rng = np.random.default_rng(rows * 100 + cols * 10 + weight_bits)
    tiles = [random_tile(rng, config, m) for m in (5, 1, 3)]
    outputs = run_array(config, tiles)

    starts = np.cumsum([0] + [max(len(x), rows, cols) for x, _ in tiles])
    for c in range(cols):
        expected = [(int(start + i + rows + c), int(v))
                    for start, (x, w) in zip(starts, tiles)
                    for i, v in enumerate(x @ w[:, c])]
        assert outputs[c] == expected


def test_extreme_values_do_not_overflow_the_product():
    # -255 * -128 is the largest product (x - zp is 9 bits, the weight 8); a column of four of
    # them adds up to 130560 exactly.
    config = BackendConfig(rows=4, cols=1)
    x = np.full((2, 4), -255)
    w = np.full((4, 1), -128)
    outputs = run_array(config, [(x, w)])
    assert [v for _, v in outputs[0]] == [4 * 255 * 128] * 2


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("kwargs, bad", [
    ({"rows": 0}, 0), ({"weight_bits": 3}, 3), ({"w_depth": 6}, 6),
    ({"rows": 8, "w_depth": 8}, 8), ({"acc_width": 16}, 16), ({"act_bits": 16}, 16),
])
def test_config_rejects_bad_values(kwargs, bad):
    with pytest.raises(ValueError, match=repr(bad)):
        BackendConfig(**kwargs)
