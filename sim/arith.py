"""The integer arithmetic contract shared by the golden model, the compiler and the RTL.

Every requantization in hoarfrost, in software or in hardware, is exactly::

    y = clamp(zero_point + ((acc * multiplier + (1 << (shift - 1))) >> shift), lo, hi)

with ``acc`` a wide signed integer (int32 accumulator), ``multiplier`` a positive integer of at
most ``MULTIPLIER_BITS`` bits (a real scale normalised into ``[2**(B-1), 2**B)``), ``>>`` an
arithmetic (floor) shift, so the rounding is half-up. ``shift`` is 0 only when the real scale is
too large to normalise, in which case no rounding term is added. No floats reach the hardware.
"""

from __future__ import annotations

import math

import numpy as np

#: Bits of the requantization multiplier. 16 bits keep the product ``acc * multiplier`` at
#: 48 bits (one DSP-sized multiply on ECP5/iCE40 for the 16-bit operand) and its relative error
#: at 2**-15, far below the 1 LSB that the golden model may differ from onnxruntime.
MULTIPLIER_BITS = 16
#: Largest shift produced; keeps ``acc * multiplier + round`` inside int64 in numpy.
MAX_SHIFT = 62 - MULTIPLIER_BITS

INT8_MIN, INT8_MAX = -128, 127


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Write a positive real scale as ``multiplier / 2**shift``.

    Returns ``(multiplier, shift)`` with ``2**(B-1) <= multiplier < 2**B`` where possible.
    A scale of 0 gives ``(0, 0)``.
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"requantization scale must be finite and >= 0, not {real!r}")
    if real == 0:
        return 0, 0
    mantissa, exponent = math.frexp(real)          # real = mantissa * 2**exponent, 0.5 <= m < 1
    multiplier = round(mantissa * (1 << MULTIPLIER_BITS))
    shift = MULTIPLIER_BITS - exponent
    if multiplier == 1 << MULTIPLIER_BITS:          # rounding carried out of the top bit
        multiplier >>= 1
        shift -= 1
    if shift > MAX_SHIFT:                           # tiny scale: lose low bits of the multiplier
        multiplier = round(multiplier / (1 << (shift - MAX_SHIFT)))
        shift = MAX_SHIFT
    if shift < 0:                                   # huge scale: keep an integer multiplier
        multiplier <<= -shift
        shift = 0
    return int(multiplier), int(shift)


def rounding_shift(value: np.ndarray, shift) -> np.ndarray:
    """``(value + 2**(shift-1)) >> shift`` elementwise, on int64; ``shift`` may broadcast."""
    value = np.asarray(value, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(value + half, shift)


def requantize(acc, multiplier, shift, zero_point, lo=INT8_MIN, hi=INT8_MAX) -> np.ndarray:
    """Scale an integer accumulator back to int8; see the module docstring for the formula.

    ``multiplier``/``shift`` broadcast against ``acc`` (per output channel: shape ``(C, 1, 1)``
    for NCHW tensors, ``(C,)`` for ``(N, C)``). ``lo``/``hi`` carry a fused ReLU/ReLU6.
    """
    acc = np.asarray(acc, dtype=np.int64)
    scaled = rounding_shift(acc * np.asarray(multiplier, dtype=np.int64), shift)
    return np.clip(scaled + zero_point, lo, hi).astype(np.int8)
