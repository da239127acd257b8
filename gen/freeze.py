"""The freezer: the first layers of a quantized model -> a standalone frozen feature extractor.

``freeze_specs(graph, n)`` reads the quantized IR (the single source of truth) and returns the
integer parameters of the first ``n`` convolutions, each with the fused ReLU/ReLU6 clamp, an
unfused Clip/ReLU that follows it, and the max and average pooling layers in between or right
after (pooling "in line"; a global average pooling is an average pooling over the whole
frame). :func:`frozen_verilog` turns them into Verilog of
:class:`~hoarfrost.hw.frozen.FrozenFeatureExtractor`; :func:`golden_pixels` gives the streams it
must consume and produce, from :func:`hoarfrost.sim.golden.run_int`; :func:`frame_energy` is
the frozen block's energy per frame, counted from its structure. :func:`programmable_energy` is
an analytic estimate of the back end running the same layers, which ``bench freeze`` prints,
labelled, beside the back end's measured energy.
"""

from __future__ import annotations

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Activation, AvgPool2d, Conv2d, Graph, MaxPool2d, macs
from hoarfrost.hw.frozen import (AvgPoolSpec, ConvSpec, FrozenConv2d, FrozenFeatureExtractor,
                                 PoolSpec, adder_events, requant_offset)
from hoarfrost.sim.energy import energy_pj
from hoarfrost.sim.golden import pool_counts, pooled_size, run_int

__all__ = ["freeze_specs", "frozen_layers", "frozen_extractor", "frozen_verilog",
           "golden_pixels", "frame_events", "frame_energy", "programmable_events",
           "programmable_energy", "TOP_NAME", "VERILATOR_ARGS"]

TOP_NAME = "frozen_feature_extractor"


def frozen_layers(graph: Graph, layers: int):
    """The IR layers the first ``layers`` convolutions take in, in order (see module doc)."""
    if not graph.is_quantized:
        raise HoarfrostError(f"model {graph.name!r} is not quantized; freeze needs integer weights")
    if not isinstance(layers, int) or layers < 1:
        raise HoarfrostError(f"--layers must be a positive number of convolutions, not {layers!r}")
    chosen, convs, tensor = [], 0, graph.input
    for layer in graph.layers:
        if convs == layers and not isinstance(layer, (MaxPool2d, AvgPool2d, Activation)):
            break
        if layer.inputs[0] != tensor or len(layer.inputs) != 1:
            if convs == layers:
                break
            raise HoarfrostError(f"layer {layer.name!r}: the frozen layers must form a chain from "
                                 f"the input; it reads {layer.inputs!r}")
        if isinstance(layer, Conv2d):
            if convs == layers:
                break
            convs += 1
        elif isinstance(layer, Activation):
            if not chosen or not isinstance(chosen[-1], Conv2d):
                if convs == layers:
                    break
                raise HoarfrostError(f"layer {layer.name!r}: an activation can be frozen only "
                                     f"right after a convolution")
        elif not isinstance(layer, (MaxPool2d, AvgPool2d)):
            if convs == layers:
                break
            raise HoarfrostError(f"layer {layer.name!r} ({layer.op}) cannot be frozen; only "
                                 f"{convs} convolution(s) precede it, --layers asks for {layers}")
        for other in graph.consumers(tensor):
            if other is not layer:
                raise HoarfrostError(f"tensor {tensor!r} is also read by {other.name!r}; the "
                                     f"frozen layers must form a chain")
        chosen.append(layer)
        tensor = layer.output
    if convs < layers:
        raise HoarfrostError(f"--layers {layers}: model {graph.name!r} has only {convs} "
                             f"convolution(s) at its start")
    return chosen


def _dense_weight(layer: Conv2d, in_channels: int) -> np.ndarray:
    """``(out, in, kh, kw)`` integer weights; a grouped conv's other groups filled with zeros."""
    w = np.asarray(layer.weight_q, dtype=np.int64)
    out, cg, kh, kw = w.shape
    dense = np.zeros((out, in_channels, kh, kw), dtype=np.int64)
    fg = out // layer.groups
    for o in range(out):
        g = o // fg
        dense[o, g * cg:(g + 1) * cg] = w[o]
    return dense


def _conv_spec(graph: Graph, layer: Conv2d, in_range) -> ConvSpec:
    c, h, w = graph.shapes[layer.inputs[0]]
    if tuple(layer.dilation) != (1, 1):
        raise HoarfrostError(f"layer {layer.name!r}: dilation {tuple(layer.dilation)} is not "
                             f"supported by the freezer (only 1)")
    if layer.groups not in (1, c) and c % layer.groups:
        raise HoarfrostError(f"layer {layer.name!r}: groups={layer.groups} does not divide {c}")
    weight = _dense_weight(layer, c)
    zp_in = graph.quant[layer.inputs[0]].zero_point
    rq = layer.requant
    out = weight.shape[0]
    mult = np.broadcast_to(np.asarray(rq.multiplier, dtype=np.int64), (out,))
    shift = np.broadcast_to(np.asarray(rq.shift, dtype=np.int64), (out,))
    offsets = []
    for o in range(out):
        const = int(layer.bias_q[o]) - zp_in * int(weight[o].sum())
        offsets.append(requant_offset(const, int(mult[o]), int(shift[o]), rq.zero_point))
    lo_in, hi_in = in_range
    return ConvSpec(
        name=layer.name, height=h, width=w, in_channels=c, out_channels=out,
        kernel=tuple(int(k) for k in weight.shape[2:]), stride=tuple(int(s) for s in layer.stride),
        pads=tuple(int(p) for p in layer.pads), pad_value=zp_in, weight=weight,
        multiplier=tuple(int(v) for v in mult), shift=tuple(int(v) for v in shift),
        offset=tuple(offsets), lo=int(rq.lo), hi=int(rq.hi),
        in_range=(min(lo_in, zp_in), max(hi_in, zp_in)))


