"""Host side of :class:`hoarfrost.hw.gemm_engine.GemmEngine`: tiling operands into stream beats.

The engine takes its operands already tiled and padded (the order is in the engine's module
docstring); these functions produce exactly that order from numpy matrices, reassemble C from
the output beats, and compute the reference result with numpy. Testbenches in amaranth.sim and
cocotb, and the bench, all use them, so there is one definition of the stream format in software.
"""

from __future__ import annotations

import math

import numpy as np

from hoarfrost.hw.config import BackendConfig

__all__ = ["random_gemm", "reference_gemm", "gemm_beats", "assemble_output", "pack_rows",
           "unpack_rows"]


def random_gemm(config: BackendConfig, m: int, n: int, k: int, seed: int) -> dict:
    """Random operands over the full ranges: int8 A, ``weight_bits`` B, a zero point, a bias."""
    rng = np.random.default_rng(seed)
    w = config.weight_bits
    return {
        "a": rng.integers(-128, 128, (m, k), dtype=np.int64),
        "b": rng.integers(-(1 << w - 1), 1 << w - 1, (k, n), dtype=np.int64),
        "bias": rng.integers(-(1 << 20), 1 << 20, n, dtype=np.int64),
        "zero_point": int(rng.integers(-128, 128)),
    }


def reference_gemm(a, b, bias, zero_point: int, acc_width: int = 32) -> np.ndarray:
    """``(a - zero_point) @ b + bias`` in int64, wrapped to ``acc_width`` bits as the RTL does."""
    acc = (np.asarray(a, np.int64) - zero_point) @ np.asarray(b, np.int64) + np.asarray(bias)
    half = 1 << acc_width - 1
    return (acc + half) % (1 << acc_width) - half


def gemm_beats(config: BackendConfig, a, b, bias) -> dict[str, np.ndarray]:
    """The beats of ``a_stream``, ``b_stream`` and ``bias_stream``, each a 2-D int64 array
    (one row of element values per beat)."""
    m, k = a.shape
    n = b.shape[1]
    R, C = config.rows, config.cols
    kt, nt = math.ceil(k / R), math.ceil(n / C)
    a_pad = np.zeros((m, kt * R), np.int64)
    a_pad[:, :k] = a
    b_pad = np.zeros((kt * R, nt * C), np.int64)
    b_pad[:k, :n] = b
    bias_pad = np.zeros(nt * C, np.int64)
    bias_pad[:n] = bias
    # a: for each K tile, for each row m -> (kt, m, R)
    a_beats = a_pad.reshape(m, kt, R).transpose(1, 0, 2).reshape(kt * m, R)
    # b: for each N tile, for each K tile, for each row r -> (nt, kt*R, C)
    b_beats = b_pad.reshape(kt * R, nt, C).transpose(1, 0, 2).reshape(nt * kt * R, C)
    return {"a": a_beats, "b": b_beats, "bias": bias_pad.reshape(nt, C)}


def assemble_output(cols: int, beats, m: int, n: int) -> np.ndarray:
    """C[m, n] from the ``o_stream`` beats (one row of ``cols`` results each, N tile major)."""
    C = cols
    nt = math.ceil(n / C)
    beats = np.asarray(beats, np.int64)
    if beats.shape != (nt * m, C):
        raise ValueError(f"expected {nt * m} output beats of {C}, got shape {beats.shape}")
    return beats.reshape(nt, m, C).transpose(1, 0, 2).reshape(m, nt * C)[:, :n]


def pack_rows(values, width: int) -> list[int]:
    """Pack each row of ``values`` into one integer, element ``i`` at bit ``i * width``
    (an ``ArrayLayout`` payload), negative elements in two's complement."""
    values = np.asarray(values, np.int64)
    mask = (1 << width) - 1
    out = []
    for row in values.tolist():
        raw = 0
        for i, v in enumerate(row):
            raw |= (v & mask) << (i * width)
        out.append(raw)
    return out


def unpack_rows(raws, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_rows` for signed elements: (len(raws), count) int64."""
    mask = (1 << width) - 1
    half = 1 << width - 1
    out = np.empty((len(raws), count), np.int64)
    for j, raw in enumerate(raws):
        for i in range(count):
            v = (raw >> (i * width)) & mask
            out[j, i] = v - (1 << width) if v >= half else v
    return out
