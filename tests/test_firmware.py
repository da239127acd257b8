"""The command-stream ISA and the compiler, run on the functional ISA simulator.

The compiled firmware, executed command by command through the addresses and fields it
carries, must give the golden model's outputs bit for bit, however the layers are tiled.
"""

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hoarfrost.firmware.isa import (IsaError, Op, assemble, check_compact_fields, decode,
                                    disassemble, encode, field_bits, weight_tiles, weight_untiles)
from hoarfrost.gen.compiler import CompileLimits, compile_graph, compile_streamed
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.isa_sim import IsaMachine, run_program
from onnx_models import ModelBuilder
from test_golden_onnxruntime import import_onnx_bytes


COMPACT = dict(dram_bits=17, scratch_bits=13, weight_cache=False)


def test_compact_fields_keep_the_bits_of_their_kind():
    assert field_bits(Op.LOAD, "dram_addr", **COMPACT) == 17
    assert field_bits(Op.LOAD, "dst", **COMPACT) == 13           # a scratchpad offset
    assert field_bits(Op.LOADW, "dst", **COMPACT) == 17          # a weight-cache offset
    assert field_bits(Op.MATMUL, "w_addr", **COMPACT) == 17
    assert field_bits(Op.MATMUL, "w_addr", **{**COMPACT, "weight_cache": True}) == 32  # WCACHE
    assert field_bits(Op.ADD, "mult_a", **COMPACT) == 32
    assert field_bits(Op.ADD, "zp_a", **COMPACT) == 16
    assert field_bits(Op.GEOM, "in_w", **COMPACT) == 16
    assert field_bits(Op.GEOM, "in_w", **COMPACT, index_bits=14) == 14
    assert field_bits(Op.SEND, "engine", **COMPACT) == 8
    check_compact_fields(assemble(
        "load dram_addr=131071 dst=8191 length=131071\n"
        "pool src=0 dst=0 kind=0 zp_in=-32768 lo_in=-128 hi_in=32767 p_addr=0xFFFFFFFF zp_out=0\n"
        "matmul src=0 dst=0 zp_in=0 c0=0 cg=1 m0=0 mt=1 n0=0 nt=1 w_addr=0 p_addr=0xFFFFFFFF "
        "lo=-128 hi=127 zp_out=0"), **COMPACT)


