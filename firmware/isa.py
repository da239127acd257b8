"""The back end's command-stream ISA: what the compiler emits and the sequencer executes.

The machine
-----------
* **DRAM**: bytes, holding the weight image (weights, biases, requantization tables, written
  by the compiler) and the input/output tensors.
* **Scratchpad**: on-chip activation SRAM, bytes. Feature maps live here as int8 in CHW order
  (per image), at offsets the compiler allocates. CHW makes Flatten/Reshape free.
* **Feature stream** (a back end built with ``stream_channels = C > 0``): pixels of the
  frozen front end's output, one per beat, raster order, ``C`` signed int8 lanes (lane ``c`` =
  channel ``c``), taken by ``RECV``.
* **Weight cache** (a back end built with ``weight_cache_bytes > 0``): on-chip bytes that
  ``LOADW`` fills and a ``MATMUL`` may stream its weights from instead of DRAM, so a weight
  tile used by several ``MATMUL`` commands (several images, several pixel tiles) is read from DRAM
  once. A ``MATMUL``'s ``w_addr = WCACHE | offset`` (bit 31 set) reads from its byte ``offset``.
* **Parameter buffer**: the per-channel records of the last ``MATMUL`` that loaded them (a
  ``POOL`` with a table overwrites it).
* **Sparse engines** (a back end built with ``sparse_engines = E > 0``): ``E`` zero-skipping
  engines (:class:`~hoarfrost.hw.sparse_matvec.SparseMatVec`), each holding one compressed
  fully connected layer on chip; ``SEND`` streams an input vector to one, ``RECVS`` takes its
  results back.
* **Geometry registers**: set by ``GEOM``, read by the next ``MATMUL``/``POOL``s: the input
  feature map's shape, the window (kernel, stride, padding, dilation) and the output's shape.

Commands (every field unsigned unless noted; ``*_addr`` are DRAM byte addresses, ``src``/
``dst`` scratchpad byte offsets):

========  =================================================================================
LOAD      ``dram_addr, dst, length``: DRAM -> scratchpad.
LOADW     ``dram_addr, dst, length``: DRAM -> weight cache (``dst`` a byte offset in it).
STORE     ``src, dram_addr, length``: scratchpad -> DRAM.
GEOM      ``in_c, in_h, in_w, out_h, out_w, kh, kw, sh, sw, pad_top, pad_left, pad_bottom,
          pad_right, dh, dw``. Window positions outside the input read as padding.
MATMUL    ``src, dst, zp_in (signed), c0, cg, m0, mt, n0, nt, w_addr, p_addr, lo, hi (signed),
          zp_out (signed)``: for output pixels ``m0 .. m0+mt-1`` (raster order) and output
          channels ``n0 .. n0+nt-1``: gather the window of input channels ``c0 .. c0+cg-1``
          (im2col, ``K = cg*kh*kw``; padding reads as ``zp_in``), ``acc = sum((x - zp_in) *
          w) + bias`` with the int8 weights at ``w_addr`` in the systolic array's order (see
          :func:`weight_tiles`), then ``clamp(zp_out + rounding_shift(acc * mult, shift), lo, hi)`` with
          per-channel ``bias (int32), mult (uint32), shift (uint32)`` triples at ``p_addr``.
          A fully connected layer is the 1x1 case. ``w_addr = WCACHE | offset`` streams the
          weights from the weight cache; ``p_addr = KEEP_PARAMS`` uses the parameter buffer
          as the last parameter-loading ``MATMUL`` left it (the same triples are not read
          again; no ``POOL`` with a table may run in between).
POOL      ``src, dst, kind, zp_in (signed), lo_in, hi_in (signed), p_addr, zp_out (signed)``:
          ``kind`` 0 = max, 1 = average counting input elements only, 2 = average counting
          the explicit padding too (ONNX ``count_include_pad``), for all ``in_c`` channels.
          Max: clamp to ``[lo_in, hi_in]`` (a standalone ReLU is a 1x1 max pool), then if
          ``p_addr`` is not 0xFFFFFFFF rescale by the ``mult, shift`` pair there. Average:
          ``sum(x - zp_in)`` over the window, rescaled by the ``mult, shift`` pair indexed by
          the window's element count in the table at ``p_addr``.
ADD       ``src_a, src_b, dst, length, zp_a, zp_b, mult_a, mult_b, shift, zp_out, lo, hi``:
          ``clamp(zp_out + rounding_shift((a - zp_a) * mult_a + (b - zp_b) * mult_b,
          shift), lo, hi)`` elementwise.
RECV      ``dst, pixels``: take ``pixels`` beats from the feature stream into the scratchpad as
          a CHW feature map: ``scratch[dst + c * pixels + p]`` = lane ``c`` of beat ``p``.
          Waits for beats that have not arrived (the frozen front end computes them).
SEND      ``src, length, engine``: stream ``scratch[src .. src+length-1]`` (int8, one a beat)
          into sparse engine ``engine``'s input, ``last`` on the final byte: one input vector
          of a compressed fully connected layer (a back end built with ``sparse_engines``).
RECVS     ``dst, length, engine``: take ``length`` int8 results of sparse engine ``engine``
          into ``scratch[dst .. dst+length-1]``. Waits for results not yet computed.
SYNC      wait until every earlier command has finished (DMA included).
END       the program is done.
========  =================================================================================

Encoding: a command is a header word ``op << 24 | field count`` followed by one 32-bit
little-endian word per field, in the order listed (signed fields two's complement). Fixed
field order keeps the sequencer's decoder a counter and a register file. A back end built with
compact fields (small FPGAs) keeps only the bits each field can need (:func:`field_bits`); the
compiler checks a program against them (:func:`check_compact_fields`).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class Op(enum.IntEnum):
    LOAD = 1
    STORE = 2
    GEOM = 3
    MATMUL = 4
    POOL = 5
    ADD = 6
    SYNC = 7
    END = 8
    RECV = 9
    LOADW = 10
    SEND = 11
    RECVS = 12


#: Field names of each command, in encoding order. Names in SIGNED are two's complement.
FIELDS: dict[Op, tuple[str, ...]] = {
    Op.LOAD: ("dram_addr", "dst", "length"),
    Op.STORE: ("src", "dram_addr", "length"),
    Op.GEOM: ("in_c", "in_h", "in_w", "out_h", "out_w", "kh", "kw", "sh", "sw",
              "pad_top", "pad_left", "pad_bottom", "pad_right", "dh", "dw"),
    Op.MATMUL: ("src", "dst", "zp_in", "c0", "cg", "m0", "mt", "n0", "nt", "w_addr", "p_addr",
                "lo", "hi", "zp_out"),
    Op.POOL: ("src", "dst", "kind", "zp_in", "lo_in", "hi_in", "p_addr", "zp_out"),
    Op.ADD: ("src_a", "src_b", "dst", "length", "zp_a", "zp_b", "mult_a", "mult_b", "shift",
             "zp_out", "lo", "hi"),
    Op.SYNC: (),
    Op.END: (),
    Op.RECV: ("dst", "pixels"),
    Op.LOADW: ("dram_addr", "dst", "length"),
    Op.SEND: ("src", "length", "engine"),
    Op.RECVS: ("dst", "length", "engine"),
}
SIGNED = frozenset({"zp_in", "zp_out", "zp_a", "zp_b", "lo", "hi", "lo_in", "hi_in"})
NO_PARAMS = 0xFFFF_FFFF
#: ``MATMUL.p_addr``: keep the parameter buffer's records (see the table above).
KEEP_PARAMS = NO_PARAMS
#: ``MATMUL.w_addr`` bit: the weights are in the weight cache at the low 31 bits.
WCACHE = 1 << 31
POOL_MAX, POOL_AVG, POOL_AVG_PAD = 0, 1, 2

#: What each field holds, which sets the bits a back end built with compact fields keeps of
#: it (:func:`field_bits`): ``dram`` byte addresses and lengths in DRAM, ``scratch`` scratchpad
#: byte offsets, ``index`` shapes, counts and positions (as the geometry registers),
#: ``value`` signed activation values (zero points, clamps), ``word`` 32-bit operands, ``small``
#: selectors and shift amounts. ``LOADW.dst``, an offset in the weight cache, is ``dram``.
FIELD_KINDS: dict[str, str] = {
    **dict.fromkeys(("dram_addr", "w_addr", "p_addr", "length"), "dram"),
    **dict.fromkeys(("src", "dst", "src_a", "src_b"), "scratch"),
    **dict.fromkeys(("zp_in", "zp_out", "zp_a", "zp_b", "lo", "hi", "lo_in", "hi_in"), "value"),
    **dict.fromkeys(("mult_a", "mult_b"), "word"),
    **dict.fromkeys(("kind", "shift", "engine"), "small"),
    **dict.fromkeys(("in_c", "in_h", "in_w", "out_h", "out_w", "kh", "kw", "sh", "sw", "pad_top",
                     "pad_left", "pad_bottom", "pad_right", "dh", "dw", "c0", "cg", "m0", "mt",
                     "n0", "nt", "pixels"), "index"),
}
#: Bits kept of each kind that does not depend on the configuration.
KIND_BITS = {"value": 16, "word": 32, "small": 8}


def field_bits(op: Op, name: str, *, dram_bits: int, scratch_bits: int, weight_cache: bool,
               index_bits: int = 16) -> int:
    """Bits of field ``name`` of ``op`` that a back end with compact fields keeps: DRAM
    addresses in ``dram_bits`` (``MATMUL.w_addr`` all 32 with a weight cache, for its ``WCACHE``
    bit), scratchpad offsets in ``scratch_bits``, shapes and counts in ``index_bits``. A signed
    field keeps its value two's complement in that many bits; ``NO_PARAMS``/``KEEP_PARAMS`` is
    kept as all ones."""
    kind = "dram" if (op, name) == (Op.LOADW, "dst") else FIELD_KINDS[name]
    if kind == "dram":
        return 32 if (op, name) == (Op.MATMUL, "w_addr") and weight_cache else dram_bits
    if kind == "index":
        return index_bits
    return scratch_bits if kind == "scratch" else KIND_BITS[kind]


def check_compact_fields(commands: list[Command], *, dram_bits: int, scratch_bits: int,
                         weight_cache: bool, index_bits: int = 16) -> None:
    """Raise :class:`IsaError` naming the first field whose value a back end with compact fields
    would not keep (see :func:`field_bits`)."""
    for index, command in enumerate(commands):
        for name, value in command.fields:
            bits = field_bits(command.op, name, dram_bits=dram_bits, scratch_bits=scratch_bits,
                              weight_cache=weight_cache, index_bits=index_bits)
            if name == "p_addr" and value == NO_PARAMS:
                continue
            if name == "p_addr" and value == (1 << bits) - 1:
                raise IsaError(f"command {index} ({command.op.name}): p_addr = {value} reads "
                               f"as NO_PARAMS in the back end's {bits}-bit field")
            lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in SIGNED
                      else (0, (1 << bits) - 1))
            if not lo <= value <= hi:
                raise IsaError(f"command {index} ({command.op.name}): {name} = {value} does not "
                               f"fit the back end's {bits}-bit field")


class IsaError(ValueError):
    """A malformed command or program (bad field, value out of range, unknown op)."""


@dataclass(frozen=True)
class Command:
    """One command: its op and its fields by name."""

    op: Op
    fields: tuple[tuple[str, int], ...]

    @classmethod
    def make(cls, op: Op, **fields: int) -> "Command":
        names = FIELDS[op]
        if set(fields) != set(names):
            missing, extra = set(names) - set(fields), set(fields) - set(names)
            raise IsaError(f"{op.name}: missing fields {sorted(missing)}, unknown {sorted(extra)}")
        for name, value in fields.items():
            lo, hi = (-(2**31), 2**31 - 1) if name in SIGNED else (0, 2**32 - 1)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise IsaError(f"{op.name}.{name} = {value!r} does not fit in 32 bits")
        return cls(op, tuple((name, int(fields[name])) for name in names))

    def __getattr__(self, name):
        for key, value in self.fields:
            if key == name:
                return value
        raise AttributeError(name)

    def words(self) -> list[int]:
        return [(self.op << 24) | len(self.fields)] + [v & 0xFFFF_FFFF for _, v in self.fields]

    def text(self) -> str:
        return " ".join([self.op.name.lower()] + [f"{k}={v}" for k, v in self.fields])


def encode(commands: list[Command]) -> bytes:
    """The binary command stream (little-endian 32-bit words)."""
    words = [w for c in commands for w in c.words()]
    return struct.pack(f"<{len(words)}I", *words)


def decode(blob: bytes) -> list[Command]:
    """Commands from a binary stream; raises :class:`IsaError` on anything malformed."""
    if len(blob) % 4:
        raise IsaError(f"command stream of {len(blob)} bytes is not a whole number of words")
    words = struct.unpack(f"<{len(blob) // 4}I", blob)
    commands, i = [], 0
    while i < len(words):
        op_code, count = words[i] >> 24, words[i] & 0xFF
        try:
            op = Op(op_code)
        except ValueError:
            raise IsaError(f"word {i}: unknown op code {op_code}") from None
        names = FIELDS[op]
        if count != len(names) or i + 1 + count > len(words):
            raise IsaError(f"word {i}: {op.name} needs {len(names)} fields, header says {count}")
        values = {}
        for name, word in zip(names, words[i + 1:i + 1 + count]):
            values[name] = word - (1 << 32) if name in SIGNED and word >= 1 << 31 else word
        commands.append(Command.make(op, **values))
        i += 1 + count
    return commands


def assemble(text: str) -> list[Command]:
    """Commands from assembly text: one ``op field=value ...`` per line, ``#`` comments."""
    commands = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        mnemonic, *pairs = line.split()
        try:
            op = Op[mnemonic.upper()]
        except KeyError:
            raise IsaError(f"line {number}: unknown command {mnemonic!r}") from None
        fields = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep:
                raise IsaError(f"line {number}: expected field=value, got {pair!r}")
            try:
                fields[name] = int(value, 0)
            except ValueError:
                raise IsaError(f"line {number}: {name} = {value!r} is not an integer") from None
        try:
            commands.append(Command.make(op, **fields))
        except IsaError as exc:
            raise IsaError(f"line {number}: {exc}") from None
    return commands


