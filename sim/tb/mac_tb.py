"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.mac.MacUnit`.

The ``.npz`` in ``$HOARFROST_VECTORS`` holds one input beat per element of ``a``, ``b`` and
``last``, the expected dot products in ``expected``, the ``weight_bits`` of the design, and the
``idle_prob`` / ``stall_prob`` of the random backpressure.
"""

import random

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, RisingEdge

from hoarfrost.hw.mac import mac_input_layout
from hoarfrost.sim.streams import StreamDriver, StreamSink, pack_struct
from hoarfrost.sim.tb.common import CLOCK_NS, clock_and_reset, load_vectors

async def reset(dut) -> None:
    await clock_and_reset(dut)


def input_beats(vectors: dict) -> list[int]:
    layout = mac_input_layout(int(vectors["weight_bits"]))
    return [pack_struct(layout, {"a": int(a), "b": int(b), "last": int(last)})
            for a, b, last in zip(vectors["a"], vectors["b"], vectors["last"])]


async def stream_through(dut, vectors, rng, idle_prob, stall_prob) -> tuple[StreamSink, int]:
    """Reset, send every beat, collect every result; return the sink and the cycles taken."""
    await reset(dut)
    driver = StreamDriver(dut, "i_stream", dut.clk, rng, idle_prob)
    sink = StreamSink(dut, "o_stream", dut.clk, rng, stall_prob, signed=True)
    beats = input_beats(vectors)
    expected_count = len(vectors["expected"])
    start = get_sim_time("ns")
    sink.start()
    await driver.send(beats)
    await sink.wait_for(expected_count, timeout_cycles=50 * len(beats) + 100)
    cycles = round((get_sim_time("ns") - start) / CLOCK_NS)
    # Let the counters take in the last edge before they are read.
    await ClockCycles(dut.clk, 2)
    return sink, cycles


@cocotb.test()
async def dot_products_under_backpressure(dut):
    """Every dot product arrives once, in order, equal to numpy's; counters match."""
    vectors = load_vectors()
    rng = random.Random(cocotb.RANDOM_SEED)
    sink, _ = await stream_through(dut, vectors, rng, float(vectors["idle_prob"]),
                                   float(vectors["stall_prob"]))

    assert sink.items == vectors["expected"].tolist()
    assert dut.macs.value.to_unsigned() == len(vectors["a"])
    assert dut.stall_cycles.value.to_unsigned() == sink.stall_cycles


@cocotb.test()
async def one_beat_per_cycle(dut):
    """Without backpressure the unit takes a beat every cycle and never stalls."""
    vectors = load_vectors()
    sink, cycles = await stream_through(dut, vectors, random.Random(0), 0.0, 0.0)

    assert sink.items == vectors["expected"].tolist()
    # The last result is seen ready-and-valid in the cycle after the last beat went in.
    assert cycles == len(vectors["a"]) + 1
    assert dut.stall_cycles.value.to_unsigned() == 0
