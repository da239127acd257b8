"""The back end on AXI4 (BackEndAxi) in Verilator, with cocotbext-axi's AxiRam as its DRAM.

The example CNN, compiled for the default configuration, runs from an AxiRam with memory
latency and random pauses on every AXI channel: its outputs equal the golden model's bit for
bit, the bridge moves exactly the program's DRAM traffic on its byte side, and on the bus the
beats that cover each of the back end's requests. Without pauses, raising the memory latency
costs each request the extra latency at most once. One Verilator build (32-bit bus).
"""

import json

import numpy as np
import pytest

from hoarfrost.firmware.isa import FIELDS
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.gen.config import PRESETS
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.traffic import dram_traffic
from hoarfrost.hw.axi import convert
from hoarfrost.hw.dram_bridge import BackEndAxi
from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.verilator import cocotb_run
from test_dram_bridge import back_end_requests, covering_beats

pytestmark = pytest.mark.cosim

CONFIG = PRESETS["default"]
DATA_WIDTH = 32
BYTES_PER_BEAT = DATA_WIDTH // 8


@pytest.fixture(scope="module")
def cnn(examples):
    """The example CNN compiled for the default configuration, three test images, golden."""
    calib = np.load(examples / "digits_calib.npy")
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), calib, 8)
    program = compile_graph(qgraph, CompileLimits.for_backend(
        CONFIG.backend, CONFIG.scratch_bytes, CONFIG.param_depth))
    x = quantize_input(qgraph, np.load(examples / "digits_test_x.npy")[:3])
    return program, x, run_int(qgraph, x)


def run_on_axi_ram(cnn, tmp_path, images, *, read_latency, write_latency, pause_prob, seed=1):
    program, x, golden = cnn
    vectors = {"runs": len(images), "max_cycles": 200_000, "output_addr": program.output_addr,
               "output_len": int(np.prod(program.output_shape)), "read_latency": read_latency,
               "write_latency": write_latency, "pause_prob": pause_prob}
    for run, i in enumerate(images):
        dram, vectors["firmware_addr"] = dram_image(program, x[i])
        vectors[f"dram_{run}"] = np.frombuffer(bytes(dram), dtype=np.uint8)
        vectors[f"expected_{run}"] = golden[i].reshape(-1)
    np.savez(tmp_path / "vectors.npz", **vectors)
    design = convert(BackEndAxi(CONFIG.backend, scratch_bytes=CONFIG.scratch_bytes,
                                param_depth=CONFIG.param_depth, data_width=DATA_WIDTH),
                     name="backend_axi")
    result = cocotb_run(design, "backend_axi", "hoarfrost.sim.tb.axi_backend_tb", seed=seed,
                        env={"HOARFROST_VECTORS": str(tmp_path / "vectors.npz"),
                             "HOARFROST_RESULTS": str(tmp_path / "results.json")})
    assert result.tests == 1 and result.failed == 0, result.log_tail()
    records = json.loads((tmp_path / "results.json").read_text())["runs"]
    for record, i in zip(records, images):
        assert record["output"] == golden[i].reshape(-1).tolist()
    return vectors["firmware_addr"], records


def test_cnn_on_axi_ram_is_bit_exact_with_latency_and_pauses(cnn, tmp_path):
    # 20 cycles of read latency, 12 of write-response latency, every AXI channel paused 30%
    # of cycles: the outputs equal the golden model's, and the counters are the program's.
    program, _, _ = cnn
    firmware_addr, records = run_on_axi_ram(cnn, tmp_path, [0, 1], read_latency=20,
                                            write_latency=12, pause_prob=0.3)
    traffic = dram_traffic(program, CONFIG.backend.rows, CONFIG.backend.cols)
    reads, writes = back_end_requests(program, firmware_addr, CONFIG.backend.rows,
                                      CONFIG.backend.cols)
    for c in records:
        assert c["commands"] == len(program.commands)
        # Byte side: what the compiler's traffic report says the program moves.
        assert c["rd_port_bytes"] == c["dram_read_bytes"] == (traffic["read_bytes"]
                                                              + traffic["firmware_bytes"])
        assert c["wr_port_bytes"] == c["dram_write_bytes"] == traffic["written_bytes"] == 10
        assert sum(n for _, n in reads) == c["rd_port_bytes"]
        # Bus side: the beats covering each request, whole beats of bytes.
        assert c["rd_requests"] == len(reads) and c["wr_requests"] == len(writes) == 1
        assert c["rd_beats"] == sum(covering_beats(a, n, BYTES_PER_BEAT) for a, n in reads)
        assert c["wr_beats"] == sum(covering_beats(a, n, BYTES_PER_BEAT) for a, n in writes)
        assert c["rd_bytes"] == BYTES_PER_BEAT * c["rd_beats"]
        assert c["wr_bytes"] == BYTES_PER_BEAT * c["wr_beats"]
        assert c["rd_errors"] == c["wr_errors"] == 0
        for side in ("rd", "wr"):
            assert c[f"{side}_busy_cycles"] == (c[f"{side}_beats"] + c[f"{side}_stall_cycles"]
                                                + c[f"{side}_mem_wait_cycles"])
        assert c["rd_mem_wait_cycles"] > 20 * len(reads) // 2
        # By END the output is in memory: the SYNC after the STORE was fetched only once the
        # write response had come back.
        assert c["drain_cycles"] == 0


def test_memory_latency_shows_once_per_request_at_most(cnn, tmp_path):
    # No pauses; read and write latency 2 (AxiRam's least), then 20. Requests the bridge has
    # taken overlap in the memory, so 18 more cycles of latency cost each of the back end's
    # requests at most 18 cycles, not 18 per burst or per beat; the command fetches cannot
    # overlap anything (the sequencer waits for each), so they cost at least that.
    program, _, _ = cnn
    cycles = {}
    for latency in (2, 20):
        (tmp_path / str(latency)).mkdir()
        firmware_addr, records = run_on_axi_ram(cnn, tmp_path / str(latency), [0],
                                                read_latency=latency, write_latency=latency,
                                                pause_prob=0.0)
        cycles[latency] = records[0]["cycles"]
    reads, writes = back_end_requests(program, firmware_addr, CONFIG.backend.rows,
                                      CONFIG.backend.cols)
    fetches = sum(1 + bool(FIELDS[c.op]) for c in program.commands)
    assert 18 * fetches <= cycles[20] - cycles[2] <= 18 * (len(reads) + len(writes))
