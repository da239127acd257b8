"""Sparse engines in the accelerator top, in amaranth.sim: the back end's ``SEND`` streams a
layer's input vector from the scratchpad into a :class:`SparseMatVec`, ``RECVS`` takes its
outputs back, and the network's output equals the golden model of the compressed graph.
"""

import json

import numpy as np
import pytest

from hoarfrost.firmware.isa import Command, IsaError, Op, assemble, decode, encode
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.sparse_partition import (compress_for_engines, engine_layers,
                                            sparse_layer_names)
from hoarfrost.hw.accelerator import Accelerator, sparse_counter_names
from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.backend_host import run_in_amaranth
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.golden_sparse import SparseCounts, sparse_dense_int
from hoarfrost.sim.isa_sim import run_program, sparse_engine
from hoarfrost.sim.sequencer_model import predict_program
from hoarfrost.sim.sparse_model import predict_sparse_vector
from onnx_models import ModelBuilder
from test_golden_onnxruntime import import_onnx_bytes

SMALL = BackendConfig(rows=2, cols=2, a_depth=256, w_depth=4, acc_depth=32)
SCRATCH, PARAMS, PES = 1024, 16, 4


def conv_mlp(seed):
    """conv 2->3 (3x3) + ReLU, flatten (27), fc 27->12 + ReLU, fc 12->5."""
    b = ModelBuilder((2, 3, 3), seed=seed)
    b.conv(2, 3, 3, 1, (1, 1, 1, 1))
    b.relu()
    b.op("Flatten", [b.last])
    b.gemm(27, 12)
    b.relu()
    b.gemm(12, 5)
    rng = np.random.default_rng(seed)
    graph = import_onnx_bytes(b.finish())
    return quantize(graph, rng.normal(0, 1, (16, 2, 3, 3)).astype(np.float32), 8), rng


def run_accelerator(graph, names, x_int8, *, stall_prob=0.0, seed=0, max_cycles=40_000,
                    pes=PES):
    """Compile ``graph`` with ``names`` on sparse engines, run one image on the Accelerator
    in amaranth.sim; (output, counters, program, per-command start cycles)."""
    limits = CompileLimits.for_backend(SMALL, SCRATCH, PARAMS)
    program = compile_graph(graph, limits, sparse=names)
    dut = Accelerator(SMALL, scratch_bytes=SCRATCH, param_depth=PARAMS,
                      sparse_layers=engine_layers(graph, names, pes), sparse_fifo_depth=4)
    counters = BACKEND_COUNTERS + sparse_counter_names(len(names))
    out, result, starts = run_in_amaranth(dut, program, x_int8, counters, seed=seed,
                                          stall_prob=stall_prob, max_cycles=max_cycles,
                                          trace=True)
    return out, result, program, starts


def test_send_and_recvs_encode_and_assemble():
    text = "send src=8 length=27 engine=1\nrecvs dst=40 length=12 engine=1\n"
    commands = assemble(text)
    assert [c.op for c in commands] == [Op.SEND, Op.RECVS]
    assert decode(encode(commands)) == commands
    assert encode(commands)[:4] == bytes([3, 0, 0, Op.SEND])
    with pytest.raises(IsaError, match="missing fields"):
        Command.make(Op.SEND, src=0, length=1)


def test_a_back_end_without_sparse_engines_has_no_sparse_ports():
    plain, backend = BackEnd(SMALL), BackEnd(SMALL, sparse_engines=2)
    plain._MustUse__silence = backend._MustUse__silence = True     # never elaborated
    assert "sparse_out" not in plain.signature.members
    assert {"sparse_out", "sparse_in", "sparse_sel"} <= set(backend.signature.members)
    with pytest.raises(ValueError, match="sparse_engines"):
        BackEnd(SMALL, sparse_engines=-1)


