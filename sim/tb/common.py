"""Pieces every cocotb testbench here shares: vectors in, results out, clock and reset."""

from __future__ import annotations

import json
import os

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

#: Clock period of every testbench (Amaranth's Verilog has no timescale of its own).
CLOCK_NS = 10


def load_vectors() -> dict:
    """The arrays of the ``.npz`` named by ``$HOARFROST_VECTORS``."""
    with np.load(os.environ["HOARFROST_VECTORS"]) as npz:
        return {name: npz[name] for name in npz.files}


def save_results(test: str, results: dict) -> None:
    """Merge ``results`` under ``test`` into the JSON file named by ``$HOARFROST_RESULTS``."""
    path = os.environ.get("HOARFROST_RESULTS")
    if not path:
        return
    existing = json.loads(open(path).read()) if os.path.exists(path) else {}
    existing[test] = results
    with open(path, "w") as f:
        json.dump(existing, f)


async def clock_and_reset(dut, *, low=()) -> None:
    """Start the clock, hold ``rst`` for three cycles with the inputs in ``low`` at 0, and
    return just after the first edge out of reset."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    for name in low:
        getattr(dut, name).value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
