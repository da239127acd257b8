"""``hoarfrost bench gemm``: bad options are one-line errors; the run reports modelled figures."""

import json

import pytest

from hoarfrost.gen.bench_gemm import bench_config
from hoarfrost.gen.cli import main
from hoarfrost.hw.config import ICE40_ARRAY, ICEBREAKER, ULX3S
from hoarfrost.sim.cycle_model import compute_phase_bound, predict_gemm


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0", "--cols", "4", "--m", "4", "--n", "4", "--k", "4"], "--rows must be"),
    (["--rows", "32", "--cols", "32", "--m", "4", "--n", "4", "--k", "4"], "1024 PEs"),
    (["--rows", "4", "--cols", "4", "--m", "4", "--n", "-1", "--k", "4"], "--n must be"),
    (["--rows", "4", "--cols", "4", "--m", "4", "--n", "4", "--k", "4",
      "--weight-bits", "3"], "--weight-bits must be 8, 4 or 2"),
])
def test_bad_options_are_one_line_errors(capsys, argv, message):
    assert main(["bench", "gemm", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_model_meets_the_targets_on_the_benchmarked_shapes():
    # What the bench is measured against (the RTL equals the model in test_gemm_engine and
    # test_gemm_cosim): 64x64x64 on 8x8 keeps the array over 90% busy across the whole run,
    # loads and drain included, and a 4x4x4 GEMM on 4x4 computes within 4n - 3 cycles.
    big = predict_gemm(bench_config(8, 8, 8, 64, 64, 64), 64, 64, 64)
    assert big.cycles == 4186 and big.utilization > 0.97
    small = predict_gemm(bench_config(4, 4, 8, 4, 4, 4), 4, 4, 4)
    assert small.compute_cycles == 12 <= compute_phase_bound(4)


def test_presets_differ_from_the_default_only_where_they_say():
    assert (ICE40_ARRAY.rows, ICE40_ARRAY.cols, ULX3S.rows, ULX3S.cols) == (2, 2, 8, 8)
    assert ICE40_ARRAY.acc_width == ULX3S.acc_width == ICEBREAKER.acc_width == 32
    with pytest.raises(ValueError, match="exceeds the accumulator bank depth 64"):
        ICE40_ARRAY.check_gemm(65, 1, 1)
    # the iCEBreaker's preset: the serial back end with the array's savings, narrower
    assert (ICEBREAKER.rows, ICEBREAKER.cols, ICEBREAKER.serial) == (1, 1, True)
    assert (ICEBREAKER.dram_addr_bits, ICEBREAKER.index_bits, ICEBREAKER.a_depth) == (16, 12, 512)


@pytest.mark.cosim
def test_bench_reports_measured_equal_to_predicted(capsys):
    # The same 4x4 design as test_gemm_cosim, so its Verilator build is shared.
    assert main(["bench", "gemm", "--rows", "4", "--cols", "4", "--m", "4", "--n", "4",
                 "--k", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["result_equals_numpy"] is True
    assert summary["cycles"] == summary["predicted_cycles"] == 22
    assert summary["compute_cycles"] == 12 <= summary["compute_bound_4n_minus_3"] == 13
    assert summary["counters"]["macs_useful"] == 64
    assert summary["energy_pj"]["mul8"] == pytest.approx(64 * 0.2)