def test_the_compiler_sends_the_sparse_layers_to_their_engines():
    graph, _ = conv_mlp(0)
    names = sparse_layer_names(graph, 2)
    assert names == [layer.name for layer in graph.layers if layer.op == "dense"]
    program = compile_graph(graph, CompileLimits.for_backend(SMALL, SCRATCH, PARAMS),
                            sparse=names)
    sends = [c for c in program.commands if c.op in (Op.SEND, Op.RECVS)]
    assert [(c.op, c.length, c.engine) for c in sends] == [
        (Op.SEND, 27, 0), (Op.RECVS, 12, 0), (Op.SEND, 12, 1), (Op.RECVS, 5, 1)]
    # the second layer reads what the first received
    assert sends[2].src == sends[1].dst
    assert not any(c.op == Op.MATMUL and c.nt in (12, 5) for c in program.commands)


@pytest.mark.parametrize("count", [0, 3])
def test_bad_sparse_counts_name_the_option(count):
    graph, _ = conv_mlp(0)
    with pytest.raises(HoarfrostError, match="--sparse"):
        sparse_layer_names(graph, count)


@pytest.mark.parametrize("seed, density, stall, pes", [
    (0, 0.3, 0.0, PES), (1, None, 0.3, PES), (2, None, 0.0, 1), (3, 0.5, 0.0, 2)])
def test_sparse_layers_run_on_the_engines_bit_exact(seed, density, stall, pes):
    """Both fully connected layers on two engines (the back end routes SEND/RECVS by the
    command's ``engine``), pruned or not: output equal to the compressed graph's golden model
    and to the ISA simulator; the engines' counters equal golden_sparse's events; every
    command takes the cycles the models predict: the sequencer's, plus for SEND and RECVS what
    the engine replay (sim/sparse_model.py) says its full queues and its wait add (with one or
    two PEs the engine is the bottleneck: SEND is held and RECVS waits)."""
    graph, rng = conv_mlp(seed)
    names = sparse_layer_names(graph, 2)
    compressed = compress_for_engines(graph, names, density=density, pes=pes)
    x = quantize_input(compressed, rng.normal(0, 1, (1, 2, 3, 3)).astype(np.float32))
    out, counters, program, starts = run_accelerator(compressed, names, x[0],
                                                     stall_prob=stall, seed=seed, pes=pes)
    golden = run_int(compressed, x)[0]
    assert np.array_equal(out, golden)
    engines = engine_layers(compressed, names, pes)
    assert np.array_equal(run_program(program, x[0], CompileLimits.for_backend(
        SMALL, SCRATCH, PARAMS), engines=[sparse_engine(*e) for e in engines]), golden)
    # each engine's events, from its input vector in the golden model
    values = run_int(compressed, x, keep_all=True)
    layers = {layer.name: layer for layer in compressed.layers}
    for i, (enc, layer, q_in) in enumerate(engines):
        events = SparseCounts()
        vector = values[layers[names[i]].inputs[0]].reshape(1, -1)
        assert np.array_equal(sparse_dense_int(vector, enc, layer, q_in, events)[0],
                              values[layers[names[i]].output].reshape(-1))
        assert counters[f"sparse{i}_macs"] == events.macs
        assert counters[f"sparse{i}_skipped"] == events.skipped
        assert counters[f"sparse{i}_entries"] == events.entries
    if density is not None:
        assert counters["sparse0_skipped"] > 0      # ReLU zeros the engine never broadcast
    if stall:
        return
    # per command, as the testbench counts: from its header to the next one's
    measured = [b - a for a, b in zip([0, *starts[1:]], [*starts[1:], counters["cycles"]])]
    predicted = predict_program(program, SMALL)
    timing = [predict_sparse_vector(enc, values[layers[name].inputs[0]].reshape(-1),
                                    q_in.zero_point, fifo_depth=4)
              for name, (enc, _, q_in) in zip(names, engines)]
    for i, command in enumerate(program.commands[:-1]):
        if command.op == Op.SEND:
            predicted[i] += timing[command.engine].send_stalls
        elif command.op == Op.RECVS:
            predicted[i] += timing[command.engine].recvs_wait
        assert measured[i] == predicted[i], (i, command.op)
    if pes == 1:
        assert timing[0].send_stalls > 0 and timing[0].recvs_wait > 0


# --- compile --sparse: the command line and the configuration ---------------------------------

