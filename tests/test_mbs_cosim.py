"""Batch programs on the back end's Verilog in Verilator: layer by layer and MBS, bit-exact.

The back end is tests/test_backend_cosim.py's (2 KB scratchpad), so the Verilator build is
shared. Four CNN images do not fit it at once: layer by layer runs conv1 and conv2 in
sub-batches of two and spills their outputs; MBS runs conv1 -> conv2 -> pool in sub-batches
of two with only the pool's output going to DRAM. In both, each convolution's weights are
loaded into the weight cache once (LOADW) and every image's MATMUL streams them from there,
keeping the parameter buffer where it can. One cocotb run executes a whole batch
program under random DRAM stalls; the testbench checks all four outputs against the golden
model, and the DRAM bytes the RTL counts must be the compiler's traffic report plus the
firmware it fetched.
"""

import json

import numpy as np
import pytest
from amaranth.back import verilog

from hoarfrost.firmware.isa import WCACHE, Op
from hoarfrost.gen.batch import SCHEDULES, compile_batch
from hoarfrost.gen.compiler import CompileLimits
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.gen.traffic import dram_traffic
from hoarfrost.hw.backend import BackEnd
from hoarfrost.sim.batch_host import batch_dram
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.verilator import cocotb_run
from test_backend_cosim import CONFIG, PARAMS, SCRATCH

pytestmark = pytest.mark.cosim

BATCH = 4


def program_macs(program) -> int:
    """MACs the program's MATMULs ask for: ``mt * nt * K`` each."""
    geom, total = {}, 0
    for c in program.commands:
        if c.op == Op.GEOM:
            geom = dict(c.fields)
        elif c.op == Op.MATMUL:
            total += c.mt * c.nt * c.cg * geom["kh"] * geom["kw"]
    return total


def test_cnn_batch_of_four_both_schedules_on_the_back_end_rtl(examples, tmp_path):
    calib = np.load(examples / "digits_calib.npy")
    qgraph = quantize(import_onnx(examples / "digits_cnn.onnx"), calib, 8)
    x = quantize_input(qgraph, np.load(examples / "digits_test_x.npy")[:BATCH])
    expected = run_int(qgraph, x)
    limits = CompileLimits.for_backend(CONFIG, SCRATCH, PARAMS)
    programs = {s: compile_batch(qgraph, limits, BATCH, s) for s in SCHEDULES}
    assert [g["sub_batch"] for g in programs["layer"].groups] == [2, 2, 4, 4, 4]
    assert [g["sub_batch"] for g in programs["mbs"].groups] == [2, 4]

    design = verilog.convert(BackEnd(CONFIG, scratch_bytes=SCRATCH, param_depth=PARAMS),
                             name="backend")
    traffic = {}
    for schedule, program in programs.items():
        dram, firmware_addr = batch_dram(program, x)
        vectors = {"runs": 1, "stall_prob": 0.2, "max_cycles": 1_500_000,
                   "firmware_addr": firmware_addr, "output_addr": program.output_addr,
                   "output_len": BATCH * program.output_stride,
                   "dram_0": np.frombuffer(bytes(dram), dtype=np.uint8),
                   "expected_0": expected.reshape(-1)}
        run_dir = tmp_path / schedule
        run_dir.mkdir()
        np.savez(run_dir / "vectors.npz", **vectors)
        result = cocotb_run(design, "backend", "hoarfrost.sim.tb.backend_tb", seed=7,
                            env={"HOARFROST_VECTORS": str(run_dir / "vectors.npz"),
                                 "HOARFROST_RESULTS": str(run_dir / "results.json")})
        assert result.tests == 1 and result.failed == 0, result.log_tail()
        counters, = json.loads((run_dir / "results.json").read_text())
        assert np.array_equal(np.array(counters["output"], np.int8), expected.reshape(-1))
        t = traffic[schedule] = dram_traffic(program, CONFIG.rows, CONFIG.cols)
        assert counters["commands"] == len(program.commands)
        assert counters["dram_read_bytes"] == t["read_bytes"] + t["firmware_bytes"]
        assert counters["dram_write_bytes"] == t["written_bytes"]
        # the convolutions' tiles (conv1 2x3 of 16 bytes, conv2 4x18) enter the weight cache
        # once; every MATMUL streaming from it reads its whole tile
        assert counters["wcache_writes"] == sum(c.length for c in program.commands
                                                if c.op == Op.LOADW) == 96 + 1152
        assert counters["wcache_reads"] == sum(
            96 if c.cg == 1 else 1152 for c in program.commands
            if c.op == Op.MATMUL and c.w_addr & WCACHE) == BATCH * (96 + 1152)
        # four images' MACs (23680 each) plus the transposes of the fully connected output
        assert counters["macs_useful"] == program_macs(program) > BATCH * 23680
    # layer by layer spills conv1's and conv2's outputs (written and read back) and keeps the
    # pool's whole-batch output on chip; MBS keeps conv1's and conv2's and spills the pool's
    assert traffic["layer"]["spill_bytes"] == 2 * 4 * (512 + 256)
    assert traffic["mbs"]["spill_bytes"] == 2 * 4 * 64
    assert (traffic["layer"]["total_bytes"], traffic["mbs"]["total_bytes"]) == (8928, 3584)
