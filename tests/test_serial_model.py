"""The serial back end's cycle model (sim/serial_model.py) against its RTL in amaranth.sim.

Each run records the ``cycles`` counter when the ``commands`` counter steps, as
tests/test_sequencer_model.py does for the systolic back end, so the RTL's cycles per command
come out as ``hoarfrost sim`` reports them. With a DRAM that does not stall the model is exact:
the tests ask for equality per command (through
:func:`~hoarfrost.sim.sequencer_model.predict_program`, which dispatches on ``config.serial``),
and for the sum to be the ``cycles`` counter; every output is also the golden model's.
"""

import dataclasses
import random

import numpy as np
import pytest

from hoarfrost.firmware.isa import (FIELDS, KEEP_PARAMS, NO_PARAMS, POOL_AVG, POOL_AVG_PAD,
                                    POOL_MAX, Command, Op)
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.ir import QParams
from hoarfrost.gen.quantize import lower_integer, quantize
from hoarfrost.hw.config import ICEBREAKER, BackendConfig
from hoarfrost.hw.serial_backend import SerialBackEnd
from hoarfrost.sim.backend_host import run_in_amaranth
from hoarfrost.sim.golden import pooled_size, quantize_input, run_int
from hoarfrost.sim.rtl_run import command_cycles
from hoarfrost.sim.sequencer_model import predict_command_cycles, predict_program
from hoarfrost.sim.serial_model import TAIL, predict_serial_command_cycles
from onnx_models import ModelBuilder
from test_backend import split_mid_row, tiny_network
from test_golden_onnxruntime import import_onnx_bytes

SERIAL = BackendConfig(rows=1, cols=1, a_depth=256, w_depth=2, acc_depth=32,
                       weight_cache_bytes=0, serial=True)
#: The iCEBreaker's widths (compact fields, 17-bit DRAM addresses, 14-bit shapes, 24-bit
#: counters, the saturating requantizer) on the serial back end: the same timing.
COMPACT = dataclasses.replace(ICEBREAKER, rows=1, cols=1, serial=True, compact_fields=True,
                              dram_addr_bits=17, index_bits=14, counter_width=24,
                              requant_saturating_shift=True)
SCRATCH = 2048


def check_exact(program, x, qgraph, config=SERIAL):
    """Run ``program`` on the serial back end (DRAM without stalls): the output is the golden
    model's, and the cycles of every command are the model's. Returns them."""
    dut = SerialBackEnd(config, scratch_bytes=SCRATCH)
    out, counters, starts = run_in_amaranth(dut, program, x[0], ("cycles",), trace=True,
                                            max_cycles=200_000)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    measured = command_cycles(starts, counters["cycles"])
    assert len(measured) == len(program.commands)
    predicted = predict_program(program, config)
    assert predicted == measured, [(c.op.name, m, p) for c, m, p in
                                   zip(program.commands, measured, predicted) if m != p]
    assert sum(predicted) == counters["cycles"]
    return measured


def compiled(b, shape, seed, config=SERIAL, edit=None):
    """Quantize ``b``'s model on random data (then ``edit(qgraph)``), compile it for
    ``config``; (qgraph, x, program)."""
    rng = np.random.default_rng(seed)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, *shape)).astype(np.float32), 8)
    if edit is not None:
        edit(qgraph)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, *shape)).astype(np.float32))
    program = compile_graph(qgraph, CompileLimits.for_backend(config, SCRATCH, 16))
    return qgraph, x, program


def pools(program):
    """``(kind, has a table)`` of each POOL of ``program``."""
    return [(c.kind, c.p_addr != NO_PARAMS) for c in program.commands if c.op == Op.POOL]


