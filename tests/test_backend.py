"""The back end in amaranth.sim: compiled firmware on the sequencer + GEMM engine, bit-exact.

amaranth.sim runs small networks that touch every command; the example models run on the
Verilog in Verilator (tests/test_backend_cosim.py)."""


import numpy as np
import pytest

from hoarfrost.firmware.isa import KEEP_PARAMS, NO_PARAMS, POOL_MAX, WCACHE, Command, Op
from hoarfrost.gen.compiler import CompileLimits, compile_graph, compile_streamed
from hoarfrost.gen.freeze import output_tensor
from hoarfrost.gen.ir import split_graph
from hoarfrost.gen.outdir import frozen_partition
from hoarfrost.gen.quantize import quantize
from hoarfrost.hw.accelerator import FROZEN_COUNTERS, Accelerator
from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.backend_host import run_in_amaranth
from hoarfrost.sim.golden import quantize_input, run_int
from onnx_models import ModelBuilder
from test_golden_onnxruntime import import_onnx_bytes

SMALL = BackendConfig(rows=2, cols=2, a_depth=256, w_depth=4, acc_depth=32)


def run_backend(qgraph, x_int8, config=SMALL, scratch_bytes=2048, param_depth=16, seed=0,
                stall_prob=0.0, max_cycles=50_000, streamed=False, idle_prob=0.0, freeze=0,
                edit=None):
    """Compile ``qgraph``, run it on the back end in amaranth.sim; (output, counters, program).

    ``streamed``: the input ``x_int8`` (C, H, W) arrives on ``feature_in`` (``RECV``), sent
    pixel by pixel with random idle cycles ``idle_prob``, instead of from DRAM. ``freeze``: the
    :class:`Accelerator` with ``qgraph``'s first ``freeze`` convolutions frozen in front of the
    back end, the image ``x_int8`` streamed into its ``pixels`` port the same way.
    ``edit(commands)`` may rewrite the firmware before it runs."""
    limits = CompileLimits.for_backend(config, scratch_bytes, param_depth)
    counters = BACKEND_COUNTERS
    if freeze:
        _, specs, _, back = frozen_partition(qgraph, freeze)
        program = compile_streamed(back, limits)
        dut = Accelerator(config, specs, scratch_bytes=scratch_bytes, param_depth=param_depth)
        port, counters = dut.pixels, BACKEND_COUNTERS + FROZEN_COUNTERS
    else:
        program = (compile_streamed if streamed else compile_graph)(qgraph, limits)
        dut = BackEnd(config, scratch_bytes=scratch_bytes, param_depth=param_depth,
                      stream_channels=x_int8.shape[0] if streamed else 0)
        port = dut.feature_in if streamed else None
    if edit is not None:
        program.commands = edit(program.commands)
    out, result, _ = run_in_amaranth(dut, program, x_int8, counters, seed=seed,
                                     stall_prob=stall_prob, max_cycles=max_cycles,
                                     feature_port=port, idle_prob=idle_prob)
    return out, result, program


def expected_counters(program, config):
    """The counters the firmware alone determines: scratchpad writes (bytes loaded plus results
    written), parameter words loaded, weight-cache bytes written (LOADW) and read (MATMULs
    streaming from it), and the engine's MACs and buffer accesses (the cycle model's event
    counts, exact, summed over the MATMULs)."""
    from hoarfrost.sim.cycle_model import predict_gemm
    from hoarfrost.gen.traffic import _matmul_weight_bytes
    names = ("macs_issued", "a_reads", "a_writes", "w_reads", "w_writes", "acc_reads", "acc_writes")
    counts = dict.fromkeys(("scratch_writes", "param_writes", "wcache_writes", "wcache_reads",
                            *names), 0)
    geom = None
    for c in program.commands:
        if c.op == Op.GEOM:
            geom = c
        elif c.op == Op.LOAD:
            counts["scratch_writes"] += c.length
        elif c.op == Op.LOADW:
            counts["wcache_writes"] += c.length
        elif c.op == Op.ADD:
            counts["scratch_writes"] += c.length
        elif c.op == Op.POOL:
            counts["scratch_writes"] += geom.in_c * geom.out_h * geom.out_w
            if c.p_addr != NO_PARAMS:
                counts["param_writes"] += 2 if c.kind == POOL_MAX else (geom.kh * geom.kw + 1) * 2
        elif c.op == Op.MATMUL:
            counts["scratch_writes"] += c.mt * c.nt
            counts["param_writes"] += 0 if c.p_addr == KEEP_PARAMS else 3 * c.nt
            if c.w_addr & WCACHE:
                counts["wcache_reads"] += _matmul_weight_bytes(c, dict(geom.fields),
                                                               config.rows, config.cols)
            gemm = predict_gemm(config, c.mt, c.nt, c.cg * geom.kh * geom.kw)
            for name in names:
                counts[name] += getattr(gemm, name)
    return counts


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
    expected = expected_counters(program, SMALL)
    assert {name: counters[name] for name in expected} == expected
    stores = sum(c.length for c in program.commands if c.op == Op.STORE)
    assert counters["scratch_reads"] > stores
    assert counters["cycles"] >= counters["matmul_cycles"] + counters["pool_cycles"] + counters["add_cycles"]


