"""The frozen feature extractor: convolution and pooling layers with their weights in the logic.

After FixyNN (Whatmough et al., SysML 2019) and DeepFreeze (Mahmoud et al., 2019): the first
layers of a CNN are generated as a fixed datapath. There is no weight memory and no weight
fetch. Each product of an activation and a constant weight is shift-and-add in canonical
signed digits, zero weights vanish, and the odd multiples (``3x``, ``5x`` ...) of one window
element are built once and shared by every output channel (:class:`~hoarfrost.hw.const_mult.AdderGraph`).
The requantization multiplier is a constant too, so it is shift-and-add as well; bias, rounding
term and output zero point fold into one constant added after it. Average pooling works the
same way: an adder tree over the window, then the constant requantization for the window's
element count, which the output position decides (edges, padding, ``ceil_mode``).

Every stage streams one pixel per beat, all channels of the pixel in the beat, in raster order,
and takes one pixel per clock: a :class:`~hoarfrost.hw.line_buffer.LineBuffer` forms the
windows, a pipeline with one clock enable computes them. ``naive=True`` builds DeepFreeze's
version for comparison: the same line buffers, but every weight a literal ``x * w`` and the
requantization a literal ``acc * M``, all left to synthesis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.const_mult import AdderGraph, Term, signed_width
from hoarfrost.hw.line_buffer import LineBuffer, output_size, pixel_layout

__all__ = ["ConvSpec", "PoolSpec", "AvgPoolSpec", "FrozenConv2d", "FrozenMaxPool2d",
           "FrozenAvgPool2d", "FrozenFeatureExtractor", "adder_events", "requant_offset"]


class _WindowOutput:
    """Output size of a window sliding over ``height x width`` (shared by the specs below)."""

    @property
    def out_height(self) -> int:
        return output_size(self.height, self.kernel[0], self.stride[0], self.pads[0], self.pads[2])

    @property
    def out_width(self) -> int:
        return output_size(self.width, self.kernel[1], self.stride[1], self.pads[1], self.pads[3])


@dataclasses.dataclass(frozen=True, eq=False)
class ConvSpec(_WindowOutput):
    """Everything a frozen convolution needs, as plain integers (made by ``gen.freeze``).

    The output is ``clamp((sum(x * weight) * multiplier + offset) >> shift, lo, hi)`` per
    output channel, where ``x`` are the raw int8 window elements (padding = ``pad_value``, the
    input zero point) and ``offset`` folds bias, ``-zp_in * sum(weight)``, the rounding term
    and the output zero point; this equals :func:`hoarfrost.sim.golden.conv2d_int` exactly.

    Members
    -------
    name : str
    height, width, in_channels, out_channels : int
    kernel, stride : (int, int)
    pads : (int, int, int, int)
        ``(top, left, bottom, right)``.
    pad_value : int
    weight : np.ndarray
        ``(out, in, kh, kw)`` integers, dense (a grouped conv's other groups are zeros).
    multiplier, shift, offset : np.ndarray
        Per output channel.
    lo, hi : int
        Clamp (includes a fused ReLU/ReLU6).
    in_range : (int, int)
        Range of the input values, padding included; narrows the adders.
    """

    name: str
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    pad_value: int
    weight: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    offset: np.ndarray
    lo: int
    hi: int
    in_range: tuple[int, int] = (-128, 127)

    @property
    def out_range(self) -> tuple[int, int]:
        return self.lo, self.hi


class _PoolChannels:
    """A pooling keeps its channels: ``in_channels == out_channels == channels``."""

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels


@dataclasses.dataclass(frozen=True, eq=False)
class PoolSpec(_PoolChannels, _WindowOutput):
    """A frozen max pooling: windows padded with -128, which never wins the max.

    Members as in :class:`ConvSpec` (``channels`` in = out); ``in_range`` is passed through.
    """

    name: str
    height: int
    width: int
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_range: tuple[int, int] = (-128, 127)

    @property
    def out_range(self) -> tuple[int, int]:
        return self.in_range


@dataclasses.dataclass(frozen=True, eq=False)
class AvgPoolSpec(_PoolChannels, _WindowOutput):
    """A frozen average pooling, as plain integers (made by ``gen.freeze``).

    Output ``(oy, ox)`` of channel ``c`` is ``clamp((sum(x) * multiplier[k] + offset[k]) >>
    shift[k], lo, hi)`` with ``x`` the raw window elements (padding = ``pad_value``, the input
    zero point, so it adds nothing to ``sum(x - zp_in)``), ``k = counts[oy][ox]`` the number of
    elements the window divides by, and ``offset[k]`` folding ``-kh*kw*zp_in * multiplier[k]``,
    the rounding term and the output zero point; this equals
    :func:`hoarfrost.sim.golden.avgpool_int` exactly.

    Members
    -------
    name : str
    height, width, channels : int
    kernel, stride : (int, int)
    pads : (int, int, int, int)
        Line-buffer padding ``(top, left, bottom, right)``: ``ceil_mode``'s extra room included.
    pad_value : int
    counts : tuple of tuples of int
        ``(out_height, out_width)`` window element counts (depend on padding, edges,
        ``count_include_pad`` and ``ceil_mode``; known at generation time).
    multiplier, shift, offset : dict int -> int
        Per count that occurs in ``counts``.
    lo, hi : int
        Clamp.
    in_range : (int, int)
        Range of the window elements, padding included.
    """

    name: str
    height: int
    width: int
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    pad_value: int
    counts: tuple
    multiplier: dict
    shift: dict
    offset: dict
    lo: int
    hi: int
    in_range: tuple[int, int] = (-128, 127)

    @property
    def out_range(self) -> tuple[int, int]:
        return self.lo, self.hi


def requant_offset(const: int, multiplier: int, shift: int, zero_point: int) -> int:
    """The one constant added after ``acc * multiplier`` so that ``(... + it) >> shift`` is the
    requantization of ``acc + const`` (:func:`hoarfrost.sim.arith.requantize`, before the
    clamp): ``const * multiplier``, the half-up rounding term and the output zero point."""
    return (const * multiplier + ((1 << (shift - 1)) if shift > 0 else 0)
            + (zero_point << shift))


def _clamp(m, value, shift: int, lo: int, hi: int, name: str):
    """``clamp(value >> shift, lo, hi)`` as an int8 signal: the tail of every requantization."""
    y = Signal(signed(8), name=name)
    shifted = value >> shift
    with m.If(shifted < lo):
        m.d.comb += y.eq(lo)
    with m.Elif(shifted > hi):
        m.d.comb += y.eq(hi)
    with m.Else():
        m.d.comb += y.eq(shifted)
    return y


def adder_events(widths: Sequence[int]) -> dict[str, int]:
    """Energy-table events for one evaluation of adders of the given output widths.

    Up to 8 bits an ``add8``, up to 16 an ``add16``, wider ones one ``add32`` per 32 bits.
    """
    events = {"add8": 0, "add16": 0, "add32": 0}
    for w in widths:
        if w <= 8:
            events["add8"] += 1
        elif w <= 16:
            events["add16"] += 1
        else:
            events["add32"] += -(-w // 32)
    return events


def _line_buffer(spec, pad_value: int) -> LineBuffer:
    return LineBuffer(height=spec.height, width=spec.width, channels=spec.in_channels,
                      kernel=spec.kernel, stride=spec.stride, pads=spec.pads,
                      pad_value=pad_value)


class _Stage(wiring.Component):
    """Common ports: pixels in, pixels out."""

    def __init__(self, spec):
        self.spec = spec
        super().__init__({
            "i_stream": In(stream.Signature(pixel_layout(spec.in_channels))),
            "o_stream": Out(stream.Signature(pixel_layout(spec.out_channels))),
        })

    def _pipeline(self, m, lb, stages: int):
        """Connect the line buffer, chain ``stages`` valid bits to ``o_stream.valid``, and
        return the pipeline's clock enable."""
        wiring.connect(m, wiring.flipped(self.i_stream), lb.i_stream)
        # One clock enable for the whole pipeline: it moves whenever the output register is
        # free, so a full pipeline runs at one window per clock and a stalled output freezes it.
        en = Signal()
        m.d.comb += [en.eq(~self.o_stream.valid | self.o_stream.ready),
                     lb.o_stream.ready.eq(en)]
        valid = lb.o_stream.valid
        for s in range(1, stages):
            v = Signal(name=f"valid_s{s}")
            with m.If(en):
                m.d.sync += v.eq(valid)
            valid = v
        with m.If(en):
            m.d.sync += self.o_stream.valid.eq(valid)
        return en


class FrozenConv2d(_Stage):
    """A convolution with constant weights: line buffer, adder graph, requantization, clamp.

    Parameters
    ----------
    spec : ConvSpec
    stages : int
        Pipeline stages after the window register (at least 1); the adders are spread evenly
        over them by adder depth. Latency from window to output: ``stages`` cycles.
    naive : bool
        Literal multiplications instead of the adder graph (2 stages, ``stages`` ignored).

    Members
    -------
    i_stream : ``In(stream.Signature(pixel_layout(in_channels)))``
    o_stream : ``Out(stream.Signature(pixel_layout(out_channels)))``
    adder_widths : list of int
        Output width of every adder evaluated per output pixel (adder-graph version).
    register_bits : int
        Pipeline register bits loaded per output pixel, output register included.
    """

    def __init__(self, spec: ConvSpec, *, stages: int = 4, naive: bool = False):
        if stages < 1:
            raise ValueError(f"Pipeline stages must be at least 1, not {stages!r}")
        super().__init__(spec)
        self.stages = 2 if naive else stages
        self.naive = naive
        self._build_graph()

    def _elements(self):
        """(input index, c, i, j) of every window element, index = (i * kw + j) * C + c."""
        kh, kw = self.spec.kernel
        c_in = self.spec.in_channels
        return [((i * kw + j) * c_in + c, c, i, j)
                for i in range(kh) for j in range(kw) for c in range(c_in)]

    def _build_graph(self):
        spec = self.spec
        elements = self._elements()
        self.graph = AdderGraph([spec.in_range] * len(elements))
        products = {}
        for k, c, i, j in elements:
            column = spec.weight[:, c, i, j]
            if np.any(column):
                products[k] = self.graph.multiple_constants(k, (int(w) for w in column))
        self.outputs = []
        for o in range(spec.out_channels):
            terms = [products[k][int(spec.weight[o, c, i, j])]
                     for k, c, i, j in elements if spec.weight[o, c, i, j]]
            total = self.graph.sum(terms)
            mult, offset = int(spec.multiplier[o]), int(spec.offset[o])
            scaled = None if total is None or mult == 0 else self.graph.multiply(total, mult)
            self.outputs.append(None if scaled is None else self.graph.add_const(scaled, offset))
        live = [n for n in self.outputs if n is not None]
        self.adder_widths = self.graph.adder_widths(live)
        self.adder_depth = self.graph.depth(live)
        self.register_bits = (self.graph.register_bits(live, stages=self.stages)
                              + 8 * spec.out_channels)

    def _clamp(self, m, value, o):
        return _clamp(m, value, int(self.spec.shift[o]), self.spec.lo, self.spec.hi, f"y{o}")

    def _constant_output(self, o) -> int:
        # A channel whose weights or multiplier are all zero: the offset alone decides.
        spec = self.spec
        return int(np.clip(int(spec.offset[o]) >> int(spec.shift[o]), spec.lo, spec.hi))

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        m.submodules.window = lb = _line_buffer(spec, spec.pad_value)
        en = self._pipeline(m, lb, self.stages)
        window = lb.o_stream.payload
        x = [window[k // spec.in_channels][k % spec.in_channels] for k, *_ in self._elements()]
        if self.naive:
            values = self._naive_datapath(m, x, en)
        else:
            live = [n for n in self.outputs if n is not None]
            results = iter(self.graph.elaborate(m, x, live, stages=self.stages, enable=en))
            values = [None if n is None else next(results) for n in self.outputs]
        with m.If(en):
            for o, value in enumerate(values):
                y = self._constant_output(o) if value is None else self._clamp(m, value, o)
                m.d.sync += self.o_stream.payload[o].eq(y)
        return m

    def _naive_datapath(self, m, x, en):
        """DeepFreeze's way: ``sum(x * w)`` and ``acc * M`` written as literal products."""
        spec = self.spec
        elements = self._elements()
        values = []
        for o in range(spec.out_channels):
            products = [x[k] * int(spec.weight[o, c, i, j]) for k, c, i, j in elements]
            if self.outputs[o] is None:
                values.append(None)
                continue
            acc_lo, acc_hi = self._sum_range(o)
            acc = Signal(signed(signed_width(acc_lo, acc_hi)), name=f"acc{o}")
            with m.If(en):
                m.d.sync += acc.eq(sum(products))
            mult, offset = int(spec.multiplier[o]), int(spec.offset[o])
            lo, hi = sorted((acc_lo * mult + offset, acc_hi * mult + offset))
            scaled = Signal(signed(signed_width(lo, hi)), name=f"scaled{o}")
            m.d.comb += scaled.eq(acc * mult + offset)
            values.append(scaled)
        return values

    def _sum_range(self, o) -> tuple[int, int]:
        spec = self.spec
        a, b = spec.in_range
        w = spec.weight[o].astype(np.int64).ravel()
        return int(np.minimum(w * a, w * b).sum()), int(np.maximum(w * a, w * b).sum())


class FrozenMaxPool2d(_Stage):
    """Max pooling in line: line buffer (padding -128) and a comparator tree per channel.

    Parameters
    ----------
    spec : PoolSpec

    Members
    -------
    i_stream, o_stream
        As :class:`FrozenConv2d`.
    adder_widths : list of int
        One 8-bit comparison per window element but one, per channel.
    """

    def __init__(self, spec: PoolSpec):
        super().__init__(spec)
        kh, kw = spec.kernel
        self.stages = 1
        self.adder_widths = [8] * ((kh * kw - 1) * spec.channels)
        self.register_bits = 8 * spec.channels

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        m.submodules.window = lb = _line_buffer(spec, -128)
        en = self._pipeline(m, lb, 1)
        kh, kw = spec.kernel
        with m.If(en):
            for c in range(spec.channels):
                level = [lb.o_stream.payload[k][c] for k in range(kh * kw)]
                while len(level) > 1:
                    nxt = []
                    for a, b in zip(level[0::2], level[1::2]):
                        big = Signal(signed(8))
                        m.d.comb += big.eq(a)
                        with m.If(b > a):
                            m.d.comb += big.eq(b)
                        nxt.append(big)
                    level = nxt + ([level[-1]] if len(level) % 2 else [])
                m.d.sync += self.o_stream.payload[c].eq(level[0])
        return m


class FrozenAvgPool2d(_Stage):
    """Average pooling in line: line buffer (padding = input zero point), a pipelined adder tree
    per channel, then the requantization for the window's element count, and the clamp.

    The count depends only on the output position (padding, edges, ``ceil_mode``), so it is
    known at generation time: each distinct count gets its own constant multiplier
    (shift-and-add on the shared window sum, like the convolution's requantization), and a
    small position decoder selects which one reaches the output. Positions are grouped into
    classes: output rows whose counts agree along the whole row, and likewise columns, so the
    decoder compares only the row and column counters, and not at all when every window has
    the same count (no padding, or global average pooling).

    Parameters
    ----------
    spec : AvgPoolSpec
    stages : int
        Pipeline stages after the window register (at least 1), as :class:`FrozenConv2d`.

    Members
    -------
    i_stream, o_stream
        As :class:`FrozenConv2d`.
    adder_widths : list of int
        Adders evaluated per output pixel: the sum trees, requantization multipliers and
        offsets of every count, and the position counters.
    register_bits : int
        Pipeline, counter and output register bits loaded per output pixel.
    """

    def __init__(self, spec: AvgPoolSpec, *, stages: int = 4):
        if stages < 1:
            raise ValueError(f"Pipeline stages must be at least 1, not {stages!r}")
        super().__init__(spec)
        self.stages = stages
        counts = np.asarray(spec.counts, dtype=np.int64)
        if counts.shape != (spec.out_height, spec.out_width) or counts.min() < 1:
            raise ValueError(f"Counts of {spec.name!r} must be positive, one per output "
                             f"position {spec.out_height}x{spec.out_width}")
        self.distinct = sorted({int(q) for q in counts.ravel()})
        # Row classes: output rows with equal count vectors; column classes likewise.
        rows = [tuple(r) for r in counts.tolist()]
        cols = [tuple(c) for c in counts.T.tolist()]
        self._row_classes = _classes(rows)
        self._col_classes = _classes(cols)
        self._build_graph()

    def _build_graph(self):
        spec = self.spec
        kh, kw = spec.kernel
        c_n = spec.channels
        self.graph = AdderGraph([spec.in_range] * (kh * kw * c_n))
        self.outputs = []       # [channel][count index] -> node or None (zero multiplier)
        for c in range(c_n):
            total = self.graph.sum(Term(k * c_n + c) for k in range(kh * kw))
            row = []
            for q in self.distinct:
                scaled = self.graph.multiply(total, int(spec.multiplier[q]))
                row.append(None if scaled is None
                           else self.graph.add_const(scaled, int(spec.offset[q])))
            self.outputs.append(row)
        live = self._live()
        counters = []
        if len(self.distinct) > 1:
            counters = [max(1, (spec.out_height - 1).bit_length()),
                        max(1, (spec.out_width - 1).bit_length())]
        self.adder_widths = self.graph.adder_widths(live) + counters
        self.adder_depth = self.graph.depth(live)
        sel_bits = (len(self.distinct) - 1).bit_length()
        self.register_bits = (self.graph.register_bits(live, stages=self.stages)
                              + sel_bits * (self.stages - 1) + sum(counters) + 8 * c_n)

    def _live(self):
        return [n for row in self.outputs for n in row if n is not None]

    def _select(self, m, lb_out, en):
        """Index into ``distinct`` of the window at the line buffer's output (stage 0); the
        output position counters advance as the pipeline takes each window."""
        spec = self.spec
        sel = Signal(range(len(self.distinct)), name="count_sel")
        if len(self.distinct) == 1:
            return sel
        oy = Signal(range(spec.out_height), name="pool_oy")
        ox = Signal(range(spec.out_width), name="pool_ox")
        with m.If(en & lb_out.valid):
            with m.If(ox == spec.out_width - 1):
                m.d.sync += [ox.eq(0), oy.eq(Mux(oy == spec.out_height - 1, 0, oy + 1))]
            with m.Else():
                m.d.sync += ox.eq(ox + 1)
        counts = spec.counts
        with m.Switch(oy):
            for rows in self._row_classes:
                with m.Case(*rows):
                    with m.Switch(ox):
                        for cols in self._col_classes:
                            with m.Case(*cols):
                                q = int(counts[rows[0]][cols[0]])
                                m.d.comb += sel.eq(self.distinct.index(q))
        return sel

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        m.submodules.window = lb = _line_buffer(spec, spec.pad_value)
        en = self._pipeline(m, lb, self.stages)
        window = lb.o_stream.payload
        kh, kw = spec.kernel
        x = [window[k // spec.channels][k % spec.channels] for k in range(kh * kw * spec.channels)]
        results = iter(self.graph.elaborate(m, x, self._live(), stages=self.stages, enable=en))
        values = [[None if n is None else next(results) for n in row] for row in self.outputs]
        sel = self._select(m, lb.o_stream, en)
        for s in range(1, self.stages):      # the count travels with its window's sums
            nxt = Signal.like(sel, name=f"count_sel_s{s}")
            with m.If(en):
                m.d.sync += nxt.eq(sel)
            sel = nxt
        for c, row in enumerate(values):
            wide = max([len(v) for v in row if v is not None] + [8])
            shifted = Signal(signed(wide), name=f"scaled{c}")
            with m.Switch(sel):
                for i, (q, value) in enumerate(zip(self.distinct, row)):
                    with m.Case(i):
                        if value is None:   # zero multiplier: the offset alone decides
                            m.d.comb += shifted.eq(int(spec.offset[q]) >> int(spec.shift[q]))
                        else:
                            m.d.comb += shifted.eq(value >> int(spec.shift[q]))
            y = _clamp(m, shifted, 0, spec.lo, spec.hi, f"y{c}")
            with m.If(en):
                m.d.sync += self.o_stream.payload[c].eq(y)
        return m


def _classes(vectors: Sequence[tuple]) -> list[list[int]]:
    """Indices of equal vectors, grouped, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for k, v in enumerate(vectors):
        groups.setdefault(v, []).append(k)
    return list(groups.values())


class FrozenFeatureExtractor(wiring.Component):
    """A chain of frozen stages with the counters the testbench reads.

    Parameters
    ----------
    specs : sequence of ConvSpec, PoolSpec or AvgPoolSpec
        In stream order; each stage's output frame is the next one's input frame.
    stages : int
        Pipeline stages of each convolution and average pooling (see :class:`FrozenConv2d`).
    naive : bool
        Build the literal-multiply version (of the convolutions; pooling has no weights).

    Members
    -------
    i_stream : ``In(stream.Signature(pixel_layout(first in_channels)))``
        Input pixels, raster order, all channels in one beat.
    o_stream : ``Out(stream.Signature(pixel_layout(last out_channels)))``
        Output pixels of the last stage, raster order.
    cycles : ``Out(32)``
        Cycles since the first input beat was accepted.
    stall_cycles : ``Out(32)``
        Cycles with ``o_stream.valid`` high and ``o_stream.ready`` low.
    out_pixels : ``Out(32)``
        Output beats delivered.
    """

    def __init__(self, specs: Sequence, *, stages: int = 4, naive: bool = False):
        if not specs:
            raise ValueError("A frozen feature extractor needs at least one layer")
        for a, b in zip(specs, specs[1:]):
            if (a.out_height, a.out_width, a.out_channels) != (b.height, b.width, b.in_channels):
                raise ValueError(f"Layer {b.name!r} does not take layer {a.name!r}'s output")
        self.specs = list(specs)
        self.blocks = [_block(s, stages, naive) for s in specs]
        super().__init__({
            "i_stream": In(stream.Signature(pixel_layout(specs[0].in_channels))),
            "o_stream": Out(stream.Signature(pixel_layout(specs[-1].out_channels))),
            "cycles": Out(32),
            "stall_cycles": Out(32),
            "out_pixels": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        for k, block in enumerate(self.blocks):
            m.submodules[f"stage{k}_{type(block).__name__}"] = block
        wiring.connect(m, wiring.flipped(self.i_stream), self.blocks[0].i_stream)
        for a, b in zip(self.blocks, self.blocks[1:]):
            wiring.connect(m, a.o_stream, b.i_stream)
        wiring.connect(m, self.blocks[-1].o_stream, wiring.flipped(self.o_stream))

        started = Signal()
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += started.eq(1)
        with m.If(started | (self.i_stream.valid & self.i_stream.ready)):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.If(self.o_stream.valid & ~self.o_stream.ready):
            m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += self.out_pixels.eq(self.out_pixels + 1)
        return m


def _block(spec, stages: int, naive: bool):
    if isinstance(spec, ConvSpec):
        return FrozenConv2d(spec, stages=stages, naive=naive)
    if isinstance(spec, AvgPoolSpec):
        return FrozenAvgPool2d(spec, stages=stages)
    return FrozenMaxPool2d(spec)
