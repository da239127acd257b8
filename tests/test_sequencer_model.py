"""The back end's cycle model (sim/sequencer_model.py) against the RTL in amaranth.sim.

Each run records the ``cycles`` counter when the ``commands`` counter steps, as the Verilator
testbench does (sim/tb/backend_tb.py ``command_starts``), so the RTL's cycles per command and
per layer come out exactly as ``hoarfrost sim`` reports them. The model is exact for the
back end with a DRAM that does not stall: the tests ask for equality, per command.
"""

import dataclasses
import random

import numpy as np
import pytest

from hoarfrost.firmware.isa import Command, Op
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.config import HardwareConfig
from hoarfrost.gen.outdir import layer_table
from hoarfrost.gen.quantize import quantize
from hoarfrost.hw.backend import BackEnd
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.backend_host import read_output, run_in_amaranth
from hoarfrost.sim.cycle_model import predict_gemm
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.rtl_run import command_cycles, layer_cycles
from hoarfrost.sim.sequencer_model import ideal_engine, predict_matmul, predict_program
from onnx_models import ModelBuilder
from test_backend import SMALL, split_mid_row, tiny_network
from test_golden_onnxruntime import import_onnx_bytes


def traced_run(program, x_int8, config, scratch_bytes=2048, param_depth=16,
               max_cycles=100_000, read=read_output):
    """Run ``program`` on the back end in amaranth.sim (DRAM without stalls); returns the
    output (``read(program, dram)``) and the RTL's cycles per command (:func:`command_cycles`
    of the trace)."""
    dut = BackEnd(config, scratch_bytes=scratch_bytes, param_depth=param_depth)
    out, counters, starts = run_in_amaranth(dut, program, x_int8, ("cycles",),
                                            max_cycles=max_cycles, trace=True, read=read)
    return out, command_cycles(starts, counters["cycles"])


def random_network(seed):
    """A small random CNN: a convolution (stride, padding, dilation, maybe depthwise), a max
    or average pooling (maybe counting the padding), maybe a residual add, then a dense layer;
    and a random array and buffer configuration that splits MATMULs over pixels and channels."""
    r = random.Random(seed)
    cin, h, w = r.randint(1, 3), r.randint(4, 7), r.randint(4, 7)
    b = ModelBuilder((cin, h, w), seed=seed)
    k, stride, dil = r.randint(1, 3), r.randint(1, 2), r.randint(1, 2)
    pads = [r.randint(0, 1) for _ in range(4)]          # top, left, bottom, right
    while (k - 1) * dil + 1 > min(h + pads[0] + pads[2], w + pads[1] + pads[3]):
        dil = 1                                         # the window must fit the input
        k -= 1
    depthwise = cin > 1 and r.random() < 0.3
    cout = cin * r.randint(1, 2) if depthwise else r.randint(1, 6)
    b.conv(cin, cout, k, stride, pads, cin if depthwise else 1, dil)
    if r.random() < 0.5:
        b.relu()
    graph = import_onnx_bytes(b.finish())
    _, oh, ow = graph.shapes[graph.output]
    if min(oh, ow) >= 2 and r.random() < 0.7:
        kind = r.choice(["MaxPool", "AveragePool"])
        attrs = {"count_include_pad": r.randint(0, 1)} if kind == "AveragePool" else {}
        kw = r.randint(1, 2)                            # padding smaller than the window
        b.op(kind, [b.last], kernel_shape=[2, kw], strides=[r.randint(1, 2)] * 2,
             pads=[0, 0, r.randint(0, 1), r.randint(0, kw - 1)], **attrs)
    if r.random() < 0.4:
        skip = b.last
        b.conv(cout, cout, 1)
        b.op("Add", [skip, b.last])
    b.op("Flatten", [b.last])
    graph = import_onnx_bytes(b.finish())
    b.gemm(graph.shapes[graph.output][0], r.randint(1, 9))
    rng = np.random.default_rng(seed)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, cin, h, w)).astype(np.float32), 8)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, cin, h, w)).astype(np.float32))
    rows, cols = r.randint(2, 4), r.randint(2, 4)
    config = BackendConfig(rows=rows, cols=cols, a_depth=256,
                           w_depth=1 << (2 * rows - 1).bit_length(),
                           acc_depth=r.choice([8, 16, 64]))
    return qgraph, x, config, r.choice([8, 16])


