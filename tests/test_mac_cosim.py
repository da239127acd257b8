"""MacUnit's Verilog in Verilator (cocotb): the same dot products as numpy, and a cached build."""

import numpy as np
import pytest
from amaranth.back import verilog

from hoarfrost.hw.mac import MacUnit
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim


def write_vectors(path, *, weight_bits, seed, count=30, max_len=10,
                  idle_prob=0.3, stall_prob=0.5):
    """Random beats for ``count`` vectors and numpy's dot products, as ``mac_tb`` reads them."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, count)
    beats = int(lengths.sum())
    a = rng.integers(-128, 128, beats)
    b = rng.integers(-(1 << weight_bits - 1), 1 << weight_bits - 1, beats)
    last = np.zeros(beats, dtype=np.int64)
    ends = np.cumsum(lengths)
    last[ends - 1] = 1
    products = a.astype(np.int64) * b.astype(np.int64)
    expected = np.add.reduceat(products, ends - lengths)
    np.savez(path, a=a, b=b, last=last, expected=expected, weight_bits=weight_bits,
             idle_prob=idle_prob, stall_prob=stall_prob)
    return path


@pytest.mark.parametrize("weight_bits", [2, 8])
def test_verilog_matches_numpy_and_is_built_once(tmp_path, weight_bits):
    design = verilog.convert(MacUnit(weight_bits=weight_bits), name="mac_unit")
    vectors = write_vectors(tmp_path / "vectors.npz", weight_bits=weight_bits, seed=11)
    env = {"HOARFROST_VECTORS": str(vectors)}

    first = cocotb_run(design, "mac_unit", "hoarfrost.sim.tb.mac_tb", env=env, seed=1)
    assert first.failed == 0 and first.tests >= 2, first.log_tail()

    # Same design, new stimulus: the simulator binary is reused, not rebuilt.
    vectors = write_vectors(tmp_path / "vectors2.npz", weight_bits=weight_bits, seed=12)
    second = cocotb_run(design, "mac_unit", "hoarfrost.sim.tb.mac_tb",
                        env={"HOARFROST_VECTORS": str(vectors)}, seed=2)
    assert second.failed == 0 and second.tests >= 2, second.log_tail()
    assert second.cache_hit is True
    assert second.build_dir == first.build_dir
    assert second.results_xml != first.results_xml
