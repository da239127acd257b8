"""cocotb testbench for :class:`hoarfrost.hw.dram_bridge.BackEndAxi`: the back end on AXI4.

The top's only memory port is ``m_axi_*``; behind it is cocotbext-axi's ``AxiRam`` with the
read and write-response latency of :class:`hoarfrost.sim.tb.dma_tb.LatencyAxiRam` and, if asked,
random pauses on every AXI channel. Each run (image) loads its DRAM contents into the RAM,
starts the sequencer at the firmware, waits for ``done`` and then for the bridge to be idle
(every write in memory), and reads the output back from the RAM.

The ``.npz`` in ``$HOARFROST_VECTORS`` holds, per run, ``dram_<i>`` and optionally
``expected_<i>`` (the output bytes, checked here when present), and ``firmware_addr``,
``output_addr``, ``output_len``, ``runs``, ``max_cycles``, ``read_latency``,
``write_latency``, ``pause_prob``. The results file (``$HOARFROST_RESULTS``) gets, under
``runs``, one record per run: the back end's counters (``BACKEND_COUNTERS``), the bridge's
counters for that run (:data:`~hoarfrost.hw.dram_bridge.BRIDGE_COUNTERS`, as differences
from the run's start), ``drain_cycles`` (from ``done`` until the bridge was idle: writes still
on their way to memory) and ``output``.
"""

import random

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiBus

from hoarfrost.hw.backend import BACKEND_COUNTERS
from hoarfrost.hw.dram_bridge import BRIDGE_COUNTERS
from hoarfrost.sim.tb.common import CLOCK_NS, clock_and_reset, load_vectors, save_results
from hoarfrost.sim.tb.dma_tb import MEMORY_BYTES, LatencyAxiRam, wait_idle


def read_counters(dut, names) -> dict[str, int]:
    return {name: getattr(dut, name).value.to_unsigned() for name in names}


@cocotb.test()
async def firmware_runs_bit_exact_on_axi_ram(dut):
    """Each image's output in the AxiRam equals the golden model's, under latency and pauses."""
    v = load_vectors()
    rng = random.Random(cocotb.RANDOM_SEED)
    ram = LatencyAxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=MEMORY_BYTES,
                        read_latency=int(v["read_latency"]),
                        write_latency=int(v["write_latency"]))
    ram.pause_all(rng, float(v["pause_prob"]))
    await clock_and_reset(dut, low=("start",))
    out_addr, out_len = int(v["output_addr"]), int(v["output_len"])
    records = []
    for run in range(int(v["runs"])):
        ram.write(0, v[f"dram_{run}"].tobytes())
        before = read_counters(dut, BRIDGE_COUNTERS)
        dut.program_addr.value = int(v["firmware_addr"])
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        timeout = Timer(int(v["max_cycles"]) * CLOCK_NS, unit="ns")
        if await First(RisingEdge(dut.done), timeout) is timeout:
            raise AssertionError(f"run {run}: no END after {int(v['max_cycles'])} cycles")
        done_at = get_sim_time("ns")
        # The output STORE's last write response may still be on its way.
        await wait_idle(dut, dut.dram_busy, 1000)
        # END's own cycle is counted at the edge after `done`; read after two edges.
        await ClockCycles(dut.clk, 2)
        out = np.frombuffer(ram.read(out_addr, out_len), dtype=np.int8)
        if f"expected_{run}" in v:
            assert out.tolist() == v[f"expected_{run}"].tolist(), f"run {run}: output differs"
        after = read_counters(dut, BRIDGE_COUNTERS)
        record = read_counters(dut, BACKEND_COUNTERS)
        record.update({name: (after[name] - before[name]) % (1 << 32) for name in after})
        record["drain_cycles"] = int(get_sim_time("ns") - done_at) // CLOCK_NS - 2
        record["output"] = out.tolist()
        records.append(record)
    save_results("runs", records)
