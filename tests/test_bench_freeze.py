"""``hoarfrost bench freeze``: the argument errors a user can make, each one line; the energy of
the frozen block against the programmable back end running the same layers, measured."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from hoarfrost.gen import bench_freeze
from hoarfrost.gen.config import load_config
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.freeze import frame_events, frozen_extractor, programmable_events
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.energy import energy_pj
from hoarfrost.sim.rtl_run import energy_events
from test_compile import SMALL_TOML

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench_freeze.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_float_model_needs_calibration_data():
    args = parse(EXAMPLES / "digits_cnn.onnx", "--layers", 2, "--no-synth", "--no-sim")
    with pytest.raises(HoarfrostError, match="--calib is required"):
        bench_freeze.run(args)


def test_more_layers_than_the_model_has():
    args = parse(EXAMPLES / "digits_cnn.onnx", "--layers", 3, "--no-synth", "--no-sim",
                 "--calib", EXAMPLES / "digits_calib.npy")
    with pytest.raises(HoarfrostError, match="only 2 convolution"):
        bench_freeze.run(args)


def test_model_without_convolutions():
    args = parse(EXAMPLES / "digits_mlp.onnx", "--layers", 1, "--no-synth", "--no-sim",
                 "--calib", EXAMPLES / "digits_calib.npy")
    with pytest.raises(HoarfrostError, match="cannot be frozen"):
        bench_freeze.run(args)


def test_an_unknown_back_end_configuration():
    args = parse(EXAMPLES / "digits_cnn.onnx", "--layers", 2, "--no-synth", "--no-sim",
                 "--calib", EXAMPLES / "digits_calib.npy", "--config", "no-such-board")
    with pytest.raises(HoarfrostError, match="neither a preset"):
        bench_freeze.run(args)


@pytest.fixture(scope="module")
def cnn():
    return quantize(import_onnx(EXAMPLES / "digits_cnn.onnx"),
                    np.load(EXAMPLES / "digits_calib.npy"), 8)


def test_without_simulation_only_the_labelled_estimate_stands_for_the_back_end(cnn):
    args = parse(EXAMPLES / "digits_cnn.onnx", "--layers", 2, "--no-synth", "--no-sim",
                 "--calib", EXAMPLES / "digits_calib.npy")
    summary, text = bench_freeze.run(args)
    e = summary["energy_pj_per_frame"]
    extractor = frozen_extractor(cnn, 2)
    for block in (extractor, *extractor.blocks):
        block._MustUse__silence = True                  # its events are counted, it is not built
    frozen = energy_pj(frame_events(extractor))
    assert e["frozen"] == frozen
    assert e["programmable_estimate"] == energy_pj(programmable_events(cnn, 2))
    # 23040 MACs: mul8 + add32 each, and a 32-bit SRAM read per 4 weights and per 4 activations
    assert e["programmable_estimate"]["total"] == pytest.approx(23040 * (0.2 + 0.1 + 2 * 5 / 4))
    assert "programmable" not in e and "ratio" not in e and "programmable_backend" not in summary
    assert f"frozen {frozen['total'] / 1000:.2f} nJ" in text
    assert (f"analytic estimate of the programmable back end (no RTL: each MAC mul8 + add32, "
            f"every weight and activation read from SRAM per use): "
            f"{e['programmable_estimate']['total'] / 1000:.2f} nJ") in text
    assert "measured" not in text


@pytest.mark.cosim
def test_the_back_end_runs_the_frozen_layers_and_its_counters_give_the_energy(cnn, tmp_path):
    """The front half on the programmable back end's RTL, against the frozen block."""
    (tmp_path / "hw.toml").write_text(SMALL_TOML)        # the Verilator build sim tests share
    args = parse(EXAMPLES / "digits_cnn.onnx", "--layers", 2, "--no-synth", "--calib",
                 EXAMPLES / "digits_calib.npy", "--config", tmp_path / "hw.toml")
    summary, text = bench_freeze.run(args)
    b = summary["programmable_backend"]
    c = b["counters"]
    # measure_backend raises unless the RTL's output equals the golden model's
    assert b["matches_golden"] and b["array"] == [4, 4]
    assert c["macs_useful"] == summary["macs_per_frame"] == 23040
    assert c["macs_issued"] >= c["macs_useful"] and b["cycles_per_frame"] == c["cycles"] > 0
    # DRAM: per frame every weight tile and parameter record is fetched again: conv1 3 K-tiles
    # x 2 N-tiles of 4x4 weights (96 B) + 8 x 12 B, conv2 18 x 4 tiles (1152 B) + 16 x 12 B;
    # then the 64-byte input; the 64-byte output is written
    assert b["dram_read_bytes_by_kind"]["weights_and_parameters"] == 96 + 96 + 1152 + 192
    assert b["dram_read_bytes_by_kind"]["input"] == 64 and c["dram_write_bytes"] == 64
    # the measured energy is the counters priced by sim/rtl_run.energy_events and energy.toml
    e = summary["energy_pj_per_frame"]
    config = load_config(str(tmp_path / "hw.toml")).backend
    assert e["programmable"] == energy_pj(energy_events(c, config))
    assert e["programmable"]["mul8"] == pytest.approx(0.2 * c["macs_issued"])
    assert e["programmable_without_frame_io"] == pytest.approx(
        e["programmable"]["total"] - 640 * (64 + 64) / 4)
    # on chip: the MACs, the scratchpad, the GEMM engine's buffers and the parameter buffers
    priced = energy_pj(energy_events(c, config))
    assert e["programmable_on_chip"] == pytest.approx(
        sum(priced[k] for k in ("mul8", "add32", "sram_read32", "sram_write32")))
    assert priced["sram_read32"] > 5 * c["scratch_reads"] / 4      # the engine's buffers count
    assert e["ratio"] == e["programmable_without_frame_io"] / e["frozen"]["total"]
    assert e["ratio_on_chip"] == e["programmable_on_chip"] / e["frozen"]["total"]
    assert e["ratio"] >= 4.8            # issue 4's target, with the weights fetched per frame
    assert f"{b['cycles_per_frame']} cycles per frame, output equals the golden model" in text
    assert f"{e['ratio']:.1f}x lower" in text and f"{e['ratio_on_chip']:.1f}x lower" in text
    # the frozen block on the same image: one pixel per clock
    v = summary["verilator"]
    assert v["cycles_per_frame"] == v["input_pixels_per_frame"] == 64
