"""The digits CNN's frozen front end in Verilator (cocotb): bit-exact against the golden model.

conv1 + ReLU, conv2 + ReLU6 and the max pool frozen at 8, 4 and 2-bit weights; five test
images with random gaps on the input and random backpressure on the output; then the same
images back to back without either, which must go at one pixel per clock.
"""

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from hoarfrost.gen.freeze import TOP_NAME, VERILATOR_ARGS, frozen_verilog, golden_pixels
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@cache
def digits_cnn(weight_bits):
    graph = import_onnx(EXAMPLES / "digits_cnn.onnx")
    return quantize(graph, np.load(EXAMPLES / "digits_calib.npy"), weight_bits)


@pytest.mark.parametrize("weight_bits", [8, 4, 2])
def test_digits_front_end_matches_golden(tmp_path, weight_bits):
    graph = digits_cnn(weight_bits)
    x = np.load(EXAMPLES / "digits_test_x.npy")[:5]
    inputs, expected = golden_pixels(graph, 2, x)
    assert expected.shape == (5, 4, 16)         # after the 2x2 max pool: 2x2 pixels, 16 ch
    vectors = tmp_path / "vectors.npz"
    np.savez(vectors, inputs=inputs, expected=expected, idle_prob=0.3, stall_prob=0.4)
    report = tmp_path / "report.json"
    result = cocotb_run(frozen_verilog(graph, 2), TOP_NAME, "hoarfrost.sim.tb.frozen_tb",
                        env={"HOARFROST_VECTORS": str(vectors), "HOARFROST_REPORT": str(report)},
                        build_args=VERILATOR_ARGS, seed=weight_bits)
    assert result.failed == 0 and result.tests == 2, result.log_tail()

    timing = json.loads(report.read_text())
    # Back to back, a frame of 8x8 pixels leaves every 64 cycles: one input pixel per clock.
    assert timing["cycles_per_frame"] == [64] * 4


def test_digits_front_end_verilog_is_byte_identical():
    # Imported and quantized twice, as two runs of the command line would: the same bytes.
    def fresh():
        graph = import_onnx(EXAMPLES / "digits_cnn.onnx")
        return quantize(graph, np.load(EXAMPLES / "digits_calib.npy"), 2)

    assert frozen_verilog(fresh(), 2) == frozen_verilog(fresh(), 2)