def test_config_keys_sparse_pes_and_freeze(tmp_path):
    from hoarfrost.gen.config import HardwareConfig, load_config
    from test_compile import write_toml
    config = load_config(str(write_toml(tmp_path, "freeze = 1\nsparse_pes = 4\n")))
    assert (config.freeze, config.sparse_pes) == (1, 4)
    assert HardwareConfig.from_json(config.to_json()) == config
    assert (load_config(None).freeze, load_config(None).sparse_pes) == (0, 8)
    for text, message in (("sparse_pes = 0\n", "sparse_pes must be at least 1"),
                          ("freeze = -1\n", "freeze must be at least 0"),
                          ("freeze = true\n", "freeze must be an integer")):
        with pytest.raises(HoarfrostError, match=message):
            load_config(str(write_toml(tmp_path, text, "bad.toml")))


def test_compile_sparse_user_errors_are_one_line(capsys, examples, tmp_path):
    from test_compile import _left_behind, assert_one_line_error
    cnn = [examples / "digits_cnn.onnx", "--calib", examples / "digits_calib.npy"]
    out = ["-o", tmp_path / "o"]
    assert_one_line_error(capsys, ["compile", *cnn, "--sparse", "2", *out],
                          "--sparse 2", "only 1 fully connected layer", "/fc/Gemm")
    assert_one_line_error(capsys, ["compile", *cnn, "--sparse", "0", *out],
                          "--sparse must be a positive number")
    assert_one_line_error(capsys, ["compile", *cnn, "--sparse-density", "0.5", *out],
                          "--sparse-density", "add --sparse N")
    assert_one_line_error(capsys, ["compile", *cnn, "--sparse", "1", "--sparse-density", "0",
                                   *out], "--sparse-density must be in (0, 1]")
    # a model with no fully connected layer at all
    b = ModelBuilder((1, 4, 4))
    b.conv(1, 2, 3)
    b.relu()
    (tmp_path / "conv.onnx").write_bytes(b.finish())
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (4, 1, 4, 4))
            .astype(np.float32))
    assert_one_line_error(capsys, ["compile", tmp_path / "conv.onnx", "--calib",
                                   tmp_path / "calib.npy", "--sparse", "1", *out],
                          "--sparse 1", "no fully connected")
    assert _left_behind(tmp_path, {"conv.onnx", "calib.npy"}) == []


