"""Transfer learning (FixyNN): two heads on one frozen front end, the frozen block generated once.

examples/train_heads.py keeps the first two convolutions of digits_cnn.onnx (and the pooling
after them) and trains two heads on their features: ``digit`` (10 classes) and ``loop``
(closed loop, 2 classes). Quantized with the same calibration images, both models must have the
same front half, integer for integer, so the frozen block's Verilog is the same bytes and only
the head, on the programmable back end, changes.

``heads`` (the two quantized graphs) and ``FREEZE`` are imported by other test modules.
"""

import importlib.util
import json

import numpy as np
import onnx
import pytest

from hoarfrost.gen.freeze import freeze_specs, frozen_verilog, output_tensor
from hoarfrost.gen.ir import split_graph
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.golden import run_int

#: Convolutions frozen, as `hoarfrost bench freeze --layers 2`.
FREEZE = 2
HEADS = ("digit", "loop")
LOOP_DIGITS = (0, 4, 6, 8, 9)
#: Correct answers of the 8-bit golden model on the 360 test images, as examples/README.md
#: reports them (train_heads.py prints the same).
GOLDEN_CORRECT = {"digit": 352, "loop": 349}


def head_path(examples, name):
    return examples / f"digits_head_{name}.onnx"


def quantize_head(examples, name):
    """The head model quantized as `hoarfrost quantize` does with the example calibration."""
    graph = import_onnx(head_path(examples, name))
    return quantize(graph, np.load(examples / "digits_calib.npy"), 8)


@pytest.fixture(scope="session")
def heads(examples):
    """``{"digit": graph, "loop": graph}``: both head models, quantized (8-bit weights)."""
    return {name: quantize_head(examples, name) for name in HEADS}


def labels_for(name, digits):
    return digits if name == "digit" else np.isin(digits, LOOP_DIGITS).astype(np.int64)


def test_the_head_files_keep_the_cnns_frozen_nodes_and_weights_unchanged(examples):
    base = onnx.load(examples / "digits_cnn.onnx")
    inits = {t.name: t for t in base.graph.initializer}
    frozen = list(base.graph.node)[:5]        # Conv Relu Conv Clip MaxPool
    assert [n.op_type for n in frozen] == ["Conv", "Relu", "Conv", "Clip", "MaxPool"]
    for name in HEADS:
        model = onnx.load(head_path(examples, name))
        assert list(model.graph.node)[:5] == frozen
        assert [n.op_type for n in model.graph.node[5:]] == ["Flatten", "Gemm", "Relu", "Gemm"]
        assert model.graph.node[5].input[0] == frozen[-1].output[0]
        theirs = {t.name: t for t in model.graph.initializer}
        for tensor in {i for n in frozen for i in n.input} & set(inits):
            assert theirs[tensor] == inits[tensor], tensor    # protobuf equality: same bytes
        assert model.graph.input == base.graph.input


def test_both_heads_cut_at_the_same_frozen_tensor_into_identical_integer_fronts(heads, examples):
    x = np.load(examples / "digits_test_x.npy")
    tensors = {output_tensor(g, FREEZE) for g in heads.values()}
    assert tensors == {"/pool/MaxPool_output_0"}
    (tensor,) = tensors
    fronts = [split_graph(g, tensor)[0] for g in heads.values()]
    a, b = fronts
    assert [l.name for l in a.layers] == [l.name for l in b.layers] == [
        "/conv1/Conv", "/conv2/Conv", "/pool/MaxPool"]
    assert a.quant == b.quant
    for la, lb in zip(a.layers, b.layers):
        for field in ("weight_q", "bias_q"):
            np.testing.assert_array_equal(getattr(la, field, None), getattr(lb, field, None))
        if la.requant is not None:
            np.testing.assert_array_equal(la.requant.multiplier, lb.requant.multiplier)
            np.testing.assert_array_equal(la.requant.shift, lb.requant.shift)
            assert (la.requant.zero_point, la.requant.lo, la.requant.hi) == (
                lb.requant.zero_point, lb.requant.lo, lb.requant.hi)
    features = run_int(a, x)
    assert features.shape == (360, 16, 2, 2) and features.dtype == np.int8
    np.testing.assert_array_equal(features, run_int(b, x))
    # and the front is what the whole head model computes on the way
    np.testing.assert_array_equal(features, run_int(heads["loop"], x, keep_all=True)[tensor])


