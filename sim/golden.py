"""The golden model: numpy execution of an IR graph, integer-exact when quantized.

For a quantized graph every function here works on int8 tensors with int64 intermediates and
the requantization of :mod:`hoarfrost.sim.arith`; its outputs define every bit the RTL must
produce. The same window and pooling code also runs float graphs (calibration, float accuracy).

Tensors are NCHW with the batch first. Sums of integer products are formed in float64, which
is exact while they stay below 2**53 (int8 x int8 products over any realistic kernel do);
every accumulator is then checked against the int32 range the hardware keeps.
"""

from __future__ import annotations

import math

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import (Activation, Add, AvgPool2d, Conv2d, Dense, Graph, Layer,
                              MaxPool2d, QParams, Requant, Reshape)
from hoarfrost.sim.arith import INT8_MIN, requantize, rounding_shift

ACC_MIN, ACC_MAX = -(2**31), 2**31 - 1


# --- shape arithmetic ------------------------------------------------------------------------

def pooled_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int,
                dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a conv/pool window sliding over ``size`` (ONNX rules, incl. ceil)."""
    span = dilation * (kernel - 1) + 1
    room = size + pad_lo + pad_hi - span
    if room < 0:
        raise ValueError(f"window {span} larger than padded input {size + pad_lo + pad_hi}")
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_lo:
        out -= 1        # the last window must start inside the input or its leading pad
    return out


def _windows(x: np.ndarray, kernel, stride, pads, dilation, pad_value, ceil_mode=False,
             ceil_pad_value=None):
    """Sliding windows of ``x`` (N, C, H, W) -> (N, C, OH, OW, KH, KW).

    The explicit ``pads`` hold ``pad_value``; the extra bottom/right room that ``ceil_mode``
    needs holds ``ceil_pad_value`` (default: the same).
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left, bottom, right = pads
    oh = pooled_size(h, kh, sh, top, bottom, dh, ceil_mode)
    ow = pooled_size(w, kw, sw, left, right, dw, ceil_mode)
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    extra_h, extra_w = max(0, need_h - xp.shape[2]), max(0, need_w - xp.shape[3])
    if extra_h or extra_w:
        xp = np.pad(xp, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)),
                    constant_values=pad_value if ceil_pad_value is None else ceil_pad_value)
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1),
                                                   axis=(2, 3))
    return win[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, ::dh, ::dw]