def _pool_spec(graph: Graph, layer: MaxPool2d, in_range) -> PoolSpec:
    if layer.requant is not None:
        raise HoarfrostError(f"layer {layer.name!r}: max pooling that changes the quantization "
                             f"is not supported by the freezer")
    c, h, w, pads = _pool_geometry(graph, layer)
    return PoolSpec(name=layer.name, height=h, width=w, channels=c, kernel=tuple(layer.kernel),
                    stride=tuple(layer.stride), pads=pads, in_range=in_range)


def _pool_geometry(graph: Graph, layer):
    """``(channels, height, width, pads)`` of a pooling's line buffer: ``ceil_mode``'s extra
    room becomes more padding at the bottom/right (-128 for max, the zero point for average
    pooling, where the count table leaves it out)."""
    c, h, w = graph.shapes[layer.inputs[0]]
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    top, left, bottom, right = layer.pads
    oh = pooled_size(h, kh, sh, top, bottom, 1, layer.ceil_mode)
    ow = pooled_size(w, kw, sw, left, right, 1, layer.ceil_mode)
    bottom = max(bottom, (oh - 1) * sh + kh - h - top)
    right = max(right, (ow - 1) * sw + kw - w - left)
    return c, h, w, (int(top), int(left), int(bottom), int(right))


def _avgpool_spec(graph: Graph, layer: AvgPool2d, in_range) -> AvgPoolSpec:
    """Sum of ``x - zp_in`` over the window, requantized by the table entry of its count
    (:func:`hoarfrost.sim.golden.avgpool_int`)."""
    c, h, w, pads = _pool_geometry(graph, layer)
    kh, kw = layer.kernel
    zp_in = graph.quant[layer.inputs[0]].zero_point
    rq = layer.requant
    counts = pool_counts((h, w), layer.kernel, layer.stride, layer.pads, layer.ceil_mode,
                         layer.count_include_pad)
    mult, shift, offset = {}, {}, {}
    for q in sorted({int(v) for v in counts.ravel()}):
        mult[q], shift[q] = int(rq.multiplier[q]), int(rq.shift[q])
        # The window sum covers all kh*kw elements, padding included as zp_in: subtract them all.
        offset[q] = requant_offset(-kh * kw * zp_in, mult[q], shift[q], rq.zero_point)
    lo_in, hi_in = in_range
    return AvgPoolSpec(
        name=layer.name, height=h, width=w, channels=c, kernel=(int(kh), int(kw)),
        stride=tuple(int(s) for s in layer.stride), pads=pads, pad_value=zp_in,
        counts=tuple(tuple(int(v) for v in row) for row in counts),
        multiplier=mult, shift=shift, offset=offset, lo=int(rq.lo), hi=int(rq.hi),
        in_range=(min(lo_in, zp_in), max(hi_in, zp_in)))


def freeze_specs(graph: Graph, layers: int) -> list:
    """Integer parameters of every frozen stage, in stream order."""
    specs = []
    in_range = (-128, 127)
    for layer in frozen_layers(graph, layers):
        if isinstance(layer, Conv2d):
            spec = _conv_spec(graph, layer, in_range)
        elif isinstance(layer, MaxPool2d):
            spec = _pool_spec(graph, layer, in_range)
        elif isinstance(layer, AvgPool2d):
            spec = _avgpool_spec(graph, layer, in_range)
        else:   # an unfused activation: narrow the clamp of the convolution before it
            if layer.requant is not None:
                raise HoarfrostError(f"layer {layer.name!r}: an activation that changes the "
                                     f"quantization is not supported by the freezer")
            qlo, qhi = graph.quant[layer.inputs[0]].bounds(layer.clip)
            prev = specs.pop()
            spec = _replace(prev, lo=max(prev.lo, qlo), hi=min(prev.hi, qhi))
        specs.append(spec)
        in_range = spec.out_range
    for spec in specs:
        _check_geometry(spec)
    return specs


def _replace(spec, **changes):
    import dataclasses
    return dataclasses.replace(spec, **changes)


