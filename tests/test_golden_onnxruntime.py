"""The integer golden model against onnxruntime running the same QDQ model.

onnxruntime is the independent reference: for the same quantized model it must give the same
argmax, and int8 outputs within 1 LSB (its requantization is float, ours integer).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.qdq import to_qdq
from hoarfrost.gen.quantize import quantize
from hoarfrost.sim.golden import run_float, run_int
from onnx_models import ModelBuilder, run_onnxruntime


def onnxruntime_int8(qgraph, x, optimized=True):
    """onnxruntime's outputs for the QDQ form of ``qgraph``, as int8 codes."""
    out = run_onnxruntime(to_qdq(qgraph).SerializeToString(), x, optimized)
    q = qgraph.quant[qgraph.output]
    return (np.rint(out / q.scale) + q.zero_point).astype(np.int64)


def assert_agrees(qgraph, x, check_argmax=True, optimized=True):
    ours = run_int(qgraph, x).astype(np.int64)
    ref = onnxruntime_int8(qgraph, x, optimized)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1, "golden model differs from onnxruntime by > 1 LSB"
    if check_argmax:
        n = len(x)
        assert np.array_equal(ours.reshape(n, -1).argmax(1), ref.reshape(n, -1).argmax(1))
    return ours


@pytest.fixture(scope="module")
def digits(examples):
    return (np.load(examples / "digits_test_x.npy"), np.load(examples / "digits_test_y.npy"),
            np.load(examples / "digits_calib.npy"))


@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_float_reference_matches_onnxruntime(examples, digits, model):
    x = digits[0]
    graph = import_onnx(examples / f"{model}.onnx")
    np.testing.assert_allclose(run_float(graph, x), run_onnxruntime(str(examples / f"{model}.onnx"), x),
                               atol=1e-4)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_example_models_agree_with_onnxruntime(examples, digits, model, bits):
    x, y, calib = digits
    qgraph = quantize(import_onnx(examples / f"{model}.onnx"), calib, bits)
    ours = assert_agrees(qgraph, x)
    accuracy = (ours.argmax(1) == y).mean()
    float_accuracy = (run_float(import_onnx(examples / f"{model}.onnx"), x).argmax(1) == y).mean()
    if bits == 8:   # the foundation issue's target: within 1.5 points of float at 8 bits
        assert accuracy >= float_accuracy - 0.015


def test_qdq_file_round_trips_to_the_same_integers(examples, digits, tmp_path):
    x, _, calib = digits
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), calib, 4)
    path = tmp_path / "q.onnx"
    path.write_bytes(to_qdq(qgraph).SerializeToString())
    again = import_onnx(path)
    for a, b in zip(qgraph.layers, again.layers):
        if a.op in ("conv", "dense"):
            assert np.array_equal(a.weight_q, b.weight_q) and np.array_equal(a.bias_q, b.bias_q)
            assert np.array_equal(a.requant.multiplier, b.requant.multiplier)
            assert (a.requant.lo, a.requant.hi, b.weight_bits) == (b.requant.lo, b.requant.hi, 4)
    assert np.array_equal(run_int(qgraph, x), run_int(again, x))


