"""Batch inference: one program running B images, layer by layer or with mini-batch serialization.

DRAM holds the B input images one after another (each CHW, ``input_stride`` bytes apart) and B
output slots (``output_stride`` apart), after the weight image. The layers are cut into
*groups* of consecutive layers; each group runs over the batch in *sub-batches* of ``S``
images: for each sub-batch, every layer of the group runs on those ``S`` images, so the
feature maps inside a group stay in the scratchpad; a tensor that crosses a group boundary
is stored to a DRAM spill area of B images and loaded back by the groups that read it.

Two schedules (``schedule=``):

``"layer"``
    Layer by layer, the baseline of the MBS paper: every layer is its own group and runs over
    the whole batch before the next, in sub-batches of the most images its input and output
    fit in the scratchpad. A layer's whole-batch output stays on chip only when it and its
    readers run the whole batch at once and it fits; otherwise it goes to DRAM.
``"mbs"``
    Mini-batch serialization (Lym et al., "Mini-batch Serialization: CNN Training with
    Inter-layer Data Reuse", MLSys 2019, arXiv:1810.00307): groups and sub-batch sizes chosen to
    minimise the DRAM bytes (dynamic programming over the cut points, each group's bytes
    measured on its compiled commands, each group in the largest sub-batch that fits):
    larger groups keep more feature maps on chip but need smaller sub-batches, and a
    sub-batch reads again what the on-chip buffers did not keep (the parameters of layers
    that alternate, weights the weight cache cannot hold).

How a layer runs on ``S`` images (the sub-batch's feature maps sit in one block, image after
image, each CHW, unless noted):

* convolution: one ``MATMUL`` per image and weight tile, tile by tile (a ``MATMUL``'s output
  pixels are those of one feature map, so images cannot share a command). A tile serving
  several commands is loaded into the back end's weight cache by one ``LOADW`` and streamed
  from there by every image's ``MATMUL``; it stays cached across sub-batches and layers
  until the cache is full (then the cache is emptied and refilled). After the first, the
  tile's ``MATMUL`` commands keep the parameter buffer (``KEEP_PARAMS``). Both schedules use the
  same ISA and the same cache, so the weights cost about their compulsory bytes in both;
* fully connected: the ``S`` images are the pixels of one ``MATMUL``: the block of ``S``
  flattened inputs is the map ``(1, S, K)`` under a ``1 x K`` window, so each weight tile is
  read once per sub-batch (and per ``m_tile`` images). The output is *batch-major* ``(N, S)``
  (channel after channel, as a ``MATMUL`` writes), which the next fully connected layer reads
  as the map ``(N, S, 1)`` under a ``1 x 1`` window; where an image-major block is needed (a
  convolution or pooling, a DRAM spill, the graph's output) one identity ``MATMUL`` over the
  map ``(1, N, S)`` under a ``1 x S`` window transposes it;
* pooling, standalone activations and residual adds work channel by channel or element by
  element: the block of ``S`` images is one map of ``S * C`` channels, one command for all.

Every image's output equals the golden model's in both schedules (tests/test_mbs.py). A
``SYNC`` follows each sub-batch's spill stores. Transfers are not double-buffered: the back end
runs ``LOAD``/``LOADW``/``STORE`` to completion before the next command, so only a
``MATMUL``'s own weight stream overlaps compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from hoarfrost.firmware.isa import Command, Op
from hoarfrost.gen.compiler import CompileLimits, Program, _Compiler, _Image
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import (Activation, AvgPool2d, Conv2d, Dense, Graph, MaxPool2d, QParams,
                              Requant, Reshape)
from hoarfrost.gen.traffic import PARAM_BYTES, TABLE_BYTES, command_bytes

__all__ = ["SCHEDULES", "BatchProgram", "compile_batch", "plan_groups"]

SCHEDULES = ("layer", "mbs")
IMAGE, BATCH = "image", "batch"      # block layouts: image after image / channel after channel


@dataclass
class BatchProgram(Program):
    """A :class:`~hoarfrost.gen.compiler.Program` for ``batch`` images.

    Members (besides Program's; ``input_addr``/``output_addr`` are image 0's)
    -------
    batch : int
    schedule : str
        ``"layer"`` or ``"mbs"``.
    input_stride, output_stride : int
        DRAM bytes from one image's input (output) to the next's.
    groups : list[dict]
        Per group: ``layers`` (names) and ``sub_batch`` (images per sub-batch).
    command_layers : list[int | None]
        Per command, the index of the layer in ``layers`` it belongs to; None for loading the
        graph's input and storing its output (and SYNC/END).
    """

    batch: int = 1
    schedule: str = "layer"
    input_stride: int = 0
    output_stride: int = 0
    groups: list[dict] = field(default_factory=list)
    command_layers: list[int | None] = field(default_factory=list)


@dataclass(frozen=True)
class _Group:
    start: int               # layer indexes start .. stop-1
    stop: int
    sub_batch: int


class _SharedImage(_Image):
    """The DRAM image, each distinct blob stored once: every sub-batch and image reuses the
    weight tiles laid out for the first."""

    def __init__(self):
        super().__init__()
        self.seen: dict[bytes, int] = {}

    def put(self, blob: bytes) -> int:
        if blob not in self.seen:
            self.seen[blob] = super().put(blob)
        return self.seen[blob]

    def reserve(self, length: int) -> int:
        """A new area of ``length`` bytes (never shared: inputs, outputs, spills)."""
        return super().put(bytes(length))


def _layer_compulsory(layer) -> int:
    """Bytes of a layer's weights (unpadded), parameters and tables: read once at least."""
    if isinstance(layer, (Conv2d, Dense)):
        return int(layer.weight_q.size) + PARAM_BYTES * int(layer.weight_q.shape[0])
    if isinstance(layer, AvgPool2d):
        return TABLE_BYTES * (layer.kernel[0] * layer.kernel[1] + 1)
    if isinstance(layer, (MaxPool2d, Activation, Reshape)) and layer.requant is not None:
        return TABLE_BYTES                      # a rescale: one (multiplier, shift) pair
    return 0