def _check_geometry(spec) -> None:
    kh, kw = spec.kernel
    top, left, bottom, right = spec.pads
    if top + bottom >= kh or left + right >= kw or kh > spec.height or kw > spec.width:
        # A pooling's padding includes the rows/columns ceil_mode adds at the bottom/right.
        note = "; ceil_mode's extra room counts as padding" if isinstance(spec, (
            PoolSpec, AvgPoolSpec)) else ""
        raise HoarfrostError(f"layer {spec.name!r}: kernel {spec.kernel} with padding {spec.pads} "
                             f"on a {spec.height}x{spec.width} input is not supported by the "
                             f"line buffer (needs top+bottom < kh, left+right < kw, kernel "
                             f"inside the input{note})")


def frozen_extractor(graph: Graph, layers: int, *, stages: int = 4,
                     naive: bool = False) -> FrozenFeatureExtractor:
    """The :class:`FrozenFeatureExtractor` of the first ``layers`` convolutions."""
    return FrozenFeatureExtractor(freeze_specs(graph, layers), stages=stages, naive=naive)


def frozen_verilog(graph: Graph, layers: int, *, stages: int = 4, naive: bool = False,
                   name: str = TOP_NAME) -> str:
    """Verilog of the frozen block alone; the same model always gives the same bytes."""
    from amaranth.back import verilog
    top = frozen_extractor(graph, layers, stages=stages, naive=naive)
    return verilog.convert(top, name=name, emit_src=False)


def output_tensor(graph: Graph, layers: int) -> str:
    return frozen_layers(graph, layers)[-1].output


def golden_pixels(graph: Graph, layers: int, x: np.ndarray):
    """Input and expected output pixel streams for a batch ``x`` (float or int8 NCHW).

    Returns ``(inputs, outputs)``, int arrays ``(N, H*W, C)`` in raster order: what the
    frozen block consumes and what :func:`~hoarfrost.sim.golden.run_int` says it must produce.
    """
    values = run_int(graph, x, keep_all=True)
    xin = values[graph.input].astype(np.int64)
    yout = values[output_tensor(graph, layers)].astype(np.int64)

    def raster(t):
        n, c, h, w = t.shape
        return t.transpose(0, 2, 3, 1).reshape(n, h * w, c)

    return raster(xin), raster(yout)


# --- analytic event counts and energy --------------------------------------------------------

def _add(total: dict, events: dict, times: int) -> None:
    for name, n in events.items():
        total[name] = total.get(name, 0) + n * times


def frame_events(extractor: FrozenFeatureExtractor) -> dict[str, int]:
    """Events of one frame through a frozen extractor, counted from its structure.

    Adders: every adder of the graph switches once per output pixel (adders x pixels).
    Registers (``reg_write8``, per 8 bits): each input pixel shifts through the line buffer's
    taps and row memories, each window is loaded into the window register, each output pixel
    loads the pipeline registers of its stage.
    """
    total: dict[str, int] = {}
    for block in extractor.blocks:
        spec = block.spec
        pixels_out = spec.out_height * spec.out_width
        pixels_in = spec.height * spec.width
        kh, kw = spec.kernel
        _add(total, adder_events(block.adder_widths), pixels_out)
        # Clamp: two 8-bit comparisons per output value of a convolution or average pooling.
        if isinstance(spec, (ConvSpec, AvgPoolSpec)):
            _add(total, {"add8": 2 * spec.out_channels}, pixels_out)
        shifted = kh * (kw - 1) + 2 * (kh - 1)       # taps, memory write + read register per row
        _add(total, {"reg_write8": shifted * spec.in_channels}, pixels_in)
        _add(total, {"reg_write8": kh * kw * spec.in_channels}, pixels_out)
        _add(total, {"reg_write8": -(-block.register_bits // 8)}, pixels_out)
    return total


def frame_energy(extractor: FrozenFeatureExtractor) -> dict[str, float]:
    return energy_pj(frame_events(extractor))


def programmable_events(graph: Graph, layers: int) -> dict[str, float]:
    """ANALYTIC ESTIMATE of a programmable back end running the same layers.

    Each MAC is an 8-bit multiply and a 32-bit add; each weight is read from SRAM once per use
    (one 32-bit read per 4 int8 weights), and so is each activation. Pooling is not counted.
    ``bench freeze`` measures the real back end (its counters on the RTL) and prints this only
    as a labelled cross-check: it has no DRAM and no reuse in the GEMM engine's buffers.
    """
    n = sum(macs(layer, graph.shapes) for layer in frozen_layers(graph, layers))
    return {"mul8": n, "add32": n, "sram_read32": n / 4 + n / 4}


def programmable_energy(graph: Graph, layers: int) -> dict[str, float]:
    return energy_pj(programmable_events(graph, layers))


def frozen_macs(graph: Graph, layers: int) -> int:
    return sum(macs(layer, graph.shapes) for layer in frozen_layers(graph, layers))


def conv_blocks(extractor: FrozenFeatureExtractor) -> list[FrozenConv2d]:
    return [b for b in extractor.blocks if isinstance(b, FrozenConv2d)]


#: Verilator arguments for the frozen block: one C++ file, compiled at -O0. A test or bench run
#: simulates a few hundred cycles, which does not repay optimizing thousands of adders (the
#: 8-bit digits front end builds in about 50 s of CPU this way).
VERILATOR_ARGS = ("--output-split", "0", "--output-split-cfuncs", "0", "-CFLAGS", "-O0")