def test_the_frozen_block_is_the_original_cnns_and_needs_no_regeneration(heads, examples):
    cnn = quantize(import_onnx(examples / "digits_cnn.onnx"),
                   np.load(examples / "digits_calib.npy"), 8)
    want = freeze_specs(cnn, FREEZE)
    for graph in heads.values():
        got = freeze_specs(graph, FREEZE)
        assert [s.name for s in got] == [s.name for s in want]
        for s, t in zip(got, want):
            assert repr(s) == repr(t)               # every integer parameter of every stage
    digit, loop = (frozen_verilog(heads[name], FREEZE) for name in HEADS)
    assert digit == loop
    assert "module frozen_feature_extractor(" in digit and len(digit) > 100_000


def test_golden_accuracy_of_each_head_on_the_test_images(heads, examples):
    x = np.load(examples / "digits_test_x.npy")
    y = np.load(examples / "digits_test_y.npy")
    for name, graph in heads.items():
        logits = run_int(graph, x)
        assert logits.shape == (360, 10 if name == "digit" else 2)
        correct = int((logits.argmax(axis=1) == labels_for(name, y)).sum())
        assert correct == GOLDEN_CORRECT[name], name
    # the two tasks really differ: the loop labels split the test set about in half
    assert int(labels_for("loop", y).sum()) == 179


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="train_heads.py needs scikit-learn (pip install -e '.[train]')")
def test_train_heads_rewrites_the_committed_models(examples, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_heads", examples / "train_heads.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path)])
    for name in HEADS:
        assert (tmp_path / head_path(examples, name).name).read_bytes() == \
            head_path(examples, name).read_bytes()
    out = capsys.readouterr().out
    assert "8-bit golden 352/360" in out and "8-bit golden 349/360" in out


@pytest.mark.cosim
def test_both_heads_run_on_one_frozen_build(capsys, examples, tmp_path):
    """``compile --freeze 2`` of the CNN and of both heads gives one accelerator Verilog (the
    frozen block and the back end do not change with the head); each head's firmware and
    weights run on it bit-exact, with the golden model's accuracy on the images simulated.
    With tests/test_sim_cosim.py's configuration the Verilator build is shared with it."""
    from hoarfrost.gen.cli import main
    from test_compile import SMALL_TOML, compile_quietly

    (tmp_path / "hw.toml").write_text(SMALL_TOML)
    outs = {}
    for name, model in (("cnn", examples / "digits_cnn.onnx"),
                        *((h, head_path(examples, h)) for h in HEADS)):
        outs[name] = tmp_path / name
        assert compile_quietly(model, "--calib", examples / "digits_calib.npy", "--config",
                               tmp_path / "hw.toml", "--freeze", FREEZE, "-o", outs[name]) == 0
    verilog = {name: (out / "accelerator.v").read_bytes() for name, out in outs.items()}
    assert verilog["digit"] == verilog["loop"] == verilog["cnn"]
    assert (outs["digit"] / "firmware.bin").read_bytes() != (outs["loop"] / "firmware.bin").read_bytes()
    x = np.load(examples / "digits_test_x.npy")[:4]
    digits = np.load(examples / "digits_test_y.npy")
    for name in HEADS:
        np.save(tmp_path / f"{name}_y.npy", labels_for(name, digits))
        assert main(["sim", str(outs[name]), "--inputs", str(examples / "digits_test_x.npy"),
                     "--labels", str(tmp_path / f"{name}_y.npy"), "--limit", "4", "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert s["matches_golden"] and s["images"] == 4
        golden = run_int(import_onnx(outs[name] / "model_q.onnx"), x).argmax(axis=1)
        assert s["predicted"] == golden.tolist()
        assert s["correct"] == int((golden == labels_for(name, digits[:4])).sum())
