"""Constant multiplication as shift-and-add: CSD digits, shared fundamentals, exact hardware."""

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Signal, signed
from amaranth.sim import Simulator

from hoarfrost.hw.const_mult import AdderGraph, ConstMultiplier, Term, csd, csd_cost


def test_csd_is_canonical_for_every_int16():
    # Digits sum to the value, no two non-zero digits are adjacent (the CSD property, which
    # makes it the signed-digit form with the fewest non-zero digits).
    for value in range(-(1 << 15), 1 << 15):
        digits = csd(value)
        assert sum(sign << shift for shift, sign in digits) == value
        shifts = [s for s, _ in digits]
        assert all(b - a >= 2 for a, b in zip(shifts, shifts[1:]))


def test_csd_costs_of_known_constants():
    assert csd(7) == [(0, -1), (3, 1)]            # 8x - x: one subtractor
    assert csd_cost(7) == 1 and csd_cost(0) == 0 and csd_cost(64) == 0
    assert csd_cost(0b1010101) == 3               # no run to collapse (sharing does: 5 * 17)
    assert csd_cost(-128) == 0


class _AllInt8Constants(Elaboratable):
    """Every int8 constant's multiplier on one shared 8-bit input, each checked in the design
    against the simulator's own ``x * c`` (so the testbench reads one bit per input)."""

    def __init__(self):
        self.x = Signal(signed(8))
        self.mults = [ConstMultiplier(c, 8) for c in range(-128, 128)]
        self.ok = Signal(len(self.mults))

    def elaborate(self, platform):
        m = Module()
        for k, (c, mult) in enumerate(zip(range(-128, 128), self.mults)):
            m.submodules[f"m{k}"] = mult
            m.d.comb += [mult.x.eq(self.x), self.ok[k].eq(mult.product == self.x * c)]
        return m


def test_every_int8_constant_times_every_int8_input():
    # Exhaustive: 256 constants x 256 inputs, each product exact.
    dut = _AllInt8Constants()
    wrong = []

    async def tb(ctx):
        for x in range(-128, 128):
            ctx.set(dut.x, x)
            ok = ctx.get(dut.ok)
            wrong.extend((c, x) for k, c in enumerate(range(-128, 128)) if not ok >> k & 1)

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    assert wrong == []
    # At most its CSD's adders, plus one negation when the product's sign is negative; fewer
    # when a digit pattern repeats (-99 = (1 - 4) + (1 - 4) * 32 reuses x - 4x).
    # Zero and positive powers of two cost nothing.
    for c, mult in zip(range(-128, 128), dut.mults):
        assert mult.adders <= csd_cost(c) + 1, c
    assert dut.mults[128 - 99].adders == 2 < csd_cost(-99)
    assert [dut.mults[128 + c].adders for c in (0, 1, 2, 64, 3, 7, 85)] == [0, 0, 0, 0, 1, 1, 2]


def test_shared_fundamentals_cost_less_than_separate_csd():
    # Sixteen output channels' weights meeting one activation: built from shared odd
    # multiples, they cost fewer adders than one CSD multiplier each.
    rng = np.random.default_rng(1)
    constants = [int(c) for c in rng.integers(-127, 128, 16)]
    graph = AdderGraph([(-128, 127)])
    products = graph.multiple_constants(0, constants)
    for c in constants:
        if c:
            term = products[c]
            assert graph.nodes[term.node].form == {0: graph.nodes[term.node].form[0]}
            assert term.sign * (graph.nodes[term.node].form[0] << term.shift) == c
    shared = len(graph.used([t.node for t in products.values()]))
    separate = sum(csd_cost(abs(c)) for c in constants)
    assert shared < separate


def test_ranges_are_exact_so_widths_are_minimal():
    # 7x = 8x - x over int8 spans exactly [-889, 896]... as the linear form says, not the
    # looser interval sum; a sum of two inputs' products likewise.
    graph = AdderGraph([(-128, 127), (0, 255)])
    seven = graph.multiply(Term(0), 7)
    assert graph.value_range(seven.node) in {(-896, 889), (-889, 896)}
    total = graph.add(seven, Term(1, 2, -1))           # 7a - 4b
    lo, hi = graph.value_range(total.node)
    assert (lo, hi) == (7 * -128 - 4 * 255, 7 * 127) or (lo, hi) == (-7 * 127, 7 * 128 + 4 * 255)


def test_pipelined_graph_gives_the_same_sums():
    # A dot product with constants, spread over 3 stages (2 registers): two edges later.
    weights = [3, -5, 0, 7, 100, -128]
    graph = AdderGraph([(-128, 127)] * len(weights))
    terms = []
    for k, w in enumerate(weights):
        if w:
            terms.append(graph.multiple_constants(k, [w])[w])
    out = graph.add_const(graph.sum(terms), 11)

    class Dut(Elaboratable):
        def __init__(self):
            self.x = [Signal(signed(8), name=f"x{k}") for k in range(len(weights))]
            self.y = Signal(signed(graph.width(out)))

        def elaborate(self, platform):
            m = Module()
            (value,) = graph.elaborate(m, self.x, [out], stages=3, enable=1)
            m.d.comb += self.y.eq(value)
            return m

    dut = Dut()
    rng = np.random.default_rng(3)
    vectors = rng.integers(-128, 128, (20, len(weights)))
    seen = []

    async def tb(ctx):
        for v in list(vectors) + [vectors[-1]] * 2:
            for sig, val in zip(dut.x, v):
                ctx.set(sig, int(val))
            await ctx.tick()
            seen.append(ctx.get(dut.y))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    expected = [int(np.dot(v, weights)) + 11 for v in vectors]
    # Inputs set before edge t are through both registers after edge t + 1.
    assert seen[1:1 + len(vectors)] == expected
    assert graph.register_bits([out], stages=3) > 0
