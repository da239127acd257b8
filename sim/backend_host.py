"""Host side of the back end in simulation: DRAM contents, the DRAM model, and results.

:func:`dram_image` lays out one DRAM for a compiled program (weights, parameters, I/O, then the
firmware); :func:`amaranth_dram` is an amaranth.sim testbench serving the back end's DRAM byte
streams from it, with random stalls on every stream; :func:`run_in_amaranth` runs a program on
a back end with both.
"""

from __future__ import annotations

import random

import numpy as np

from hoarfrost.firmware.isa import encode


def dram_image(program, x_int8: np.ndarray) -> tuple[bytearray, int]:
    """DRAM holding ``program`` with input ``x_int8`` (one image); returns (dram, firmware addr).

    A program whose input arrives by ``RECV`` (``input_addr`` None) has no input in DRAM;
    ``x_int8`` is ignored then."""
    firmware = encode(program.commands)
    base = -(-program.dram_bytes // 4) * 4
    dram = bytearray(base + len(firmware))
    dram[:len(program.image)] = program.image
    if program.input_addr is not None:
        blob = np.ascontiguousarray(x_int8, dtype=np.int8).tobytes()
        dram[program.input_addr:program.input_addr + len(blob)] = blob
    dram[base:] = firmware
    return dram, base


def read_output(program, dram: bytearray) -> np.ndarray:
    n = int(np.prod(program.output_shape))
    out = np.frombuffer(bytes(dram[program.output_addr:program.output_addr + n]), dtype=np.int8)
    return out.reshape(program.output_shape).copy()


def amaranth_dram(dut, dram: bytearray, *, seed: int = 0, stall_prob: float = 0.0):
    """Two testbench coroutines (reads, writes) serving ``dut``'s DRAM streams from ``dram``."""
    rng = random.Random(seed)

    def stall():
        return stall_prob and rng.random() < stall_prob

    async def reads(ctx):
        while True:
            ctx.set(dut.rd_cmd.ready, 0 if stall() else 1)
            *_, valid, ready, addr, length = await ctx.tick().sample(
                dut.rd_cmd.valid, dut.rd_cmd.ready, dut.rd_cmd.payload.addr, dut.rd_cmd.payload.length)
            if not (valid and ready):
                continue
            ctx.set(dut.rd_cmd.ready, 0)
            for i in range(length):
                while stall():
                    ctx.set(dut.rd_data.valid, 0)
                    await ctx.tick()
                ctx.set(dut.rd_data.payload, dram[addr + i])
                ctx.set(dut.rd_data.valid, 1)
                await ctx.tick().until(dut.rd_data.ready)
            ctx.set(dut.rd_data.valid, 0)

    async def writes(ctx):
        while True:
            ctx.set(dut.wr_cmd.ready, 1)
            *_, valid, addr, length = await ctx.tick().sample(
                dut.wr_cmd.valid, dut.wr_cmd.payload.addr, dut.wr_cmd.payload.length)
            if not valid:
                continue
            ctx.set(dut.wr_cmd.ready, 0)
            for i in range(length):
                ready = not stall()
                ctx.set(dut.wr_data.ready, ready)
                *_, v, byte = await ctx.tick().sample(dut.wr_data.valid, dut.wr_data.payload)
                while not (v and ready):
                    ready = not stall()
                    ctx.set(dut.wr_data.ready, ready)
                    *_, v, byte = await ctx.tick().sample(dut.wr_data.valid, dut.wr_data.payload)
                dram[addr + i] = byte & 0xFF
            ctx.set(dut.wr_data.ready, 0)

    return reads, writes


def run_in_amaranth(dut, program, x_int8: np.ndarray, counters, *, seed: int = 0,
                    stall_prob: float = 0.0, max_cycles: int = 50_000, feature_port=None,
                    idle_prob: float = 0.0, trace: bool = False, read=read_output):
    """Run ``program`` on ``dut`` (a :class:`~hoarfrost.hw.backend.BackEnd` or a top with its
    ports) in amaranth.sim with input ``x_int8``: the DRAM model (:func:`amaranth_dram`, random
    stalls ``stall_prob``), a watchdog of ``max_cycles``, and with ``feature_port`` the input
    streamed into it pixel by pixel (``C`` lanes a beat, raster order, random idle cycles).

    Returns ``(read(program, dram), {counter: value}, starts)``: the counters named in
    ``counters`` after ``END``, and with ``trace`` the ``cycles`` counter's value as each
    command was fetched (as the cocotb testbench traces commands; else ``[]``)."""
    from amaranth.sim import Simulator

    from hoarfrost.sim.streams import stream_put

    dram, firmware_addr = dram_image(program, x_int8)
    result, starts = {}, []

    async def host(ctx):
        ctx.set(dut.program_addr, firmware_addr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        if trace:
            while True:
                # both counters are registers stepped on the same edge: a consistent pair
                *_, done, commands, cycles = await ctx.tick().sample(dut.done, dut.commands,
                                                                     dut.cycles)
                if commands == len(starts) + 1:
                    starts.append(cycles)
                if done:
                    break
        else:
            await ctx.tick().until(dut.done)
        await ctx.tick()            # the counters take in END's own cycle at this edge
        result.update({name: ctx.get(getattr(dut, name)) for name in counters})

    async def watchdog(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
        raise AssertionError(f"the back end did not reach END in {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    reads, writes = amaranth_dram(dut, dram, seed=seed, stall_prob=stall_prob)
    # The DRAM model, the watchdog and the pixels run in the background: the run ends with
    # the host.
    for background in (reads, writes, watchdog):
        sim.add_testbench(background, background=True)
    if feature_port is not None:
        async def pixels(ctx):
            rng = random.Random(seed)
            for beat in x_int8.reshape(x_int8.shape[0], -1).T:        # raster order, C lanes
                await stream_put(ctx, feature_port, [int(v) for v in beat], rng=rng,
                                 idle_prob=idle_prob)
        sim.add_testbench(pixels, background=True)
    sim.add_testbench(host)
    sim.run()
    return read(program, dram), result, starts
