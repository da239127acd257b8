"""End to end on the board's top: the host driver, over the UART, runs the CNN bit-exact.

The same :class:`~hoarfrost.firmware.host.AsyncDevice` code a board's serial port runs writes
the weights, the firmware and each image through the framed UART protocol into the on-chip
memory, starts the accelerator through the control registers, waits for done and reads back the
output and the counters. Three Verilator builds: the default configuration's back end, and the
same with the CNN's first convolution frozen in front of it, its pixels sent by ``STREAM``;
and the first with its memory in the ULX3S's SDRAM (AxiSdram) on the checking chip model.
"""

import json

import numpy as np
import pytest

from hoarfrost.firmware.isa import encode
from hoarfrost.gen.compiler import CompileLimits, compile_graph, compile_streamed
from hoarfrost.gen.config import PRESETS
from hoarfrost.gen.ir import macs
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.outdir import frozen_partition
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.traffic import dram_traffic
from hoarfrost.hw.axi import convert
from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.rtl_run import raster_pixels
from hoarfrost.sim.tb.board_tb import BoardCosimTop
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim

CONFIG = PRESETS["default"]


@pytest.mark.parametrize("freeze, memory", [(0, "onchip"), (1, "onchip"), (0, "sdram")])
def test_the_driver_runs_the_cnn_through_the_uart_bit_exact(freeze, memory, examples,
                                                            tmp_path):
    calib = np.load(examples / "digits_calib.npy")
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), calib, 8)
    limits = CompileLimits.for_backend(CONFIG.backend, CONFIG.scratch_bytes, CONFIG.param_depth)
    # one image on the SDRAM: its chip model steps in Python every cycle, slowing the run 2x
    x = quantize_input(qgraph, np.load(examples / "digits_test_x.npy")[:1 if memory == "sdram"
                                                                         else 2])
    golden = run_int(qgraph, x).reshape(len(x), -1)
    if freeze:
        frozen, specs, _, back = frozen_partition(qgraph, freeze)
        program = compile_streamed(back, limits)
        images = np.stack([raster_pixels(image).reshape(-1) for image in x])
    else:
        specs, program = (), compile_graph(qgraph, limits)
        images = x.reshape(len(x), -1)
    _, firmware_addr = dram_image(program, x[0])
    out_len = int(np.prod(program.output_shape))
    np.savez(tmp_path / "vectors.npz",
             weights=np.frombuffer(program.image, dtype=np.uint8),
             firmware=np.frombuffer(encode(program.commands), dtype=np.uint8),
             images=images, input_addr=-1 if freeze else program.input_addr,
             output_addr=program.output_addr, output_len=out_len, firmware_addr=firmware_addr)
    design = convert(BoardCosimTop(CONFIG, specs, memory=memory), name="board")
    result = cocotb_run(design, "board", "hoarfrost.sim.tb.board_tb",
                        env={"HOARFROST_VECTORS": str(tmp_path / "vectors.npz"),
                             "HOARFROST_RESULTS": str(tmp_path / "results.json"),
                             "HOARFROST_BOARD_MEMORY": memory})
    assert result.tests == 1 and result.failed == 0, result.log_tail()
    record = json.loads((tmp_path / "results.json").read_text())[
        "driver_runs_the_model_on_the_board_top"]
    assert record["resends"] == 0
    if memory == "sdram":      # the chip model saw the traffic and raised on nothing
        assert record["sdram_commands"]["MODE"] == 1
        assert record["sdram_commands"]["READ"] > 0 and record["sdram_commands"]["WRITE"] > 0
    traffic = dram_traffic(program, CONFIG.backend.rows, CONFIG.backend.cols)
    firmware_bytes = traffic["firmware_bytes"]
    back_end_layers = qgraph.layers[len(frozen):] if freeze else qgraph.layers
    for i, (run, want) in enumerate(zip(record["runs"], golden)):
        assert np.array(run["output"], dtype=np.uint8).view(np.int8).tolist() == want.tolist()
        c = run["counters"]
        assert c["dram_read_bytes"] == traffic["read_bytes"] + firmware_bytes
        assert c["dram_write_bytes"] == out_len
        assert c["macs_useful"] == sum(macs(layer, qgraph.shapes) for layer in back_end_layers)
        if freeze:      # the frozen block's counters run on across images
            out_pixels = specs[-1].out_height * specs[-1].out_width
            assert c["frozen_out_pixels"] == (i + 1) * out_pixels
        assert c["link_crc_errors"] == 0 and c["uart_errors"] == 0
        # the host saw the run end no earlier than the accelerator's own cycle count
        assert run["host_cycles"] >= c["cycles"]