def check_exact(program, x, qgraph, config, param_depth=16):
    out, measured = traced_run(program, x[0], config, param_depth=param_depth)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    predicted = predict_program(program, config)
    assert len(measured) == len(program.commands)
    assert predicted == measured, [(c.op.name, m, p) for c, m, p in
                                   zip(program.commands, measured, predicted) if m != p]
    return measured


def test_ideal_streams_give_the_gemm_engine_model():
    """With a beat on every stream every cycle and the output always taken, the schedule the
    sequencer model runs for a MATMUL is predict_gemm's, cycle for cycle."""
    r = random.Random(5)
    for _ in range(60):
        rows, cols = r.randint(1, 5), r.randint(1, 5)
        config = BackendConfig(rows=rows, cols=cols, a_depth=1024,
                               w_depth=1 << (2 * rows - 1).bit_length(), acc_depth=64)
        m, n, k = r.randint(1, 40), r.randint(1, 20), r.randint(1, 20)
        assert ideal_engine(config, m, n, k).cycles == predict_gemm(config, m, n, k).cycles


@pytest.mark.parametrize("lean", [False, True])
def test_tiny_networks_take_the_predicted_cycles_per_command(lean):
    """Every command kind (LOAD, GEOM, MATMUL plain and depthwise, max and average POOL, ADD,
    STORE, SYNC, END) takes exactly the cycles the model gives; also with the iCEBreaker's
    area savings (ADD on the shared multiplier, the saturating requantizer)."""
    config = dataclasses.replace(SMALL, add_shares_multiplier=lean,
                                 requant_saturating_shift=lean)
    for seed, pool, residual, depthwise in [(1, "AveragePool", True, False),
                                            (2, "MaxPool", True, True)]:
        qgraph, rng = tiny_network(seed, pool, residual, depthwise)
        x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
        program = compile_graph(qgraph, CompileLimits.for_backend(config, 2048, 16))
        assert {Op.MATMUL, Op.POOL, Op.ADD} <= {c.op for c in program.commands}
        check_exact(program, x, qgraph, config)


@pytest.mark.parametrize("seed", [0, 5, 7, 10])
def test_random_networks_take_the_predicted_cycles_per_layer(seed):
    """Random convolutions (stride, padding, dilation, depthwise), poolings, residual adds and
    dense layers on random array sizes: the model equals the RTL on every command, hence on
    every layer of the manifest's grouping. (Seeds picked for coverage: 0 stride and dilation 2
    with an average pool; 5 dilation, max pool, add, 8-pixel MATMULs; 7 depthwise with MATMULs
    split over pixels and channels; 10 depthwise on 3 x 2 PEs. Seeds 0-39 all agree.)"""
    qgraph, x, config, param_depth = random_network(seed)
    program = compile_graph(qgraph, CompileLimits.for_backend(config, 2048, param_depth))
    measured = check_exact(program, x, qgraph, config, param_depth)
    hardware = HardwareConfig("random", config, 2048, param_depth, 100.0)
    manifest = {"layers": layer_table(qgraph, program, hardware),
                "commands": len(program.commands)}
    rows = layer_cycles(manifest, measured)
    assert [row["cycles"] for row in layer_cycles(manifest, predict_program(program, config))] \
        == [row["cycles"] for row in rows]
    assert sum(row["cycles"] for row in rows) == sum(measured)


def test_matmul_split_mid_row_divides_its_first_pixel():
    """A MATMUL starting at pixel 25 of 7-pixel rows spends 25 // 7 + 1 cycles in MM_DIVIDE;
    the stride/dilation/padding geometry of tests/test_backend.py, exact per command."""
    b = ModelBuilder((2, 13, 10), seed=4)
    b.conv(2, 3, 3, (2, 1), (2, 1, 1, 0), dilation=2)
    rng = np.random.default_rng(4)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, 2, 13, 10)).astype(np.float32), 8)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 13, 10)).astype(np.float32))
    program = compile_graph(qgraph, CompileLimits.for_backend(SMALL, 2048, 16))
    program.commands = split_mid_row(program.commands, 25)
    matmuls = [c for c in program.commands if c.op == Op.MATMUL]
    assert [(c.m0, c.mt) for c in matmuls] == [(0, 25), (25, 17)]
    geom = next(c for c in program.commands if c.op == Op.GEOM)
    assert (predict_matmul(matmuls[1], geom, SMALL).setup
            - predict_matmul(matmuls[0], geom, SMALL).setup) == 25 // 7
    check_exact(program, x, qgraph, SMALL)