def conv2d_sums(x: np.ndarray, weight: np.ndarray, stride, pads, dilation, groups,
                pad_value=0.0) -> np.ndarray:
    """Raw convolution sums (no bias) in float64: (N, C, H, W) x (F, C/g, KH, KW) -> (N, F, OH, OW)."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    f, cg, kh, kw = weight.shape
    win = _windows(x, (kh, kw), stride, pads, dilation, pad_value)   # N C OH OW KH KW
    fg = f // groups
    outs = []
    for g in range(groups):
        wg = weight[g * fg:(g + 1) * fg]                              # fg, cg, kh, kw
        xg = win[:, g * cg:(g + 1) * cg]                              # N cg OH OW KH KW
        outs.append(np.einsum("ncyxkl,fckl->nfyx", xg, wg, optimize=True))
    return np.concatenate(outs, axis=1)


def pool_counts(shape_hw, kernel, stride, pads, ceil_mode, count_include_pad) -> np.ndarray:
    """Number of elements each average-pooling window divides by, (OH, OW).

    With ``count_include_pad`` the explicit padding counts but the extra room ``ceil_mode``
    adds does not (as onnxruntime does); without it only input elements count.
    """
    ones = np.ones((1, 1) + tuple(shape_hw))
    win = _windows(ones, kernel, stride, pads, (1, 1), 1.0 if count_include_pad else 0.0,
                   ceil_mode, ceil_pad_value=0.0)
    return win.sum(axis=(-1, -2))[0, 0].astype(np.int64)


# --- float execution -------------------------------------------------------------------------

def _clip_float(y, clip):
    lo, hi = clip
    return np.clip(y, lo, hi) if (math.isfinite(lo) or math.isfinite(hi)) else y


def run_layer_float(layer: Layer, args: list[np.ndarray]) -> np.ndarray:
    """Float64 execution of one layer."""
    x = args[0]
    if isinstance(layer, Conv2d):
        y = conv2d_sums(x, layer.weight, layer.stride, layer.pads, layer.dilation, layer.groups)
        return _clip_float(y + layer.bias.reshape(1, -1, 1, 1), layer.clip)
    if isinstance(layer, Dense):
        return _clip_float(x @ layer.weight.T.astype(np.float64) + layer.bias, layer.clip)
    if isinstance(layer, MaxPool2d):
        return _windows(x, layer.kernel, layer.stride, layer.pads, (1, 1), -np.inf,
                        layer.ceil_mode).max(axis=(-1, -2))
    if isinstance(layer, AvgPool2d):
        sums = _windows(x, layer.kernel, layer.stride, layer.pads, (1, 1), 0.0,
                        layer.ceil_mode).sum(axis=(-1, -2))
        return sums / pool_counts(x.shape[2:], layer.kernel, layer.stride, layer.pads,
                                  layer.ceil_mode, layer.count_include_pad)
    if isinstance(layer, Add):
        return _clip_float(x + args[1], layer.clip)
    if isinstance(layer, Activation):
        return _clip_float(x, layer.clip)
    if isinstance(layer, Reshape):
        return x.reshape((x.shape[0],) + tuple(layer.shape))
    raise TypeError(f"no float implementation for {type(layer).__name__}")


def run_float(graph: Graph, x: np.ndarray, keep_all: bool = False):
    """Run a graph in float64 on a batch ``x``; returns the output, or every tensor if
    ``keep_all`` (a dict name -> array, used by calibration)."""
    values = {graph.input: np.asarray(x, dtype=np.float64)}
    for layer in graph.layers:
        values[layer.output] = run_layer_float(layer, [values[t] for t in layer.inputs])
    return values if keep_all else values[graph.output]


# --- integer execution -----------------------------------------------------------------------

def _check_acc(acc: np.ndarray, layer: Layer) -> np.ndarray:
    if acc.size and (acc.min() < ACC_MIN or acc.max() > ACC_MAX):
        raise HoarfrostError(f"layer {layer.name!r}: accumulator leaves the int32 range "
                             f"({int(acc.min())}..{int(acc.max())}); the weights or bias are "
                             f"out of the quantization contract")
    return acc


def conv2d_int(x: np.ndarray, layer: Conv2d, qin: QParams) -> np.ndarray:
    """int8 conv: ``acc = sum((x - zp) * w) + bias`` (padding holds the zero point)."""
    acc = conv_accumulators(x, layer, qin)
    rq = layer.requant
    return requantize(acc, rq.multiplier.reshape(1, -1, 1, 1), rq.shift.reshape(1, -1, 1, 1),
                      rq.zero_point, rq.lo, rq.hi)


def conv_accumulators(x: np.ndarray, layer: Conv2d | Dense, qin: QParams) -> np.ndarray:
    """The int32 accumulators before requantization: ``sum((x - zp) * w) + bias``.

    Convolution padding holds the zero point, so it adds nothing to the sum."""
    if isinstance(layer, Dense):
        acc = (x.astype(np.int64) - qin.zero_point) @ layer.weight_q.T.astype(np.int64)
        return _check_acc(acc + layer.bias_q, layer)
    sums = conv2d_sums(x.astype(np.int64) - qin.zero_point, layer.weight_q, layer.stride,
                       layer.pads, layer.dilation, layer.groups, pad_value=0)
    return _check_acc(np.rint(sums).astype(np.int64) + layer.bias_q.reshape(1, -1, 1, 1), layer)


def dense_int(x: np.ndarray, layer: Dense, qin: QParams) -> np.ndarray:
    acc = conv_accumulators(x, layer, qin)
    rq = layer.requant
    return requantize(acc, rq.multiplier, rq.shift, rq.zero_point, rq.lo, rq.hi)


def rescale_int(x: np.ndarray, rq: Requant | None, qin: QParams) -> np.ndarray:
    """Move an int8 tensor from ``qin`` to another quantization (identity when ``rq`` is None)."""
    if rq is None:
        return x
    return requantize(x.astype(np.int64) - qin.zero_point, rq.multiplier[0], rq.shift[0],
                      rq.zero_point, rq.lo, rq.hi)


def maxpool_int(x: np.ndarray, layer: MaxPool2d, qin: QParams) -> np.ndarray:
    y = _windows(x.astype(np.int16), layer.kernel, layer.stride, layer.pads, (1, 1),
                 INT8_MIN - 1, layer.ceil_mode).max(axis=(-1, -2)).astype(np.int8)
    return rescale_int(y, layer.requant, qin)


def avgpool_int(x: np.ndarray, layer: AvgPool2d, qin: QParams) -> np.ndarray:
    """Sum of ``x - zp`` over the window, then one requantization per window size."""
    sums = _windows(x.astype(np.int64) - qin.zero_point, layer.kernel, layer.stride,
                    layer.pads, (1, 1), 0, layer.ceil_mode).sum(axis=(-1, -2))
    counts = pool_counts(x.shape[2:], layer.kernel, layer.stride, layer.pads,
                         layer.ceil_mode, layer.count_include_pad)
    rq = layer.requant
    return requantize(sums, rq.multiplier[counts], rq.shift[counts], rq.zero_point, rq.lo, rq.hi)


def add_int(a: np.ndarray, b: np.ndarray, layer: Add, qa: QParams, qb: QParams) -> np.ndarray:
    rq = layer.requant
    acc = ((a.astype(np.int64) - qa.zero_point) * rq.multiplier[0]
           + (b.astype(np.int64) - qb.zero_point) * rq.multiplier[1])
    y = rounding_shift(acc, rq.shift[0]) + rq.zero_point
    return np.clip(y, rq.lo, rq.hi).astype(np.int8)


def activation_int(x: np.ndarray, layer: Activation, qin: QParams) -> np.ndarray:
    """Clamp in the input's integer domain, then rescale if the output is quantized apart."""
    qlo, qhi = qin.bounds(layer.clip)
    return rescale_int(np.clip(x, qlo, qhi).astype(np.int8), layer.requant, qin)


