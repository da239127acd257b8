"""ONNX front end: a float or QDQ ``.onnx`` file to the layer-graph IR.

Float models become a float :class:`~hoarfrost.gen.ir.Graph`. QDQ models (QuantizeLinear /
DequantizeLinear around float ops, as ``onnxruntime.quantization.quantize_static`` writes
them) keep their own scales and zero points: the Q/DQ pairs are folded into per-tensor
:class:`~hoarfrost.gen.ir.QParams`, the DequantizeLinear of constant weights into integer
weights with per-channel scales, and :func:`hoarfrost.gen.quantize.lower_integer` then derives
the integer requantization.

On the way BatchNormalization is folded into the convolution before it (or becomes a depthwise
1x1 convolution), Relu/Clip fuse into the layer before them, Add of a constant folds into a
bias, Identity/Dropout vanish. Anything else is an error naming the node and op type.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import (NO_CLIP, RELU, Activation, Add, AvgPool2d, Conv2d, Dense, Graph,
                              Layer, MaxPool2d, QParams, Reshape)

SUPPORTED_OPS = ("Conv", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm",
                 "MatMul", "Add", "Flatten", "Reshape", "BatchNormalization", "Identity",
                 "Dropout", "QuantizeLinear", "DequantizeLinear", "Constant")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and validate an ONNX file; every failure is a one-line :class:`HoarfrostError`."""
    path = Path(path)
    if not path.is_file():
        raise HoarfrostError(f"{str(path)!r}: no such file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-like errors
        raise HoarfrostError(f"{str(path)!r} is not an ONNX model (it does not parse: "
                             f"{_first_line(exc)})") from None
    if not model.graph.node or not model.graph.output:
        raise HoarfrostError(f"{str(path)!r} is not an ONNX model (it has no graph; "
                             f"truncated or another file type?)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise HoarfrostError(f"{str(path)!r} is not a valid ONNX model: {_first_line(exc)}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise HoarfrostError(f"{str(path)!r}: ONNX shape inference failed: {_first_line(exc)}") from None
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def import_onnx(path: str | Path) -> Graph:
    """Load ``path`` and convert it to the IR (float, or quantized for a QDQ model)."""
    # The file name says more than exporters' graph names ("main_graph", "torch_jit").
    return _Importer(load_onnx(path), Path(path).stem).run()


class _Importer:
    def __init__(self, model: onnx.ModelProto, name: str):
        self.model = model
        self.graph = model.graph
        self.name = name
        self.consts: dict[str, np.ndarray] = {}
        self.int_consts: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # q, scale, axis
        self.alias: dict[str, str] = {}
        self.quant: dict[str, QParams] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.layers: list[Layer] = []
        self.by_output: dict[str, Layer] = {}
        self.is_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.graph.node)

    # -- helpers ------------------------------------------------------------------------------
    def resolve(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    @staticmethod
    def node_name(node: onnx.NodeProto, index: int) -> str:
        return node.name or f"{node.op_type}_{index}"

    def fail(self, node_name: str, op: str, message: str):
        raise HoarfrostError(f"node {node_name!r} ({op}): {message}")

    def const(self, tensor: str, node_name: str, op: str, what: str) -> np.ndarray:
        tensor = self.resolve(tensor)
        if tensor not in self.consts:
            self.fail(node_name, op, f"{what} {tensor!r} must be a constant (initializer)")
        return self.consts[tensor]

    def add_layer(self, layer: Layer):
        self.layers.append(layer)
        self.by_output[layer.output] = layer

    # -- passes -------------------------------------------------------------------------------
    def run(self) -> Graph:
        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        self._read_shapes()
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise HoarfrostError(f"model has {len(inputs)} inputs "
                                 f"({', '.join(i.name for i in inputs)}); hoarfrost takes one")
        if len(self.graph.output) != 1:
            raise HoarfrostError(f"model has {len(self.graph.output)} outputs; hoarfrost takes one")
        graph_input = inputs[0].name
        if inputs[0].type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT,):
            raise HoarfrostError(f"input {graph_input!r} has element type "
                                 f"{onnx.TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)}; "
                                 f"hoarfrost takes float32 inputs")
        self._fold_qdq()
        nodes = [(i, n) for i, n in enumerate(self.graph.node)
                 if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")]
        self.uses = Counter(self.resolve(t) for _, n in nodes for t in n.input if t)
        self.uses.update(self.resolve(o.name) for o in self.graph.output)
        for index, node in nodes:
            self._convert(node, self.node_name(node, index))
        output = self.resolve(self.graph.output[0].name)
        if output == graph_input:
            raise HoarfrostError("model output is its input: no layers to run")
        shapes = {t: self.shapes[t] for t in [graph_input] + [l.output for l in self.layers]}
        graph = Graph(input=graph_input, output=output, shapes=shapes, layers=self.layers,
                      name=self.name)
        if self.is_qdq:
            from hoarfrost.gen.quantize import lower_integer, qdq_complete
            graph.quant = qdq_complete(graph, self.quant)
            lower_integer(graph)
        return graph

    def _read_shapes(self):
        infos = list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output)
        for info in infos:
            if info.name in self.consts or not info.type.HasField("tensor_type"):
                continue
            tt = info.type.tensor_type
            if not tt.HasField("shape"):
                continue
            dims = []
            for axis, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(d.dim_value)
                elif axis == 0:
                    dims.append(None)          # the batch dimension may be dynamic
                else:
                    what = d.dim_param or "unknown"
                    raise HoarfrostError(f"tensor {info.name!r} has a dynamic dimension "
                                         f"{what!r} at axis {axis}; hoarfrost needs static shapes "
                                         f"(only the batch axis may vary)")
            if not dims:
                raise HoarfrostError(f"tensor {info.name!r} is a scalar; hoarfrost needs a batch axis")
            self.shapes[info.name] = tuple(dims[1:])

    def shape_of(self, tensor: str, node_name: str, op: str) -> tuple[int, ...]:
        for t in (tensor, self.resolve(tensor)):
            if t in self.shapes:
                return self.shapes[t]
        self.fail(node_name, op, f"shape of tensor {tensor!r} is unknown (run ONNX shape "
                                 f"inference, or give the model static shapes)")

    def _fold_qdq(self):
        """Fold QuantizeLinear/DequantizeLinear pairs into QParams and integer constants."""
        for index, node in enumerate(self.graph.node):
            name = self.node_name(node, index)
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(
                    onnx.helper.get_attribute_value(node.attribute[0]))
        quantized_by: dict[str, tuple[str, QParams]] = {}
        for index, node in enumerate(self.graph.node):
            name = self.node_name(node, index)
            if node.op_type == "QuantizeLinear":
                scale, zp = self._q_scale_zp(node, name)
                src = node.input[0]
                if src in self.consts:       # weights quantized at run time: do it now
                    q = self._quantize_const(self.consts[src], scale, zp, node)
                    self.consts[node.output[0]] = q
                    continue
                if np.ndim(scale) != 0:
                    self.fail(name, node.op_type, "per-channel quantization of activations is "
                                                  "not supported (use per-tensor)")
                quantized_by[node.output[0]] = (src, self._qparams(scale, zp))
            elif node.op_type == "DequantizeLinear":
                src = node.input[0]
                if src in quantized_by:
                    tensor, qp = quantized_by[src]
                    tensor = self.resolve(tensor)
                    if tensor in self.quant and self.quant[tensor] != qp:
                        self.fail(name, node.op_type, f"tensor {tensor!r} is quantized twice "
                                                      f"with different parameters")
                    self.quant[tensor] = qp
                    self.alias[node.output[0]] = tensor
                elif src in self.consts:
                    self._dequantize_const(node, name)
                else:
                    self.fail(name, node.op_type, f"input {src!r} is neither a constant nor "
                                                  f"the output of a QuantizeLinear")

    def _q_scale_zp(self, node, name):
        scale = self.const(node.input[1], name, node.op_type, "scale")
        if len(node.input) > 2 and node.input[2]:
            zp = self.const(node.input[2], name, node.op_type, "zero point")
        else:
            zp = np.zeros_like(scale, dtype=np.uint8)
        return scale, zp

    def _qparams(self, scale, zp) -> QParams:
        """Per-tensor params; uint8 tensors are moved to the equivalent int8 representation."""
        offset = 128 if zp.dtype == np.uint8 else 0
        if zp.dtype not in (np.uint8, np.int8):
            raise HoarfrostError(f"activation zero point of type {zp.dtype} is not supported "
                                 f"(int8 or uint8 only)")
        return QParams(float(scale), int(zp) - offset)

    def _quantize_const(self, value, scale, zp, node):
        axis = onnx.helper.get_node_attr_value(node, "axis") if any(
            a.name == "axis" for a in node.attribute) else 1
        shape = [1] * value.ndim
        if np.ndim(scale):
            shape[axis] = -1
        lo, hi = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
        q = np.clip(np.rint(value / scale.reshape(shape)) + zp.reshape(shape), lo, hi)
        return q.astype(zp.dtype)

    def _dequantize_const(self, node, name):
        q = self.consts[node.input[0]]
        scale = self.const(node.input[1], name, node.op_type, "scale").astype(np.float64)
        zp = (self.const(node.input[2], name, node.op_type, "zero point")
              if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, dtype=q.dtype))
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if np.ndim(scale):
            shape[axis % q.ndim] = -1
        q64 = q.astype(np.int64) - zp.astype(np.int64).reshape(shape)
        self.consts[node.output[0]] = (q64 * scale.reshape(shape)).astype(np.float32)
        self.int_consts[node.output[0]] = (q64, np.broadcast_to(scale, (q.shape[axis % q.ndim],)
                                           if np.ndim(scale) else ()).astype(np.float64),
                                           axis % q.ndim)

    # -- node conversion ----------------------------------------------------------------------
    def _convert(self, node: onnx.NodeProto, name: str):
        op = node.op_type
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self.fail(name, op, f"unsupported op type {op!r}; hoarfrost supports "
                                f"{', '.join(SUPPORTED_OPS)}")
        handler(node, name)

    def attrs(self, node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def act_input(self, node, name, i=0) -> str:
        t = self.resolve(node.input[i])
        if t in self.consts:
            self.fail(name, node.op_type, f"input {node.input[i]!r} is a constant; hoarfrost "
                                          f"expects an activation here")
        return t

    def _window_attrs(self, node, name, in_shape, kernel):
        a = self.attrs(node)
        stride = tuple(a.get("strides", (1, 1)))
        dilation = tuple(a.get("dilations", (1, 1)))
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if len(kernel) != 2 or len(stride) != 2 or len(pads) != 4:
            self.fail(name, node.op_type, "only 2-D windows (NCHW) are supported")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pad_hw = []
            for size, k, s, d in zip(in_shape[1:], kernel, stride, dilation):
                out = -(-size // s)
                total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
                small, big = total // 2, total - total // 2
                pad_hw.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
            pads = (pad_hw[0][0], pad_hw[1][0], pad_hw[0][1], pad_hw[1][1])
        elif auto_pad == "VALID":
            pads = (0, 0, 0, 0)
        return stride, pads, dilation, a

    def _op_Conv(self, node, name):
        x = self.act_input(node, name)
        w = self.const(node.input[1], name, "Conv", "weight").astype(np.float64)
        if w.ndim != 4:
            self.fail(name, "Conv", f"only 2-D convolution is supported (weight rank {w.ndim})")
        in_shape = self.shape_of(x, name, "Conv")
        stride, pads, dilation, a = self._window_attrs(node, name, in_shape, w.shape[2:])
        groups = int(a.get("group", 1))
        bias = (self.const(node.input[2], name, "Conv", "bias").astype(np.float64)
                if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0]))
        layer = Conv2d(name, [x], node.output[0], weight=w, bias=bias, stride=stride, pads=pads,
                       dilation=dilation, groups=groups)
        self._attach_int_weights(layer, node, name, out_axis=0)
        self.add_layer(layer)

    def _attach_int_weights(self, layer, node, name, out_axis):
        """In a QDQ model, keep the integer weights and bias and the per-channel scales.

        ``out_axis`` is the output-channel axis of the stored weight (1 for a MatMul's or an
        untransposed Gemm's ``(in, out)`` matrix)."""
        if not self.is_qdq:
            return
        w_name = node.input[1]
        if w_name not in self.int_consts:
            self.fail(name, node.op_type, "weights are float in a QDQ model (no DequantizeLinear)")
        q, scale, axis = self.int_consts[w_name]
        if out_axis == 1:
            q = q.T
        if scale.ndim and axis != out_axis:
            self.fail(name, node.op_type, "weight scales must be per output channel")
        channels = q.shape[0]
        layer.weight_q = q.astype(np.int64)
        layer.weight_scale = np.broadcast_to(scale, (channels,)).astype(np.float64).copy()
        peak = int(np.abs(q).max()) if q.size else 0
        layer.weight_bits = 2 if peak <= 1 else 4 if peak <= 7 else 8
        if peak > 127:
            self.fail(name, node.op_type, "weights wider than 8 bits are not supported")
        b_name = node.input[2] if len(node.input) > 2 else ""
        x_quant = self.quant.get(layer.inputs[0])
        if b_name in self.int_consts and x_quant is not None:
            # Keep the model's integer bias when it is on the accumulator's scale (as
            # quantize_static writes it); otherwise lower_integer requantizes the float bias.
            bias_scale = np.broadcast_to(self.int_consts[b_name][1], (channels,))
            if np.allclose(bias_scale, x_quant.scale * layer.weight_scale, rtol=1e-6, atol=0):
                layer.bias_q = self.int_consts[b_name][0].astype(np.int64).reshape(-1)

    def _op_Gemm(self, node, name):
        a = self.attrs(node)
        if a.get("transA", 0):
            self.fail(name, "Gemm", "transA=1 is not supported")
        x = self.act_input(node, name)
        b = self.const(node.input[1], name, "Gemm", "B").astype(np.float64)
        transposed = bool(a.get("transB", 0))
        w = (b if transposed else b.T) * a.get("alpha", 1.0)
        bias = np.zeros(w.shape[0])
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node.input[2], name, "Gemm", "C").astype(np.float64) * a.get("beta", 1.0)
            bias = self._per_channel(c, w.shape[0], name, "Gemm")
        self._add_dense(node, name, x, w, bias, out_axis=0 if transposed else 1)

    def _add_dense(self, node, name, x, w, bias, out_axis):
        if len(self.shape_of(x, name, node.op_type)) != 1:
            self.fail(name, node.op_type, f"input {x!r} has per-sample shape "
                      f"{self.shape_of(x, name, node.op_type)}; flatten it to (batch, features) first")
        layer = Dense(name, [x], node.output[0], weight=w, bias=bias)
        self._attach_int_weights(layer, node, name, out_axis)
        self.add_layer(layer)

    def _op_MatMul(self, node, name):
        x = self.act_input(node, name)
        b = self.const(node.input[1], name, "MatMul", "B").astype(np.float64)
        if b.ndim != 2:
            self.fail(name, "MatMul", "only (batch, in) x (in, out) products are supported")
        self._add_dense(node, name, x, b.T, np.zeros(b.shape[1]), out_axis=1)

    def _per_channel(self, c, channels, name, op):
        c = np.asarray(c, dtype=np.float64)
        if c.size == 1:
            return np.full(channels, float(c.reshape(-1)[0]))
        if c.size == channels and max(c.shape) == channels:
            return c.reshape(-1)
        self.fail(name, op, f"constant of shape {c.shape} does not broadcast per channel "
                            f"over {channels} channels")

    def _fusable(self, tensor: str, kinds) -> Layer | None:
        """The layer producing ``tensor`` if it may absorb the next op: one consumer, right kind."""
        layer = self.by_output.get(tensor)
        if layer is None or not isinstance(layer, kinds) or self.uses[tensor] != 1:
            return None
        return layer

    def _op_Add(self, node, name):
        a, b = (self.resolve(t) for t in node.input)
        if a in self.consts or b in self.consts:
            x, c = (b, self.consts[a]) if a in self.consts else (a, self.consts[b])
            layer = self._fusable(x, (Conv2d, Dense))
            if layer is None or layer.clip != NO_CLIP or x in self.quant or layer.bias_q is not None:
                self.fail(name, "Add", "adding a constant is only supported as the bias of the "
                                       "Conv/Gemm/MatMul right before it")
            layer.bias = layer.bias + self._per_channel(c, layer.bias.size, name, "Add")
            self._rename(layer, node.output[0])
            return
        if self.shape_of(a, name, "Add") != self.shape_of(b, name, "Add"):
            self.fail(name, "Add", f"inputs have shapes {self.shape_of(a, name, 'Add')} and "
                                   f"{self.shape_of(b, name, 'Add')}; broadcasting is not supported")
        self.add_layer(Add(name, [a, b], node.output[0]))

    def _rename(self, layer: Layer, output: str):
        """Let ``layer`` write the fused op's output instead (its old output had one use)."""
        del self.by_output[layer.output]
        if layer.output in self.quant and output not in self.quant:
            self.quant[output] = self.quant[layer.output]
        layer.output = output
        self.by_output[output] = layer

    def _clip(self, node, name, bounds):
        x = self.act_input(node, name)
        out = node.output[0]
        layer = self._fusable(x, (Conv2d, Dense, Add))
        # Fusing drops the quantization of ``x``: only exact when there is none, or the same.
        if layer is not None and self.quant.get(x, self.quant.get(out)) == self.quant.get(out):
            lo, hi = layer.clip
            layer.clip = (max(lo, bounds[0]), min(hi, bounds[1]))
            self._rename(layer, out)
            return
        self.add_layer(Activation(name, [x], out, clip=bounds))

    def _op_Relu(self, node, name):
        self._clip(node, name, RELU)

    def _op_Clip(self, node, name):
        a = self.attrs(node)
        lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const(node.input[1], name, "Clip", "min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const(node.input[2], name, "Clip", "max"))
        self._clip(node, name, (lo, hi))

    def _op_BatchNormalization(self, node, name):
        x = self.act_input(node, name)
        scale, beta, mean, var = (self.const(t, name, "BatchNormalization", what).astype(np.float64)
                                  for t, what in zip(node.input[1:5], ("scale", "B", "mean", "var")))
        g = scale / np.sqrt(var + self.attrs(node).get("epsilon", 1e-5))
        layer = self._fusable(x, (Conv2d,))
        if layer is not None and layer.clip == NO_CLIP and layer.weight_q is None and x not in self.quant:
            layer.weight = layer.weight * g.reshape(-1, 1, 1, 1)
            layer.bias = (layer.bias - mean) * g + beta
            self._rename(layer, node.output[0])
            return
        if self.is_qdq:
            self.fail(name, "BatchNormalization", "a BatchNormalization that cannot fold into "
                                                  "a float Conv is not supported in a QDQ model")
        shape = self.shape_of(x, name, "BatchNormalization")
        if len(shape) != 3:
            self.fail(name, "BatchNormalization", "only NCHW BatchNormalization is supported")
        c = shape[0]
        self.add_layer(Conv2d(name, [x], node.output[0], weight=g.reshape(c, 1, 1, 1),
                              bias=beta - mean * g, groups=c))

    def _pool_common(self, node, name):
        x = self.act_input(node, name)
        if len(node.output) > 1 and node.output[1]:
            self.fail(name, node.op_type, "the Indices output is not supported")
        a = self.attrs(node)
        kernel = tuple(a.get("kernel_shape", ()))
        stride, pads, dilation, a = self._window_attrs(node, name, self.shape_of(x, name, node.op_type), kernel)
        if dilation != (1, 1):
            self.fail(name, node.op_type, "dilated pooling is not supported")
        return x, kernel, stride, pads, bool(a.get("ceil_mode", 0)), a

    def _op_MaxPool(self, node, name):
        x, kernel, stride, pads, ceil_mode, _ = self._pool_common(node, name)
        self.add_layer(MaxPool2d(name, [x], node.output[0], kernel=kernel, stride=stride,
                                 pads=pads, ceil_mode=ceil_mode))

    def _op_AveragePool(self, node, name):
        x, kernel, stride, pads, ceil_mode, a = self._pool_common(node, name)
        self.add_layer(AvgPool2d(name, [x], node.output[0], kernel=kernel, stride=stride,
                                 pads=pads, ceil_mode=ceil_mode,
                                 count_include_pad=bool(a.get("count_include_pad", 0))))

    def _op_GlobalAveragePool(self, node, name):
        x = self.act_input(node, name)
        shape = self.shape_of(x, name, node.op_type)
        if len(shape) != 3:
            self.fail(name, node.op_type, "only NCHW inputs are supported")
        self.add_layer(AvgPool2d(name, [x], node.output[0], kernel=tuple(shape[1:]), stride=(1, 1)))

    def _reshape(self, node, name, out_shape):
        x = self.act_input(node, name)
        in_shape = self.shape_of(x, name, node.op_type)
        if int(np.prod(in_shape)) != int(np.prod(out_shape)):
            self.fail(name, node.op_type, f"reshapes {in_shape} to {out_shape} per sample; "
                                          f"mixing the batch axis is not supported")
        self.add_layer(Reshape(name, [x], node.output[0], shape=tuple(out_shape)))

    def _op_Flatten(self, node, name):
        if self.attrs(node).get("axis", 1) != 1:
            self.fail(name, "Flatten", "only axis=1 is supported")
        x = self.act_input(node, name)
        self._reshape(node, name, (int(np.prod(self.shape_of(x, name, "Flatten"))),))

    def _op_Reshape(self, node, name):
        self._reshape(node, name, self.shape_of(node.output[0], name, "Reshape"))

    def _op_Identity(self, node, name):
        self.alias[node.output[0]] = self.resolve(node.input[0])

    _op_Dropout = _op_Identity