class _BatchCompiler(_Compiler):
    """The one-image compiler's layer methods, run on blocks of images.

    ``self.g`` is swapped for a *view* whose shapes describe the whole block (``S * C``
    channels, or the ``(1, S, K)`` / ``(K, S, 1)`` maps of a fully connected layer) while a
    layer's commands are emitted for all images at once; ``self.index`` offsets the
    per-image commands of a convolution.
    """

    def __init__(self, graph: Graph, limits: CompileLimits, batch: int):
        super().__init__(graph, limits)
        self.graph, self.batch = graph, batch
        self.image = _SharedImage()
        self.layout: dict[str, str] = {}
        self.tags: list[int | None] = []
        self.tag: int | None = None
        self.n, self.s0, self.index = 1, 0, 0
        self.fixups: list[tuple[int, str, int]] = []      # (command, DRAM area, byte offset)
        self.last_geom = None
        self.uses = {}                                    # holder -> layer indexes reading it
        for i, layer in enumerate(graph.layers):
            if isinstance(layer, Reshape) and layer.requant is None:
                self.alias[layer.output] = layer.inputs[0]
        for i, layer in enumerate(graph.layers):
            if not self.is_alias(layer):
                for t in layer.inputs:
                    self.uses.setdefault(self.holder(t), []).append(i)
        self.output_holder = self.holder(graph.output)

    # -- bookkeeping ----------------------------------------------------------------------------
    def is_alias(self, layer) -> bool:
        return isinstance(layer, Reshape) and layer.requant is None

    def isize(self, tensor: str) -> int:
        """Bytes of one image's ``tensor``."""
        return int(np.prod(self.graph.shapes[tensor]))

    def emit(self, op: Op, **fields) -> None:
        super().emit(op, **fields)
        self.tags.append(self.tag)

    def geom(self, *args):
        # The geometry registers keep their value: a GEOM equal to the last one is dropped.
        start = len(self.commands)
        super().geom(*args)
        if self.commands[start] == self.last_geom:
            del self.commands[start:], self.tags[start:]
        else:
            self.last_geom = self.commands[start]

    def addr(self, tensor: str) -> int:
        holder = self.holder(tensor)
        return self.where[holder] + self.index * self.isize(holder)

    def out_alloc(self, layer) -> int:
        if layer.output not in self.where:          # the block of all n images, at image 0
            self.where[layer.output] = self.scratch.alloc(layer.output, self.size(layer.output)
                                                          * (self.n if self.g is self.graph
                                                             else 1), layer.name)
        offset = self.where[layer.output]
        return offset + self.index * self.isize(layer.output) if self.index else offset

    def view(self, shapes: dict, quant: dict | None = None) -> SimpleNamespace:
        return SimpleNamespace(shapes={**self.graph.shapes, **shapes},
                               quant={**self.graph.quant, **(quant or {})})

    def block_view(self, tensors) -> SimpleNamespace:
        """The block of ``n`` images as one map: ``n * C`` channels (``n * K`` for vectors)."""
        return self.view({t: (self.n * self.graph.shapes[t][0], *self.graph.shapes[t][1:])
                          for t in tensors})

    def free(self, holder: str) -> None:
        self.scratch.free(holder)
        self.where.pop(holder, None)
        self.layout.pop(holder, None)

    # -- DRAM transfers -------------------------------------------------------------------------
    def transfer(self, op: Op, holder: str, area: str) -> None:
        length = self.n * self.isize(holder)
        offset = self.s0 * self.isize(holder)
        self.fixups.append((len(self.commands), area, offset))
        if op == Op.LOAD:
            self.emit(Op.LOAD, dram_addr=0, dst=self.where[holder], length=length)
        else:
            self.emit(Op.STORE, src=self.where[holder], dram_addr=0, length=length)

    def load(self, holder: str, reader: str) -> None:
        self.where[holder] = self.scratch.alloc(holder, self.n * self.isize(holder), reader)
        self.layout[holder] = IMAGE
        self.transfer(Op.LOAD, holder, holder)

    def image_major(self, holder: str) -> None:
        """Transpose a batch-major block ``(N, n)`` into ``n`` images of ``N`` bytes."""
        if self.layout.get(holder) != BATCH:
            return
        n, size = self.n, self.isize(holder)
        moved = holder + "#images"
        identity = np.eye(n, dtype=np.int8).reshape(n, 1, 1, n)
        layer = SimpleNamespace(name=f"{holder} (transpose)", inputs=[holder], output=moved,
                                bias_q=np.zeros(n, np.int64),
                                requant=Requant(np.ones(n, np.int64), np.zeros(n, np.int64), 0))
        zero = QParams(1.0, 0)
        self.g = self.view({holder: (1, size, n), moved: (n, size, 1)},
                           {holder: zero, moved: zero})
        self.matmul(layer, identity, 1, (1, 1), (0, 0, 0, 0), (1, 1))
        self.g = self.graph
        self.scratch.free(holder)
        self.where[holder] = self.where.pop(moved)
        self.scratch.used[holder] = self.scratch.used.pop(moved)
        self.layout[holder] = IMAGE

    # -- layers on a block of images ------------------------------------------------------------
    def run_layer(self, layer) -> None:
        inputs = [self.holder(t) for t in layer.inputs]
        if isinstance(layer, Conv2d):
            self.image_major(inputs[0])
            self.g = self.graph
            images = []
            for self.index in range(self.n):
                images.append((self.addr(layer.inputs[0]), self.out_alloc(layer)))
            self.index = 0
            self.matmul(layer, layer.weight_q, layer.groups, layer.stride, layer.pads,
                        layer.dilation, images)
            layout = IMAGE
        elif isinstance(layer, Dense):
            n_out, k = layer.weight_q.shape
            if self.layout[inputs[0]] == BATCH:
                shape, weight = (k, self.n, 1), layer.weight_q.reshape(n_out, k, 1, 1)
            else:
                shape, weight = (1, self.n, k), layer.weight_q.reshape(n_out, 1, 1, k)
            self.g = self.view({layer.inputs[0]: shape, layer.output: (n_out, self.n, 1)})
            self.matmul(layer, weight, 1, (1, 1), (0, 0, 0, 0), (1, 1))
            layout = BATCH if self.n > 1 else IMAGE       # (N, 1) is one image's vector
        else:
            if isinstance(layer, (MaxPool2d, AvgPool2d)) or \
                    len({self.layout[h] for h in inputs}) > 1:
                for h in inputs:
                    self.image_major(h)
            layout = self.layout[inputs[0]]
            self.g = self.block_view([*layer.inputs, layer.output])
            self.layer(layer)
        self.g = self.graph
        if not self.is_alias(layer):
            self.layout[layer.output] = layout

    # -- groups -------------------------------------------------------------------------------
    def needed_after(self, holder: str, index: int) -> bool:
        return holder == self.output_holder or any(i > index for i in self.uses.get(holder, []))

    def run_group(self, group: _Group, carried: frozenset = frozenset()) -> None:
        """Emit ``group`` over the whole batch. ``carried``: tensors that stay on chip across
        group boundaries (written by and read by groups that run the whole batch at once).

        A tensor read after the group is stored as soon as it is written; every block is freed
        after its last reader in the group.
        """
        layers = self.graph.layers
        for self.s0 in range(0, self.batch, group.sub_batch):
            self.n = min(group.sub_batch, self.batch - self.s0)
            stored = False
            for i in range(group.start, group.stop):
                layer = layers[i]
                if self.is_alias(layer):
                    continue
                for t in layer.inputs:
                    holder = self.holder(t)
                    if holder not in self.where:
                        self.tag = None if holder == self.holder(self.graph.input) else i
                        self.load(holder, layer.name)
                self.tag = i
                self.run_layer(layer)
                out = layer.output
                if self.needed_after(out, group.stop - 1) and out not in carried:
                    self.image_major(out)
                    self.tag = None if out == self.output_holder else i
                    self.transfer(Op.STORE, out, out)
                    stored = True
                for holder in {self.holder(t) for t in layer.inputs} | {out}:
                    if holder in carried and self.needed_after(holder, i):
                        continue
                    if not any(i < j < group.stop for j in self.uses.get(holder, [])):
                        self.free(holder)
            if stored:
                self.tag = None
                self.emit(Op.SYNC)      # spilled bytes are in DRAM before anything reads them

    def finish(self, groups: list[_Group], schedule: str) -> BatchProgram:
        g = self.graph
        self.tag = None
        self.emit(Op.END)
        # DRAM areas after the weight image: B inputs, B outputs, then one per spilled tensor
        areas = {}
        for holder in [self.holder(g.input), self.output_holder,
                       *dict.fromkeys(area for _, area, _ in self.fixups)]:
            if holder not in areas:
                areas[holder] = self.image.reserve(self.batch * self.isize(holder))
        commands = list(self.commands)
        for index, area, offset in self.fixups:
            commands[index] = Command.make(commands[index].op, **{
                **dict(commands[index].fields), "dram_addr": areas[area] + offset})
        counts = [0] * len(g.layers)
        for tag in self.tags:
            if tag is not None:
                counts[tag] += 1
        table = [{"name": l.name, "op": l.op, "commands": counts[i],
                  "compulsory_bytes": _layer_compulsory(l)} for i, l in enumerate(g.layers)]
        group_table = [{"layers": [l.name for l in g.layers[x.start:x.stop]],
                        "sub_batch": x.sub_batch} for x in groups]
        return BatchProgram(commands, bytes(self.image.data), areas[self.holder(g.input)],
                            areas[self.output_holder], tuple(g.shapes[g.input]),
                            tuple(g.shapes[g.output]), len(self.image.data), table,
                            self.scratch.peak, batch=self.batch, schedule=schedule,
                            input_stride=self.isize(g.input),
                            output_stride=self.isize(g.output), groups=group_table,
                            command_layers=list(self.tags))


