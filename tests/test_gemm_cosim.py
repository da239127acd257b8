"""GemmEngine's Verilog in Verilator (cocotb): bit-exact under backpressure, modelled cycles."""

import json

import pytest
from amaranth.back import verilog

from hoarfrost.gen.bench_gemm import GEMM_BUILD_ARGS, bench_config
from hoarfrost.hw.gemm_engine import GemmEngine
from hoarfrost.sim.gemm_streams import random_gemm, reference_gemm
from hoarfrost.sim.tb.gemm_tb import write_vectors
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim


# A 4x4 array with sizes that are multiples of nothing (K spans ten K tiles, N three N tiles),
# and a non-square 2x3 array with 4-bit weights and M below the array size.
@pytest.mark.parametrize("rows, cols, weight_bits, m, n, k", [
    (4, 4, 8, 13, 10, 37),
    (2, 3, 4, 2, 7, 9),
])
def test_verilog_gemm_is_bit_exact_and_modelled(tmp_path, rows, cols, weight_bits, m, n, k):
    # One simulator run, two cocotb tests: random idle cycles on the three load streams and
    # random stalls on the output (C exact, events counted as modelled), then full rate (C
    # exact, cycles equal to the cycle model's). The bench builds the same design.
    config = bench_config(rows, cols, weight_bits, m, n, k)
    g = random_gemm(config, m, n, k, seed=m * n * k)
    expected = reference_gemm(g["a"], g["b"], g["bias"], g["zero_point"], config.acc_width)
    vectors = write_vectors(tmp_path / "vectors.npz", config, g, expected,
                            idle_prob=0.3, stall_prob=0.4)
    results = tmp_path / "results.json"

    result = cocotb_run(verilog.convert(GemmEngine(config), name="gemm_engine"), "gemm_engine",
                        "hoarfrost.sim.tb.gemm_tb", build_args=GEMM_BUILD_ARGS, seed=3,
                        env={"HOARFROST_VECTORS": str(vectors),
                             "HOARFROST_RESULTS": str(results)})
    assert result.tests == 2 and result.failed == 0, result.log_tail()

    measured = json.loads(results.read_text())
    stressed = measured["gemm_under_backpressure"]["counters"]
    full_rate = measured["gemm_at_full_rate"]["counters"]
    assert stressed["out_stall_cycles"] > 0 and stressed["stall_cycles"] > 0
    assert stressed["cycles"] > full_rate["cycles"]
    assert full_rate["macs_useful"] == stressed["macs_useful"] == m * n * k
