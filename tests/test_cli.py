"""The command line as a user meets it: outputs, JSON summaries, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hoarfrost.gen.cli import main
from onnx_models import ModelBuilder


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, args, *fragments):
    code, out, err = run(capsys, *args)
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def cnn(examples):
    return examples / "digits_cnn.onnx"


@pytest.fixture
def data(examples):
    return {k: examples / f"digits_{k}.npy" for k in ("test_x", "test_y", "calib")}


def test_inspect_json_lists_layers_macs_and_sparsity(capsys, examples):
    code, out, _ = run(capsys, "inspect", examples / "digits_mlp.onnx", "--json")
    s = json.loads(out)
    assert code == 0 and not s["quantized"]
    assert [l["op"] for l in s["layers"]] == ["reshape", "dense", "dense", "dense"]
    assert s["macs"] == 64 * 64 + 64 * 32 + 32 * 10
    assert s["layers"][1]["weight_sparsity"] == pytest.approx(0.875)
    assert s["input"] == {"name": "input", "shape": [1, 8, 8]}


def test_inspect_text_table(capsys, cnn):
    code, out, _ = run(capsys, "inspect", cnn)
    assert code == 0
    assert "relu6" in out and "23680 MACs" in out


def test_quantize_then_predict_json(capsys, cnn, data, tmp_path):
    q = tmp_path / "q4.onnx"
    code, out, _ = run(capsys, "quantize", cnn, "--calib", data["calib"], "--weight-bits", 4, "-o", q, "--json")
    assert code == 0 and q.is_file()
    assert json.loads(out)["weight_bits"] == 4
    code, out, _ = run(capsys, "predict", q, "--inputs", data["test_x"], "--labels", data["test_y"],
                       "--json", "--check-onnxruntime")
    s = json.loads(out)
    x = np.load(data["test_x"])
    assert s["mode"] == "int8" and s["inputs"] == len(x) == len(s["predicted"])
    values = np.array(s["output"]["values"])
    assert values.shape == (len(x), 10) and values.min() >= -128 and values.max() <= 127
    assert s["predicted"] == values.argmax(1).tolist()
    assert s["accuracy"] == pytest.approx((values.argmax(1) == np.load(data["test_y"])).mean())
    assert s["accuracy"] > 0.9
    assert s["onnxruntime"]["argmax_agree"] == len(x) and s["onnxruntime"]["max_diff"] <= 1


def test_predict_float_model_and_on_the_fly_quantization(capsys, cnn, data):
    code, out, _ = run(capsys, "predict", cnn, "--inputs", data["test_x"], "--json")
    assert code == 0 and json.loads(out)["mode"] == "float"
    code, out, _ = run(capsys, "predict", cnn, "--inputs", data["test_x"], "--calib", data["calib"],
                       "--labels", data["test_y"])
    assert code == 0 and "integer golden model" in out and "accuracy" in out


def test_predict_accepts_one_sample_without_batch_axis(capsys, cnn, data, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.load(data["test_x"])[0])
    code, out, _ = run(capsys, "predict", cnn, "--inputs", one, "--json")
    assert code == 0 and json.loads(out)["inputs"] == 1


# --- bad input: one line, exit 2, nothing written ----------------------------------------------

def test_not_an_onnx_file(capsys, tmp_path, data):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model\n" * 10)
    assert_user_error(capsys, ["inspect", bad], "bad.onnx", "not")


def test_truncated_file(capsys, tmp_path, cnn):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(cnn.read_bytes()[:1000])
    assert_user_error(capsys, ["inspect", cut], "cut.onnx")


def test_missing_file(capsys, tmp_path):
    assert_user_error(capsys, ["inspect", tmp_path / "nope.onnx"], "no such file")


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_unsupported_op_names_node_and_type(capsys, tmp_path):
    node = helper.make_node("Softmax", ["input"], ["output"], name="my_softmax")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])])
    path = _save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert_user_error(capsys, ["inspect", path], "my_softmax", "Softmax", "unsupported")


def test_dynamic_spatial_shape(capsys, tmp_path):
    b = ModelBuilder((1, 8, 8))
    b.conv(1, 2, 3)
    model = onnx.load_from_string(b.finish())
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    model.graph.ClearField("value_info")
    assert_user_error(capsys, ["inspect", _save(tmp_path, model)], "dynamic", "height")


def test_missing_shape(capsys, tmp_path):
    b = ModelBuilder((1, 8, 8))
    b.conv(1, 2, 3)
    model = onnx.load_from_string(b.finish())
    model.graph.input[0].type.tensor_type.ClearField("shape")
    model.graph.ClearField("value_info")
    assert_user_error(capsys, ["inspect", _save(tmp_path, model)], "shape")


def test_calibration_of_the_wrong_shape(capsys, cnn, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((10, 3, 8, 8), np.float32))
    out = tmp_path / "q.onnx"
    assert_user_error(capsys, ["quantize", cnn, "--calib", calib, "-o", out], "--calib", "(10, 3, 8, 8)")
    assert not out.exists() and list(tmp_path.iterdir()) == [calib]


@pytest.mark.parametrize("bits", ["3", "16", "eight"])
def test_bad_weight_bits(capsys, cnn, data, tmp_path, bits):
    out = tmp_path / "q.onnx"
    code, _, err = run(capsys, "quantize", cnn, "--calib", data["calib"], "--weight-bits", bits, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "weight-bits" in err
    assert not out.exists()


def test_inputs_of_the_wrong_shape(capsys, cnn, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 64), np.float32))
    assert_user_error(capsys, ["predict", cnn, "--inputs", x], "--inputs", "(4, 64)", "(N, 1, 8, 8)")


def test_inputs_of_the_wrong_dtype(capsys, cnn, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((4, 1, 8, 8), np.int64))
    assert_user_error(capsys, ["predict", cnn, "--inputs", x], "--inputs", "int64")


def test_inputs_not_npy(capsys, cnn, tmp_path):
    x = tmp_path / "x.npy"
    x.write_text("1,2,3")
    assert_user_error(capsys, ["predict", cnn, "--inputs", x], "--inputs", "not a numpy")


def test_labels_count_mismatch(capsys, cnn, data, tmp_path):
    y = tmp_path / "y.npy"
    np.save(y, np.zeros(3, np.int64))
    assert_user_error(capsys, ["predict", cnn, "--inputs", data["test_x"], "--labels", y], "3 labels")


def test_output_directory_missing(capsys, cnn, data, tmp_path):
    assert_user_error(capsys, ["quantize", cnn, "--calib", data["calib"], "-o", tmp_path / "no" / "q.onnx"],
                      "does not exist")


def test_unknown_option_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "hoarfrost", "inspect", "m.onnx", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--bogus" in proc.stderr


def test_help_explains_each_command():
    for command in ("inspect", "quantize", "predict"):
        proc = subprocess.run([sys.executable, "-m", "hoarfrost", command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: hoarfrost " + command in proc.stdout
