"""The back end in amaranth.sim: compiled firmware on the sequencer + GEMM engine, bit-exact.

amaranth.sim runs small networks that touch every command; the example models run on the
Verilog in Verilator (tests/test_backend_cosim.py)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.quantize import quantize
from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.backend_host import amaranth_dram, dram_image, read_output
from hoarfrost.sim.golden import quantize_input, run_int
from onnx_models import ModelBuilder
from test_golden_onnxruntime import import_onnx_bytes

SMALL = BackendConfig(rows=2, cols=2, a_depth=256, w_depth=4, acc_depth=32)


def run_backend(qgraph, x_int8, config=SMALL, scratch_bytes=2048, param_depth=16, seed=0,
                stall_prob=0.0, max_cycles=50_000):
    limits = CompileLimits.for_backend(config, scratch_bytes, param_depth)
    program = compile_graph(qgraph, limits)
    dram, firmware_addr = dram_image(program, x_int8)
    dut = BackEnd(config, scratch_bytes=scratch_bytes, param_depth=param_depth)
    result = {}

    async def host(ctx):
        ctx.set(dut.program_addr, firmware_addr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        result.update({name: ctx.get(getattr(dut, name)) for name in BACKEND_COUNTERS})

    async def watchdog(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
        raise AssertionError(f"the back end did not reach END in {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    reads, writes = amaranth_dram(dut, dram, seed=seed, stall_prob=stall_prob)
    # The DRAM model and the watchdog run in the background: the run ends with the host.
    sim.add_testbench(reads, background=True)
    sim.add_testbench(writes, background=True)
    sim.add_testbench(watchdog, background=True)
    sim.add_testbench(host)
    sim.run()
    return read_output(program, dram), result, program


def tiny_network(seed, pool, residual, depthwise):
    """A small conv network touching every command: conv (maybe depthwise), pool, add, dense."""
    b = ModelBuilder((2, 5, 5), seed=seed)
    b.conv(2, 4 if depthwise else 3, 3, 1, (1, 1, 1, 1), 2 if depthwise else 1)
    b.relu()
    channels = 4 if depthwise else 3
    if pool:
        b.op(pool, [b.last], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
             **({"count_include_pad": 1} if pool == "AveragePool" else {}))
    if residual:
        skip = b.last
        b.conv(channels, channels, 1)
        b.op("Add", [skip, b.last])
        b.relu()
    b.op("Flatten", [b.last])
    graph = import_onnx_bytes(b.finish())
    b.gemm(graph.shapes[graph.output][0], 3)
    rng = np.random.default_rng(seed)
    graph = import_onnx_bytes(b.finish())
    return quantize(graph, rng.normal(0, 1, (16, 2, 5, 5)).astype(np.float32), 8), rng


@pytest.mark.parametrize("seed, pool, residual, depthwise, stall", [
    (0, "MaxPool", False, False, 0.0),
    (1, "AveragePool", True, False, 0.3),
    (2, None, True, True, 0.2),
])
def test_tiny_networks_run_bit_exact(seed, pool, residual, depthwise, stall):
    qgraph, rng = tiny_network(seed, pool, residual, depthwise)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    out, counters, program = run_backend(qgraph, x[0], stall_prob=stall, seed=seed)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    assert counters["commands"] == len(program.commands)
    assert counters["macs_useful"] == sum(
        int(l.weight_q.size * (np.prod(qgraph.shapes[l.output][1:]) if l.op == "conv" else 1))
        for l in qgraph.layers if l.op in ("conv", "dense"))
    assert counters["dram_write_bytes"] == 3
    assert counters["cycles"] >= counters["matmul_cycles"] + counters["pool_cycles"] + counters["add_cycles"]
