"""Blocks of the board top in amaranth.sim (the whole top runs in tests/test_board_cosim.py)."""

import gc
import random

import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.board import PixelPacker


@pytest.mark.parametrize("channels", [1, 3, 8])
def test_pixel_packer_gathers_each_pixels_bytes_into_one_beat_under_backpressure(channels):
    rng = random.Random(channels)
    pixels = [[rng.randrange(-128, 128) for _ in range(channels)] for _ in range(20)]
    data = [v & 0xFF for pixel in pixels for v in pixel]
    dut = PixelPacker(channels)
    got = []

    async def producer(ctx):
        for byte in data:
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, byte)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)
            await ctx.tick().repeat(1 + rng.randrange(3))

    async def consumer(ctx):
        while len(got) < len(pixels):
            ready = rng.random() < 0.5
            ctx.set(dut.o_stream.ready, ready)
            *_, valid, payload = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid and ready:
                got.append([payload[c] for c in range(channels)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert got == pixels


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_pixel_packer_needs_a_channel():
    with pytest.raises(ValueError, match="^Channels must be a positive integer, not 0$"):
        PixelPacker(0)
    gc.collect()  # the refused block warns when collected; let it here
