"""The back end's Verilog in Verilator: compiled firmware on the example models, bit-exact."""

import json

import numpy as np
import pytest

from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.traffic import dram_traffic
from hoarfrost.gen.outdir import backend_verilog
from hoarfrost.hw.config import BackendConfig
from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim

CONFIG = BackendConfig(rows=4, cols=4, a_depth=512, w_depth=8, acc_depth=64)
SCRATCH, PARAMS = 2048, 32


def run_on_verilator(qgraph, x_int8, tmp_path, stall_prob=0.2, config=CONFIG, scratch=SCRATCH,
                     params=PARAMS):
    limits = CompileLimits.for_backend(config, scratch, params)
    program = compile_graph(qgraph, limits)
    expected = run_int(qgraph, x_int8)
    vectors = {"runs": len(x_int8), "stall_prob": stall_prob, "max_cycles": 400_000,
               "output_addr": program.output_addr, "output_len": int(np.prod(program.output_shape))}
    for i, x in enumerate(x_int8):
        dram, firmware_addr = dram_image(program, x)
        vectors[f"dram_{i}"] = np.frombuffer(bytes(dram), dtype=np.uint8)
        vectors[f"expected_{i}"] = expected[i].reshape(-1)
    vectors["firmware_addr"] = firmware_addr
    np.savez(tmp_path / "vectors.npz", **vectors)
    # (the serial back end on a serial configuration, as compile writes it)
    design = backend_verilog(config, scratch, params)
    result = cocotb_run(design, "backend", "hoarfrost.sim.tb.backend_tb",
                        env={"HOARFROST_VECTORS": str(tmp_path / "vectors.npz"),
                             "HOARFROST_RESULTS": str(tmp_path / "results.json")}, seed=3)
    assert result.tests == 1 and result.failed == 0, result.log_tail()
    return program, json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize("model", ["digits_cnn", "digits_mlp"])
def test_example_models_on_the_back_end_rtl(examples, model, tmp_path):
    calib = np.load(examples / "digits_calib.npy")
    qgraph = quantize(import_onnx(examples / f"{model}.onnx"), calib, 8)
    x = quantize_input(qgraph, np.load(examples / "digits_test_x.npy")[:3])
    program, counters = run_on_verilator(qgraph, x, tmp_path)
    macs = sum(int(l.weight_q.size * (np.prod(qgraph.shapes[l.output][1:]) if l.op == "conv" else 1))
               for l in qgraph.layers if l.op in ("conv", "dense"))
    traffic = dram_traffic(program, CONFIG.rows, CONFIG.cols)
    from test_backend import expected_counters
    expected = expected_counters(program, CONFIG)
    for c in counters:
        assert c["commands"] == len(program.commands)
        assert {name: c[name] for name in expected} == expected
        assert c["macs_useful"] == macs
        assert c["dram_write_bytes"] == traffic["written_bytes"] == 10
        # the compiler's traffic report is what the RTL moves, firmware fetch included
        assert c["dram_read_bytes"] == traffic["read_bytes"] + traffic["firmware_bytes"]
    # batch 1, every feature map on chip: within 1.1x of the compulsory minimum (issue 6)
    assert traffic["ratio"] <= 1.1


@pytest.mark.parametrize("seed, preset", [(5, None), (6, None), (7, "icebreaker")])
def test_random_networks_on_the_back_end_rtl(seed, preset, tmp_path):
    """Random geometry (kernel, stride, padding, depthwise), pooling and residual adds; on the
    iCEBreaker preset too (the serial back end: compact fields, narrow indices and counters,
    the saturating requantizer with held parameters)."""
    from hoarfrost.gen.config import PRESETS
    from test_backend import tiny_network
    rng = np.random.default_rng(seed)
    qgraph, rng = tiny_network(seed, pool=["MaxPool", "AveragePool"][seed % 2], residual=True,
                               depthwise=bool(seed % 2))
    x = quantize_input(qgraph, rng.normal(0, 1, (2, 2, 5, 5)).astype(np.float32))
    board = PRESETS[preset] if preset else None
    sizes = (dict(config=board.backend, scratch=board.scratch_bytes, params=board.param_depth)
             if board else {})
    program, counters = run_on_verilator(qgraph, x, tmp_path, stall_prob=0.4, **sizes)
    assert all(c["commands"] == len(program.commands) for c in counters)