@pytest.mark.parametrize("text, message", [
    ("load dram_addr=131072 dst=0 length=1",
     "command 0 (LOAD): dram_addr = 131072 does not fit the back end's 17-bit field"),
    ("sync\nadd src_a=0 src_b=0 dst=0 length=1 zp_a=-32769 zp_b=0 mult_a=1 mult_b=1 shift=0 "
     "zp_out=0 lo=0 hi=0", "command 1 (ADD): zp_a = -32769 does not fit the back end's 16-bit"),
    ("geom in_c=1 in_h=65536 in_w=1 out_h=1 out_w=1 kh=1 kw=1 sh=1 sw=1 pad_top=0 pad_left=0 "
     "pad_bottom=0 pad_right=0 dh=1 dw=1", "in_h = 65536"),
    ("pool src=0 dst=0 kind=0 zp_in=0 lo_in=0 hi_in=0 p_addr=131071 zp_out=0",
     "p_addr = 131071 reads as NO_PARAMS in the back end's 17-bit field"),
])
def test_a_field_a_compact_back_end_would_not_keep_is_an_error(text, message):
    with pytest.raises(IsaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_compact_fields(assemble(text), **COMPACT)


def test_compact_index_fields_hold_index_bits():
    geom = ("geom in_c=1 in_h={} in_w=1 out_h=1 out_w=1 kh=1 kw=1 sh=1 sw=1 pad_top=0 "
            "pad_left=0 pad_bottom=0 pad_right=0 dh=1 dw=1")
    check_compact_fields(assemble(geom.format(16383)), **COMPACT, index_bits=14)
    with pytest.raises(IsaError, match="in_h = 16384 does not fit the back end's 14-bit field"):
        check_compact_fields(assemble(geom.format(16384)), **COMPACT, index_bits=14)


def test_assemble_disassemble_encode_decode_round_trip():
    text = """
    # a tiny program
    load dram_addr=0x100 dst=0 length=64
    add src_a=0 src_b=0 dst=64 length=64 zp_a=-3 zp_b=5 mult_a=40000 mult_b=1 shift=17 zp_out=-128 lo=-128 hi=127
    sync
    end
    """
    commands = assemble(text)
    assert [c.op for c in commands] == [Op.LOAD, Op.ADD, Op.SYNC, Op.END]
    assert commands[1].zp_a == -3 and commands[0].dram_addr == 256
    blob = encode(commands)
    assert len(blob) == 4 * (4 + 13 + 1 + 1)
    assert decode(blob) == commands
    assert assemble(disassemble(commands)) == commands


def test_recv_round_trips_and_fills_the_scratchpad_chw():
    commands = assemble("recv dst=8 pixels=6\nend")
    assert commands[0].op == Op.RECV and (commands[0].dst, commands[0].pixels) == (8, 6)
    blob = encode(commands)
    assert blob[:4] == ((9 << 24) | 2).to_bytes(4, "little") and len(blob) == 4 * (3 + 1)
    assert decode(blob) == commands and assemble(disassemble(commands)) == commands
    assert disassemble(commands).splitlines()[0] == "recv dst=8 pixels=6"
    # two RECVs of a 2-channel 2x3 feature map: beats are pixels, lanes are channels
    features = np.arange(-6, 6, dtype=np.int8).reshape(2, 2, 3)
    machine = IsaMachine(b"", 0, 32, 1, 1, features=features)
    machine.run(assemble("recv dst=0 pixels=4\nrecv dst=20 pixels=2\nend"))
    first = machine.scratch[:8].view(np.int8)
    assert first.tolist() == [-6, -5, -4, -3, 0, 1, 2, 3]       # channel 0 of pixels 0-3, channel 1
    assert machine.scratch[20:24].view(np.int8).tolist() == [-2, -1, 4, 5]
    with pytest.raises(IsaError, match="the stream has 0 left"):
        machine.run(assemble("recv dst=0 pixels=1\nend"))
    with pytest.raises(IsaError, match="without a feature stream"):
        IsaMachine(b"", 0, 32, 1, 1).run(commands)


def test_loadw_fills_the_weight_cache_a_matmul_streams_from():
    """A 1x1 MATMUL of 2 pixels x 2 channels, its weights at WCACHE | 4 after a LOADW, run
    twice: the second keeps the parameter buffer (KEEP_PARAMS). Without parameters loaded,
    or past the cache's end, the simulator names the cause."""
    from hoarfrost.firmware.isa import KEEP_PARAMS, WCACHE
    weights = np.array([[1, 2], [3, -1]], dtype=np.int8)          # (nt, K) = (2, 1 channel)
    params = struct.pack("<iIIiII", 10, 1, 0, -5, 1, 0)           # bias, mult 1, shift 0
    tiles = weight_tiles(weights[:, :1], 1, 2).tobytes()          # 1 x 2 array
    image = tiles + bytes(-len(tiles) % 4) + params
    geom = ("geom in_c=1 in_h=1 in_w=2 out_h=1 out_w=2 kh=1 kw=1 sh=1 sw=1 pad_top=0 "
            "pad_left=0 pad_bottom=0 pad_right=0 dh=1 dw=1")
    matmul = ("matmul src=0 dst={} zp_in=0 c0=0 cg=1 m0=0 mt=2 n0=0 nt=2 w_addr={} p_addr={} "
              "lo=-128 hi=127 zp_out=0")
    program = assemble("\n".join([f"loadw dram_addr=0 dst=4 length={len(tiles)}", geom,
                                  matmul.format(8, WCACHE | 4, len(image) - len(params)),
                                  matmul.format(12, WCACHE | 4, KEEP_PARAMS), "end"]))
    assert program[0].op == Op.LOADW and decode(encode(program)) == program
    assert encode(program)[:4] == ((10 << 24) | 3).to_bytes(4, "little")
    machine = IsaMachine(image, len(image), 16, 1, 2, weight_cache_bytes=16)
    machine.scratch[0:2] = np.array([3, -2], dtype=np.int8).view(np.uint8)
    machine.run(program)
    # channel 0: 1 * x + 10, channel 1: 3 * x - 5, stored CHW (channel after channel)
    expected = [13, 8, 4, -11]
    assert machine.scratch[8:12].view(np.int8).tolist() == expected
    assert machine.scratch[12:16].view(np.int8).tolist() == expected
    with pytest.raises(IsaError, match="buffer holds 0"):
        IsaMachine(image, len(image), 16, 1, 2, weight_cache_bytes=16).run(
            [program[1], program[3], program[4]])
    with pytest.raises(IsaError, match="beyond the weight cache of 4 bytes"):
        IsaMachine(image, len(image), 16, 1, 2, weight_cache_bytes=4).run(program)


@pytest.mark.parametrize("text, message", [
    ("jump to=3", "unknown command 'jump'"),
    ("load dram_addr=1 dst=2", "missing fields ['length']"),
    ("load dram_addr=1 dst=2 length=x", "'x' is not an integer"),
    ("load dram_addr=-1 dst=2 length=3", "does not fit in 32 bits"),
    ("sync extra", "expected field=value"),
])
def test_assembler_errors_name_the_line_and_cause(text, message):
    with pytest.raises(IsaError, match="line 1") as info:
        assemble(text)
    assert message in str(info.value)


def test_weight_tiles_follow_the_array_and_invert():
    w = np.arange(1, 16, dtype=np.int8).reshape(3, 5)          # nt=3 channels, K=5
    tiles = weight_tiles(w, rows=2, cols=2)
    assert tiles.size == 2 * 3 * 2 * 2
    # first N tile (channels 0, 1), first K tile, row r=0: W[0,0], W[1,0]; r=1: W[0,1], W[1,1]
    assert tiles[:4].tolist() == [1, 6, 2, 7]
    assert tiles[8:12].tolist() == [5, 10, 0, 0]                 # k=4 then zero past K
    assert np.array_equal(weight_untiles(tiles, 3, 5, 2, 2), w)


def test_decoder_rejects_malformed_streams():
    with pytest.raises(IsaError, match="whole number of words"):
        decode(b"\x00\x00\x00")
    with pytest.raises(IsaError, match="unknown op code 99"):
        decode((99 << 24).to_bytes(4, "little"))
    with pytest.raises(IsaError, match="LOAD needs 3 fields"):
        decode(((1 << 24) | 2).to_bytes(4, "little") + bytes(8))


def run_compiled(qgraph, x, limits):
    program = compile_graph(qgraph, limits)
    xi = quantize_input(qgraph, x)
    return program, np.stack([run_program(program, xi[i], limits) for i in range(len(x))])


@pytest.mark.parametrize("limits", [CompileLimits(), CompileLimits(scratch_bytes=2048, m_tile=7, n_tile=3),
                                    CompileLimits(m_tile=1, n_tile=1, rows=1, cols=1),
                                    CompileLimits(rows=3, cols=5, n_tile=7)])
@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_example_models_compile_bit_exact(examples, model, limits):
    x = np.load(examples / "digits_test_x.npy")[:12]
    qgraph = quantize(import_onnx(examples / f"{model}.onnx"), np.load(examples / "digits_calib.npy"), 8)
    program, out = run_compiled(qgraph, x, limits)
    assert np.array_equal(out, run_int(qgraph, x))
    matmuls = sum(c.op == Op.MATMUL for c in program.commands)
    assert matmuls >= sum(l.op in ("conv", "dense") for l in qgraph.layers)
    assert program.commands[-1].op == Op.END


@pytest.mark.parametrize("freeze", [1, 2])
def test_back_halves_behind_a_frozen_front_end_compile_bit_exact(examples, freeze):
    """The CNN's back half after its first ``freeze`` convolutions: its input, the frozen
    layers' output, arrives by RECV; with it the program gives the whole model's output."""
    from hoarfrost.gen.outdir import frozen_partition
    x = np.load(examples / "digits_test_x.npy")[:12]
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), np.load(examples / "digits_calib.npy"), 8)
    _, _, front, back = frozen_partition(qgraph, freeze)
    limits = CompileLimits(scratch_bytes=2048, m_tile=7, n_tile=3)
    program = compile_streamed(back, limits)
    assert program.input_addr is None and program.commands[0].op == Op.RECV
    assert [c.op for c in program.commands].count(Op.LOAD) == 0
    c, h, w = back.shapes[back.input]
    assert program.commands[0].pixels == h * w
    features = run_int(front, x)
    out = np.stack([run_program(program, f, limits) for f in features])
    assert np.array_equal(out, run_int(qgraph, x))


