"""Write a quantized graph as a QDQ ONNX model that onnxruntime runs independently.

Float ops stay float; every activation passes a QuantizeLinear/DequantizeLinear pair with the
tensor's scale and zero point; weights are int8 initializers (4- and 2-bit values stored in
int8) behind a per-channel DequantizeLinear, biases int32 on the accumulator's scale. Importing
the file again gives back the same quantized graph (same integers, same requantization).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hoarfrost.gen.ir import (NO_CLIP, Activation, Add, AvgPool2d, Conv2d, Dense, Graph,
                              MaxPool2d, Reshape)

OPSET = 17


class _Writer:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dq_name: dict[str, str] = {}       # tensor -> name of its dequantized float copy

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs, outputs, name: str, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def qdq(self, tensor: str, float_name: str, final: str | None = None):
        """Quantize ``float_name`` with ``tensor``'s parameters; its dequantized copy is what
        the next layers read."""
        q = self.graph.quant[tensor]
        scale = self.init(f"{tensor}.scale", np.array(q.scale, dtype=np.float32))
        zp = self.init(f"{tensor}.zero_point", np.array(q.zero_point, dtype=np.int8))
        out = final or f"{tensor}.dq"
        self.node("QuantizeLinear", [float_name, scale, zp], [f"{tensor}.q"], f"{tensor}.Q")
        self.node("DequantizeLinear", [f"{tensor}.q", scale, zp], [out], f"{tensor}.DQ")
        self.dq_name[tensor] = out

    def weights(self, layer) -> tuple[str, str]:
        """int8 weight and int32 bias initializers behind per-channel DequantizeLinear."""
        w_scale = layer.weight_scale.astype(np.float32)
        acc_scale = (np.float32(self.graph.quant[layer.inputs[0]].scale) * w_scale).astype(np.float32)
        q = layer.weight_q.astype(np.int8)
        axis = 0
        w = self.init(f"{layer.name}.weight_q", q)
        ws = self.init(f"{layer.name}.weight_scale", w_scale)
        wz = self.init(f"{layer.name}.weight_zp", np.zeros(q.shape[axis], dtype=np.int8))
        b = self.init(f"{layer.name}.bias_q", layer.bias_q.astype(np.int32))
        bs = self.init(f"{layer.name}.bias_scale", acc_scale)
        bz = self.init(f"{layer.name}.bias_zp", np.zeros(q.shape[0], dtype=np.int32))
        self.node("DequantizeLinear", [w, ws, wz], [f"{layer.name}.weight"], f"{layer.name}.W", axis=axis)
        self.node("DequantizeLinear", [b, bs, bz], [f"{layer.name}.bias"], f"{layer.name}.B", axis=0)
        return f"{layer.name}.weight", f"{layer.name}.bias"

    def clip(self, layer, value: str) -> str:
        lo, hi = layer.clip
        if (lo, hi) == NO_CLIP:
            return value
        out = f"{layer.output}.act"
        if lo == 0.0 and hi == math.inf:
            self.node("Relu", [value], [out], f"{layer.name}.relu")
        else:
            bounds = [self.init(f"{layer.name}.clip_{k}", np.array(v, dtype=np.float32))
                      if math.isfinite(v) else "" for k, v in (("min", lo), ("max", hi))]
            self.node("Clip", [value] + bounds, [out], f"{layer.name}.clip")
        return out

    def layer(self, layer):
        x = [self.dq_name[t] for t in layer.inputs]
        raw = f"{layer.output}.float"
        if isinstance(layer, Conv2d):
            w, b = self.weights(layer)
            kh, kw = layer.weight_q.shape[2:]
            self.node("Conv", [x[0], w, b], [raw], layer.name, kernel_shape=[kh, kw],
                      strides=list(layer.stride), pads=list(layer.pads),
                      dilations=list(layer.dilation), group=layer.groups)
        elif isinstance(layer, Dense):
            w, b = self.weights(layer)
            self.node("Gemm", [x[0], w, b], [raw], layer.name, transB=1)
        elif isinstance(layer, MaxPool2d):
            self.node("MaxPool", x, [raw], layer.name, kernel_shape=list(layer.kernel),
                      strides=list(layer.stride), pads=list(layer.pads),
                      ceil_mode=int(layer.ceil_mode))
        elif isinstance(layer, AvgPool2d):
            self.node("AveragePool", x, [raw], layer.name, kernel_shape=list(layer.kernel),
                      strides=list(layer.stride), pads=list(layer.pads),
                      ceil_mode=int(layer.ceil_mode),
                      count_include_pad=int(layer.count_include_pad))
        elif isinstance(layer, Add):
            self.node("Add", x, [raw], layer.name)
        elif isinstance(layer, Activation):
            self.node("Identity", x, [raw], layer.name)
        elif isinstance(layer, Reshape):
            shape = self.init(f"{layer.name}.shape", np.array((-1,) + tuple(layer.shape), dtype=np.int64))
            self.node("Reshape", [x[0], shape], [raw], layer.name)
        else:
            raise TypeError(f"cannot write {type(layer).__name__} as QDQ")
        value = self.clip(layer, raw) if hasattr(layer, "clip") else raw
        final = self.graph.output if layer.output == self.graph.output else None
        self.qdq(layer.output, value, final)

    def model(self) -> onnx.ModelProto:
        g = self.graph
        self.qdq(g.input, g.input)
        for layer in g.layers:
            self.layer(layer)

        def value_info(name):
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *g.shapes[name]])

        graph = helper.make_graph(self.nodes, g.name, [value_info(g.input)], [value_info(g.output)],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="hoarfrost")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def to_qdq(graph: Graph) -> onnx.ModelProto:
    """The QDQ ONNX model of a quantized graph."""
    if not graph.is_quantized:
        raise ValueError("to_qdq needs a quantized graph")
    return _Writer(graph).model()


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a failure leaves nothing behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_qdq(graph: Graph, path: str | Path) -> None:
    write_atomically(path, to_qdq(graph).SerializeToString())
