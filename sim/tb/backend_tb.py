"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.backend.BackEnd`.

The ``.npz`` in ``$HOARFROST_VECTORS`` holds, per run (image), the DRAM contents ``dram_<i>``
and optionally the expected output bytes ``expected_<i>`` (checked here when present), and
``firmware_addr``, ``output_addr``, ``output_len``, ``runs``, ``stall_prob``, ``max_cycles``.
The DRAM is a Python model behind the back end's byte streams, with random stalls on every
stream. The JSON file in ``$HOARFROST_RESULTS`` gets one record per run: the counters of
:data:`BACKEND_COUNTERS`, ``output`` (the output bytes as read back from DRAM) and
``command_starts``: the ``cycles`` counter at the moment the ``commands`` counter reached
``i + 1``, i.e. when command ``i``'s header had been fetched (a per-command cycle trace).

The top may be the :class:`~hoarfrost.hw.accelerator.Accelerator` with a frozen front end:
then the vectors also hold ``pixels_<i>``, image ``i`` as ``(H*W, C)`` raster-order pixels,
and ``pixel_idle_prob``. One driver streams every image's pixels into ``pixels`` from the
start, with random gaps; the frozen block and the firmware's ``RECV`` give the backpressure,
and the frozen block works on the next image while the back end finishes one. Each record
then also has the frozen block's counters (:data:`~hoarfrost.hw.accelerator.FROZEN_COUNTERS`,
running totals since reset). With ``sparse_engines`` (a count) in the vectors, the records also
have the sparse engines' counters (:func:`~hoarfrost.hw.accelerator.sparse_counter_names`,
running totals likewise).
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge, Timer, ValueChange

from hoarfrost.hw.accelerator import FROZEN_COUNTERS, sparse_counter_names
from hoarfrost.hw.backend import BACKEND_COUNTERS
from hoarfrost.sim.streams import StreamDriver
from hoarfrost.sim.tb.frozen_tb import pack_pixel

CLOCK_NS = 10


class DramModel:
    """Serves ``rd_cmd``/``rd_data`` and ``wr_cmd``/``wr_data`` from a bytearray."""

    def __init__(self, dut, rng: random.Random, stall_prob: float):
        self.dut, self.rng, self.stall_prob = dut, rng, stall_prob
        self.memory = bytearray()
        self.reader = StreamDriver(dut, "rd_data", dut.clk, rng, stall_prob)
        dut.rd_cmd__ready.value = 0
        dut.wr_cmd__ready.value = 0
        dut.wr_data__ready.value = 0

    def stall(self) -> bool:
        return self.stall_prob > 0 and self.rng.random() < self.stall_prob

    async def request(self, prefix: str) -> tuple[int, int]:
        """Accept one ``{addr, length}`` request on ``<prefix>``."""
        valid = getattr(self.dut, f"{prefix}__valid")
        ready = getattr(self.dut, f"{prefix}__ready")
        payload = getattr(self.dut, f"{prefix}__payload")
        while True:
            if not self.stall_prob and not valid.value:
                # Without stalls, sleep until a request comes instead of waking every cycle
                # (most cycles have none; this roughly halves the simulation's Python work).
                await RisingEdge(valid)
            take = not self.stall()
            ready.value = int(take)
            await ReadOnly()
            if take and valid.value:
                raw = payload.value.to_unsigned()
                await RisingEdge(self.dut.clk)
                ready.value = 0
                return raw & 0xFFFF_FFFF, raw >> 32
            await RisingEdge(self.dut.clk)

    async def serve_reads(self):
        while True:
            addr, length = await self.request("rd_cmd")
            await self.reader.send(self.memory[addr:addr + length])

    async def serve_writes(self):
        dut = self.dut
        while True:
            addr, length = await self.request("wr_cmd")
            received = 0
            while received < length:
                take = not self.stall()
                dut.wr_data__ready.value = int(take)
                await ReadOnly()
                if take and dut.wr_data__valid.value:
                    self.memory[addr + received] = dut.wr_data__payload.value.to_unsigned()
                    received += 1
                await RisingEdge(dut.clk)
            dut.wr_data__ready.value = 0


@cocotb.test()
async def firmware_runs_bit_exact(dut):
    """Each image's output in DRAM equals the golden model's, under random DRAM stalls."""
    with np.load(os.environ["HOARFROST_VECTORS"]) as npz:
        v = {name: npz[name] for name in npz.files}
    rng = random.Random(cocotb.RANDOM_SEED)
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dram = DramModel(dut, rng, float(v["stall_prob"]))
    cocotb.start_soon(dram.serve_reads())
    cocotb.start_soon(dram.serve_writes())
    dut.start.value = 0
    frozen = "pixels_0" in v
    if frozen:
        pixels = StreamDriver(dut, "pixels", dut.clk, rng, float(v["pixel_idle_prob"]))
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    if frozen:
        await RisingEdge(dut.clk)
        beats = [pack_pixel(p) for run in range(int(v["runs"])) for p in v[f"pixels_{run}"]]
        cocotb.start_soon(pixels.send(beats))
    results = []
    out_addr, out_len = int(v["output_addr"]), int(v["output_len"])
    for run in range(int(v["runs"])):
        dram.memory[:] = v[f"dram_{run}"].tobytes()
        dut.program_addr.value = int(v["firmware_addr"])
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        starts = []
        deadline = get_sim_time("ns") + int(v["max_cycles"]) * CLOCK_NS
        # Wake only when a command starts or the program ends, not every cycle.
        while True:
            timeout = Timer(max(1, deadline - get_sim_time("ns")), unit="ns")
            fired = await First(RisingEdge(dut.done), ValueChange(dut.commands), timeout)
            if fired is timeout:
                raise AssertionError(f"run {run}: no END after {int(v['max_cycles'])} cycles")
            if dut.done.value:
                break
            # Both counters are registers updated on the same edge, so this pair is consistent.
            # Matching len + 1 skips the previous run's count before the start clears it.
            if dut.commands.value.to_unsigned() == len(starts) + 1:
                starts.append(dut.cycles.value.to_unsigned())
        # `done` rose just after the edge into END; END's own cycle is counted at the next
        # edge, and a read just after an edge shows the values from before it: wait two.
        await ClockCycles(dut.clk, 2)
        out = np.frombuffer(bytes(dram.memory[out_addr:out_addr + out_len]), dtype=np.int8)
        if f"expected_{run}" in v:
            assert out.tolist() == v[f"expected_{run}"].tolist(), f"run {run}: output differs"
        names = (BACKEND_COUNTERS + (FROZEN_COUNTERS if frozen else ())
                 + sparse_counter_names(int(v.get("sparse_engines", 0))))
        record = {name: getattr(dut, name).value.to_unsigned() for name in names}
        record["command_starts"] = starts
        record["output"] = out.tolist()
        results.append(record)
    with open(os.environ["HOARFROST_RESULTS"], "w") as f:
        json.dump(results, f)
