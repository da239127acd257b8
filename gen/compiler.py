"""Compile a quantized graph into the back end's firmware and DRAM image.

Each layer becomes commands of :mod:`hoarfrost.firmware.isa`: a convolution or fully connected
layer one ``GEOM`` and one ``MATMUL`` per (group, output-channel tile, output-pixel tile) so
that every tile fits the accumulator bank and the parameter buffer; pooling and standalone
activations a ``POOL``; a residual sum an ``ADD``; Flatten/Reshape nothing at all (feature maps
are CHW, so the bytes are already in order); a fully connected layer placed on a sparse engine
(``sparse=``) a ``SEND`` of its input vector and a ``RECVS`` of its output (its weights are in
the engine, not in DRAM). Feature maps live in the scratchpad at offsets a
first-fit allocator hands out and takes back after a tensor's last use.

The DRAM image holds, from address 0: per layer the int8 weights of each tile (in the systolic
array's order, :func:`~hoarfrost.firmware.isa.weight_tiles`) and the per-channel ``(bias, multiplier, shift)`` records; then the input and the
output tensors of one image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from hoarfrost.firmware.isa import (KEEP_PARAMS, NO_PARAMS, POOL_AVG, POOL_AVG_PAD, POOL_MAX,
                                    WCACHE, Command, Op, weight_tiles)
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import (Activation, Add, AvgPool2d, Conv2d, Dense, Graph, Layer,
                              MaxPool2d, Reshape)

ALIGN = 4           # DRAM and scratchpad allocations start on 32-bit words


@dataclass(frozen=True)
class CompileLimits:
    """What the compiler must fit: the scratchpad, the accumulator bank and the parameter
    buffer of the back end (taken from the hardware configuration)."""

    scratch_bytes: int = 64 * 1024
    m_tile: int = 128            # output pixels per MATMUL: rows of one accumulator bank
    n_tile: int = 64             # output channels per MATMUL: entries of the parameter buffer
    rows: int = 4                # systolic array: the weight layout follows its tiles
    cols: int = 4
    a_depth: int = 1 << 20       # activation-buffer entries: mt * ceil(K / rows) must fit
    table_depth: int = 1 << 16   # parameter-buffer entries an average-pooling table may use
    weight_cache: int = 0        # weight-cache bytes (LOADW); 0: every MATMUL reads DRAM
    k_max: int | None = None     # serial back end: weight-buffer bytes, the largest K

    @classmethod
    def for_backend(cls, config, scratch_bytes: int, param_depth: int) -> "CompileLimits":
        """The limits of a :class:`~hoarfrost.hw.backend.BackEnd` built from ``config``, or of
        a :class:`~hoarfrost.hw.serial_backend.SerialBackEnd` (``config.serial``): that one
        has no accumulator bank or parameter buffer, so a ``MATMUL`` covers as many pixels
        and channels as its index fields hold, and only ``K`` is bounded (by the weight
        buffer, ``a_depth`` bytes)."""
        if config.serial:
            most = (1 << config.index_bits) - 1
            return cls(scratch_bytes=scratch_bytes, m_tile=most, n_tile=most, rows=1, cols=1,
                       a_depth=1 << 62, table_depth=most, weight_cache=0,
                       k_max=config.a_depth)
        return cls(scratch_bytes=scratch_bytes, m_tile=config.acc_depth, n_tile=param_depth,
                   rows=config.rows, cols=config.cols, a_depth=config.a_depth,
                   table_depth=param_depth, weight_cache=config.weight_cache_bytes)


@dataclass
class Program:
    """Firmware plus everything needed to run it.

    Members
    -------
    commands : list[Command]
    image : bytes
        DRAM contents from address 0 (weights and parameters).
    input_addr, output_addr : int
        DRAM addresses of one image's int8 input and output tensors (CHW); ``input_addr`` is
        None when the input arrives on the feature stream (:func:`compile_streamed`).
    input_shape, output_shape : tuple[int, ...]
    dram_bytes : int
        DRAM the program addresses in all.
    layers : list[dict]
        Per layer: name, op, commands, MACs, weight and parameter bytes.
    scratch_peak : int
        Most scratchpad bytes in use at once.
    sparse : list[str]
        The layers on sparse engines, engine ``i`` running ``sparse[i]``.
    """

    commands: list[Command]
    image: bytes
    input_addr: int | None
    output_addr: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    dram_bytes: int
    layers: list[dict] = field(default_factory=list)
    scratch_peak: int = 0
    sparse: list[str] = field(default_factory=list)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Scratchpad:
    """First-fit allocation of scratchpad bytes."""

    def __init__(self, size: int):
        self.size = size
        self.used: dict[str, tuple[int, int]] = {}
        self.peak = 0

    def alloc(self, tensor: str, length: int, layer: str) -> int:
        length = _align(length)
        start = 0
        for lo, hi in sorted(self.used.values()):
            if lo - start >= length:
                break
            start = max(start, hi)
        if start + length > self.size:
            live = sum(hi - lo for lo, hi in self.used.values())
            raise HoarfrostError(f"layer {layer!r}: its feature maps need {live + length} bytes "
                                 f"of scratchpad at once, the configuration has {self.size}; "
                                 f"raise scratch_bytes")
        self.used[tensor] = (start, start + length)
        self.peak = max(self.peak, max(hi for _, hi in self.used.values()))
        return start

    def free(self, tensor: str):
        self.used.pop(tensor, None)


class _Image:
    """The DRAM image being laid out."""

    def __init__(self):
        self.data = bytearray()

    def put(self, blob: bytes) -> int:
        addr = len(self.data)
        self.data += blob
        self.data += bytes(_align(len(self.data)) - len(self.data))
        return addr


def _params_blob(bias, multiplier, shift) -> bytes:
    return b"".join(struct.pack("<iII", int(b), int(m), int(s))
                    for b, m, s in zip(bias, multiplier, shift))


def _table_blob(multiplier, shift) -> bytes:
    return b"".join(struct.pack("<II", int(m), int(s)) for m, s in zip(multiplier, shift))


class _Compiler:
    def __init__(self, graph: Graph, limits: CompileLimits, *, streamed: bool = False,
                 sparse=()):
        if not graph.is_quantized:
            raise HoarfrostError(f"model {graph.name!r} is float: quantize it first")
        self.sparse = list(sparse)            # layer names, in engine order
        for name in self.sparse:
            layer = next((l for l in graph.layers if l.name == name), None)
            if not isinstance(layer, Dense):
                raise HoarfrostError(f"layer {name!r} is not a fully connected layer of "
                                     f"{graph.name!r}: the sparse engine runs only those")
        self.g, self.limits = graph, limits
        self.streamed = streamed              # the input arrives by RECV, not from DRAM
        self.image = _Image()
        self.scratch = _Scratchpad(limits.scratch_bytes)
        self.where: dict[str, int] = {}       # tensor -> scratchpad offset
        self.alias: dict[str, str] = {}       # reshape output -> the tensor holding its bytes
        self.commands: list[Command] = []
        self.table: list[dict] = []
        self.wcache: dict[int, int] = {}      # DRAM weight address -> weight-cache offset
        self.wcache_top = 0
        self.params_loaded: int | None = None  # DRAM address of the parameter buffer's records

    def size(self, tensor: str) -> int:
        return int(np.prod(self.g.shapes[tensor]))

    def emit(self, op: Op, **fields) -> None:
        self.commands.append(Command.make(op, **fields))

    def holder(self, tensor: str) -> str:
        while tensor in self.alias:
            tensor = self.alias[tensor]
        return tensor

    def addr(self, tensor: str) -> int:
        return self.where[self.holder(tensor)]

    def run(self) -> Program:
        g = self.g
        input_bytes, output_bytes = self.size(g.input), self.size(g.output)
        self.where[g.input] = self.scratch.alloc(g.input, input_bytes, g.layers[0].name)
        io_marker = len(self.commands)
        for index, layer in enumerate(g.layers):
            start = len(self.commands)
            self.layer(layer)
            for t in layer.inputs:
                if self.holder(t) != self.holder(layer.output) and self._dead_after(t, index):
                    self.scratch.free(self.holder(t))
            self.table.append({"name": layer.name, "op": layer.op,
                               "commands": len(self.commands) - start})
        input_addr = None if self.streamed else self.image.put(bytes(input_bytes))
        output_addr = self.image.put(bytes(output_bytes))
        self.commands.insert(io_marker, self.input_command(input_addr))
        self.emit(Op.STORE, src=self.addr(g.output), dram_addr=output_addr, length=output_bytes)
        self.emit(Op.SYNC)
        self.emit(Op.END)
        return Program(self.commands, bytes(self.image.data), input_addr, output_addr,
                       tuple(g.shapes[g.input]), tuple(g.shapes[g.output]),
                       len(self.image.data), self.table, self.scratch.peak, self.sparse)

    def input_command(self, input_addr: int | None) -> Command:
        """The command that brings the input into the scratchpad: a ``LOAD`` from DRAM, or a
        ``RECV`` of the frozen front end's pixels (``H*W`` beats of ``C`` channels)."""
        g = self.g
        if not self.streamed:
            return Command.make(Op.LOAD, dram_addr=input_addr, dst=self.where[g.input],
                                length=self.size(g.input))
        shape = g.shapes[g.input]
        if len(shape) != 3:
            raise HoarfrostError(f"input {g.input!r} of shape {tuple(shape)} is not a CHW "
                                 f"feature map; the feature stream carries pixels")
        return Command.make(Op.RECV, dst=self.where[g.input], pixels=shape[1] * shape[2])

    def _dead_after(self, tensor: str, index: int) -> bool:
        holder = self.holder(tensor)
        if holder == self.holder(self.g.output):
            return False
        for later in self.g.layers[index + 1:]:
            if any(self.holder(t) == holder for t in later.inputs):
                return False
        return True

    def out_alloc(self, layer: Layer) -> int:
        offset = self.scratch.alloc(layer.output, self.size(layer.output), layer.name)
        self.where[layer.output] = offset
        return offset

    # -- layers -------------------------------------------------------------------------------
    def layer(self, layer: Layer):
        if layer.name in self.sparse:
            self.sparse_layer(layer)
        elif isinstance(layer, Conv2d):
            self.matmul(layer, layer.weight_q, layer.groups, layer.stride, layer.pads,
                        layer.dilation)
        elif isinstance(layer, Dense):
            n, k = layer.weight_q.shape
            self.matmul(layer, layer.weight_q.reshape(n, k, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1))
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            self.pool(layer)
        elif isinstance(layer, Activation):
            self.pointwise(layer, *self.g.quant[layer.inputs[0]].bounds(layer.clip))
        elif isinstance(layer, Reshape):
            if layer.requant is None:
                self.alias[layer.output] = layer.inputs[0]
            else:
                self.pointwise(layer, -128, 127)
        elif isinstance(layer, Add):
            self.add(layer)
        else:
            raise HoarfrostError(f"layer {layer.name!r}: the back end has no {layer.op!r}")

    def geom(self, in_shape, out_shape, kernel, stride, pads, dilation):
        c, h, w = in_shape
        _, oh, ow = out_shape
        self.emit(Op.GEOM, in_c=c, in_h=h, in_w=w, out_h=oh, out_w=ow, kh=kernel[0],
                  kw=kernel[1], sh=stride[0], sw=stride[1], pad_top=pads[0], pad_left=pads[1],
                  pad_bottom=pads[2], pad_right=pads[3], dh=dilation[0], dw=dilation[1])

    @staticmethod
    def chw(shape):
        return tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)

    def matmul(self, layer, weight_q, groups, stride, pads, dilation, images=None):
        """``MATMUL`` commands of ``layer`` on each image of ``images``, ``(src, dst)`` scratchpad
        offsets (default: the layer's one input and output), weight tile by weight tile: a
        tile that serves several commands (images, pixel tiles) is read from DRAM once into
        the weight cache where it fits, and its parameters are loaded once while the parameter
        buffer keeps them."""
        q_in, q_out = self.g.quant[layer.inputs[0]], self.g.quant[layer.output]
        in_shape = self.chw(self.g.shapes[layer.inputs[0]])
        out_shape = self.chw(self.g.shapes[layer.output])
        n_out, cg, kh, kw = weight_q.shape
        if images is None:
            images = [(self.addr(layer.inputs[0]), self.out_alloc(layer))]
        self.geom(in_shape, out_shape, (kh, kw), stride, pads, dilation)
        rq = layer.requant
        pixels = out_shape[1] * out_shape[2]
        fg = n_out // groups
        k_tiles = -(-(cg * kh * kw) // self.limits.rows)
        if self.limits.k_max is not None and cg * kh * kw > self.limits.k_max:
            raise HoarfrostError(f"layer {layer.name!r}: a window of {cg * kh * kw} taps does "
                                 f"not fit the serial back end's weight buffer of "
                                 f"{self.limits.k_max} bytes; raise a_depth")
        m_tile = min(self.limits.m_tile, self.limits.a_depth // k_tiles)
        if m_tile == 0:
            raise HoarfrostError(f"layer {layer.name!r}: one output pixel needs {k_tiles} "
                                 f"activation-buffer entries, the configuration has "
                                 f"{self.limits.a_depth}; raise a_depth")
        uses = len(images) * -(-pixels // m_tile)          # commands per weight tile
        for group in range(groups):
            for n0 in range(group * fg, (group + 1) * fg, self.limits.n_tile):
                nt = min(self.limits.n_tile, (group + 1) * fg - n0)
                tiles = weight_tiles(weight_q[n0:n0 + nt].reshape(nt, -1), self.limits.rows,
                                     self.limits.cols)
                w_addr = self.image.put(tiles.tobytes())
                if uses > 1:
                    w_addr = self.cached(w_addr, tiles.size)
                p_addr = self.image.put(_params_blob(layer.bias_q[n0:n0 + nt],
                                                     rq.multiplier[n0:n0 + nt], rq.shift[n0:n0 + nt]))
                for src, dst in images:
                    for m0 in range(0, pixels, m_tile):
                        self.emit(Op.MATMUL, src=src, dst=dst, zp_in=q_in.zero_point,
                                  c0=group * cg, cg=cg, m0=m0, mt=min(m_tile, pixels - m0),
                                  n0=n0, nt=nt, w_addr=w_addr, p_addr=self.params(p_addr),
                                  lo=rq.lo, hi=rq.hi, zp_out=q_out.zero_point)

    def params(self, p_addr: int) -> int:
        """A ``MATMUL``'s ``p_addr`` for the records at ``p_addr``: ``KEEP_PARAMS`` when the
        parameter buffer holds them already (the last records loaded, no pooling table since)."""
        if p_addr == self.params_loaded:
            return KEEP_PARAMS
        self.params_loaded = p_addr
        return p_addr

    def cached(self, w_addr: int, length: int) -> int:
        """The ``MATMUL`` weight address of the ``length`` bytes at DRAM ``w_addr``: in the
        weight cache (loaded by a ``LOADW`` unless still there; a full cache is emptied), or
        ``w_addr`` itself when they do not fit it."""
        if length > self.limits.weight_cache:
            return w_addr
        if w_addr not in self.wcache:
            if self.wcache_top + length > self.limits.weight_cache:
                self.wcache.clear()
                self.wcache_top = 0
            self.wcache[w_addr] = self.wcache_top
            self.emit(Op.LOADW, dram_addr=w_addr, dst=self.wcache_top, length=length)
            self.wcache_top += _align(length)
        return WCACHE | self.wcache[w_addr]

    def sparse_layer(self, layer):
        """The input vector (the flattened tensor, already in column order) to the layer's
        engine and its outputs back; bias, requantization and clamp happen in the engine."""
        engine = self.sparse.index(layer.name)
        src, dst = self.addr(layer.inputs[0]), self.out_alloc(layer)
        self.emit(Op.SEND, src=src, length=self.size(layer.inputs[0]), engine=engine)
        self.emit(Op.RECVS, dst=dst, length=self.size(layer.output), engine=engine)

    def pool(self, layer):
        q_in, q_out = self.g.quant[layer.inputs[0]], self.g.quant[layer.output]
        src, dst = self.addr(layer.inputs[0]), self.out_alloc(layer)
        self.geom(self.g.shapes[layer.inputs[0]], self.g.shapes[layer.output], layer.kernel,
                  layer.stride, layer.pads, (1, 1))
        rq = layer.requant
        if isinstance(layer, MaxPool2d):
            kind, lo, hi = POOL_MAX, -128, 127
            p_addr = NO_PARAMS if rq is None else self.image.put(_table_blob(rq.multiplier, rq.shift))
        else:
            kind = POOL_AVG_PAD if layer.count_include_pad else POOL_AVG
            entries = layer.kernel[0] * layer.kernel[1] + 1
            if entries > self.limits.table_depth:
                raise HoarfrostError(f"layer {layer.name!r}: average pooling over "
                                     f"{entries - 1} elements needs {entries} entries in the "
                                     f"parameter buffer, the configuration has "
                                     f"{self.limits.table_depth}; raise param_depth")
            lo, hi = rq.lo, rq.hi
            p_addr = self.image.put(_table_blob(rq.multiplier, rq.shift))
        self.pool_command(src=src, dst=dst, kind=kind, zp_in=q_in.zero_point, lo_in=lo,
                          hi_in=hi, p_addr=p_addr, zp_out=q_out.zero_point)

    def pool_command(self, **fields) -> None:
        if fields["p_addr"] != NO_PARAMS:
            self.params_loaded = None        # the table overwrites the parameter buffer
        self.emit(Op.POOL, **fields)

    def pointwise(self, layer, lo, hi):
        """Clamp (and rescale) every element: a 1x1 max pool over the tensor."""
        q_in, q_out = self.g.quant[layer.inputs[0]], self.g.quant[layer.output]
        src, dst = self.addr(layer.inputs[0]), self.out_alloc(layer)
        shape = self.chw(self.g.shapes[layer.inputs[0]])
        self.geom(shape, shape, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
        rq = layer.requant
        p_addr = NO_PARAMS if rq is None else self.image.put(_table_blob(rq.multiplier, rq.shift))
        self.pool_command(src=src, dst=dst, kind=POOL_MAX, zp_in=q_in.zero_point, lo_in=lo,
                          hi_in=hi, p_addr=p_addr, zp_out=q_out.zero_point)

    def add(self, layer):
        qa, qb = (self.g.quant[t] for t in layer.inputs)
        rq = layer.requant
        src_a, src_b = (self.addr(t) for t in layer.inputs)
        dst = self.out_alloc(layer)
        self.emit(Op.ADD, src_a=src_a, src_b=src_b, dst=dst, length=self.size(layer.output),
                  zp_a=qa.zero_point, zp_b=qb.zero_point, mult_a=int(rq.multiplier[0]),
                  mult_b=int(rq.multiplier[1]), shift=int(rq.shift[0]),
                  zp_out=rq.zero_point, lo=rq.lo, hi=rq.hi)


def compile_graph(graph: Graph, limits: CompileLimits = CompileLimits(), *,
                  sparse=()) -> Program:
    """Firmware and DRAM image running ``graph`` on the back end, one image at a time; the
    fully connected layers named in ``sparse`` run on sparse engines 0, 1, ... in that order."""
    return _Compiler(graph, limits, sparse=sparse).run()


def compile_streamed(graph: Graph, limits: CompileLimits = CompileLimits(), *,
                     sparse=()) -> Program:
    """Like :func:`compile_graph`, for the back half of a graph cut behind a frozen front end
    (:func:`~hoarfrost.gen.ir.split_graph`): the input, a ``(C, H, W)`` feature map, arrives
    on the back end's feature stream by one ``RECV`` instead of a ``LOAD`` from DRAM. The DRAM
    image has no input buffer; ``Program.input_addr`` is None."""
    return _Compiler(graph, limits, streamed=True, sparse=sparse).run()
