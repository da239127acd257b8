"""Functional simulator of the back end's command stream (no timing).

It executes a :class:`~hoarfrost.gen.compiler.Program` command by command on a DRAM byte array
and a scratchpad, reading every operand through the addresses and fields the commands carry,
so it checks the compiler's tiling, addressing and parameter layout against the golden model
before any RTL runs. Arithmetic is that of :mod:`hoarfrost.sim.arith`. The feature stream
``RECV`` reads is given as the frozen front end's output tensor (see :func:`run_program`); the
sparse engines behind ``SEND``/``RECVS`` as functions from an input vector to the output
vector (:func:`sparse_engine`, the compressed layer's golden model).
"""

from __future__ import annotations

import struct

import numpy as np

from hoarfrost.firmware.isa import (KEEP_PARAMS, NO_PARAMS, POOL_AVG, POOL_AVG_PAD, POOL_MAX,
                                    WCACHE, Command, IsaError, Op, weight_untiles)
from hoarfrost.sim.arith import requantize, rounding_shift
from hoarfrost.sim.golden import _windows


class IsaMachine:
    """DRAM + scratchpad + weight cache + parameter buffer + geometry registers; :meth:`run`
    executes commands."""

    def __init__(self, image: bytes, dram_bytes: int, scratch_bytes: int, rows: int, cols: int,
                 features: np.ndarray | None = None, weight_cache_bytes: int = 0,
                 engines=()):
        self.rows, self.cols = rows, cols          # the weight layout follows the array
        # The feature stream: beats (pixels in raster order) x lanes (channels).
        self.beats = None if features is None else _raster(features)
        self.next_beat = 0
        self.dram = np.zeros(max(dram_bytes, len(image)), dtype=np.uint8)
        self.dram[:len(image)] = np.frombuffer(image, dtype=np.uint8)
        self.scratch = np.zeros(scratch_bytes, dtype=np.uint8)
        self.wcache = np.zeros(weight_cache_bytes, dtype=np.uint8)
        self.params: np.ndarray | None = None      # the parameter buffer's MATMUL records
        self.geom: dict[str, int] = {}
        self.counts = {op.name: 0 for op in Op}
        self.engines = list(engines)
        self.engine_out: dict[int, list[int]] = {}   # results an engine holds, not yet taken

    # -- memory helpers -----------------------------------------------------------------------
    def s8(self, mem: np.ndarray, addr: int, n: int) -> np.ndarray:
        if addr + n > len(mem):
            raise IsaError(f"access {addr}+{n} beyond memory of {len(mem)} bytes")
        return mem[addr:addr + n].view(np.int8)

    def words(self, addr: int, count: int, fmt: str) -> list[tuple]:
        size = struct.calcsize(fmt)
        blob = self.dram[addr:addr + count * size].tobytes()
        return list(struct.iter_unpack(fmt, blob))

    def fmap(self, addr: int, c: int, h: int, w: int) -> np.ndarray:
        return self.s8(self.scratch, addr, c * h * w).reshape(c, h, w)

    def put(self, addr: int, values: np.ndarray) -> None:
        self.s8(self.scratch, addr, values.size)[:] = values.reshape(-1)

    def window_view(self, x: np.ndarray, pad_value: int, *, ceil_value=None) -> np.ndarray:
        """(C, OH, OW, KH, KW) windows per the geometry registers."""
        g = self.geom
        win = _windows(x[None].astype(np.int64), (g["kh"], g["kw"]), (g["sh"], g["sw"]),
                       (g["pad_top"], g["pad_left"], g["pad_bottom"], g["pad_right"]),
                       (g["dh"], g["dw"]), pad_value, ceil_mode=True, ceil_pad_value=ceil_value)
        return win[0, :, :g["out_h"], :g["out_w"]]

    # -- commands -----------------------------------------------------------------------------
    def run(self, commands: list[Command]) -> None:
        for command in commands:
            self.counts[command.op.name] += 1
            if command.op == Op.END:
                return
            getattr(self, f"_{command.op.name.lower()}")(command)
        raise IsaError("program has no END")

    def _load(self, c):
        self.scratch[c.dst:c.dst + c.length] = self.dram[c.dram_addr:c.dram_addr + c.length]

    def _loadw(self, c):
        if c.dst + c.length > len(self.wcache):
            raise IsaError(f"LOADW {c.dst}+{c.length} beyond the weight cache of "
                           f"{len(self.wcache)} bytes")
        self.wcache[c.dst:c.dst + c.length] = self.dram[c.dram_addr:c.dram_addr + c.length]

    def _store(self, c):
        self.dram[c.dram_addr:c.dram_addr + c.length] = self.scratch[c.src:c.src + c.length]

    def _recv(self, c):
        if self.beats is None:
            raise IsaError("RECV on a machine without a feature stream")
        if self.next_beat + c.pixels > len(self.beats):
            raise IsaError(f"RECV of {c.pixels} pixels: the stream has "
                           f"{len(self.beats) - self.next_beat} left")
        beats = self.beats[self.next_beat:self.next_beat + c.pixels]       # pixels x lanes
        self.next_beat += c.pixels
        self.put(c.dst, np.ascontiguousarray(beats.T))                    # lane-major: CHW

    def _send(self, c):
        if c.engine >= len(self.engines):
            raise IsaError(f"SEND to sparse engine {c.engine}: the machine has "
                           f"{len(self.engines)}")
        x = self.s8(self.scratch, c.src, c.length).copy()
        self.engine_out.setdefault(c.engine, []).extend(
            np.asarray(self.engines[c.engine](x), dtype=np.int8).reshape(-1).tolist())

    def _recvs(self, c):
        waiting = self.engine_out.get(c.engine, [])
        if len(waiting) < c.length:
            raise IsaError(f"RECVS of {c.length} results from sparse engine {c.engine}: it "
                           f"has {len(waiting)}")
        self.put(c.dst, np.array(waiting[:c.length], dtype=np.int8))
        del waiting[:c.length]

    def _geom(self, c):
        self.geom = dict(c.fields)

    def _sync(self, c):
        pass

    def _matmul(self, c):
        g = self.geom
        x = self.fmap(c.src, g["in_c"], g["in_h"], g["in_w"])[c.c0:c.c0 + c.cg]
        win = self.window_view(x.astype(np.int64) - c.zp_in, 0)            # cg OH OW KH KW
        rows = win.transpose(1, 2, 0, 3, 4).reshape(g["out_h"] * g["out_w"], -1)[c.m0:c.m0 + c.mt]
        k = rows.shape[1]
        size = -(-c.nt // self.cols) * -(-k // self.rows) * self.rows * self.cols
        source = (self.s8(self.wcache, c.w_addr & ~WCACHE, size) if c.w_addr & WCACHE
                  else self.s8(self.dram, c.w_addr, size))
        weights = weight_untiles(source, c.nt, k, self.rows, self.cols).astype(np.int64)
        if c.p_addr == KEEP_PARAMS:
            if self.params is None or len(self.params) < c.nt:
                raise IsaError(f"MATMUL keeps the parameters of {c.nt} channels, the buffer "
                               f"holds {0 if self.params is None else len(self.params)}")
            params = self.params[:c.nt]
        else:
            params = self.params = np.array(self.words(c.p_addr, c.nt, "<iII"), dtype=np.int64)
        acc = rows @ weights.T + params[:, 0]                                # mt x nt
        y = requantize(acc, params[:, 1], params[:, 2], c.zp_out, c.lo, c.hi)
        out = self.s8(self.scratch, c.dst, (c.n0 + c.nt) * g["out_h"] * g["out_w"])
        out = out.reshape(-1, g["out_h"] * g["out_w"])
        out[c.n0:c.n0 + c.nt, c.m0:c.m0 + c.mt] = y.T

    def _pool(self, c):
        g = self.geom
        x = self.fmap(c.src, g["in_c"], g["in_h"], g["in_w"]).astype(np.int64)
        if c.p_addr != NO_PARAMS:
            self.params = None                  # its table overwrites the parameter buffer
        if c.kind == POOL_MAX:
            y = np.clip(self.window_view(x, -129).max(axis=(-1, -2)), c.lo_in, c.hi_in)
            if c.p_addr != NO_PARAMS:
                (mult, shift), = self.words(c.p_addr, 1, "<II")
                y = requantize(y - c.zp_in, mult, shift, c.zp_out)
        elif c.kind in (POOL_AVG, POOL_AVG_PAD):
            sums = self.window_view(x - c.zp_in, 0).sum(axis=(-1, -2))
            ones = np.ones((1,) + x.shape[1:], dtype=np.int64)
            counts = self.window_view(ones, 1 if c.kind == POOL_AVG_PAD else 0,
                                      ceil_value=0).sum(axis=(-1, -2))[0]
            table = np.array(self.words(c.p_addr, int(counts.max()) + 1, "<II"), dtype=np.int64)
            y = requantize(sums, table[counts, 0], table[counts, 1], c.zp_out, c.lo_in, c.hi_in)
        else:
            raise IsaError(f"POOL kind {c.kind} unknown")
        self.put(c.dst, y.astype(np.int8))

    def _add(self, c):
        a = self.s8(self.scratch, c.src_a, c.length).astype(np.int64)
        b = self.s8(self.scratch, c.src_b, c.length).astype(np.int64)
        acc = (a - c.zp_a) * c.mult_a + (b - c.zp_b) * c.mult_b
        y = np.clip(rounding_shift(acc, c.shift) + c.zp_out, c.lo, c.hi)
        self.s8(self.scratch, c.dst, c.length)[:] = y.astype(np.int8)


def _raster(features: np.ndarray) -> np.ndarray:
    """A ``(C, H, W)`` feature map as the stream carries it: ``(H*W, C)`` int8 beats."""
    features = np.asarray(features, dtype=np.int8)
    return features.reshape(features.shape[0], -1).T


def sparse_engine(encoding, layer, q_in):
    """A sparse engine for :class:`IsaMachine`: one input vector in, the compressed layer's
    int8 outputs out (:func:`hoarfrost.sim.golden_sparse.sparse_dense_int`)."""
    from hoarfrost.sim.golden_sparse import sparse_dense_int
    return lambda x: sparse_dense_int(x[None], encoding, layer, q_in)[0]


def run_program(program, x_int8: np.ndarray, limits, engines=()) -> np.ndarray:
    """Run a compiled program on one int8 input (per-sample shape); return the int8 output.

    ``limits`` is the :class:`~hoarfrost.gen.compiler.CompileLimits` it was compiled for. A
    program whose input arrives by ``RECV`` (``program.input_addr is None``) gets ``x_int8`` as
    the feature stream instead: the ``(C, H, W)`` output of the frozen front end. ``engines``
    are the sparse engines ``SEND`` and ``RECVS`` address (:func:`sparse_engine`)."""
    streamed = program.input_addr is None
    machine = IsaMachine(program.image, program.dram_bytes, limits.scratch_bytes, limits.rows,
                         limits.cols, features=x_int8 if streamed else None,
                         weight_cache_bytes=limits.weight_cache, engines=engines)
    if not streamed:
        blob = np.ascontiguousarray(x_int8, dtype=np.int8).reshape(-1).view(np.uint8)
        machine.dram[program.input_addr:program.input_addr + blob.size] = blob
    machine.run(program.commands)
    n = int(np.prod(program.output_shape))
    out = machine.dram[program.output_addr:program.output_addr + n].view(np.int8)
    return out.reshape(program.output_shape).copy()
