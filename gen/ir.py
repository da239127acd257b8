"""The layer-graph IR: plain dataclasses shared by the importer, quantizer and golden model.

A :class:`Graph` is a list of layers in topological order, each reading named tensors and
writing one. Shapes are per sample (the batch dimension is left out); tensors are NCHW.

A float graph carries float weights. A quantized graph also carries, per tensor, the int8
quantization of every activation (:attr:`Graph.quant`), per layer the integer weights and
biases, and the integer requantization parameters (:class:`Requant`) that
:func:`hoarfrost.gen.lower.lower_integer` derives from the scales. The quantized graph is the
single source of truth for the golden model, the hardware generators and the compiler.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

NO_CLIP = (-math.inf, math.inf)
RELU = (0.0, math.inf)


@dataclass(frozen=True)
class QParams:
    """Asymmetric int8 quantization of one tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float to int8 with round-half-even, as ONNX ``QuantizeLinear`` does."""
        q = np.rint(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale

    def bounds(self, clip: tuple[float, float]) -> tuple[int, int]:
        """The int8 range an activation's real range ``clip`` (e.g. ReLU6's) leaves here."""
        lo, hi = clip
        qlo = -128 if not math.isfinite(lo) else max(-128, self.zero_point + round(lo / self.scale))
        qhi = 127 if not math.isfinite(hi) else min(127, self.zero_point + round(hi / self.scale))
        return int(qlo), int(qhi)


@dataclass(eq=False)
class Requant:
    """Integer requantization ``clamp(zp + (acc * multiplier + 2**(shift-1) >> shift), lo, hi)``.

    ``multiplier`` and ``shift`` are int64 arrays, one entry per output channel (or a single
    entry); ``lo``/``hi`` include a fused ReLU/ReLU6/Clip. See :mod:`hoarfrost.sim.arith`.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    zero_point: int
    lo: int = -128
    hi: int = 127


@dataclass(eq=False)
class Layer:
    """Base of all layers: an ONNX-derived ``name``, input tensor names and one output tensor."""

    name: str
    inputs: list[str]
    output: str

    #: Short op name used in tables and the manifest.
    op = "layer"

    def replace(self, **changes) -> "Layer":
        return dataclasses.replace(self, **changes)


@dataclass(eq=False)
class Conv2d(Layer):
    """2-D convolution, any stride, padding, dilation and groups (depthwise: groups == in
    channels). ``weight`` is ``(out_ch, in_ch // groups, kh, kw)``; ``pads`` is
    ``(top, left, bottom, right)``; ``clip`` is the fused activation's real range."""

    weight: np.ndarray = None
    bias: np.ndarray = None
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    clip: tuple[float, float] = NO_CLIP
    # Filled by quantization:
    weight_q: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    weight_bits: int | None = None
    bias_q: np.ndarray | None = None
    requant: Requant | None = None

    op = "conv"


@dataclass(eq=False)
class Dense(Layer):
    """Fully connected layer ``y = x @ weight.T + bias``; ``weight`` is ``(out, in)``."""

    weight: np.ndarray = None
    bias: np.ndarray = None
    clip: tuple[float, float] = NO_CLIP
    weight_q: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    weight_bits: int | None = None
    bias_q: np.ndarray | None = None
    requant: Requant | None = None

    op = "dense"


