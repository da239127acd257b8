"""``hoarfrost bench freeze``: the argument errors a user can make, each one line."""

import argparse
from pathlib import Path

import pytest

from hoarfrost.gen import bench_freeze
from hoarfrost.gen.errors import HoarfrostError

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
