"""split_graph: the two halves of a cut graph compose to the whole, bit for bit."""

import dataclasses

import numpy as np
import pytest

from hoarfrost.gen.ir import Add, split_graph
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.golden import run_int


@pytest.fixture(scope="module")
def cnn(examples):
    graph = import_onnx(examples / "digits_cnn.onnx")
    return quantize(graph, np.load(examples / "digits_calib.npy"), 8)


def test_every_cut_of_the_cnn_composes_to_the_whole(cnn, examples):
    x = np.load(examples / "digits_test_x.npy")[:16]
    whole = run_int(cnn, x, keep_all=True)
    for layer in cnn.layers[:-1]:
        front, back = split_graph(cnn, layer.output)
        assert front.output == back.input == layer.output
        assert len(front.layers) + len(back.layers) == len(cnn.layers)
        middle = run_int(front, x)
        np.testing.assert_array_equal(middle, whole[layer.output])
        np.testing.assert_array_equal(run_int(back, middle), whole[cnn.output])
        assert back.shapes[back.input] == cnn.shapes[layer.output]
        assert set(back.quant) <= set(cnn.quant)


def test_a_cut_at_the_input_leaves_the_front_empty(cnn):
    front, back = split_graph(cnn, cnn.input)
    assert front.layers == [] and len(back.layers) == len(cnn.layers)


def test_unknown_tensors_and_skip_connections_across_the_cut_are_refused(cnn):
    with pytest.raises(ValueError, match="not produced"):
        split_graph(cnn, "no_such_tensor")
    first = cnn.layers[0]
    graph = dataclasses.replace(cnn, layers=[*cnn.layers[:2], Add(
        name="skip", inputs=[cnn.layers[1].output, first.output], output="sum")])
    with pytest.raises(ValueError, match="reads .* from before the cut"):
        split_graph(graph, cnn.layers[1].output)