def test_scratchpad_too_small_names_the_layer(examples):
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), np.load(examples / "digits_calib.npy"), 8)
    with pytest.raises(HoarfrostError, match=r"layer '/conv1/Conv'.*576 bytes.*raise scratch_bytes"):
        compile_graph(qgraph, CompileLimits(scratch_bytes=256))


@st.composite
def networks(draw):
    """conv (any geometry, maybe depthwise) -> pool -> [residual block] -> relu/flatten -> gemm."""
    seed = draw(st.integers(0, 2**16))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(5, 10)), draw(st.integers(5, 10))
    b = ModelBuilder((c, h, w), seed=seed)
    k = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k - 1))
    depthwise = draw(st.booleans())
    cout = c * 2 if depthwise else draw(st.integers(1, 6))
    b.conv(c, cout, k, draw(st.integers(1, 2)), (pad, pad, pad, pad), c if depthwise else 1)
    b.relu()
    pool = draw(st.sampled_from(["MaxPool", "AveragePool", None]))
    if pool:
        b.op(pool, [b.last], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1],
             **({"count_include_pad": draw(st.integers(0, 1))} if pool == "AveragePool" else {}))
    if draw(st.booleans()):
        skip = b.last
        b.conv(cout, cout, 3, 1, (1, 1, 1, 1))
        b.op("Add", [skip, b.last])
        b.relu()
    b.op("Flatten", [b.last])
    return b, seed, (c, h, w)