def test_the_bottleneck_producer_bounds_the_matmul():
    """A dense layer is bound by its weight stream (cols + 1 cycles per weight row), a
    convolution by its gatherer (rows + 2 per activation row) and drain (2 per lane + 3 per
    output row), which add up: N tile 0 accumulates only after the last K tile, so its drain
    cannot start before the gatherer's last row. Each run is within a few fill cycles of that."""
    config = BackendConfig(rows=4, cols=4, a_depth=512, w_depth=16, acc_depth=128)
    geom = Command.make(Op.GEOM, in_c=64, in_h=1, in_w=1, out_h=1, out_w=1, kh=1, kw=1, sh=1,
                        sw=1, pad_top=0, pad_left=0, pad_bottom=0, pad_right=0, dh=1, dw=1)
    fields = dict(src=0, dst=64, zp_in=0, c0=0, m0=0, n0=0, w_addr=0, p_addr=0, lo=-128,
                  hi=127, zp_out=0)
    dense = predict_matmul(Command.make(Op.MATMUL, cg=64, mt=1, nt=64, **fields), geom, config)
    assert dense.bound == "weights" and dense.weights == 16 * 16 * 4 * 5
    assert dense.weights < dense.run < dense.weights + 40
    assert dense.setup == 1 + 7 + 1 + 12 * 64 + 1
    # keeping the parameter buffer skips MM_PARAMS_REQ and PARAMS; weights from the weight
    # cache do not wait for DRAM's latency
    from hoarfrost.firmware.isa import KEEP_PARAMS, WCACHE
    kept = predict_matmul(Command.make(Op.MATMUL, cg=64, mt=1, nt=64,
                                       **{**fields, "p_addr": KEEP_PARAMS}), geom, config)
    assert kept.setup == 1 + 7 + 1 and kept.run == dense.run
    slow, cached = (predict_matmul(Command.make(Op.MATMUL, cg=64, mt=1, nt=64,
                                                **{**fields, "w_addr": w}), geom, config,
                                   dram_latency=20) for w in (0, WCACHE))
    assert slow.run - cached.run == 20 and slow.setup == cached.setup
    conv_geom = Command.make(Op.GEOM, **{**dict(geom.fields), "in_c": 2, "in_h": 8, "in_w": 8,
                                         "out_h": 8, "out_w": 8, "kh": 3, "kw": 3,
                                         "pad_top": 1, "pad_left": 1, "pad_bottom": 1,
                                         "pad_right": 1})
    for nt, drain in ((4, 64 * 11), (16, 4 * 64 * 11)):
        conv = predict_matmul(Command.make(Op.MATMUL, cg=2, mt=64, nt=nt, **fields), conv_geom,
                              config)
        assert conv.gather == 5 * 64 * 6 and conv.drain == drain
        assert conv.gather + conv.drain < conv.run < conv.gather + conv.drain + 40


def test_batch_program_with_cached_weights_takes_the_predicted_cycles():
    """Three images, mini-batch serialization: each convolution tile is loaded into the weight
    cache once (LOADW) and streamed from there by every image's MATMUL (whose weight feeder
    then starts without DRAM latency); the later MATMULs keep the parameter buffer. Exact per
    command, and every image's output is the golden model's."""
    from hoarfrost.firmware.isa import KEEP_PARAMS, WCACHE
    from hoarfrost.gen.batch import compile_batch
    from hoarfrost.sim.batch_host import read_outputs
    qgraph, rng = tiny_network(1, "AveragePool", True, False)
    x = quantize_input(qgraph, rng.normal(0, 1, (3, 2, 5, 5)).astype(np.float32))
    program = compile_batch(qgraph, CompileLimits.for_backend(SMALL, 2048, 16), 3, "mbs")
    matmuls = [c for c in program.commands if c.op == Op.MATMUL]
    assert any(c.op == Op.LOADW for c in program.commands)
    assert any(c.w_addr & WCACHE for c in matmuls) and any(c.p_addr == KEEP_PARAMS
                                                           for c in matmuls)
    out, measured = traced_run(program, x, SMALL, read=read_outputs)
    assert np.array_equal(out, run_int(qgraph, x))
    assert predict_program(program, SMALL) == measured
