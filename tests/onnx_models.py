"""Small ONNX models built in code, for tests of the importer, quantizer and golden model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class ModelBuilder:
    """Build a float NCHW model node by node; ``finish`` shape-checks it and returns bytes."""

    def __init__(self, input_shape, seed=0, batch="batch"):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.input_shape = tuple(input_shape)
        self.batch = batch
        self.last = "input"
        self.count = 0

    def name(self, op):
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op, inputs, **attrs):
        name = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        self.last = name
        return name

    def conv(self, cin, cout, k, stride=1, pads=(0, 0, 0, 0), groups=1, dilation=1, x=None, bias=True):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.rng.normal(0, 1 / np.sqrt(cin // groups * kh * kw), (cout, cin // groups, kh, kw))
        name = f"w{self.count + 1}"
        inputs = [x or self.last, self.const(name, w.astype(np.float32))]
        if bias:
            inputs.append(self.const(f"b{self.count + 1}", self.rng.normal(0, 0.1, cout).astype(np.float32)))
        return self.op("Conv", inputs, kernel_shape=[kh, kw], strides=[stride, stride] if isinstance(stride, int) else list(stride),
                       pads=list(pads), group=groups, dilations=[dilation, dilation])

    def gemm(self, fin, fout, x=None):
        w = self.rng.normal(0, 1 / np.sqrt(fin), (fout, fin)).astype(np.float32)
        b = self.rng.normal(0, 0.1, fout).astype(np.float32)
        n = self.count + 1
        return self.op("Gemm", [x or self.last, self.const(f"gw{n}", w), self.const(f"gb{n}", b)], transB=1)

    def matmul_add(self, fin, fout):
        n = self.count + 1
        w = self.rng.normal(0, 1 / np.sqrt(fin), (fin, fout)).astype(np.float32)
        self.op("MatMul", [self.last, self.const(f"mw{n}", w)])
        return self.op("Add", [self.last, self.const(f"mb{n}", self.rng.normal(0, 0.1, fout).astype(np.float32))])

    def batchnorm(self, c):
        n = self.count + 1
        r = self.rng
        return self.op("BatchNormalization", [self.last,
                       self.const(f"bn_s{n}", r.uniform(0.5, 1.5, c).astype(np.float32)),
                       self.const(f"bn_b{n}", r.normal(0, 0.1, c).astype(np.float32)),
                       self.const(f"bn_m{n}", r.normal(0, 0.1, c).astype(np.float32)),
                       self.const(f"bn_v{n}", r.uniform(0.5, 1.5, c).astype(np.float32))], epsilon=1e-5)

    def relu(self, x=None):
        return self.op("Relu", [x or self.last])

    def relu6(self):
        n = self.count + 1
        return self.op("Clip", [self.last, self.const(f"lo{n}", np.array(0, np.float32)),
                                self.const(f"hi{n}", np.array(6, np.float32))])

    def finish(self, opset=17) -> bytes:
        nodes = list(self.nodes)
        nodes.append(helper.make_node("Identity", [self.last], ["output"], name="out"))
        graph = helper.make_graph(
            nodes, "test", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [self.batch, *self.input_shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
        return model.SerializeToString()


def run_onnxruntime(model: bytes | str, x: np.ndarray, optimized: bool = True) -> np.ndarray:
    """onnxruntime's output. ``optimized=False`` runs the standard ops as written (a QDQ model
    then computes in float between Q/DQ pairs) instead of fused integer kernels."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