@settings(max_examples=15, deadline=None)
@given(case=networks(), m_tile=st.integers(1, 40), n_tile=st.integers(1, 8),
       rows=st.integers(1, 5), cols=st.integers(1, 5))
def test_random_networks_compile_bit_exact(case, m_tile, n_tile, rows, cols):
    builder, seed, shape = case
    data = builder.finish()
    graph = import_onnx_bytes(data)
    features = graph.shapes[graph.output][0]
    builder.gemm(features, 3)
    graph = import_onnx_bytes(builder.finish())
    rng = np.random.default_rng(seed)
    qgraph = quantize(graph, rng.normal(0, 1, (16,) + shape).astype(np.float32), 8)
    x = rng.normal(0, 1, (3,) + shape).astype(np.float32)
    _, out = run_compiled(qgraph, x, CompileLimits(scratch_bytes=16384, m_tile=m_tile, n_tile=n_tile, rows=rows, cols=cols))
    assert np.array_equal(out, run_int(qgraph, x))


def test_dram_traffic_counts_weight_rereads_per_pixel_tile(examples):
    from hoarfrost.gen.traffic import dram_traffic
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), np.load(examples / "digits_calib.npy"), 8)
    whole = dram_traffic(compile_graph(qgraph, CompileLimits(rows=4, cols=4)), 4, 4)
    tiled = dram_traffic(compile_graph(qgraph, CompileLimits(rows=4, cols=4, m_tile=7)), 4, 4)
    cached = compile_graph(qgraph, CompileLimits(rows=4, cols=4, m_tile=7, weight_cache=128))
    weights, params = 2 * 3 * 4 * 4, 12 * 8  # 8 channels: 2 N tiles x 3 K tiles x 4x4, + params
    assert whole["layers"][0]["read_bytes"] == weights + params
    # 64 pixels in tiles of 7: without a weight cache each tile streams the weights again;
    # the parameter buffer keeps the records after the first
    assert tiled["layers"][0]["read_bytes"] == weights * 10 + params
    # with one, a LOADW reads them once and every tile streams them from the cache
    assert [c.op for c in cached.commands[1:4]] == [Op.GEOM, Op.LOADW, Op.MATMUL]
    assert dram_traffic(cached, 4, 4)["layers"][0]["read_bytes"] == weights + params
    assert whole["compulsory_bytes"] == tiled["compulsory_bytes"]
    assert whole["ratio"] < 1.1 < tiled["ratio"]


def test_pooling_table_too_large_names_the_option():
    b = ModelBuilder((2, 6, 6))
    b.conv(2, 2, 1)
    b.op("GlobalAveragePool", [b.last])
    qgraph = quantize(import_onnx_bytes(b.finish()), np.random.default_rng(0).normal(0, 1, (8, 2, 6, 6)).astype(np.float32), 8)
    with pytest.raises(HoarfrostError, match="37 entries.*has 16; raise param_depth"):
        compile_graph(qgraph, CompileLimits(table_depth=16))
    compile_graph(qgraph, CompileLimits(table_depth=37))
