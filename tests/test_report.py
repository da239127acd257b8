"""``hoarfrost report``: the page shows OUT's real figures and names what is missing."""

import json
import shutil

import pytest

from hoarfrost.gen.cli import main
from hoarfrost.gen.report import layer_traffic


@pytest.fixture(scope="module")
def compiled(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "cnn"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "-o", str(out)]) == 0
    return out


def test_a_compiled_out_gets_the_dram_plot_and_names_the_missing_runs(capsys, compiled, tmp_path):
    out = tmp_path / "cnn"
    shutil.copytree(compiled, out)
    assert main(["report", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    page = (out / "report" / "index.html").read_text()
    assert sorted(p.name for p in (out / "report").iterdir()) == ["dram.png", "index.html"]
    assert f"hoarfrost sim {out} --inputs X.npy" in page
    assert f"hoarfrost build {out} --board ulx3s-85f" in page
    manifest = json.loads((out / "manifest.json").read_text())
    traffic = layer_traffic(out, manifest)
    # every layer's row carries its MACs and the bytes the firmware reads for it
    for layer, t in zip(manifest["layers"], traffic["layers"]):
        assert f"<td>{layer['macs']}</td>" in page
        assert t["name"] == layer["name"]
    assert sum(t["read_bytes"] for t in traffic["layers"]) + traffic["input_bytes"] \
        == traffic["read_bytes"]


def test_simulation_and_build_results_are_plotted(capsys, compiled, tmp_path):
    out = tmp_path / "cnn"
    shutil.copytree(compiled, out)
    manifest = json.loads((out / "manifest.json").read_text())
    layers = [{"name": l["name"], "op": l["op"], "commands": l["commands"],
               "cycles": 100.0 * (i + 1), "predicted_cycles": 100.0 * (i + 1)}
              for i, l in enumerate(manifest["layers"])]
    # as `sim` writes them: the input's load and the output's store are rows of their own
    layers = [{"name": "(load input)", "op": "load", "commands": 1, "cycles": 90.0,
               "predicted_cycles": 90.0}, *layers,
              {"name": "(store output)", "op": "store", "commands": 3, "cycles": 49.0,
               "predicted_cycles": 49.0}]
    sim = {"images": 3, "layers": layers, "mean_cycles": 1500.0, "matches_golden": True,
           "energy_pj": {"mac": 1000.0, "dram": 3000.0, "total": 4000.0},
           "energy_source": "test table", "accuracy": 2 / 3, "correct": 2}
    (out / "sim.json").write_text(json.dumps(sim))
    build = out / "build" / "ulx3s-85f"
    build.mkdir(parents=True)
    (build / "report.json").write_text(json.dumps({
        "utilization": {"LUT4": [4200, 83640], "DSP": [65, 156]},
        "fmax_mhz": 52.5, "clock_mhz": 50.0}))
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert sorted(p.name for p in (out / "report").iterdir()) == [
        "cycles.png", "dram.png", "energy.png", "index.html", "utilization.png"]
    assert "mean 1500 cycles per inference, 4.00 nJ" in page
    assert "accuracy 66.67% (2/3)" in page
    assert "Fmax 52.5 MHz against the 50 MHz board clock (timing met)" in page
    conv1 = manifest["layers"][0]
    pes = manifest["config"]["backend"]["rows"] * manifest["config"]["backend"]["cols"]
    assert f"<td>{100 * conv1['macs'] / (100 * pes):.1f}%</td>" in page
    assert "no data" not in page


def test_report_of_a_directory_that_is_not_an_out(capsys, tmp_path):
    assert main(["report", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
