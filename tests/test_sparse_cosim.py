"""SparseMatVec's Verilog in Verilator (cocotb): bit-exact against golden_sparse on the example
MLP's compressed layers and on a random sparse matrix, under random backpressure."""

from pathlib import Path

import numpy as np
import pytest

from hoarfrost.gen.bench_sparse import (BUILD_ARGS, TESTBENCH, TOPLEVEL, verilog_of,
                                        write_vectors)
from hoarfrost.gen.ir import Dense
from hoarfrost.gen.sparse import compress_graph, random_activations, random_layer
from hoarfrost.sim.golden import run_int
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def cosim(tmp_path, layer, qin, enc, x, *, seed):
    """Both testbenches (backpressure, full speed) on one build; assert they pass."""
    vectors = tmp_path / "vectors.npz"
    write_vectors(vectors, layer, qin, enc, x, idle_prob=0.3, stall_prob=0.4)
    result = cocotb_run(verilog_of(layer, qin, enc), TOPLEVEL, TESTBENCH,
                        env={"HOARFROST_VECTORS": str(vectors)}, seed=seed,
                        build_args=BUILD_ARGS)
    assert result.tests == 2 and result.failed == 0, result.log_tail()


@pytest.mark.parametrize("layer_index", [0, 1])
def test_digits_mlp_sparse_layers(tmp_path, layer_index):
    # The example MLP quantized on its calibration set, every Gemm compressed into a 16-entry
    # codebook; 20 test digits through the chosen layer (the inputs it sees in the golden model).
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.quantize import quantize

    q = quantize(import_onnx(EXAMPLES / "digits_mlp.onnx"),
                 np.load(EXAMPLES / "digits_calib.npy"), 8)
    compressed, encodings = compress_graph(q, codebook_bits=4, pes=8)
    dense = [layer for layer in compressed.layers if isinstance(layer, Dense)][layer_index]
    values = run_int(compressed, np.load(EXAMPLES / "digits_test_x.npy")[:20], keep_all=True)
    x = values[dense.inputs[0]].reshape(20, -1)
    cosim(tmp_path, dense, compressed.quant[dense.inputs[0]], encodings[dense.name], x,
          seed=layer_index + 1)


def test_random_sparse_matrix(tmp_path):
    layer, qin, enc = random_layer(50, 40, 0.15, codebook_bits=3, pes=4, seed=9)
    x = random_activations(np.random.default_rng(10), 6, 40, 0.5, qin.zero_point)
    cosim(tmp_path, layer, qin, enc, x, seed=3)


def test_bench_sparse_reports_and_checks(capsys):
    # The same random layer as above (same Verilog, so the same cached build), through the
    # command line: outputs checked against golden_sparse, figures consistent with the counters.
    import json

    from hoarfrost.gen.cli import main

    assert main(["bench", "sparse", "--rows", "50", "--cols", "40", "--density", "0.15",
                 "--act-density", "0.5", "--pes", "4", "--codebook-bits", "3", "--seed", "9",
                 "--vectors", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["golden_match"] is True
    counters = summary["counters"]
    assert counters["skipped"] == 4 * 40 - 4 * 20
    assert summary["ideal_cycles"] == counters["macs"] / 4
    assert summary["dense_cycles"] == 4 * 50 * 40 / 4
    assert summary["busiest_pe_mac_cycles"] <= counters["busy_cycles"] <= summary["cycles"]
    assert summary["speedup_vs_dense"] == summary["dense_cycles"] / summary["cycles"] > 3
    assert 0 < summary["energy_vs_dense"] < 0.5
