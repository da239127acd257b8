"""Post-training quantization and the lowering of scales to integer arithmetic.

:func:`quantize` turns a float graph into a quantized one from a calibration batch: int8
activations per tensor (asymmetric, min/max calibration as onnxruntime's MinMax), weights
symmetric per output channel at 8, 4 or 2 bits, int32 biases on the accumulator's scale.
:func:`lower_integer` then derives every layer's integer requantization (multiplier, shift,
clamp) from the scales; QDQ models imported with their own scales go through it too, so the
integer parameters always come from one place.
"""

from __future__ import annotations

import math

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import (Activation, Add, AvgPool2d, Conv2d, Dense, Graph, Layer,
                              MaxPool2d, QParams, Requant, Reshape)
from hoarfrost.sim.arith import INT8_MAX, INT8_MIN, quantize_multiplier
from hoarfrost.sim.golden import run_float

WEIGHT_BITS = (8, 4, 2)
#: Layers whose output values are a subset of their input's: they keep the input quantization,
#: so they need no requantization at all.
PASSTHROUGH = (MaxPool2d, Reshape, Activation)


def range_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 parameters covering ``[lo, hi]`` and always the real value 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0 / 255.0                 # an all-zero tensor: any scale represents it
    # Scales are float32 in ONNX: use exactly that value, so a written and re-read model
    # (and onnxruntime) sees the very same scale.
    scale = float(np.float32(scale))
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return QParams(scale, zero_point)


#: Largest bias magnitude, in accumulator units, a channel's weight scale may imply: 2**24 leaves
#: int32 room for 128x the bias in products. Only a channel whose weights are negligible next to
#: its bias (all ~0, e.g. a unit weight decay switched off) reaches it; its scale is raised and
#: its weights round to 0, instead of a bias that int32 cannot hold.
BIAS_ACC_LIMIT = 2**24


def quantize_weights(weight: np.ndarray, bits: int, *,
                     min_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel quantization of ``weight`` (axis 0) to ``bits`` bits.

    Returns ``(q, scale)`` with ``q`` in ``[-(2**(bits-1)-1), 2**(bits-1)-1]``. At 8 bits the
    scale covers the channel's largest magnitude; at 4 and 2 bits it is the clipping ratio of
    that magnitude with the least squared error, since a few outliers would otherwise leave
    most weights at zero. ``min_scale`` (per channel) bounds the scale from below.
    """
    if bits not in WEIGHT_BITS:
        raise HoarfrostError(f"--weight-bits must be one of 8, 4, 2, not {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    flat = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    peak = np.abs(flat).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    ratios = np.array([1.0]) if bits == 8 else np.linspace(0.2, 1.0, 41)
    best_err = np.full(flat.shape[0], np.inf)
    best_scale = peak / qmax
    for ratio in ratios:
        scale = peak * ratio / qmax
        q = np.clip(np.rint(flat / scale[:, None]), -qmax, qmax)
        err = ((q * scale[:, None] - flat) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    if min_scale is not None:
        best_scale = np.maximum(best_scale, min_scale)
    best_scale = best_scale.astype(np.float32).astype(np.float64)    # see range_qparams
    q = np.clip(np.rint(flat / best_scale[:, None]), -qmax, qmax).astype(np.int64)
    return q.reshape(weight.shape), best_scale


def calibrate(graph: Graph, calib: np.ndarray) -> dict[str, QParams]:
    """Per-tensor int8 parameters from the float graph's min/max over ``calib``."""
    values = run_float(graph, calib, keep_all=True)
    quant = {graph.input: range_qparams(values[graph.input].min(), values[graph.input].max())}
    for layer in graph.layers:
        if isinstance(layer, PASSTHROUGH):
            quant[layer.output] = quant[layer.inputs[0]]
        else:
            out = values[layer.output]
            quant[layer.output] = range_qparams(out.min(), out.max())
    return quant


def quantize(graph: Graph, calib: np.ndarray, weight_bits: int = 8) -> Graph:
    """A quantized copy of the float ``graph``, calibrated on the batch ``calib``."""
    if graph.is_quantized:
        raise HoarfrostError(f"model {graph.name!r} is already quantized (a QDQ model)")
    if weight_bits not in WEIGHT_BITS:
        raise HoarfrostError(f"--weight-bits must be one of 8, 4, 2, not {weight_bits!r}")
    quant = calibrate(graph, calib)
    layers = []
    for layer in graph.layers:
        if isinstance(layer, (Conv2d, Dense)):
            min_scale = None
            if layer.bias is not None:
                min_scale = (np.abs(np.asarray(layer.bias, dtype=np.float64))
                             / (quant[layer.inputs[0]].scale * BIAS_ACC_LIMIT))
            q, scale = quantize_weights(layer.weight, weight_bits, min_scale=min_scale)
            layer = layer.replace(weight_q=q, weight_scale=scale, weight_bits=weight_bits)
        else:
            layer = layer.replace()
        layers.append(layer)
    qgraph = Graph(graph.input, graph.output, dict(graph.shapes), layers, quant, graph.name)
    lower_integer(qgraph)
    return qgraph


def qdq_complete(graph: Graph, quant: dict[str, QParams]) -> dict[str, QParams]:
    """Fill in the quantization a QDQ model leaves implicit, or name what is missing."""
    quant = dict(quant)
    # quantize_static leaves e.g. a leading Flatten unquantized: its input then takes the
    # quantization of its output, which is exact since the op moves values unchanged.
    for layer in reversed(graph.layers):
        if isinstance(layer, (Reshape, MaxPool2d)) and layer.output in quant:
            quant.setdefault(layer.inputs[0], quant[layer.output])
    if graph.input not in quant:
        raise HoarfrostError(f"QDQ model: input {graph.input!r} is not quantized "
                             f"(no QuantizeLinear after it)")
    for layer in graph.layers:
        if layer.output not in quant:
            if not isinstance(layer, PASSTHROUGH):
                raise HoarfrostError(f"QDQ model: node {layer.name!r}: output {layer.output!r} "
                                     f"is not quantized (no QuantizeLinear after it)")
            quant[layer.output] = quant[layer.inputs[0]]
    return quant


def _requant(reals, q_out: QParams, clip=(-math.inf, math.inf)) -> Requant:
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(reals)]
    lo, hi = q_out.bounds(clip)
    return Requant(np.array([m for m, _ in pairs], dtype=np.int64),
                   np.array([s for _, s in pairs], dtype=np.int64), q_out.zero_point, lo, hi)


