"""CounterBank in amaranth.sim against a list of integers: random events, clears and reads."""

import random

import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.counter_bank import CounterBank


@pytest.mark.parametrize("count, width, event_prob, seed", [
    (1, 10, 1.0, 0), (3, 9, 0.9, 1), (16, 24, 0.7, 2), (20, 12, 1.0, 3), (5, 8, 0.2, 4)])
def test_counters_read_what_a_model_counts(count, width, event_prob, seed):
    """Every cycle: random events (dense enough that the low bits wrap at every counter's
    fastest rate), now and then a clear of some counters, and a read of a random counter,
    whose value next cycle must equal the model's of this cycle."""
    dut = CounterBank(count, width)
    rng = random.Random(seed)
    model = [0] * count
    checked = []

    async def bench(ctx):
        pending = None                    # (index, expected) of last cycle's read
        for cycle in range(3000):
            events = sum(1 << i for i in range(count) if rng.random() < event_prob)
            clear = sum(1 << i for i in range(count) if rng.random() < 0.002)
            index = rng.randrange(count)
            ctx.set(dut.events, events)
            ctx.set(dut.clear, clear)
            ctx.set(dut.rd_index, index)
            if pending is not None:
                assert ctx.get(dut.rd_value) == pending[1], (cycle, pending)
                checked.append(pending)
            pending = (index, model[index])
            for i in range(count):
                if clear >> i & 1:
                    model[i] = 0
                elif events >> i & 1:
                    model[i] = (model[i] + 1) % (1 << width)
            await ctx.tick()
        # then quiet: every counter reads its final value
        ctx.set(dut.events, 0)
        ctx.set(dut.clear, 0)
        for i in range(count):
            ctx.set(dut.rd_index, i)
            await ctx.tick()
            assert ctx.get(dut.rd_value) == model[i]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) == 2999
    assert max(model) >= 1 << dut.low_bits     # the high parts were exercised


def test_counter_bank_rejects_too_few_low_bits():
    with pytest.raises(ValueError, match="low_bits must be at least 6 for 16 counters"):
        CounterBank(16, 24, low_bits=5)
    with pytest.raises(ValueError, match="width must be an integer above low_bits = 6"):
        CounterBank(16, 6)
