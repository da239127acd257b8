"""The requantization contract of sim/arith.py, on which golden model and RTL agree."""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from hoarfrost.sim.arith import MULTIPLIER_BITS, quantize_multiplier, requantize, rounding_shift


@given(st.floats(min_value=1e-9, max_value=1e4, allow_nan=False))
def test_multiplier_represents_the_scale_to_16_bits(real):
    m, s = quantize_multiplier(real)
    assert 0 < m < 2**MULTIPLIER_BITS and s >= 0
    if s > 0 and m >= 2 ** (MULTIPLIER_BITS - 1):      # normalised: relative error <= 2**-16
        assert abs(m / 2**s - real) <= real * 2.0 ** -MULTIPLIER_BITS
    else:                                                # tiny or huge scales lose precision
        assert math.isclose(m / 2**s, real, rel_tol=2e-3)


def test_multiplier_examples():
    assert quantize_multiplier(0.5) == (1 << 15, 16)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(3.0) == (3 << 14, 14)
    with pytest.raises(ValueError):
        quantize_multiplier(-1.0)


def test_rounding_shift_rounds_half_up():
    values = np.array([5, 6, 7, -5, -6, -7, 2, -2])
    assert rounding_shift(values, 2).tolist() == [1, 2, 2, -1, -1, -2, 1, 0]
    assert rounding_shift(values, 0).tolist() == values.tolist()


def test_requantize_clamps_and_adds_zero_point():
    acc = np.array([-1000, 0, 100, 1000, 100000])
    y = requantize(acc, 1 << 15, 16, zero_point=-10, lo=-10, hi=100)
    assert y.dtype == np.int8
    assert y.tolist() == [-10, -10, 40, 100, 100]   # 100 * 0.5 = 50, -10 + 50 = 40