@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_onnxruntime_quantize_static_models_import(examples, digits, model, tmp_path):
    """A QDQ model as onnxruntime's own quantizer writes it keeps its scales, and agrees."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    x, _, calib = digits

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 1]} for i in range(40)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / f"{model}_ort.onnx"
    quantize_static(str(examples / f"{model}.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    graph = import_onnx(path)
    ours = run_int(graph, x).astype(np.int64)
    out = run_onnxruntime(str(path), x)
    q = graph.quant[graph.output]
    ref = np.rint(out / q.scale) + q.zero_point
    assert np.abs(ours - ref).max() <= 1
    assert np.array_equal(ours.argmax(1), ref.argmax(1))


# --- random shapes ---------------------------------------------------------------------------

ACTIVATIONS = st.sampled_from([None, "relu", "relu6"])


def _activate(builder, act):
    if act == "relu":
        builder.relu()
    elif act == "relu6":
        builder.relu6()


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    cin = draw(st.integers(1, 6))
    cout = cin * draw(st.integers(1, 2)) if depthwise else draw(st.integers(1, 8))
    k = draw(st.integers(1, 5))
    dilation = draw(st.integers(1, 2))
    span = dilation * (k - 1) + 1
    pads = tuple(draw(st.integers(0, k - 1)) for _ in range(4))
    h = draw(st.integers(max(1, span - pads[0] - pads[2]), 12))
    w = draw(st.integers(max(1, span - pads[1] - pads[3]), 12))
    return dict(cin=cin, cout=cout, k=k, stride=draw(st.integers(1, 3)), pads=pads,
                groups=cin if depthwise else 1, dilation=dilation, h=h, w=w,
                act=draw(ACTIVATIONS), bits=draw(st.sampled_from([8, 4, 2])),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_random_conv_agrees_with_onnxruntime(case):
    b = ModelBuilder((case["cin"], case["h"], case["w"]), seed=case["seed"])
    b.conv(case["cin"], case["cout"], case["k"], case["stride"], case["pads"], case["groups"],
           case["dilation"])
    _activate(b, case["act"])
    graph = import_onnx_bytes(b.finish())
    rng = np.random.default_rng(case["seed"])
    calib = rng.normal(0, 1, (16, case["cin"], case["h"], case["w"])).astype(np.float32)
    qgraph = quantize(graph, calib, case["bits"])
    x = rng.normal(0, 1, (8, case["cin"], case["h"], case["w"])).astype(np.float32)
    assert_agrees(qgraph, x, check_argmax=False)


@settings(max_examples=30, deadline=None)
@given(fin=st.integers(1, 80), fout=st.integers(1, 40), act=ACTIVATIONS,
       bits=st.sampled_from([8, 4, 2]), seed=st.integers(0, 2**16), matmul=st.booleans())
def test_random_gemm_agrees_with_onnxruntime(fin, fout, act, bits, seed, matmul):
    b = ModelBuilder((fin,), seed=seed)
    b.matmul_add(fin, fout) if matmul else b.gemm(fin, fout)
    _activate(b, act)
    rng = np.random.default_rng(seed)
    qgraph = quantize(import_onnx_bytes(b.finish()), rng.normal(0, 1, (16, fin)).astype(np.float32), bits)
    assert_agrees(qgraph, rng.normal(0, 1, (8, fin)).astype(np.float32), check_argmax=False)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(["MaxPool", "AveragePool"]), k=st.integers(1, 4),
       stride=st.integers(1, 3), pad=st.integers(0, 1), ceil=st.booleans(),
       include_pad=st.booleans(), h=st.integers(4, 9), w=st.integers(4, 9),
       seed=st.integers(0, 2**16))
def test_random_pooling_agrees_with_onnxruntime(kind, k, stride, pad, ceil, include_pad, h, w, seed):
    pad = min(pad, k - 1)
    b = ModelBuilder((2, h, w), seed=seed)
    b.conv(2, 3, 1)
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, ceil_mode=int(ceil))
    if kind == "AveragePool":
        attrs["count_include_pad"] = int(include_pad)
    b.op(kind, [b.last], **attrs)
    rng = np.random.default_rng(seed)
    qgraph = quantize(import_onnx_bytes(b.finish()), rng.normal(0, 1, (16, 2, h, w)).astype(np.float32), 8)
    # onnxruntime's fused QLinearAveragePool (a contrib kernel) divides a ceil_mode window by
    # the whole kernel when count_include_pad is set, unlike its own float AveragePool and the
    # golden model, which count only the input and explicit padding. Compare those cases with
    # the standard ops as written.
    quirk = kind == "AveragePool" and ceil and include_pad
    assert_agrees(qgraph, rng.normal(0, 1, (8, 2, h, w)).astype(np.float32), check_argmax=False,
                  optimized=not quirk)


@pytest.mark.parametrize("seed", range(3))
def test_residual_block_with_batchnorm_and_global_pool(seed):
    """conv-BN-ReLU, conv-BN, Add(residual)+ReLU, a standalone BN, global average pool, gemm."""
    b = ModelBuilder((4, 6, 6), seed=seed)
    first = b.conv(4, 4, 3, pads=(1, 1, 1, 1), bias=False)
    b.batchnorm(4)
    a = b.relu()
    b.conv(4, 4, 3, pads=(1, 1, 1, 1), x=a)
    b.batchnorm(4)
    b.op("Add", [a, b.last])
    b.relu()
    b.batchnorm(4)                       # not after a conv: becomes a depthwise 1x1 conv
    b.op("GlobalAveragePool", [b.last])
    b.op("Flatten", [b.last])
    b.gemm(4, 5)
    graph = import_onnx_bytes(b.finish())
    assert [l.op for l in graph.layers] == ["conv", "conv", "add", "conv", "avgpool", "reshape", "dense"]
    assert graph.layers[2].clip == (0.0, np.inf) and graph.layers[3].groups == 4
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (8, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_float(graph, x), run_onnxruntime(b.finish(), x), atol=1e-4)
    qgraph = quantize(graph, rng.normal(0, 1, (32, 4, 6, 6)).astype(np.float32), 8)
    assert_agrees(qgraph, x, check_argmax=False)


def import_onnx_bytes(data: bytes):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(data)
        return import_onnx(path)