def _check(graph: Graph, batch: int, schedule: str) -> None:
    if not graph.is_quantized:
        raise HoarfrostError(f"model {graph.name!r} is float: quantize it first")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise HoarfrostError(f"batch must be a positive integer, not {batch!r}")
    if schedule not in SCHEDULES:
        raise HoarfrostError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if graph.input == graph.output or not any(not (isinstance(l, Reshape) and l.requant is None)
                                              for l in graph.layers):
        raise HoarfrostError(f"model {graph.name!r} computes nothing the back end runs")


def _sub_batches(batch: int) -> list[int]:
    """Sub-batch sizes worth trying, largest first: the smallest size for each count of
    sub-batches (7 images in sub-batches of 4 read weights as often as in sub-batches of 6)."""
    return sorted({-(-batch // k) for k in range(1, batch + 1)}, reverse=True)


def _data_bytes(compiler: _BatchCompiler) -> int:
    geom, total = {}, 0
    for command in compiler.commands:
        if command.op == Op.GEOM:
            geom = dict(command.fields)
        total += sum(command_bytes(command, geom, compiler.limits.rows, compiler.limits.cols))
    return total


def _group_bytes(graph, limits, batch, group: _Group) -> int | None:
    """DRAM bytes of one group run alone (its inputs from and outputs to DRAM); None if its
    feature maps do not fit the scratchpad."""
    compiler = _BatchCompiler(graph, limits, batch)
    try:
        compiler.run_group(group)
    except HoarfrostError:
        return None
    return _data_bytes(compiler)


def plan_groups(graph: Graph, limits: CompileLimits, batch: int,
                schedule: str) -> tuple[list[_Group], frozenset]:
    """Groups, sub-batch sizes and on-chip tensors of a schedule (see the module docstring)."""
    _check(graph, batch, schedule)
    count = len(graph.layers)
    sizes = _sub_batches(batch)
    if schedule == "layer":
        groups = []
        for i in range(count):
            fits = [s for s in sizes if _group_bytes(graph, limits, batch, _Group(i, i + 1, s))
                    is not None]
            if not fits:
                _BatchCompiler(graph, limits, batch).run_group(_Group(i, i + 1, 1))  # raises
            groups.append(_Group(i, i + 1, fits[0]))
        return groups, _layer_carries(graph, limits, batch, groups)
    # MBS: best[j] = fewest bytes running layers 0 .. j-1; cut[j] = its last group
    best: list[float] = [0.0] + [float("inf")] * count
    cut: list[_Group | None] = [None] * (count + 1)
    for stop in range(1, count + 1):
        for start in range(stop):
            for size in sizes:
                cost = _group_bytes(graph, limits, batch, _Group(start, stop, size))
                if cost is not None:
                    if best[start] + cost < best[stop]:
                        best[stop], cut[stop] = best[start] + cost, _Group(start, stop, size)
                    break           # smaller sub-batches only read the weights more often
    if cut[count] is None:
        _BatchCompiler(graph, limits, batch).run_group(_Group(0, 1, 1))      # names the layer
        raise HoarfrostError(f"model {graph.name!r}: no schedule fits the scratchpad")
    groups, stop = [], count
    while stop:
        groups.insert(0, cut[stop])
        stop = cut[stop].start
    return groups, frozenset()


def _layer_carries(graph, limits, batch, groups: list[_Group]) -> frozenset:
    """Layer by layer: the tensors whose writer and readers all run the whole batch at once
    stay on chip, as many as fit (largest dropped first)."""
    probe = _BatchCompiler(graph, limits, batch)
    whole = {i for g in groups if g.sub_batch >= batch for i in range(g.start, g.stop)}
    carried = set()
    for i, layer in enumerate(graph.layers):
        holder = probe.holder(layer.output)
        if probe.is_alias(layer) or holder == probe.output_holder or i not in whole:
            continue
        if all(j in whole for j in probe.uses.get(holder, [])):
            carried.add(holder)
    while True:
        try:
            _compile(graph, limits, batch, groups, frozenset(carried), "layer")
            return frozenset(carried)
        except HoarfrostError:
            if not carried:
                raise
            carried.remove(max(sorted(carried), key=probe.isize))   # sorted: deterministic


def _compile(graph, limits, batch, groups, carried, schedule) -> BatchProgram:
    compiler = _BatchCompiler(graph, limits, batch)
    for group in groups:
        compiler.run_group(group, carried)
    return compiler.finish(groups, schedule)


def compile_batch(graph: Graph, limits: CompileLimits = CompileLimits(), batch: int = 1,
                  schedule: str = "mbs") -> BatchProgram:
    """Firmware and DRAM image running ``graph`` on ``batch`` images with ``schedule``
    (``"layer"`` or ``"mbs"``, see the module docstring)."""
    groups, carried = plan_groups(graph, limits, batch, schedule)
    return _compile(graph, limits, batch, groups, carried, schedule)