def _rescale(q_in: QParams, q_out: QParams) -> Requant | None:
    return None if q_in == q_out else _requant(q_in.scale / q_out.scale, q_out)


def lower_integer(graph: Graph) -> None:
    """Derive every layer's integer bias and requantization from the graph's scales (in place)."""
    for layer in graph.layers:
        q_in = graph.quant[layer.inputs[0]]
        q_out = graph.quant[layer.output]
        if isinstance(layer, (Conv2d, Dense)):
            acc_scale = q_in.scale * layer.weight_scale
            if layer.bias_q is None:
                bias_q = np.rint(np.asarray(layer.bias, dtype=np.float64) / acc_scale)
                layer.bias_q = np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int64)
            layer.requant = _requant(acc_scale / q_out.scale, q_out, layer.clip)
        elif isinstance(layer, AvgPool2d):
            counts = np.arange(1, layer.kernel[0] * layer.kernel[1] + 1)
            rq = _requant(q_in.scale / (q_out.scale * counts), q_out)
            # index the table by the window's element count; entry 0 is never used
            layer.requant = Requant(np.concatenate([[0], rq.multiplier]),
                                    np.concatenate([[0], rq.shift]), rq.zero_point, rq.lo, rq.hi)
        elif isinstance(layer, Add):
            q_b = graph.quant[layer.inputs[1]]
            ra, rb = q_in.scale / q_out.scale, q_b.scale / q_out.scale
            _, shift = quantize_multiplier(max(ra, rb))
            lo, hi = q_out.bounds(layer.clip)
            layer.requant = Requant(np.array([round(ra * 2**shift), round(rb * 2**shift)],
                                             dtype=np.int64),
                                    np.array([shift], dtype=np.int64), q_out.zero_point, lo, hi)
        elif isinstance(layer, PASSTHROUGH):
            layer.requant = _rescale(q_in, q_out)
        else:
            raise TypeError(f"cannot lower {type(layer).__name__}")