@dataclass(eq=False)
class MaxPool2d(Layer):
    """Max pooling; ``pads`` as in :class:`Conv2d`, padding never wins the max."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    requant: Requant | None = None      # only when output quantization differs from input's

    op = "maxpool"


@dataclass(eq=False)
class AvgPool2d(Layer):
    """Average pooling. Global average pooling is the case ``kernel == input size``.

    Quantized, ``requant.multiplier``/``shift`` are indexed by the number of elements the
    window averages (index 0 unused), so windows clipped by padding divide exactly.
    """

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False
    requant: Requant | None = None

    op = "avgpool"


@dataclass(eq=False)
class Add(Layer):
    """Elementwise sum of two tensors of the same shape (residual connections).

    Quantized: ``acc = (a - zp_a) * multiplier[0] + (b - zp_b) * multiplier[1]`` shares one
    ``shift`` (``requant.shift[0]``)."""

    clip: tuple[float, float] = NO_CLIP
    requant: Requant | None = None

    op = "add"


@dataclass(eq=False)
class Activation(Layer):
    """A ReLU/ReLU6/Clip that could not be fused into the layer before it."""

    clip: tuple[float, float] = RELU
    requant: Requant | None = None

    op = "clip"


@dataclass(eq=False)
class Reshape(Layer):
    """Flatten or Reshape: the same values in NCHW order under a new per-sample shape."""

    shape: tuple[int, ...] = ()
    requant: Requant | None = None      # only when output quantization differs from input's

    op = "reshape"


@dataclass(eq=False)
class Graph:
    """A network: layers in topological order over named tensors.

    Members
    -------
    input, output : str
        Names of the graph's input and output tensors.
    shapes : dict[str, tuple[int, ...]]
        Per-sample shape of every tensor.
    layers : list[Layer]
    quant : dict[str, QParams] or None
        Quantization of every activation tensor; ``None`` for a float graph.
    name : str
        Model name (the ONNX graph name or file stem).
    """

    input: str
    output: str
    shapes: dict[str, tuple[int, ...]]
    layers: list[Layer]
    quant: dict[str, QParams] | None = None
    name: str = "model"
    input_dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    @property
    def is_quantized(self) -> bool:
        return self.quant is not None

    def producer(self, tensor: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.output == tensor), None)

    def consumers(self, tensor: str) -> list[Layer]:
        return [layer for layer in self.layers if tensor in layer.inputs]


def macs(layer: Layer, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates one sample costs in ``layer`` (0 for layers that do not multiply)."""
    out = shapes[layer.output]
    if isinstance(layer, Conv2d):
        return int(np.prod(out)) * int(np.prod(layer.weight.shape[1:]))
    if isinstance(layer, Dense):
        return int(layer.weight.size)
    return 0


def params(layer: Layer) -> int:
    """Weights and biases stored for ``layer``."""
    if isinstance(layer, (Conv2d, Dense)):
        return int(layer.weight.size + (0 if layer.bias is None else layer.bias.size))
    return 0


def split_graph(graph: Graph, tensor: str) -> tuple[Graph, Graph]:
    """Cut ``graph`` at ``tensor``: ``(front, back)``, where ``front`` computes ``tensor`` from the
    graph's input and ``back`` computes the graph's output from ``tensor``.

    The frozen front end and the programmable back end are compiled from the two halves. Both
    keep the whole graph's quantization (the cut tensor has the same scale on both sides).
    Raises ``ValueError`` when a layer after the cut reads a tensor from before it other than
    ``tensor`` (a skip connection across the cut), or when ``tensor`` is not in the graph.
    """
    if tensor == graph.input:
        cut = 0
    else:
        cut = next((i + 1 for i, layer in enumerate(graph.layers) if layer.output == tensor), None)
        if cut is None:
            raise ValueError(f"tensor {tensor!r} is not produced by any layer of {graph.name!r}")
    front_layers, back_layers = graph.layers[:cut], graph.layers[cut:]
    before = {graph.input} | {layer.output for layer in front_layers}
    for layer in back_layers:
        crossing = [t for t in layer.inputs if t in before and t != tensor]
        if crossing:
            raise ValueError(f"layer {layer.name!r} reads {crossing[0]!r} from before the cut at "
                             f"{tensor!r}")

    def part(input_name: str, output_name: str, layers: list[Layer], suffix: str) -> Graph:
        used = {input_name} | {t for layer in layers for t in (*layer.inputs, layer.output)}
        return dataclasses.replace(
            graph, input=input_name, output=output_name, layers=list(layers),
            shapes={t: s for t, s in graph.shapes.items() if t in used},
            quant=None if graph.quant is None else {t: q for t, q in graph.quant.items()
                                                    if t in used},
            name=f"{graph.name}.{suffix}", extra=dict(graph.extra))

    return (part(graph.input, tensor, front_layers, "front"),
            part(tensor, graph.output, back_layers, "back"))