def disassemble(commands: list[Command]) -> str:
    return "\n".join(c.text() for c in commands) + "\n"


def weight_tiles(weight, rows: int, cols: int):
    """Lay out an ``(nt, K)`` weight matrix as the array consumes it.

    For each tile of ``cols`` output channels, for each tile of ``rows`` K indexes, for each
    ``r < rows``: the ``cols`` weights ``W[n, k]`` of that row, zero past ``nt`` or ``K``. One
    contiguous read then feeds the array's weight stream without any address arithmetic.
    Returns an int8 array of ``ceil(nt/cols) * ceil(K/rows) * rows * cols`` entries.
    """
    import numpy as np
    weight = np.asarray(weight)
    nt, k = weight.shape
    n_tiles, k_tiles = -(-nt // cols), -(-k // rows)
    padded = np.zeros((n_tiles * cols, k_tiles * rows), dtype=np.int8)
    padded[:nt, :k] = weight
    # (nT, cols, kT, rows) -> (nT, kT, rows, cols)
    return padded.reshape(n_tiles, cols, k_tiles, rows).transpose(0, 2, 3, 1).reshape(-1)


def weight_untiles(blob, nt: int, k: int, rows: int, cols: int):
    """The ``(nt, K)`` matrix back from :func:`weight_tiles`' layout."""
    import numpy as np
    n_tiles, k_tiles = -(-nt // cols), -(-k // rows)
    tiles = np.asarray(blob, dtype=np.int8).reshape(n_tiles, k_tiles, rows, cols)
    return tiles.transpose(0, 3, 1, 2).reshape(n_tiles * cols, k_tiles * rows)[:nt, :k]