def test_compile_sparse_writes_the_partition_and_the_compressed_model(capsys, examples,
                                                                       tmp_path):
    """The MLP's last two layers on engines of 4 PEs: manifest partition and sparse entry, the
    firmware's SEND/RECVS, and model_q.onnx holding the weight-shared layers (at most 15
    distinct non-zero weights) whose golden model the ISA simulator reproduces."""
    from hoarfrost.gen.cli import main
    from hoarfrost.gen.config import HardwareConfig
    from hoarfrost.gen.onnx_import import import_onnx
    from test_compile import write_toml
    config = write_toml(tmp_path, "sparse_pes = 4\n")
    assert main(["compile", str(examples / "digits_mlp.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--config", str(config), "--sparse", "2",
                 "-o", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "2 on sparse engine(s) of 4 PEs" in stdout
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["toplevel"] == "accelerator" and m["verilog"] == "accelerator.v"
    assert m["partition"]["sparse_engine"] == ["/fc2/Gemm", "/fc3/Gemm"]
    assert m["partition"]["backend"] == ["/flatten/Flatten", "/fc1/Gemm"]
    assert [e["name"] for e in m["sparse"]["engines"]] == ["/fc2/Gemm", "/fc3/Gemm"]
    assert m["sparse"]["pes"] == 4
    assert m["sparse"]["refit_to_calibration"] is False      # nothing pruned: nothing to refit
    assert [r["engine"] for r in m["layers"]] == ["backend", "backend", "sparse", "sparse"]
    commands = decode((tmp_path / "out" / "firmware.bin").read_bytes())
    assert [c.op for c in commands if c.op in (Op.SEND, Op.RECVS)] == [Op.SEND, Op.RECVS] * 2
    graph = import_onnx(tmp_path / "out" / "model_q.onnx")
    fc2 = next(l for l in graph.layers if l.name == "/fc2/Gemm")
    assert len(np.unique(fc2.weight_q[fc2.weight_q != 0])) <= 15
    # the model was already pruned to 12.5% in fc2; compression keeps those zeros
    assert m["sparse"]["engines"][0]["density"] == pytest.approx((fc2.weight_q != 0).mean())
    assert m["sparse"]["engines"][0]["density"] <= 0.13
    names = m["partition"]["sparse_engine"]
    hw = HardwareConfig.from_json(m["config"])
    limits = CompileLimits.for_backend(hw.backend, hw.scratch_bytes, hw.param_depth)
    program = compile_graph(graph, limits, sparse=names)
    assert encode(program.commands) == (tmp_path / "out" / "firmware.bin").read_bytes()
    x = quantize_input(graph, np.load(examples / "digits_test_x.npy")[:5])
    engines = [sparse_engine(*e) for e in engine_layers(graph, names, 4)]
    golden = run_int(graph, x)
    for i in range(len(x)):
        assert np.array_equal(run_program(program, x[i], limits, engines), golden[i])


def test_compile_sparse_density_refits_the_pruned_layer(capsys, examples, tmp_path):
    """The CNN's fc pruned to 30% on an engine: compile re-fits the kept weights to the
    calibration data, and the compiled model keeps 96.1% of the 360 test digits (magnitude
    pruning alone, as a QDQ model without --calib compiles: 75.3%; dense 8-bit: 97.2%)."""
    from hoarfrost.gen.cli import main
    from hoarfrost.gen.onnx_import import import_onnx
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--sparse", "1", "--sparse-density", "0.3",
                 "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["sparse"]["refit_to_calibration"] is True
    assert m["sparse"]["pruned_to_density"] == 0.3
    assert m["sparse"]["engines"][0]["density"] <= 0.3
    x, y = np.load(examples / "digits_test_x.npy"), np.load(examples / "digits_test_y.npy")

    def accuracy(out):
        graph = import_onnx(out / "model_q.onnx")
        return float((run_int(graph, x).argmax(1) == y).mean())

    assert accuracy(tmp_path / "out") > 0.95
    # a QDQ model: magnitude pruning alone, unless --calib is given for the refit
    q = tmp_path / "q.onnx"
    assert main(["quantize", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "-o", str(q)]) == 0
    for calib, refit in (([], False), (["--calib", str(examples / "digits_calib.npy")], True)):
        out = tmp_path / f"qdq_{refit}"
        assert main(["compile", str(q), *calib, "--sparse", "1", "--sparse-density", "0.3",
                     "-o", str(out)]) == 0
        m = json.loads((out / "manifest.json").read_text())
        assert m["sparse"]["refit_to_calibration"] is refit
        assert (accuracy(out) > 0.95) if refit else (accuracy(out) < 0.8)
    capsys.readouterr()


def test_all_three_stages_from_the_configuration(capsys, examples, tmp_path):
    """``freeze = 1`` in the configuration (no --freeze) and --sparse 1: conv1 frozen in front
    of the back end, the back end's firmware RECVs its output, runs conv2 and the pooling, and
    SENDs the flattened map to the engine of /fc/Gemm."""
    from hoarfrost.gen.cli import main
    from test_compile import write_toml
    config = write_toml(tmp_path, "freeze = 1\nsparse_pes = 4\n")
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--config", str(config), "--sparse", "1",
                 "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    p = m["partition"]
    assert p["frontend_frozen"] == ["/conv1/Conv"] and p["sparse_engine"] == ["/fc/Gemm"]
    assert p["backend"] == ["/conv2/Conv", "/pool/MaxPool", "/flatten/Flatten"]
    assert m["config"]["freeze"] == 1 and m["frozen"]["convolutions"] == 1
    ops = [c.op for c in decode((tmp_path / "out" / "firmware.bin").read_bytes())]
    assert ops[0] == Op.RECV and ops[-5:] == [Op.SEND, Op.RECVS, Op.STORE, Op.SYNC, Op.END]