@pytest.mark.parametrize("idle_prob, stall", [(0.0, 0.0), (0.8, 0.2)])
def test_recv_takes_the_frozen_layers_output_from_the_feature_stream(idle_prob, stall):
    """The network cut after its first convolution and the max pooling in line with it: the
    back half's input (3 channels of 3x3) arrives pixel by pixel on ``feature_in``; RECV writes
    it CHW, the rest runs bit-exact. A beat costs one cycle per channel (one byte-wide
    scratchpad write port)."""
    qgraph, rng = tiny_network(0, "MaxPool", False, False)
    front, back = split_graph(qgraph, output_tensor(qgraph, 1))
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    features = run_int(front, x)[0]
    assert features.shape == (3, 3, 3)
    out, counters, program = run_backend(back, features, streamed=True, idle_prob=idle_prob,
                                         stall_prob=stall, seed=3)
    assert program.input_addr is None and program.commands[0].op == Op.RECV
    assert (program.commands[0].pixels, program.commands[0].dst) == (9, 0)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    assert counters["commands"] == len(program.commands)
    if idle_prob == 0:
        # one cycle to take the first beat, 3 per beat, one to see the last one written
        assert counters["recv_cycles"] == 3 * 9 + 2
    else:
        # gaps longer than a beat's 3 cycles show (shorter ones hide behind the writes)
        assert counters["recv_cycles"] > 3 * 9 + 2
    # the input came from the stream, not DRAM: every byte read is firmware or weights
    assert counters["dram_read_bytes"] <= len(program.image) + 4 * sum(
        1 + len(c.fields) for c in program.commands)


def test_icebreaker_preset_runs_bit_exact():
    """The iCEBreaker's back end (ADD on the shared multiplier, the saturating requantizer)
    runs a network with every command kind bit-exact, with the firmware's counts."""
    from hoarfrost.gen.config import PRESETS
    board = PRESETS["icebreaker"]
    qgraph, rng = tiny_network(3, "AveragePool", True, False)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    out, counters, program = run_backend(qgraph, x[0], config=board.backend,
                                         scratch_bytes=board.scratch_bytes,
                                         param_depth=board.param_depth, stall_prob=0.2, seed=3)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    assert {Op.ADD, Op.POOL, Op.MATMUL} <= {c.op for c in program.commands}
    expected = expected_counters(program, board.backend)
    assert {name: counters[name] for name in expected} == expected
    assert counters["commands"] == len(program.commands)


def split_mid_row(commands, at):
    """The firmware with each layer's MATMULs (over all its pixels) re-split into pixels
    ``0..at-1`` and ``at..``: the ISA allows any m0, the compiler splits at whole rows."""
    out, pixels = [], {}
    for c in commands:
        if c.op == Op.MATMUL:
            pixels[(c.dst, c.n0)] = pixels.get((c.dst, c.n0), 0) + c.mt
    for c in commands:
        if c.op == Op.MATMUL and c.m0 == 0:
            fields, total = dict(c.fields), pixels[(c.dst, c.n0)]
            out.append(Command.make(Op.MATMUL, **{**fields, "mt": at}))
            out.append(Command.make(Op.MATMUL, **{**fields, "m0": at, "mt": total - at}))
        elif c.op != Op.MATMUL:
            out.append(c)
    return out