@pytest.mark.parametrize("config", [SERIAL, COMPACT], ids=["serial", "compact"])
def test_tiny_networks_take_the_predicted_cycles_per_command(config):
    """LOAD, GEOM, MATMUL (plain and depthwise), average and max POOL, ADD, STORE, SYNC, END:
    exactly the model's cycles, with 32-bit fields or the iCEBreaker's compact ones."""
    for seed, pool, depthwise in [(1, "AveragePool", False), (2, "MaxPool", True)]:
        qgraph, rng = tiny_network(seed, pool, True, depthwise)
        x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
        program = compile_graph(qgraph, CompileLimits.for_backend(config, SCRATCH, 16))
        assert {Op.LOAD, Op.GEOM, Op.MATMUL, Op.POOL, Op.ADD, Op.STORE, Op.SYNC, Op.END} \
            == {c.op for c in program.commands}
        measured = check_exact(program, x, qgraph, config)
        if seed == 1:
            # 3 channels of 25 pixels with K = 18: setup, per channel 12 parameter bytes,
            # 18 weights, one cycle each of MM_WEIGHTS_REQ and MM_SKIP, 25 * 18 taps, the tail
            matmul = program.commands.index(next(c for c in program.commands
                                                 if c.op == Op.MATMUL))
            fields = 1 + 4 * len(FIELDS[Op.MATMUL]) + 1
            assert measured[matmul] == fields + 5 + 1 + 3 * (12 + 1 + 18 + 1 + 25 * 18 + TAIL) \
                + 5                       # the next header
            assert sum(measured) == 3126


def rescale_output(qgraph, index):
    """Give layer ``index``'s output its own scale and zero point, as a QDQ model may (the
    float calibration gives a ReLU or max pool its input's), and derive the integer graph
    again: a passthrough layer then rescales, its POOL has a table."""
    layer = qgraph.layers[index]
    q = qgraph.quant[layer.output]
    qgraph.quant[layer.output] = QParams(q.scale * 1.25, q.zero_point - 5)
    for other in qgraph.layers:
        if hasattr(other, "bias_q"):
            other.bias_q = None
    lower_integer(qgraph)
    assert qgraph.layers[index].requant is not None


