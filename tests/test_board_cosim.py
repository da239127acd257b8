"""End to end on the board's top: the host driver, over the UART, runs the CNN bit-exact.

The same :class:`~hoarfrost.firmware.host.AsyncDevice` code a board's serial port runs (and
``hoarfrost run``) writes the weights, the firmware and each image through the framed UART
protocol into the on-chip memory, starts the accelerator through the control registers, waits
for done and reads back the output and the counters. Four Verilator builds: the default
configuration's back end alone, on on-chip memory and on the ULX3S's SDRAM (AxiSdram on the
checking chip model), the iCEBreaker's top (its configuration; its memory StreamSram on the
two SPRAMs, run on yosys's model of the primitive), and all three stages from a compiled OUT (the CNN's first convolution
frozen in front of the back end, its pixels sent by ``STREAM``, and its last layer on a sparse
engine behind it), elaborated from OUT as ``hoarfrost build`` does.
"""

import json

import numpy as np
import pytest

from hoarfrost.firmware.isa import encode
from hoarfrost.gen.build import accelerator_parts
from hoarfrost.gen.cli import main
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.config import PRESETS, HardwareConfig
from hoarfrost.gen.ir import macs
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.outdir import read_manifest
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.run_board import board_image
from hoarfrost.gen.traffic import dram_traffic
from hoarfrost.hw.axi import convert
from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.golden_sparse import SparseCounts, sparse_dense_int
from hoarfrost.sim.tb.board_tb import BoardCosimTop, spram_model
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim

CONFIG = PRESETS["default"]


def _run_on_board_top(design, tmp_path, *, memory="onchip", **vectors) -> dict:
    np.savez(tmp_path / "vectors.npz", **vectors)
    verilog = convert(design, name="board")
    if "SB_SPRAM256KA" in verilog:       # the iCE40's memory: the primitive's model with it
        verilog += spram_model()
    result = cocotb_run(verilog, "board", "hoarfrost.sim.tb.board_tb",
                        env={"HOARFROST_VECTORS": str(tmp_path / "vectors.npz"),
                             "HOARFROST_RESULTS": str(tmp_path / "results.json"),
                             "HOARFROST_BOARD_MEMORY": memory})
    assert result.tests == 1 and result.failed == 0, result.log_tail()
    record = json.loads((tmp_path / "results.json").read_text())[
        "driver_runs_the_model_on_the_board_top"]
    assert record["resends"] == 0
    return record


@pytest.mark.parametrize("family, memory", [("ecp5", "onchip"), ("ecp5", "sdram"),
                                            ("ice40", "onchip")])
def test_the_driver_runs_the_cnn_through_the_uart_bit_exact(family, memory, examples, tmp_path):
    config = PRESETS["icebreaker"] if family == "ice40" else CONFIG
    calib = np.load(examples / "digits_calib.npy")
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), calib, 8)
    program = compile_graph(qgraph, CompileLimits.for_backend(
        config.backend, config.scratch_bytes, config.param_depth))
    # one image on the SDRAM (its chip model steps in Python every cycle, slowing the run 2x)
    # and on the iCE40's top (its own Verilator build; the ECP5's runs two)
    x = quantize_input(qgraph, np.load(examples / "digits_test_x.npy")[
        :2 if (family, memory) == ("ecp5", "onchip") else 1])
    golden = run_int(qgraph, x).reshape(len(x), -1)
    _, firmware_addr = dram_image(program, x[0])
    out_len = int(np.prod(program.output_shape))
    record = _run_on_board_top(
        BoardCosimTop(config, memory=memory, family=family), tmp_path, memory=memory,
        weights=np.frombuffer(program.image, dtype=np.uint8),
        firmware=np.frombuffer(encode(program.commands), dtype=np.uint8),
        images=x.reshape(len(x), -1), input_addr=program.input_addr,
        output_addr=program.output_addr, output_len=out_len, firmware_addr=firmware_addr,
        serial=int(config.backend.serial))
    if memory == "sdram":      # the chip model saw the traffic and raised on nothing
        assert record["sdram_commands"]["MODE"] == 1
        assert record["sdram_commands"]["READ"] > 0 and record["sdram_commands"]["WRITE"] > 0
    traffic = dram_traffic(program, config.backend.rows, config.backend.cols)
    firmware_bytes = traffic["firmware_bytes"]
    for run, want in zip(record["runs"], golden):
        assert np.array(run["output"], dtype=np.uint8).view(np.int8).tolist() == want.tolist()
        c = run["counters"]
        assert c["dram_read_bytes"] == traffic["read_bytes"] + firmware_bytes
        assert c["dram_write_bytes"] == out_len
        assert c["macs_useful"] == sum(macs(layer, qgraph.shapes) for layer in qgraph.layers)
        assert c["link_crc_errors"] == 0 and c["uart_errors"] == 0
        # the host saw the run end no earlier than the accelerator's own cycle count
        assert run["host_cycles"] >= c["cycles"]


def test_frozen_front_end_back_end_and_sparse_engine_through_the_uart_bit_exact(examples,
                                                                               tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--freeze", "1", "--sparse", "1",
                 "-o", str(out)]) == 0
    manifest = read_manifest(out)
    specs, engines = accelerator_parts(out, manifest)
    assert len(specs) == 1 and len(engines) == 1
    graph = import_onnx(out / "model_q.onnx")
    x = quantize_input(graph, np.load(examples / "digits_test_x.npy")[:2])
    values = run_int(graph, x, keep_all=True)
    golden = values[graph.output].reshape(len(x), -1)
    d = manifest["dram"]
    assert d["input_addr"] is None           # the image streams into the frozen block
    record = _run_on_board_top(
        BoardCosimTop(HardwareConfig.from_json(manifest["config"]), specs, engines), tmp_path,
        weights=np.frombuffer((out / "weights.bin").read_bytes(), dtype=np.uint8),
        firmware=np.frombuffer((out / "firmware.bin").read_bytes(), dtype=np.uint8),
        images=np.stack([np.frombuffer(board_image(manifest, image), dtype=np.uint8)
                         for image in x]),
        input_addr=-1, output_addr=d["output_addr"], output_len=d["output_bytes"],
        firmware_addr=d["firmware_addr"], sparse_engines=len(engines))
    out_pixels = specs[-1].out_height * specs[-1].out_width
    enc, layer, q_in = engines[0]
    for i, (run, want) in enumerate(zip(record["runs"], golden)):
        assert np.array(run["output"], dtype=np.uint8).view(np.int8).tolist() == want.tolist()
        c = run["counters"]
        # the frozen block's and the engine's counters run on across images: the engine's
        # MACs and skipped activations are golden_sparse's events on images 0 .. i
        assert c["frozen_out_pixels"] == (i + 1) * out_pixels
        events = SparseCounts()
        sparse_dense_int(values[layer.inputs[0]][:i + 1].reshape(i + 1, -1), enc, layer, q_in,
                         events)
        assert (c["sparse0_macs"], c["sparse0_skipped"]) == (events.macs, events.skipped)
        assert c["link_crc_errors"] == 0 and c["uart_errors"] == 0
