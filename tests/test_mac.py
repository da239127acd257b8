"""MacUnit in amaranth.sim: dot products equal numpy's, under any pattern of backpressure."""

import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.mac import MacUnit, mac_input_layout
from hoarfrost.sim.streams import pack_struct, stream_get, stream_put, to_signed, unpack_struct


def random_vectors(np_rng, weight_bits, count, max_len):
    """``count`` (activations, weights) pairs of random lengths 1..max_len, full value range."""
    w_lo, w_hi = -(1 << weight_bits - 1), 1 << weight_bits - 1
    vectors = []
    for _ in range(count):
        n = int(np_rng.integers(1, max_len + 1))
        vectors.append((np_rng.integers(-128, 128, n), np_rng.integers(w_lo, w_hi, n)))
    return vectors


def run_mac(dut, vectors, *, seed=0, idle_prob=0.0, stall_prob=0.0, consumer_delay=0):
    """Stream ``vectors`` through ``dut``; return what the testbenches saw.

    The result holds the dot products received, the counters read at the end, the stall cycles
    observed from outside the DUT, the cycle at which each input beat was accepted, and the total
    cycle count.
    """
    rng = random.Random(seed)
    seen = {"outputs": [], "accept_cycle": [], "observed_stalls": 0, "cycle": 0}
    # A unit that loses a beat would leave the consumer waiting forever.
    max_cycles = 20 * sum(len(a) for a, _ in vectors) + consumer_delay + 100

    async def clock_counter(ctx):
        # Observes the output handshake independently of the DUT's own counter.
        async for _clk, _rst, valid, ready in ctx.tick().sample(dut.o_stream.valid,
                                                                 dut.o_stream.ready):
            seen["cycle"] += 1
            seen["observed_stalls"] += valid and not ready
            assert seen["cycle"] < max_cycles, \
                f"timed out with {len(seen['outputs'])} of {len(vectors)} results"

    async def producer(ctx):
        for a, b in vectors:
            for i, (ai, bi) in enumerate(zip(a, b)):
                await stream_put(ctx, dut.i_stream,
                                 {"a": int(ai), "b": int(bi), "last": i == len(a) - 1},
                                 rng=rng, idle_prob=idle_prob)
                seen["accept_cycle"].append(seen["cycle"])

    async def consumer(ctx):
        await ctx.tick().repeat(consumer_delay) if consumer_delay else None
        for _ in vectors:
            seen["outputs"].append(await stream_get(ctx, dut.o_stream, rng=rng,
                                                    stall_prob=stall_prob))
        seen["total_cycles"] = seen["cycle"]
        await ctx.tick()
        seen["macs"] = ctx.get(dut.macs)
        seen["stall_cycles"] = ctx.get(dut.stall_cycles)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock_counter, background=True)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return seen


@pytest.mark.parametrize("weight_bits", [2, 4, 8])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dot_products_under_random_backpressure(weight_bits, seed):
    # Random idle cycles on the input and random stalls on the output: every dot product still
    # arrives exactly once, in order, equal to numpy's, and the counters match what was seen.
    np_rng = np.random.default_rng(seed)
    vectors = random_vectors(np_rng, weight_bits, count=24, max_len=12)
    seen = run_mac(MacUnit(weight_bits=weight_bits), vectors, seed=seed,
                   idle_prob=0.3, stall_prob=0.5)

    expected = [int(np.dot(a.astype(np.int64), b.astype(np.int64))) for a, b in vectors]
    assert seen["outputs"] == expected
    assert seen["macs"] == sum(len(a) for a, _ in vectors)
    assert seen["stall_cycles"] == seen["observed_stalls"] > 0


def test_full_throughput_without_backpressure():
    # With a producer that never idles and a consumer that never stalls, the unit takes one beat
    # per cycle: the last result leaves one cycle after the last beat went in.
    vectors = random_vectors(np.random.default_rng(7), 8, count=10, max_len=6)
    seen = run_mac(MacUnit(weight_bits=8), vectors)

    beats = sum(len(a) for a, _ in vectors)
    assert seen["accept_cycle"] == list(range(1, beats + 1))
    assert seen["total_cycles"] == beats + 1
    assert seen["stall_cycles"] == 0
    assert seen["macs"] == beats


def test_stalled_output_blocks_only_the_last_beat():
    # The consumer sleeps for 20 cycles. The first vector's result waits in the output register;
    # the second vector's leading beats are still accumulated, but its last beat has to wait
    # until the first result has been read.
    a1, b1 = np.array([3, -4]), np.array([5, 6])
    a2, b2 = np.array([1, 2, 3, 4]), np.array([-1, -1, -1, -1])
    seen = run_mac(MacUnit(weight_bits=4), [(a1, b1), (a2, b2)], consumer_delay=20)

    assert seen["outputs"] == [3 * 5 - 4 * 6, -10]
    assert seen["accept_cycle"][:5] == [1, 2, 3, 4, 5]
    # The consumer becomes ready during cycle 21 and takes the first result at that edge;
    # the held-back last beat goes in at the same edge.
    assert seen["accept_cycle"][5] == 21
    # The first result became valid at edge 2, so edges 3 to 20 found it stalled.
    assert seen["stall_cycles"] == seen["observed_stalls"] == 18


def test_accumulator_wraps_like_twos_complement():
    # With a 16-bit accumulator, 3 * 127 * 127 = 48387 overflows; the unit wraps, as an int16
    # accumulator in the golden model would.
    a, b = np.full(3, 127), np.full(3, 127)
    seen = run_mac(MacUnit(weight_bits=8, acc_width=16), [(a, b), (a[:1], b[:1])])
    assert seen["outputs"] == [to_signed(48387, 16), 127 * 127]


@pytest.mark.parametrize("weight_bits", [2, 4, 8])
def test_payload_packing_agrees_with_amaranth(weight_bits):
    # cocotb drives the struct payload as one integer; pack_struct must place each field where
    # Amaranth's layout puts it, extremes of the signed ranges included.
    layout = mac_input_layout(weight_bits)
    w_min, w_max = -(1 << weight_bits - 1), (1 << weight_bits - 1) - 1
    for fields in [{"a": -128, "b": w_min, "last": 1}, {"a": 127, "b": w_max, "last": 0},
                   {"a": -1, "b": -1, "last": 1}, {"a": 0, "b": 1, "last": 0}]:
        raw = pack_struct(layout, fields)
        assert raw == layout.const(fields).as_bits()
        assert unpack_struct(layout, raw) == fields
    with pytest.raises(ValueError, match="does not fit"):
        pack_struct(layout, {"a": 0, "b": w_max + 1, "last": 0})


# The half-constructed component warns that it was never elaborated, when the garbage collector
# gets to it; collect it inside the test, where that warning is filtered.
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("kwargs", [{"weight_bits": 1}, {"weight_bits": 9},
                                    {"weight_bits": 8, "acc_width": 15}])
def test_rejects_bad_widths(kwargs):
    with pytest.raises(ValueError, match=repr(list(kwargs.values())[-1])):
        MacUnit(**kwargs)
    gc.collect()
