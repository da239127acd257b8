"""DMA engines in amaranth.sim against a Python AXI4 memory with latency and random stalls.

Commands are split into INCR bursts of at most 256 beats that never cross 4 KB; every beat
read equals memory, every beat written lands at its address; the counters add up.
"""

import gc
import random

import pytest
from amaranth.sim import Simulator

from hoarfrost.hw.axi import MAX_BURST_BEATS, AxiSignature, verilog_ports
from hoarfrost.hw.axi_dma import (AxiReadDma, AxiWriteDma, BurstSplitter, DmaTestTop,
                                  split_bursts)
from hoarfrost.sim.axi_model import AxiMemoryModel
from hoarfrost.sim.streams import stream_get, stream_put

#: Lengths the brief names: one beat, around one full burst, several bursts.
LENGTHS = [1, 255, 256, 257, 1000]


def start_addresses(bytes_per_beat):
    """Beat-aligned but otherwise awkward starts: 0, just below a 4 KB boundary, odd beats."""
    return [0, 4096 - 3 * bytes_per_beat, 0x1234 // bytes_per_beat * bytes_per_beat]


def covering_commands(bytes_per_beat, seed):
    """Each of :data:`LENGTHS` once, from the awkward starts in turn (rotated by ``seed``)."""
    starts = start_addresses(bytes_per_beat)
    return [(starts[(i + seed) % len(starts)], n) for i, n in enumerate(LENGTHS)]


# --- the reference split --------------------------------------------------------------------

@pytest.mark.parametrize("bytes_per_beat", [4, 8, 16])
@pytest.mark.parametrize("beats", LENGTHS + [0, 5000])
def test_reference_split_covers_the_buffer_in_legal_bursts(bytes_per_beat, beats):
    for start in start_addresses(bytes_per_beat):
        bursts = split_bursts(start, beats, bytes_per_beat)
        assert sum(n for _, n in bursts) == beats
        addr = start
        for burst_addr, n in bursts:
            assert burst_addr == addr and 1 <= n <= MAX_BURST_BEATS
            assert burst_addr // 4096 == (burst_addr + n * bytes_per_beat - 1) // 4096
            addr += n * bytes_per_beat


def test_reference_split_examples():
    # 32-bit beats, 3 beats below a 4 KB boundary: a 3-beat burst, then full 256-beat ones.
    assert split_bursts(4096 - 12, 600, 4) == [(4084, 3), (4096, 256), (5120, 256), (6144, 85)]
    # 128-bit beats: a 4 KB page is exactly one 256-beat burst.
    assert split_bursts(0, 513, 16) == [(0, 256), (4096, 256), (8192, 1)]


# --- BurstSplitter -----------------------------------------------------------------------------

def run_splitter(dut, commands, *, seed, stall_prob):
    rng = random.Random(seed)
    got = []
    expected_count = sum(len(split_bursts(a, n, dut._data_width // 8, dut._max_burst))
                         for a, n in commands)

    async def producer(ctx):
        for addr, beats in commands:
            await stream_put(ctx, dut.i_cmd, {"addr": addr, "beats": beats}, rng=rng,
                             idle_prob=0.2)

    async def consumer(ctx):
        for _ in range(expected_count):
            burst = await stream_get(ctx, dut.o_burst, rng=rng, stall_prob=stall_prob)
            got.append((burst.addr, burst.len + 1))
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.busy)
        assert not ctx.get(dut.o_burst.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return got


@pytest.mark.parametrize("data_width", [32, 64, 128])
def test_splitter_matches_reference(data_width):
    # Every named length from every awkward start, plus a zero-length command that must vanish.
    B = data_width // 8
    commands = [(a, n) for a in start_addresses(B) for n in LENGTHS] + [(64, 0), (4096, 2)]
    dut = BurstSplitter(data_width=data_width)
    got = run_splitter(dut, commands, seed=data_width, stall_prob=0.4)
    assert got == [b for a, n in commands for b in split_bursts(a, n, B)]


def test_splitter_ignores_sub_beat_address_bits_and_honours_max_burst():
    dut = BurstSplitter(data_width=64, max_burst=16)
    got = run_splitter(dut, [(0x100 + 5, 40)], seed=1, stall_prob=0.0)
    assert got == [(0x100, 16), (0x180, 16), (0x200, 8)]


# --- read DMA ------------------------------------------------------------------------------------

def run_read(dut, commands, *, seed=0, latency=1, mem_stall=0.0, data_stall=0.0,
             cmd_idle=0.0):
    """Run read ``commands`` through ``dut`` against an :class:`AxiMemoryModel`.

    Returns the model, the beats received, the counters and the cycles from the first
    command to the fall of ``busy``.
    """
    rng = random.Random(seed)
    width = dut.o_data.payload.shape().width
    model = AxiMemoryModel(dut.m_axi, data_width=width, rng=random.Random(seed + 1),
                           read_latency=latency, stall_prob=mem_stall)
    total = sum(n for _, n in commands)
    seen = {"data": [], "cycle": 0}
    limit = 20 * total + 100 * len(commands) * (latency + 1) + 1000

    async def clock(ctx):
        async for _ in ctx.tick():
            seen["cycle"] += 1
            assert seen["cycle"] < limit, f"timed out with {len(seen['data'])} of {total} beats"

    async def producer(ctx):
        for addr, beats in commands:
            await stream_put(ctx, dut.i_cmd, {"addr": addr, "beats": beats}, rng=rng,
                             idle_prob=cmd_idle)

    async def consumer(ctx):
        for _ in range(total):
            seen["data"].append(await stream_get(ctx, dut.o_data, rng=rng,
                                                 stall_prob=data_stall))
        await ctx.tick().until(~dut.busy)
        seen["cycles"] = seen["cycle"]
        await ctx.tick()
        seen["counters"] = {name: ctx.get(getattr(dut, name)) for name in
                            ("beats", "bytes", "bursts", "busy_cycles", "mem_wait_cycles",
                             "stall_cycles", "errors")}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return model, seen


def check_read(dut, commands, model, seen):
    B = dut.o_data.payload.shape().width // 8
    expected_bursts = [b for a, n in commands for b in split_bursts(a, n, B, dut.max_burst)]
    assert model.read_bursts == expected_bursts
    expected_data = [model.read_beat(a // B + i) for a, n in commands for i in range(n)]
    assert seen["data"] == expected_data
    c = seen["counters"]
    assert c["beats"] == len(expected_data)
    assert c["bytes"] == len(expected_data) * B
    assert c["bursts"] == len(expected_bursts)
    assert c["errors"] == 0
    # Every busy cycle is a beat, a consumer stall, or a wait for the memory.
    assert c["busy_cycles"] == c["beats"] + c["stall_cycles"] + c["mem_wait_cycles"]
    assert model.max_reads_in_flight <= dut.max_outstanding


@pytest.mark.parametrize("data_width, seed", [(32, 1), (64, 2), (128, 3)])
def test_read_dma_under_latency_and_stalls(data_width, seed):
    # Random stalls on AR and R, on the command stream and on the consumer, 7 cycles of
    # latency: every beat of every buffer arrives once, in order, equal to memory.
    B = data_width // 8
    commands = covering_commands(B, seed) + [(4096 - B, 1), (0x2000 - 2 * B, 0),
                                             (0x2000 - 2 * B, 3)]
    dut = AxiReadDma(data_width=data_width, max_outstanding=3)
    model, seen = run_read(dut, commands, seed=seed, latency=7, mem_stall=0.3,
                           data_stall=0.3, cmd_idle=0.3)
    check_read(dut, commands, model, seen)
    assert seen["counters"]["stall_cycles"] > 0 and seen["counters"]["mem_wait_cycles"] > 0


def test_read_dma_hides_latency_with_requests_in_flight():
    # 20 cycles of latency and no stalls: four 256-beat bursts in flight keep R busy, so the
    # whole 1024-beat read takes one cycle per beat plus the latency once, plus the one cycle
    # the splitter takes to turn the command into the first request.
    dut = AxiReadDma(data_width=32, max_outstanding=4)
    commands = [(0x40, 1024)]
    model, seen = run_read(dut, commands, latency=20)
    check_read(dut, commands, model, seen)
    c = seen["counters"]
    assert model.max_reads_in_flight >= 2
    assert c["mem_wait_cycles"] == 1 + 20
    assert c["busy_cycles"] == 1024 + 21
    assert c["stall_cycles"] == 0


def test_read_dma_with_one_burst_in_flight_pays_latency_per_burst():
    # The same read with one 16-beat burst in flight at a time: each burst waits out the
    # latency, so the memory wait grows with the burst count. This is why reads overlap.
    dut = AxiReadDma(data_width=32, max_outstanding=1, max_burst=16)
    commands = [(0, 256)]
    model, seen = run_read(dut, commands, latency=20)
    check_read(dut, commands, model, seen)
    assert model.max_reads_in_flight == 1
    # The next request goes out in the cycle after RLAST, so every burst waits exactly the
    # latency: 20 cycles without read data per burst, plus the splitter's first cycle.
    assert seen["counters"]["mem_wait_cycles"] == 1 + 16 * 20
    assert seen["counters"]["busy_cycles"] == 256 + 1 + 16 * 20


# --- write DMA -----------------------------------------------------------------------------------

def run_write(dut, commands, payloads, *, seed=0, latency=1, mem_stall=0.0, data_idle=0.0,
              cmd_idle=0.0):
    rng = random.Random(seed)
    width = dut.i_data.payload.shape().width
    model = AxiMemoryModel(dut.m_axi, data_width=width, rng=random.Random(seed + 1),
                           write_latency=latency, stall_prob=mem_stall)
    total = len(payloads)
    seen = {"cycle": 0}
    limit = 20 * total + 100 * len(commands) * (latency + 1) + 1000

    async def clock(ctx):
        async for _ in ctx.tick():
            seen["cycle"] += 1
            assert seen["cycle"] < limit, "timed out"

    async def commander(ctx):
        for addr, beats in commands:
            await stream_put(ctx, dut.i_cmd, {"addr": addr, "beats": beats}, rng=rng,
                             idle_prob=cmd_idle)

    async def producer(ctx):
        for value in payloads:
            await stream_put(ctx, dut.i_data, value, rng=rng, idle_prob=data_idle)
        await ctx.tick().until(~dut.busy)
        seen["cycles"] = seen["cycle"]
        await ctx.tick()
        seen["counters"] = {name: ctx.get(getattr(dut, name)) for name in
                            ("beats", "bytes", "bursts", "busy_cycles", "mem_wait_cycles",
                             "stall_cycles", "errors")}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(commander)
    sim.add_testbench(producer)
    sim.run()
    return model, seen


@pytest.mark.parametrize("data_width, seed", [(32, 1), (64, 2), (128, 3)])
def test_write_dma_under_latency_and_stalls(data_width, seed):
    # Random stalls on AW, W and B, idle cycles on the data and command streams, 9 cycles
    # before each write response: every beat lands at its address, WLAST closes each burst
    # (the model checks it), and busy stays high until the last response.
    B = data_width // 8
    rng = random.Random(seed)
    # Disjoint regions so that later commands do not overwrite earlier ones.
    commands = [(0x10000 * i + a, n) for i, (a, n) in enumerate(covering_commands(B, seed))]
    commands += [(0x70000 - B, 2), (0x80000, 0)]
    payloads = [rng.getrandbits(data_width) for _ in range(sum(n for _, n in commands))]
    dut = AxiWriteDma(data_width=data_width, max_outstanding=3)
    model, seen = run_write(dut, commands, payloads, seed=seed, latency=9, mem_stall=0.3,
                            data_idle=0.3, cmd_idle=0.3)

    assert model.write_bursts == [b for a, n in commands for b in split_bursts(a, n, B)]
    expected = {}
    beats = iter(payloads)
    for addr, n in commands:
        for i in range(n):
            expected[addr // B + i] = next(beats)
    assert model.memory == expected
    c = seen["counters"]
    assert c["beats"] == len(payloads) and c["bytes"] == len(payloads) * B
    assert c["bursts"] == len(model.write_bursts) and c["errors"] == 0
    assert c["busy_cycles"] == c["beats"] + c["stall_cycles"] + c["mem_wait_cycles"]
    assert c["stall_cycles"] > 0 and c["mem_wait_cycles"] > 0
    assert model.max_writes_in_flight <= dut.max_outstanding


def test_write_dma_streams_one_beat_per_cycle():
    # No stalls: W carries a beat every cycle across burst boundaries; only the start-up and
    # the last response's latency are spent waiting.
    dut = AxiWriteDma(data_width=64, max_outstanding=4)
    payloads = list(range(1, 1025))
    model, seen = run_write(dut, [(0x800, 1024)], payloads, latency=20)
    assert model.write_bursts == [(0x800, 256), (0x1000, 256), (0x1800, 256), (0x2000, 256)]
    c = seen["counters"]
    assert c["stall_cycles"] == 0
    # Two cycles to split the command and plan the first burst, one for its length to reach
    # the W side, and the last response 20 edges after the last beat.
    assert c["mem_wait_cycles"] == 3 + 20
    assert c["busy_cycles"] == 1024 + 23


# --- ports and parameters --------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_top_has_cocotbext_axi_port_names():
    ports = verilog_ports(DmaTestTop(data_width=32))
    for name in ("awid", "awaddr", "awlen", "awsize", "awburst", "awvalid", "awready",
                 "wdata", "wlast", "wvalid", "wready", "bid", "bresp", "bvalid", "bready",
                 "arid", "araddr", "arlen", "arsize", "arburst", "arvalid", "arready",
                 "rid", "rdata", "rresp", "rlast", "rvalid", "rready"):
        assert f"m_axi_{name}" in ports
    assert "rd_cmd__payload" in ports and "wr_beats" in ports
    assert ports["m_axi_rdata"][0].shape().width == 32
    del ports
    gc.collect()  # the unelaborated top warns when collected; let it do so here


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("kwargs, message", [
    ({"data_width": 48}, "Data width must be a power of two"),
    ({"max_outstanding": 0}, "Outstanding bursts"),
    ({"max_burst": 257}, "Longest burst"),
    ({"addr_width": 8}, "Address width"),
    ({"axi_id": 16}, "AXI ID"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AxiReadDma(**kwargs)
    # The half-built engine warns when collected; collect it here, where that is expected.
    gc.collect()


def test_signature_equality():
    assert AxiSignature(data_width=64) == AxiSignature(data_width=64)
    assert AxiSignature(data_width=64) != AxiSignature(data_width=32)