def test_strided_dilated_padded_conv_split_mid_row_runs_bit_exact():
    """Stride, dilation and asymmetric padding, with the MATMUL split at pixel 25 of 6 x 7
    (oy0 = 3, ox0 = 4): the gatherer's and the write pointer's running addresses against the
    golden model; then a padded 3 x 3 max pool and an average pool counting the padding."""
    b = ModelBuilder((2, 13, 10), seed=4)
    b.conv(2, 3, 3, (2, 1), (2, 1, 1, 0), dilation=2)
    b.relu()
    b.op("MaxPool", [b.last], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b.op("AveragePool", [b.last], kernel_shape=[2, 3], strides=[1, 1], pads=[0, 1, 1, 1],
         count_include_pad=1)
    rng = np.random.default_rng(4)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, 2, 13, 10)).astype(np.float32), 8)
    assert tuple(qgraph.shapes[qgraph.layers[0].output]) == (3, 6, 7)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 13, 10)).astype(np.float32))
    out, counters, program = run_backend(qgraph, x[0], stall_prob=0.2, seed=4,
                                         edit=lambda cs: split_mid_row(cs, 25))
    assert [(c.m0, c.mt) for c in program.commands if c.op == Op.MATMUL] == [(0, 25), (25, 17)]
    assert np.array_equal(out, run_int(qgraph, x)[0])
    assert counters["commands"] == len(program.commands)
    expected = expected_counters(program, SMALL)
    assert {name: counters[name] for name in expected} == expected


def test_weight_cache_and_kept_parameters_run_bit_exact():
    """Accumulator banks of 8 rows split every layer's 25 pixels into 4 MATMULs: each weight
    tile is loaded into the weight cache once (LOADW) and streamed from there by all four, the
    first loads the parameters and the others keep them. DRAM reads only firmware, the input,
    each tile and its parameters once; the counters see the cache's bytes."""
    qgraph, rng = tiny_network(0, "MaxPool", True, False)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    config = BackendConfig(rows=2, cols=2, a_depth=256, w_depth=4, acc_depth=8,
                           weight_cache_bytes=256)
    out, counters, program = run_backend(qgraph, x[0], config=config, stall_prob=0.2, seed=5)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    matmuls = [c for c in program.commands if c.op == Op.MATMUL]
    loads = [c for c in program.commands if c.op == Op.LOADW]
    conv1 = [c for c in matmuls if c.w_addr == matmuls[0].w_addr]
    assert [(c.m0, c.mt) for c in conv1] == [(0, 8), (8, 8), (16, 8), (24, 1)]
    assert conv1[0].w_addr == WCACHE | loads[0].dst
    assert [c.p_addr == KEEP_PARAMS for c in conv1] == [False, True, True, True]
    expected = expected_counters(program, config)
    assert expected["wcache_reads"] > expected["wcache_writes"] > 0
    assert {name: counters[name] for name in expected} == expected
    # weights: each LOADW once, plus the uncached tiles; parameters: each loaded record
    geom, weights = None, sum(c.length for c in loads)
    for c in program.commands:
        if c.op == Op.GEOM:
            geom = dict(c.fields)
        elif c.op == Op.MATMUL and not c.w_addr & WCACHE:
            weights += _weight_bytes(c, geom, config)
    params = sum(12 * c.nt for c in matmuls if c.p_addr != KEEP_PARAMS)
    tables = sum(8 for c in program.commands if c.op == Op.POOL and c.p_addr != NO_PARAMS)
    firmware = sum(4 * (1 + len(c.fields)) for c in program.commands)
    assert counters["dram_read_bytes"] == firmware + 2 * 5 * 5 + weights + params + tables


def test_loadw_stops_a_back_end_without_weight_cache():
    """Built with ``weight_cache_bytes = 0`` the back end has no cache: a LOADW ends the
    program as an unknown op would, after the commands before it."""
    qgraph, rng = tiny_network(0, None, False, False)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    config = BackendConfig(rows=2, cols=2, a_depth=256, w_depth=4, acc_depth=32,
                           weight_cache_bytes=0)
    loadw = Command.make(Op.LOADW, dram_addr=0, dst=0, length=4)
    _, counters, program = run_backend(qgraph, x[0], config=config,
                                       edit=lambda cs: [cs[0], loadw, *cs[1:]])
    assert program.commands[1] == loadw and counters["commands"] == 2
    assert counters["wcache_writes"] == counters["matmul_cycles"] == 0


