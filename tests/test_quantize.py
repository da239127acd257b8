"""The quantizer on edge cases a trained model can hold."""

import numpy as np
import pytest

from hoarfrost.gen.ir import Dense, Graph
from hoarfrost.gen.quantize import BIAS_ACC_LIMIT, quantize
from hoarfrost.sim.golden import run_int


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_a_channel_of_negligible_weights_keeps_its_bias(bits):
    # Unit 1's weights were decayed to ~1e-9 but its bias is 0.5: on the accumulator's scale
    # that bias would not fit int32 (weight scale ~1e-11); the quantizer must raise the scale.
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (3, 16))
    weight[1] = rng.normal(0, 1e-9, 16)
    bias = np.array([0.1, 0.5, -0.2])
    graph = Graph("x", "y", {"x": (16,), "y": (3,)},
                  [Dense("fc", ["x"], "y", weight=weight, bias=bias)], name="edge")
    x = rng.uniform(-1, 1, (64, 16)).astype(np.float32)
    q = quantize(graph, x, bits)
    fc = q.layers[0]
    acc_scale = q.quant["x"].scale * fc.weight_scale
    assert np.all(np.abs(fc.bias_q) <= BIAS_ACC_LIMIT)
    assert np.all(fc.weight_q[1] == 0)
    np.testing.assert_allclose(fc.bias_q[1] * acc_scale[1], 0.5, rtol=1e-6)
    # the integer output of unit 1 is its bias, whatever the input
    out = q.quant["y"].dequantize(run_int(q, x))
    np.testing.assert_allclose(out[:, 1], 0.5, atol=q.quant["y"].scale)
    # ordinary channels are quantized as before: scale from their own largest weight
    if bits == 8:
        assert fc.weight_scale[0] == pytest.approx(np.abs(weight[0]).max() / 127, rel=1e-6)