def run_layer_int(layer: Layer, args: list[np.ndarray], qins: list[QParams]) -> np.ndarray:
    """Integer execution of one quantized layer on int8 inputs."""
    x, qin = args[0], qins[0]
    if isinstance(layer, Conv2d):
        return conv2d_int(x, layer, qin)
    if isinstance(layer, Dense):
        return dense_int(x, layer, qin)
    if isinstance(layer, MaxPool2d):
        return maxpool_int(x, layer, qin)
    if isinstance(layer, AvgPool2d):
        return avgpool_int(x, layer, qin)
    if isinstance(layer, Add):
        return add_int(x, args[1], layer, qin, qins[1])
    if isinstance(layer, Activation):
        return activation_int(x, layer, qin)
    if isinstance(layer, Reshape):
        return rescale_int(x.reshape((x.shape[0],) + tuple(layer.shape)), layer.requant, qin)
    raise TypeError(f"no integer implementation for {type(layer).__name__}")


def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The int8 input tensor the accelerator receives for float (or already int8) inputs."""
    if x.dtype == np.int8:
        return x
    return graph.quant[graph.input].quantize(x)


def run_int(graph: Graph, x: np.ndarray, keep_all: bool = False):
    """Run a quantized graph; ``x`` is float (quantized with the input's parameters) or int8.

    Returns the int8 output tensor, or a dict of every tensor when ``keep_all``.
    """
    if not graph.is_quantized:
        raise HoarfrostError(f"model {graph.name!r} is not quantized")
    values = {graph.input: quantize_input(graph, x)}
    for layer in graph.layers:
        values[layer.output] = run_layer_int(layer, [values[t] for t in layer.inputs],
                                             [graph.quant[t] for t in layer.inputs])
    return values if keep_all else values[graph.output]
