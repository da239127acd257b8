"""The DMA engines' Verilog in Verilator against cocotbext-axi's AxiRam (cocotb).

Random buffers go out through the write engine and come back through the read engine with
memory latency and random stalls on every AXI channel and on the DMA streams; through
``hoarfrost bench dram``, a long read at 20 cycles of latency sustains at least 90% of the bus's
peak bandwidth.
"""

import argparse
import json

import pytest

from hoarfrost.gen import bench_dram
from hoarfrost.hw.axi import convert
from hoarfrost.hw.axi_dma import DmaTestTop
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim


def run_dma_tb(tmp_path, *, data_width, testcase, seed=1, max_outstanding=4, **config):
    design = convert(DmaTestTop(data_width=data_width, max_outstanding=max_outstanding),
                     name="dma_top")
    results = tmp_path / "results.json"
    env = {"HOARFROST_DMA_CONFIG": json.dumps({"data_width": data_width, **config}),
           "HOARFROST_RESULTS": str(results)}
    result = cocotb_run(design, "dma_top", "hoarfrost.sim.tb.dma_tb", env=env,
                        testcase=testcase, seed=seed)
    assert result.failed == 0 and result.tests >= 1, result.log_tail()
    return json.loads(results.read_text()) if results.is_file() else {}


@pytest.mark.parametrize("data_width, read_latency, write_latency, seed", [
    (32, 5, 3, 1),
    (128, 30, 12, 2),
])
def test_write_then_read_back_with_latency_and_stalls(tmp_path, data_width, read_latency,
                                                      write_latency, seed):
    # Every AXI channel paused 30% of cycles, DMA streams stalled 30%: the memory holds every
    # beat written, the reads return them, and the counters equal the burst split's.
    tests = "write_then_read_back_under_stalls,memory_latencies_are_as_configured"
    got = run_dma_tb(tmp_path, data_width=data_width, seed=seed, testcase=tests,
                     read_latency=read_latency, write_latency=write_latency,
                     pause_prob=0.3, stall_prob=0.3)
    counters = got["write_then_read_back_under_stalls"]
    assert counters["read"]["mem_wait_cycles"] > 0 and counters["write"]["mem_wait_cycles"] > 0


def test_bench_long_read_sustains_90_percent_of_peak_at_20_cycles_latency():
    # `hoarfrost bench dram --data-width 32 --beats 4096`: with four 256-beat bursts in flight
    # only the first request's latency shows, so both directions run near one beat per cycle.
    summary, text = bench_dram.run(argparse.Namespace(latency=20, beats=4096, data_width=32,
                                                      outstanding=4, seed=0))
    read, write = summary["read"], summary["write"]
    assert summary["data_equal"] and read["bytes"] == write["bytes"] == 4096 * 4
    assert read["fraction_of_peak"] >= 0.9 and write["fraction_of_peak"] >= 0.9
    assert read["bytes_per_cycle"] == read["bytes"] / read["busy_cycles"]
    # One cycle to plan the first request, then its 20 cycles of latency; nothing else.
    assert read["mem_wait_cycles"] == 1 + 20
    assert read["busy_cycles"] == 4096 + 21
    # 640 pJ per 32 bits moved in each direction.
    assert summary["energy_pj"]["dram_read32"] == pytest.approx(4096 * 640.0)
    assert summary["energy_pj"]["dram_write32"] == pytest.approx(4096 * 640.0)
    assert "mini-batch" in summary["notes"] and "of peak" in text
