"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.gemm_engine.GemmEngine`.

The ``.npz`` in ``$HOARFROST_VECTORS`` (written by :func:`write_vectors`) holds the GEMM's
stream beats (``a``, ``b``, ``bias``: one row of element values per beat), its sizes, the
design's widths, the expected C, the cycle model's predicted counters and the ``idle_prob`` /
``stall_prob`` of the random backpressure. If ``$HOARFROST_RESULTS`` names a file, each test
writes there (as JSON, keyed by test name) the counters it read and the output beats it got.

Per-cycle Python is limited to the stream drivers and the sink; the end of the run is awaited
on the falling edge of ``busy``, not by polling.
"""

from __future__ import annotations

import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge, Timer

from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.gemm_engine import COUNTERS
from hoarfrost.sim.cycle_model import predict_gemm
from hoarfrost.sim.gemm_streams import assemble_output, gemm_beats, pack_rows, unpack_rows
from hoarfrost.sim.streams import StreamDriver, StreamSink
from hoarfrost.sim.tb.common import CLOCK_NS, load_vectors, save_results

#: Counters that count events, not time: equal to the model whatever the backpressure.
EVENT_COUNTERS = ("busy_cycles", "macs_issued", "macs_useful", "a_writes", "a_reads",
                  "w_writes", "w_reads", "acc_writes", "acc_reads", "out_beats")


def write_vectors(path, config: BackendConfig, g: dict, expected, *, idle_prob=0.0,
                  stall_prob=0.0):
    """Write what this testbench reads: ``g`` from ``random_gemm``, ``expected`` C."""
    m, k = g["a"].shape
    n = g["b"].shape[1]
    beats = gemm_beats(config, g["a"], g["b"], g["bias"])
    predicted = predict_gemm(config, m, n, k)
    np.savez(path, a=beats["a"], b=beats["b"], bias=beats["bias"], m=m, n=n, k=k,
             zero_point=g["zero_point"], rows=config.rows, cols=config.cols,
             weight_bits=config.weight_bits, acc_width=config.acc_width,
             expected=np.asarray(expected, np.int64),
             predicted_names=np.array(COUNTERS),
             predicted=np.array([getattr(predicted, name, -1) for name in COUNTERS]),
             idle_prob=idle_prob, stall_prob=stall_prob)
    return path


async def reset(dut) -> None:
    dut.start.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def run_gemm(dut, v: dict, rng: random.Random, idle_prob: float,
                   stall_prob: float) -> dict:
    """Start one GEMM, stream its operands, collect C; return C, counters and timings."""
    cols = int(v["cols"])
    acc_width = int(v["acc_width"])
    m, n = int(v["m"]), int(v["n"])
    payloads = {"a": pack_rows(v["a"], 8), "b": pack_rows(v["b"], int(v["weight_bits"])),
                "bias": pack_rows(v["bias"], acc_width)}
    await reset(dut)
    dut.m.value = m
    dut.n.value = n
    dut.k.value = int(v["k"])
    dut.zero_point.value = int(v["zero_point"])
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0

    wall = time.perf_counter()
    drivers = [StreamDriver(dut, f"{name}_stream", dut.clk, rng, idle_prob)
               for name in ("a", "b", "bias")]
    sink = StreamSink(dut, "o_stream", dut.clk, rng, stall_prob)
    sink.start()
    for driver, name in zip(drivers, ("a", "b", "bias")):
        cocotb.start_soon(driver.send(payloads[name]))
    # Generous: the run cannot take longer than this even with heavy backpressure.
    limit = 50 * (len(payloads["a"]) + len(payloads["b"]) + len(v["expected"]) + 100)
    timeout = Timer(limit * CLOCK_NS, unit="ns")
    if await First(FallingEdge(dut.busy), timeout) is timeout:
        raise TimeoutError(f"busy still high after {limit} cycles; "
                           f"{len(sink.items)} output beats received")
    await ClockCycles(dut.clk, 1)
    wall = time.perf_counter() - wall

    counters = {name: getattr(dut, name).value.to_unsigned() for name in COUNTERS}
    beats = unpack_rows(sink.items, acc_width, cols)
    return {
        "c": assemble_output(cols, beats, m, n),
        "out_beats": beats.tolist(),
        "counters": counters,
        "sink_stalls": sink.stall_cycles,
        "sim_seconds": wall,
    }


def check(v: dict, got: dict, *, exact_cycles: bool) -> None:
    expected = v["expected"]
    mismatch = np.argwhere(got["c"] != expected)
    assert mismatch.size == 0, (f"{len(mismatch)} results differ from numpy, first at "
                                f"{tuple(mismatch[0])}: {got['c'][tuple(mismatch[0])]} != "
                                f"{expected[tuple(mismatch[0])]}")
    predicted = dict(zip(v["predicted_names"].tolist(), v["predicted"].tolist()))
    counters = got["counters"]
    assert {n: counters[n] for n in EVENT_COUNTERS} == {n: predicted[n] for n in EVENT_COUNTERS}
    assert counters["out_stall_cycles"] == got["sink_stalls"]
    if exact_cycles:
        assert counters["cycles"] == predicted["cycles"], (counters["cycles"], predicted["cycles"])
        assert counters["compute_cycles"] == predicted["compute_cycles"]
        assert counters["stall_cycles"] == predicted["stall_cycles"]
    else:
        assert counters["cycles"] >= predicted["cycles"]


def _public(got: dict) -> dict:
    return {key: value for key, value in got.items() if key != "c"}


@cocotb.test()
async def gemm_under_backpressure(dut):
    """C equals numpy's with the vectors' random idle cycles and stalls; events as modelled."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    v = load_vectors()
    got = await run_gemm(dut, v, random.Random(cocotb.RANDOM_SEED), float(v["idle_prob"]),
                         float(v["stall_prob"]))
    save_results("gemm_under_backpressure", _public(got))
    check(v, got, exact_cycles=False)


@cocotb.test()
async def gemm_at_full_rate(dut):
    """Operands every cycle, results taken every cycle: C exact, cycles equal to the model."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    v = load_vectors()
    got = await run_gemm(dut, v, random.Random(0), 0.0, 0.0)
    save_results("gemm_at_full_rate", _public(got))
    check(v, got, exact_cycles=True)