def conv_pool_network(seed, *, ceil_mode, count_include_pad):
    """ReLU on the input (a 1x1 max pool, requantized by :func:`rescale_output`), a strided
    dilated padded convolution, a max pool and an average pool (ceil mode, the padding
    counted or not), a depthwise convolution, a residual add and a dense layer."""
    r = random.Random(seed)
    cin, h, w = 2, 9, 7         # 4 x 4 after the conv: ceil mode adds a column, then a row
    b = ModelBuilder((cin, h, w), seed=seed)
    b.relu()
    b.conv(cin, 3, 3, (2, 1), (1, 1, 1, 0), dilation=2)
    b.relu()
    b.op("MaxPool", [b.last], kernel_shape=[2, 2], strides=[1, 2], pads=[0, 1, 1, 0],
         ceil_mode=ceil_mode)
    b.op("AveragePool", [b.last], kernel_shape=[2, 2], strides=[2, 1], pads=[1, 0, 0, 1],
         ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    skip = b.last
    b.conv(3, 3, 3, 1, (1, 1, 1, 1), groups=3)
    b.op("Add", [skip, b.last])
    b.op("Flatten", [b.last])
    graph = import_onnx_bytes(b.finish())
    b.gemm(graph.shapes[graph.output][0], r.randint(2, 5))
    return compiled(b, (cin, h, w), seed, edit=lambda qgraph: rescale_output(qgraph, 0))


@pytest.mark.parametrize("seed, ceil_mode, count_include_pad", [(0, 0, 0), (1, 1, 1), (2, 1, 0)])
def test_every_pool_kind_takes_the_predicted_cycles(seed, ceil_mode, count_include_pad):
    """Max pooling with a table (the input's ReLU) and without (after a ReLU'd conv), average
    pooling counting the padding or not, in ceil mode or not, around stride, dilation,
    asymmetric padding, a depthwise convolution, a residual add and a dense layer."""
    qgraph, x, program = conv_pool_network(seed, ceil_mode=ceil_mode,
                                           count_include_pad=count_include_pad)
    avg = POOL_AVG_PAD if count_include_pad else POOL_AVG
    assert pools(program) == [(POOL_MAX, True), (POOL_MAX, False), (avg, True)]
    assert Op.ADD in {c.op for c in program.commands}
    # ceil mode: a window more each way, starting in the bottom/right padding
    avg_layer = next(layer for layer in qgraph.layers if type(layer).__name__ == "AvgPool2d")
    assert qgraph.shapes[avg_layer.output] == ((3, 3, 3) if ceil_mode else (3, 2, 2))
    check_exact(program, x, qgraph)


def test_one_tap_windows_take_the_predicted_cycles():
    """The smallest windows: a 1x1 convolution of one channel (K = 1, a result every cycle), a
    1 x 1 average pooling (T = 1: the previous window's push is written just as TABLE_REQ
    sees stage 2's count), a one-output dense layer."""
    b = ModelBuilder((1, 3, 4), seed=3)
    b.conv(1, 2, 1)
    b.op("AveragePool", [b.last], kernel_shape=[1, 1], strides=[1, 1])
    b.op("MaxPool", [b.last], kernel_shape=[1, 2], strides=[1, 1], pads=[0, 0, 0, 1])
    b.op("Flatten", [b.last])
    graph = import_onnx_bytes(b.finish())
    b.gemm(graph.shapes[graph.output][0], 1)
    qgraph, x, program = compiled(b, (1, 3, 4), 3)
    assert pools(program) == [(POOL_AVG, True), (POOL_MAX, False)]
    measured = check_exact(program, x, qgraph)
    # 2 channels x 12 pixels, K = 1: fields, setup, per channel 12 + 1 + 1 + 1 + 12 + the tail
    matmul = [c.op for c in program.commands].index(Op.MATMUL)
    assert measured[matmul] == (1 + 4 * len(FIELDS[Op.MATMUL]) + 1) + 5 + 1 \
        + 2 * (12 + 1 + 1 + 1 + 12 + TAIL) + 5


def test_dram_stalls_only_slow_it_down():
    """With random stalls on every DRAM stream the output is still the golden model's and no
    command is faster than the model: it is a lower bound there."""
    qgraph, x, program = conv_pool_network(2, ceil_mode=1, count_include_pad=0)
    out, counters, starts = run_in_amaranth(SerialBackEnd(SERIAL, scratch_bytes=SCRATCH),
                                            program, x[0], ("cycles",), trace=True,
                                            max_cycles=200_000, stall_prob=0.3, seed=1)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    measured, predicted = command_cycles(starts, counters["cycles"]), predict_program(program,
                                                                                     SERIAL)
    assert all(m >= p for m, p in zip(measured, predicted))
    assert sum(measured) > sum(predicted) + 400


def test_matmul_split_mid_row_skips_to_its_first_pixel():
    """A MATMUL starting at pixel 25 of 7-pixel rows walks there in MM_SKIP, a pixel a cycle
    (25 cycles more per channel than the one starting at 0, beside its pixels); its parameters
    by KEEP_PARAMS (read again from the last records: the same cycles). Exact per command."""
    b = ModelBuilder((2, 13, 10), seed=4)
    b.conv(2, 3, 3, (2, 1), (2, 1, 1, 0), dilation=2)
    qgraph, x, program = compiled(b, (2, 13, 10), 4)
    commands = split_mid_row(program.commands, 25)
    matmuls = [i for i, c in enumerate(commands) if c.op == Op.MATMUL]
    second = commands[matmuls[1]]
    commands[matmuls[1]] = Command.make(Op.MATMUL, **{**dict(second.fields),
                                                      "p_addr": KEEP_PARAMS})
    program.commands = commands
    first, second = (commands[i] for i in matmuls)
    assert [(c.m0, c.mt, c.nt) for c in (first, second)] == [(0, 25, 3), (25, 17, 3)]
    geom = next(c for c in commands if c.op == Op.GEOM)
    k = 2 * 3 * 3
    assert (predict_serial_command_cycles(second, geom) - predict_serial_command_cycles(first, geom)
            == 3 * (25 + (17 - 25) * k))
    check_exact(program, x, qgraph)


def onnx_ceil_agrees(size, kernel, stride, pad_hi):
    """ONNX's shape inference (onnx 1.x as installed) gives a ceil-mode pooling one window more
    than the golden model (and PyTorch, onnxruntime) when the last window would start in the
    trailing padding; the importer takes the former, so such a pooling does not run. True when
    the two agree (no leading padding here)."""
    room = size + pad_hi - kernel
    return -(-room // stride) + 1 == pooled_size(size, kernel, stride, 0, pad_hi, 1, True)


def random_network(seed):
    """A small random CNN: a convolution (stride, padding, dilation, maybe depthwise), maybe a
    ReLU, maybe a max or average pooling (ceil mode, the padding counted or not), maybe a
    residual add, then a dense layer."""
    r = random.Random(seed)
    cin, h, w = r.randint(1, 3), r.randint(4, 6), r.randint(4, 6)
    b = ModelBuilder((cin, h, w), seed=seed)
    k, stride, dil = r.randint(1, 3), r.randint(1, 2), r.randint(1, 2)
    pads = [r.randint(0, 1) for _ in range(4)]
    while (k - 1) * dil + 1 > min(h + pads[0] + pads[2], w + pads[1] + pads[3]):
        dil = 1
        k -= 1
    depthwise = cin > 1 and r.random() < 0.3
    cout = cin * r.randint(1, 2) if depthwise else r.randint(1, 4)
    b.conv(cin, cout, k, stride, pads, cin if depthwise else 1, dil)
    if r.random() < 0.5:
        b.relu()
    graph = import_onnx_bytes(b.finish())
    _, oh, ow = graph.shapes[graph.output]
    if min(oh, ow) >= 2 and r.random() < 0.7:
        kind = r.choice(["MaxPool", "AveragePool"])
        attrs = {"count_include_pad": r.randint(0, 1)} if kind == "AveragePool" else {}
        kw, stride = r.randint(1, 2), r.randint(1, 2)
        bottom, right = r.randint(0, 1), r.randint(0, kw - 1)
        ceil_mode = r.randint(0, 1)
        if ceil_mode and not (onnx_ceil_agrees(oh, 2, stride, bottom)
                              and onnx_ceil_agrees(ow, kw, stride, right)):
            ceil_mode = 0
        b.op(kind, [b.last], kernel_shape=[2, kw], strides=[stride] * 2,
             pads=[0, 0, bottom, right], ceil_mode=ceil_mode, **attrs)
    if r.random() < 0.4:
        skip = b.last
        b.conv(cout, cout, 1)
        b.op("Add", [skip, b.last])
    b.op("Flatten", [b.last])
    graph = import_onnx_bytes(b.finish())
    b.gemm(graph.shapes[graph.output][0], r.randint(1, 6))
    config = r.choice([SERIAL, COMPACT])
    return (*compiled(b, (cin, h, w), seed, config), config)


@pytest.mark.parametrize("seed", [0, 4, 8, 10, 15, 16])
def test_random_networks_take_the_predicted_cycles_per_command(seed):
    """Random convolutions, poolings, residual adds and dense layers: exact per command.
    (Seeds picked for coverage: every pool kind, ADD, both configurations; seeds 0-39 all
    agree.)"""
    qgraph, x, program, config = random_network(seed)
    check_exact(program, x, qgraph, config)


def test_compact_fields_do_not_change_the_timing():
    """The model takes no width from the configuration: the compact iCEBreaker-like build
    predicts (and, in the tests above, takes) the same cycles as the 32-bit one; and
    predict_command_cycles dispatches to the serial model for a serial configuration."""
    qgraph, x, program = conv_pool_network(1, ceil_mode=1, count_include_pad=1)
    assert predict_program(program, COMPACT) == predict_program(program, SERIAL)
    geom = None
    for c in program.commands:
        geom = c if c.op == Op.GEOM else geom
        assert predict_command_cycles(c, geom, SERIAL) == predict_serial_command_cycles(c, geom)
    with pytest.raises(ValueError, match="does not run"):
        predict_serial_command_cycles(Command.make(Op.RECV, dst=0, pixels=1), None)
