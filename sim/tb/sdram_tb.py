"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.sdram.AxiSdram` on the checking
SDRAM chip model.

The chip is :class:`hoarfrost.sim.sdram_model.SdramChip` on the ``sdram__*`` ports (it raises,
failing the test, on any command or timing it would not accept); the manager is cocotbext-axi's
``AxiMaster`` on ``s_axi_*``, with random pauses on every AXI channel. Random writes at random
byte addresses and lengths (so partial first and last beats: WSTRB) and random reads are checked
against a reference image that starts as the chip's initial contents.

Configuration: JSON in ``$HOARFROST_SDRAM_CONFIG``: the :class:`SdramGeometry` and
:class:`SdramTiming` fields (``geometry``, ``timing`` dicts), ``operations``, ``pause_prob``,
``seed``. ``$HOARFROST_RESULTS`` receives the counters.
"""

from __future__ import annotations

import itertools
import json
import os
import random

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiMaster

from hoarfrost.hw.sdram import SdramGeometry, SdramTiming
from hoarfrost.sim.sdram_model import SdramChip, cocotb_coroutine
from hoarfrost.sim.tb.common import clock_and_reset, save_results


def pauses(rng: random.Random, prob: float):
    return (int(rng.random() < prob) for _ in itertools.count())


@cocotb.test()
async def random_traffic_reads_back_the_reference(dut):
    config = json.loads(os.environ["HOARFROST_SDRAM_CONFIG"])
    geometry = SdramGeometry(**config["geometry"])
    timing = SdramTiming(**config["timing"])
    rng = random.Random(config["seed"])
    chip = SdramChip(geometry, timing, seed=config["seed"])

    await clock_and_reset(dut, low=("s_axi_awvalid", "s_axi_wvalid", "s_axi_arvalid",
                                    "s_axi_bready", "s_axi_rready"))
    chip_task = cocotb.start_soon(cocotb_coroutine(chip, dut, dut.clk))
    master = AxiMaster(AxiBus.from_prefix(dut, "s_axi"), dut.clk, dut.rst)
    prob = config["pause_prob"]
    for channel in ("aw", "w", "b", "ar", "r"):
        getattr(master.write_if if channel in "awb" else master.read_if,
                f"{channel}_channel").set_pause_generator(pauses(rng, prob))
    while not int(dut.ready.value):
        await RisingEdge(dut.clk)

    # The reference: a window of the memory, starting as the chip's initial contents.
    base, span = 3 * (1 << (geometry.col_bits + 1)) - 200, 8192
    ref = bytearray()
    for word in range(base // 2, (base + span) // 2):
        ref += chip.initial(word).to_bytes(2, "little")
    for _ in range(config["operations"]):
        offset = rng.randrange(span - 1)
        length = rng.randint(1, min(600, span - offset))
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(length))
            await master.write(base + offset, data)
            ref[offset:offset + length] = data
        else:
            got = await master.read(base + offset, length)
            assert got.data == ref[offset:offset + length], f"read at {base + offset:#x}"
    got = await master.read(base, span)
    assert got.data == ref
    await ClockCycles(dut.clk, 4)
    chip_task.kill()
    save_results("random_traffic_reads_back_the_reference", {
        "refreshes": int(dut.refreshes.value), "read_beats": int(dut.read_beats.value),
        "write_beats": int(dut.write_beats.value), "chip_cycles": chip.cycle,
        "chip_counts": chip.counts})
