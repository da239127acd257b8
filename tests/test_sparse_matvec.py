"""SparseMatVec and SparsePE in amaranth.sim: results equal golden_sparse bit for bit, counters
equal its event counts, and each PE does one multiply-accumulate per cycle."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.gen.ir import QParams
from hoarfrost.gen.sparse import encode, random_activations, random_layer
from hoarfrost.hw.sparse_matvec import SparseMatVec, SparsePE
from hoarfrost.sim.golden_sparse import SparseCounts, sparse_dense_int
from hoarfrost.sim.streams import stream_get, stream_put
from test_sparse import layer_from_index, random_codebook, random_index

COUNTERS = ("cycles", "busy_cycles", "skipped", "macs", "entries", "stall_cycles")


def run_matvec(dut, x, n_out, *, seed=0, idle_prob=0.0, stall_prob=0.0):
    """Stream the rows of ``x`` through ``dut`` back to back; return outputs and counters."""
    rng = random.Random(seed)
    seen = {"outputs": []}

    async def producer(ctx):
        for vector in x:
            for c, value in enumerate(vector):
                await stream_put(ctx, dut.i_stream, {"data": int(value),
                                                     "last": c == len(vector) - 1},
                                 rng=rng, idle_prob=idle_prob)

    async def consumer(ctx):
        for _ in range(n_out):
            seen["outputs"].append(await stream_get(ctx, dut.o_stream, rng=rng,
                                                    stall_prob=stall_prob))
        await ctx.tick()
        for name in COUNTERS:
            seen[name] = ctx.get(getattr(dut, name))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return seen


def check_against_golden(layer, qin, enc, x, **kwargs):
    counts = SparseCounts()
    expected = sparse_dense_int(x, enc, layer, qin, counts)
    seen = run_matvec(SparseMatVec(enc, layer, qin, fifo_depth=4), x, expected.size, **kwargs)
    assert seen["outputs"] == expected.reshape(-1).tolist()
    assert seen["skipped"] == counts.skipped
    assert seen["macs"] == counts.macs
    assert seen["entries"] == counts.entries
    return seen, counts


@pytest.mark.parametrize("seed", range(6))
def test_random_layers_under_backpressure(seed):
    # Random shapes, densities, codebook sizes and PE counts, with some all-zero rows and
    # columns; random idle input and stalled output. Three vectors run back to back, so the
    # accumulator banks alternate and drains overlap the next vector.
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    bits = int(rng.integers(2, 5))
    index = random_index(rng, rows, cols, float(rng.choice([0.05, 0.2, 0.5, 0.9])), bits,
                         zero_rows=[int(rng.integers(rows))], zero_cols=[int(rng.integers(cols))])
    codebook = random_codebook(rng, bits)
    pes = int(rng.integers(1, 6))
    layer = layer_from_index(rng, index, codebook)
    qin = QParams(0.05, int(rng.integers(-128, 128)))
    x = random_activations(rng, 3, cols, float(rng.choice([0.0, 0.3, 1.0])), qin.zero_point)
    check_against_golden(layer, qin, encode(index, codebook, pes), x, seed=seed,
                         idle_prob=0.3, stall_prob=0.4)


@pytest.mark.parametrize("rows, cols, pes", [(2, 1, 4), (1, 5, 1), (17, 3, 8), (9, 30, 2)])
def test_odd_shapes(rows, cols, pes):
    # More PEs than rows (some PEs own nothing), a single column, a single row, rows not a
    # multiple of the PE count.
    rng = np.random.default_rng(rows * 100 + cols)
    index = random_index(rng, rows, cols, 0.6, 4)
    codebook = random_codebook(rng, 4)
    layer = layer_from_index(rng, index, codebook)
    qin = QParams(0.05, -7)
    x = random_activations(rng, 3, cols, 0.7, qin.zero_point)
    check_against_golden(layer, qin, encode(index, codebook, pes), x, seed=rows,
                         idle_prob=0.2, stall_prob=0.5)


def test_all_zero_input_only_adds_bias():
    # Every activation equals the zero point: nothing is broadcast, no entry is read, the
    # outputs are the requantized biases.
    layer, qin, enc = random_layer(12, 10, 0.3, codebook_bits=3, pes=3, seed=1)
    x = np.full((2, 10), qin.zero_point, dtype=np.int8)
    seen, _ = check_against_golden(layer, qin, enc, x)
    assert seen["skipped"] == 20
    assert seen["macs"] == seen["entries"] == seen["busy_cycles"] == 0


def test_all_zero_weights_and_long_gaps():
    # A matrix with empty columns and rows further apart than 15 exercises padding entries
    # (codebook index 0): they are read, but folded into the entry after them, so they cost
    # no multiply-accumulate cycle.
    rng = np.random.default_rng(5)
    index = np.zeros((40, 6), dtype=np.int64)
    index[[0, 17, 39], 1] = [1, 2, 3]
    index[35, 4] = 1
    codebook = random_codebook(rng, 2)
    enc = encode(index, codebook, 1)
    assert enc.padding == 4          # 17-0-1=16 > 15; 39-17-1=21 > 15; 35 > 15 twice
    layer = layer_from_index(rng, index, codebook)
    qin = QParams(0.05, 3)
    x = random_activations(rng, 2, 6, 1.0, qin.zero_point)
    seen, counts = check_against_golden(layer, qin, enc, x)
    assert counts.entries - counts.macs == 2 * enc.padding
    # Per vector: column 1 takes 3 cycles (two paddings folded), column 4's pair of paddings
    # before row 35 takes one cycle of its own (only one padding folds per cycle), then row 35.
    assert seen["busy_cycles"] == counts.pe_slots.sum() == 2 * (3 + 2)


def test_one_mac_per_cycle_per_pe():
    # Without backpressure the busiest PE sets the pace: one MAC per cycle, the queues hiding
    # the other PEs' imbalance. Eight vectors back to back: total cycles stay within 1.25x of
    # the busiest PE's entries plus one final drain.
    layer, qin, enc = random_layer(64, 64, 0.25, codebook_bits=4, pes=4, seed=2)
    assert enc.count_split() == (3, 2)      # some long columns go through the escape
    x = random_activations(np.random.default_rng(3), 8, 64, 0.5, qin.zero_point)
    counts = SparseCounts()
    expected = sparse_dense_int(x, enc, layer, qin, counts)
    seen = run_matvec(SparseMatVec(enc, layer, qin, fifo_depth=8), x, expected.size)
    assert seen["outputs"] == expected.reshape(-1).tolist()
    busiest = int(counts.pe_slots.max())
    assert seen["busy_cycles"] >= busiest
    assert seen["cycles"] <= 1.1 * busiest + 64 + 20
    assert seen["cycles"] <= 1.25 * counts.macs / 4 + 64


def test_pe_accumulates_one_entry_per_cycle():
    # A single PE fed two work items back to back issues their 3 + 2 entries in 5 consecutive
    # cycles and accumulates act * codebook[index] into the rows the relative indexes name.
    rel = [1, 0, 2, 0, 3]             # column A: rows 1, 2, 5; column B: rows 0, 4
    index = [1, 2, 3, 1, 3]
    codebook = [0, 5, -7, 11]
    pe = SparsePE(rel, index, rows=6, codebook=codebook, ptr_bits=3, count_bits=2)
    seen = {"issue": []}

    async def bench(ctx):
        for work in ({"act": 3, "ptr": 0, "count": 3, "bank": 1, "end": 0},
                     {"act": -2, "ptr": 3, "count": 2, "bank": 1, "end": 0},
                     {"act": 0, "ptr": 0, "count": 0, "bank": 1, "end": 1}):
            await stream_put(ctx, pe.i_stream, work)
        for _ in range(8):
            await ctx.tick()
        seen["done"] = ctx.get(pe.done)
        ctx.set(pe.rd_bank, 1)
        for row in range(6):
            ctx.set(pe.rd_row, row)
            seen[row] = ctx.get(pe.rd_data)

    async def watch(ctx):
        async for _clk, _rst, issue in ctx.tick().sample(pe.issue):
            seen["issue"].append(issue)

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(bench)
    sim.run()
    assert "".join(map(str, seen["issue"][:8])) == "01111100"
    assert seen["done"] == 0b10
    assert [seen[r] for r in range(6)] == [-2 * 5, 3 * 5, 3 * -7, 0, -2 * 11, 3 * 11]