def _weight_bytes(command, geom, config):
    from hoarfrost.gen.traffic import _matmul_weight_bytes
    return _matmul_weight_bytes(command, geom, config.rows, config.cols)


def test_window_positions_past_every_bound_read_as_padding():
    """A 1x1 convolution re-targeted by hand to 8 output rows at row stride 40,000: only row 0
    lies inside the 4 x 4 input, row 7 starts at 280,000, past where the gatherer's position
    sums saturate (2**18); every other row is all padding, so its outputs are the requantized
    bias. Row 0 is the network's own."""
    import struct
    from hoarfrost.sim.arith import requantize
    b = ModelBuilder((1, 4, 4), seed=9)
    b.conv(1, 2, 1)
    rng = np.random.default_rng(9)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, 1, 4, 4)).astype(np.float32), 8)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 1, 4, 4)).astype(np.float32))

    def far_rows(commands):
        out = []
        for c in commands:
            if c.op == Op.GEOM:
                c = Command.make(Op.GEOM, **{**dict(c.fields), "out_h": 8, "sh": 40_000})
            elif c.op == Op.MATMUL:
                c = Command.make(Op.MATMUL, **{**dict(c.fields), "m0": 0, "mt": 32})
            out.append(c)
        return out

    out, counters, program = run_backend(qgraph, x[0], edit=far_rows)
    mm = next(c for c in program.commands if c.op == Op.MATMUL)
    bias, mult, shift = struct.unpack_from("<iII", program.image, mm.p_addr)
    padding = int(requantize(bias, mult, shift, mm.zp_out, mm.lo, mm.hi))
    # the 32 bytes stored are channel 0's 8 rows of 4
    stored = out.reshape(-1)
    assert np.array_equal(stored[:4], run_int(qgraph, x)[0][0, 0])
    assert np.all(stored[4:] == padding)
    assert counters["scratch_reads"] == 4 + 32      # row 0's taps, then the STORE


@pytest.mark.parametrize("pool, pads", [("MaxPool", [1, 1, 0, 0]), ("AveragePool", [1, 0, 1, 1])])
def test_dilated_pooling_windows_run_as_the_isa_simulator_says(pool, pads):
    """POOL reads the geometry's dilation as MATMUL does: its taps step on the gatherer's
    registers. The compiler emits dilation 1 (ONNX pools with dilations are refused on import),
    so the firmware is edited by hand to dilation 2 and checked against the ISA simulator."""
    from hoarfrost.sim.isa_sim import run_program
    b = ModelBuilder((2, 7, 7), seed=5)
    b.conv(2, 2, 1)
    b.op(pool, [b.last], kernel_shape=[2, 2], strides=[1, 1], pads=pads)
    rng = np.random.default_rng(5)
    qgraph = quantize(import_onnx_bytes(b.finish()),
                      rng.normal(0, 1, (16, 2, 7, 7)).astype(np.float32), 8)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 7, 7)).astype(np.float32))

    def dilate_the_pool(commands):
        at = next(i for i, c in enumerate(commands) if c.op == Op.POOL)
        geom = dict(commands[at - 1].fields)
        assert commands[at - 1].op == Op.GEOM and (geom["dh"], geom["dw"]) == (1, 1)
        out_h = geom["in_h"] + geom["pad_top"] + geom["pad_bottom"] - 3 + 1
        out_w = geom["in_w"] + geom["pad_left"] + geom["pad_right"] - 3 + 1
        commands[at - 1] = Command.make(Op.GEOM, **{**geom, "dh": 2, "dw": 2, "out_h": out_h,
                                                    "out_w": out_w})
        return commands

    out, counters, program = run_backend(qgraph, x[0], stall_prob=0.2, seed=5,
                                         edit=dilate_the_pool)
    expected = run_program(program, x[0], CompileLimits.for_backend(SMALL, 2048, 16))
    assert np.array_equal(out, expected)
    # the edited windows differ from the undilated network's
    assert not np.array_equal(out, run_int(qgraph, x)[0])
