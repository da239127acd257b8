"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.sparse_matvec.SparseMatVec`.

The ``.npz`` in ``$HOARFROST_VECTORS`` holds the input vectors ``x`` (``(V, cols)`` int8), the
golden model's outputs ``expected`` (``(V, rows)`` int8), the golden event counts ``skipped``,
``macs`` and ``entries``, and the ``idle_prob`` / ``stall_prob`` of the random backpressure.
If ``$HOARFROST_RESULTS`` names a file, the test ``full_speed`` writes the counters it read
there as JSON (``hoarfrost bench sparse`` reads them).
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, RisingEdge

from hoarfrost.hw.sparse_matvec import activation_layout
from hoarfrost.sim.tb.common import CLOCK_NS, clock_and_reset, load_vectors
from hoarfrost.sim.streams import StreamDriver, StreamSink, pack_struct

COUNTERS = ("cycles", "busy_cycles", "skipped", "macs", "entries", "stall_cycles")


async def reset(dut) -> None:
    await clock_and_reset(dut)


def input_beats(x: np.ndarray) -> list[int]:
    layout = activation_layout()
    return [pack_struct(layout, {"data": int(v), "last": int(c == len(vector) - 1)})
            for vector in x for c, v in enumerate(vector)]


async def vector_done_cycles(dut, sink, rows: int, count: int, times: list) -> None:
    """Append to ``times`` the cycle (from now) by which each vector's last output arrived."""
    cycle = 0
    while len(times) < count:
        await RisingEdge(dut.clk)
        cycle += 1
        while len(times) < count and len(sink.items) >= (len(times) + 1) * rows:
            times.append(cycle)


async def run_vectors(dut, vectors, rng, idle_prob, stall_prob):
    """Reset, stream every vector back to back, collect every output.

    Returns the sink, the cycles from the first input beat to the last output beat, and the
    cycle by which each vector's results were complete."""
    await reset(dut)
    driver = StreamDriver(dut, "i_stream", dut.clk, rng, idle_prob)
    sink = StreamSink(dut, "o_stream", dut.clk, rng, stall_prob, signed=True)
    beats = input_beats(vectors["x"])
    count, rows = vectors["expected"].shape
    start = get_sim_time("ns")
    sink.start()
    times = []
    cocotb.start_soon(vector_done_cycles(dut, sink, rows, count, times))
    cocotb.start_soon(driver.send(beats))
    bound = 20 * (len(beats) + count * rows + int(vectors["entries"])) + 200
    await sink.wait_for(count * rows, timeout_cycles=bound)
    cycles = round((get_sim_time("ns") - start) / CLOCK_NS)
    await ClockCycles(dut.clk, 2)          # let the counters take in the last edge
    return sink, cycles, times


def read_counters(dut) -> dict[str, int]:
    return {name: getattr(dut, name).value.to_unsigned() for name in COUNTERS}


def check(sink, counters, vectors) -> None:
    expected = vectors["expected"].reshape(-1).tolist()
    assert sink.items == expected, "outputs differ from the golden model"
    for name in ("skipped", "macs", "entries"):
        assert counters[name] == int(vectors[name]), \
            f"counter {name}: RTL {counters[name]} != golden {int(vectors[name])}"


@cocotb.test()
async def outputs_under_backpressure(dut):
    """Random idle input and stalled output: every result equals the golden model's, and the
    event counters equal the golden counts."""
    vectors = load_vectors()
    rng = random.Random(cocotb.RANDOM_SEED)
    sink, _, _ = await run_vectors(dut, vectors, rng, float(vectors["idle_prob"]),
                                float(vectors["stall_prob"]))
    check(sink, read_counters(dut), vectors)


@cocotb.test()
async def full_speed(dut):
    """No backpressure: results exact; the counters (and cycles) are written for the bench."""
    vectors = load_vectors()
    sink, cycles, times = await run_vectors(dut, vectors, random.Random(0), 0.0, 0.0)
    counters = read_counters(dut)
    check(sink, counters, vectors)
    assert counters["cycles"] <= cycles
    if path := os.environ.get("HOARFROST_RESULTS"):
        with open(path, "w") as f:
            json.dump({**counters, "measured_cycles": cycles, "vector_done": times,
                       "outputs": [int(v) for v in sink.items]}, f)
