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


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_the_ice40_top_has_its_spram_on_the_ports_and_the_ecp5_top_keeps_the_axi_path():
    # (the iCE40 top runs the CNN, on yosys's model of the SPRAM, in test_board_cosim.py)
    from hoarfrost.gen.config import PRESETS
    from hoarfrost.hw.axi_sram import AxiSram
    from hoarfrost.hw.board import BoardTop
    from hoarfrost.hw.stream_sram import StreamSram

    ice40 = BoardTop(PRESETS["icebreaker"], clk_freq=12_000_000, family="ice40").elaborate(None)
    assert list(ice40._named_submodules) == ["link", "csr", "accel", "counters", "memory"]
    memory = ice40.submodules.memory
    assert isinstance(memory, StreamSram)
    assert (memory.size, memory.data_width, memory.spram) == (64 * 1024, 16, True)
    simulated = BoardTop(PRESETS["icebreaker"], clk_freq=12_000_000, family="ice40",
                         spram=False).elaborate(None)
    assert not simulated.submodules.memory.spram
    ecp5 = BoardTop(PRESETS["ulx3s-85f"], clk_freq=25_000_000, family="ecp5").elaborate(None)
    assert list(ecp5._named_submodules) == ["link", "csr", "accel", "bridge", "host_axi",
                                            "share", "memory"]
    assert isinstance(ecp5.submodules.memory, AxiSram)
    with pytest.raises(ValueError, match="^spram is for the ice40 only, not the ecp5$"):
        BoardTop(PRESETS["ulx3s-85f"], clk_freq=25_000_000, family="ecp5", spram=False)
    del ice40, simulated, ecp5, memory
    gc.collect()  # the blocks never elaborated warn when collected; let them here
