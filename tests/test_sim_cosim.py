"""``hoarfrost sim``: the compiled example models through the back end's RTL in Verilator.

The configuration is tests/test_backend_cosim.py's, so the Verilator build is shared with it.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest

from hoarfrost.gen.cli import main
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.sim.golden import run_int
from test_compile import SMALL_TOML, compile_quietly

pytestmark = pytest.mark.cosim


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compiled(examples, tmp_path_factory):
    """``compile_(model)``: OUT/ of an example model, compiled once per module."""
    outs = {}
    tmp = tmp_path_factory.mktemp("compiled")
    (tmp / "hw.toml").write_text(SMALL_TOML)

    def compile_(model):
        if model not in outs:
            assert compile_quietly(examples / f"{model}.onnx", "--calib",
                                   examples / "digits_calib.npy", "--config", tmp / "hw.toml",
                                   "-o", tmp / model) == 0
            outs[model] = tmp / model
        return outs[model]
    return compile_


def test_sim_cnn_equals_golden_with_cycles_per_layer(capsys, examples, compiled):
    out = compiled("digits_cnn")
    code, stdout, err = run(capsys, "sim", out, "--inputs", examples / "digits_test_x.npy",
                            "--limit", 3, "--batch", 2, "--json")
    assert code == 0, err
    s = json.loads(stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert s["images"] == 3 and s["matches_golden"] and s["mismatch"] is None
    assert len(s["cycles"]) == 3 and all(c > 0 for c in s["cycles"])
    assert s["total_cycles"] == sum(s["cycles"]) and s["sim_cycles_per_second"] > 0
    # the per-layer cycles account for every cycle, and each layer that computes takes some
    assert sum(r["cycles"] for r in s["layers"]) == pytest.approx(s["mean_cycles"])
    names = [r["name"] for r in s["layers"]]
    assert names == ["(load input)", *(l["name"] for l in manifest["layers"]), "(store output)"]
    assert all(r["cycles"] > 0 for r in s["layers"] if r["op"] != "reshape")
    # the analytic cycle model beside the RTL: within 5% on every layer (exact without stalls)
    assert all(abs(r["predicted_cycles"] - r["cycles"]) <= 0.05 * r["cycles"] for r in s["layers"])
    assert s["predicted_cycles"] == sum(r["predicted_cycles"] for r in s["layers"])
    # the counters behind energy and DRAM figures
    assert s["macs_useful"] == manifest["macs"] == 23680
    assert s["dram_write_bytes"] == 10
    d = manifest["dram"]
    assert s["dram_read_bytes"] >= d["firmware_bytes"] + d["image_bytes"] - d["input_bytes"] - 10
    e = s["energy_pj"]
    assert e["mul8"] == pytest.approx(0.2 * s["macs_issued"])
    assert e["dram_read32"] == pytest.approx(640 * s["dram_read_bytes"] / 4)
    assert e["total"] == pytest.approx(sum(v for k, v in e.items() if k != "total"))
    golden = run_int(import_onnx(out / "model_q.onnx"), np.load(examples / "digits_test_x.npy")[:3])
    assert s["predicted"] == golden.argmax(axis=1).tolist()
    assert "simulated 2/3 images" in err and "simulated 3/3 images" in err
    # the summary is kept for `hoarfrost report`, which plots it with the model beside it
    assert json.loads((out / "sim.json").read_text()) == s
    assert run(capsys, "report", out)[0] == 0
    assert (out / "report" / "cycles.png").is_file()
    assert "hoarfrost sim" not in (out / "report" / "index.html").read_text()


def test_sim_mlp_reports_accuracy(capsys, examples, compiled):
    out = compiled("digits_mlp")
    code, stdout, err = run(capsys, "sim", out, "--inputs", examples / "digits_test_x.npy",
                            "--labels", examples / "digits_test_y.npy", "--limit", 4)
    assert code == 0, err
    golden = run_int(import_onnx(out / "model_q.onnx"), np.load(examples / "digits_test_x.npy")[:4])
    correct = int((golden.argmax(axis=1) == np.load(examples / "digits_test_y.npy")[:4]).sum())
    assert f"accuracy {100 * correct / 4:.2f}% ({correct}/4)" in stdout
    assert "every output equals the golden model" in stdout
    assert "/fc1/Gemm" in stdout and "energy per inference" in stdout


def test_sim_names_the_first_image_and_layer_that_differ(capsys, examples, compiled, tmp_path):
    """Firmware that computes something else (a bias of the first conv changed) is caught:
    exit status 1, the image and the first layer whose output differs named."""
    out = tmp_path / "out"
    shutil.copytree(compiled("digits_cnn"), out)           # changed below: a copy
    manifest = json.loads((out / "manifest.json").read_text())
    conv1 = manifest["layers"][0]
    weights = bytearray((out / "weights.bin").read_bytes())
    asm = (out / "firmware.asm").read_text().splitlines()
    matmul = asm[conv1["first_command"] + 1]                 # after its GEOM
    p_addr = int(matmul.split("p_addr=")[1].split()[0])
    weights[p_addr + 2] ^= 0x40                              # bias of channel 0, third byte
    (out / "weights.bin").write_bytes(bytes(weights))
    manifest["files"]["weights.bin"] = hashlib.sha256(bytes(weights)).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, stdout, err = run(capsys, "sim", out, "--inputs", examples / "digits_test_x.npy",
                            "--limit", 1)
    assert code == 1
    assert "OUTPUTS DIFFER" in stdout
    message = [l for l in err.splitlines() if l.startswith("hoarfrost: sim:")]
    assert len(message) == 1 and "image 0: output" in message[0]
    assert "first differing layer output: '/conv1/Conv'" in message[0]


@pytest.mark.parametrize("freeze, frozen, pixels, channels", [
    (1, ["/conv1/Conv"], 64, 8),
    (2, ["/conv1/Conv", "/conv2/Conv", "/pool/MaxPool"], 4, 16),
])
def test_sim_frozen_front_end_streams_into_the_back_end(capsys, examples, tmp_path, freeze,
                                                        frozen, pixels, channels):
    """``compile --freeze N`` then ``sim``: each image streams pixel by pixel (random gaps)
    into the frozen block, whose output the firmware RECVs (DRAM stalls too); every output
    equals the golden model of the whole CNN. One Verilator build per depth, three images."""
    (tmp_path / "hw.toml").write_text(SMALL_TOML)
    out = tmp_path / "out"
    assert compile_quietly(examples / "digits_cnn.onnx", "--calib", examples / "digits_calib.npy",
                           "--config", tmp_path / "hw.toml", "--freeze", freeze, "-o", out) == 0
    code, stdout, err = run(capsys, "sim", out, "--inputs", examples / "digits_test_x.npy",
                            "--limit", 3, "--pixel-gaps", 0.3, "--dram-stall", 0.1, "--json")
    assert code == 0, err
    s = json.loads(stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert s["matches_golden"] and s["images"] == 3
    golden = run_int(import_onnx(out / "model_q.onnx"), np.load(examples / "digits_test_x.npy")[:3])
    assert s["predicted"] == golden.argmax(axis=1).tolist()
    # per layer: the frozen layers as one entry (the RECV of their output), then the back half
    names = [r["name"] for r in s["layers"]]
    assert names == [f"(frozen: {', '.join(frozen)})",
                     *(l["name"] for l in manifest["layers"]), "(store output)"]
    assert sum(r["cycles"] for r in s["layers"]) == pytest.approx(s["mean_cycles"])
    # RECV takes each of the frozen block's output pixels, one channel per cycle
    assert s["frozen"]["layers"] == frozen and s["frozen"]["out_pixels"] == pixels
    assert s["recv_cycles"] >= channels * pixels + 2
    assert s["layers"][0]["cycles"] > s["recv_cycles"]            # plus the RECV's fetch
    # the back end multiplies the back half only, and reads no input from DRAM: the firmware
    # and everything in the image before the output buffer (each weight once here)
    assert s["macs_useful"] == manifest["macs"] == 23680 - manifest["frozen"]["macs"]
    d = manifest["dram"]
    assert s["dram_read_bytes"] == d["firmware_bytes"] + d["output_addr"]
    assert s["dram_write_bytes"] == 10
    # the frozen block's adders and registers are priced with the back end's events
    assert s["energy_pj"]["reg_write8"] > 0 and s["energy_pj"]["add16"] > 0
