"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.axi_dma.DmaTestTop` on an AxiRam.

The memory is cocotbext-axi's ``AxiRam`` on the top's ``m_axi_*`` ports. AxiRam answers a
read request as soon as it takes it and has no latency setting, so :class:`LatencyAxiRam`
adds one in the way a DRAM controller shows it: every request accepted on AR is stamped with
the cycle of its handshake, and its first beat's R handshake comes no earlier than
``read_latency`` cycles after that one (requests in flight age in parallel, so a manager that
keeps several in flight pays the latency once); a burst's B handshake comes no earlier than
``write_latency`` cycles after its last W handshake. This is the same definition as
:class:`hoarfrost.sim.axi_model.AxiMemoryModel`'s, so amaranth.sim and Verilator runs of one
design count the same memory wait. About ``QUEUE_DEPTH + 3`` read requests can be accepted
ahead (the delay queue, AxiRam's two-deep AR queue and the one it serves) before ARREADY falls,
so more bursts in flight than that are limited by the memory, not the engine.
Random stalls on every AXI channel come from cocotbext-axi's pause generators.

Configuration: JSON in ``$HOARFROST_DMA_CONFIG`` with ``data_width``, ``addr_width``,
``len_width`` (the design's), ``read_latency``, ``write_latency``, ``pause_prob`` (each AXI
channel paused per cycle with this probability), ``stall_prob`` (backpressure and idle cycles
on the DMA streams), ``beats`` (length of the bandwidth run). If ``$HOARFROST_RESULTS`` names a
file, each test writes its measurements there as JSON keyed by test name.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from hoarfrost.hw.axi_dma import DMA_COUNTERS, dma_command_layout, split_bursts
from hoarfrost.sim.streams import StreamDriver, StreamSink, pack_struct
from hoarfrost.sim.tb.common import CLOCK_NS, save_results

#: Read requests the memory accepts ahead of the one it is serving.
QUEUE_DEPTH = 8
MEMORY_BYTES = 1 << 22
#: Cycles AxiRam takes from a request's handshake to its first answer's handshake: its sink
#: samples the request after the clock edge, its source drives the answer at the next edge.
#: Measured by :func:`memory_latencies_are_as_configured`.
AXIRAM_CYCLES = 2


def load_config() -> dict:
    config = {"data_width": 64, "addr_width": 32, "len_width": 24, "read_latency": 20,
              "write_latency": 20, "pause_prob": 0.0, "stall_prob": 0.0, "beats": 4096}
    config.update(json.loads(os.environ.get("HOARFROST_DMA_CONFIG", "{}")))
    return config


def cycle_now() -> int:
    return int(get_sim_time("ns")) // CLOCK_NS


class _DelayedRequests:
    """Stands in for AxiRam's AR sink: hands each request on ``delay`` cycles after it was taken.

    A pump moves requests from the real sink into a bounded queue as soon as they are taken,
    stamped with their cycle; AxiRam's read loop, which calls ``recv``, gets each one only when
    it has aged ``delay`` cycles. Everything else (pause generators, reset) goes to the sink.
    """

    def __init__(self, channel, clock, delay: int, depth: int):
        self._channel = channel
        self._clock = clock
        self._delay = delay
        self._queue = Queue(maxsize=depth)
        cocotb.start_soon(self._pump())

    async def _pump(self):
        while True:
            item = await self._channel.recv()
            await self._queue.put((cycle_now(), item))

    async def recv(self):
        taken, item = await self._queue.get()
        while cycle_now() < taken + self._delay:
            await RisingEdge(self._clock)
        return item

    def __getattr__(self, name):
        return getattr(self._channel, name)


class _DelayedResponses:
    """Stands in for AxiRam's B source: sends each response ``delay`` cycles after it is due."""

    def __init__(self, channel, clock, delay: int):
        self._channel = channel
        self._clock = clock
        self._delay = delay
        self._queue = Queue()
        cocotb.start_soon(self._pump())

    async def send(self, item):
        await self._queue.put((cycle_now(), item))

    async def _pump(self):
        while True:
            due, item = await self._queue.get()
            while cycle_now() < due + self._delay:
                await RisingEdge(self._clock)
            await self._channel.send(item)

    def __getattr__(self, name):
        return getattr(self._channel, name)


class LatencyAxiRam(AxiRam):
    """cocotbext-axi's AxiRam with a read latency, a write-response latency and a deeper
    request queue (see the module docstring for the model).

    ``read_latency`` is the cycles from a request's AR handshake to its first R handshake,
    ``write_latency`` from a burst's last W handshake to its B handshake, when nothing else
    is waiting. AxiRam's own coroutines take :data:`AXIRAM_CYCLES` of each, so both must be
    at least that; the requests wait in the memory for the rest.
    """

    def __init__(self, bus, clock, reset, *, read_latency: int, write_latency: int, **kwargs):
        if min(read_latency, write_latency) < AXIRAM_CYCLES:
            raise ValueError(f"Latencies below {AXIRAM_CYCLES} cycles cannot be modelled, "
                             f"not {read_latency!r} / {write_latency!r}")
        super().__init__(bus, clock, reset, **kwargs)
        read, write = self.read_if, self.write_if
        read.ar_channel = _DelayedRequests(read.ar_channel, clock,
                                           read_latency - AXIRAM_CYCLES, QUEUE_DEPTH)
        write.b_channel = _DelayedResponses(write.b_channel, clock,
                                            write_latency - AXIRAM_CYCLES)

    def pause_all(self, rng: random.Random, probability: float) -> None:
        """Pause every channel (withhold READY on AR/AW/W, VALID on R/B) at random."""
        if not probability:
            return
        for channel in (self.read_if.ar_channel, self.read_if.r_channel,
                        self.write_if.aw_channel, self.write_if.w_channel,
                        self.write_if.b_channel):
            seed = rng.getrandbits(32)
            stream_rng = random.Random(seed)
            channel.set_pause_generator(stream_rng.random() < probability
                                        for _ in itertools.count())


async def setup(dut, config: dict, rng: random.Random, *, pause_prob: float):
    """Start the clock, build the memory, reset; return the memory."""
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    for name in ("rd_cmd__valid", "wr_cmd__valid", "wr_data__valid", "rd_data__ready"):
        getattr(dut, name).value = 0
    ram = LatencyAxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst,
                        size=MEMORY_BYTES, read_latency=config["read_latency"],
                        write_latency=config["write_latency"])
    ram.pause_all(rng, pause_prob)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    return ram


def commands_payloads(config: dict, commands) -> list[int]:
    layout = dma_command_layout(config["addr_width"], config["len_width"])
    return [pack_struct(layout, {"addr": a, "beats": n}) for a, n in commands]


async def wait_idle(dut, busy, limit: int) -> None:
    for _ in range(limit):
        await ReadOnly()
        if not busy.value:
            return
        await RisingEdge(dut.clk)
    raise TimeoutError(f"{busy._name} still high after {limit} cycles")


def counters(dut, side: str) -> dict[str, int]:
    return {name: getattr(dut, f"{side}_{name}").value.to_unsigned() for name in DMA_COUNTERS}


async def write_buffers(dut, config, rng, commands, beats, *, stall_prob) -> int:
    """Write ``beats`` to the buffers of ``commands``; return the cycles until ``wr_busy`` fell."""
    start = cycle_now()
    cmd = StreamDriver(dut, "wr_cmd", dut.clk, rng, stall_prob)
    data = StreamDriver(dut, "wr_data", dut.clk, rng, stall_prob)
    cmd_task = cocotb.start_soon(cmd.send(commands_payloads(config, commands)))
    await data.send(beats)
    await cmd_task
    await wait_idle(dut, dut.wr_busy, 100 * len(commands) + 50 * config["write_latency"] + 1000)
    await RisingEdge(dut.clk)
    return cycle_now() - start


async def read_buffers(dut, config, rng, commands, *, stall_prob) -> tuple[list[int], int]:
    """Read the buffers of ``commands``; return the beats and the cycles until ``rd_busy`` fell."""
    total = sum(n for _, n in commands)
    start = cycle_now()
    sink = StreamSink(dut, "rd_data", dut.clk, rng, stall_prob)
    sink_task = sink.start()
    cmd = StreamDriver(dut, "rd_cmd", dut.clk, rng, stall_prob)
    await cmd.send(commands_payloads(config, commands))
    await sink.wait_for(total, timeout_cycles=20 * total + 100 * config["read_latency"] + 1000)
    await wait_idle(dut, dut.rd_busy, 100)
    await RisingEdge(dut.clk)
    cycles = cycle_now() - start
    sink_task.cancel()
    dut.rd_data__ready.value = 0
    return sink.items[:total], cycles


def check_counters(got: dict, commands, bytes_per_beat: int) -> None:
    beats = sum(n for _, n in commands)
    bursts = sum(len(split_bursts(a, n, bytes_per_beat)) for a, n in commands)
    assert got["beats"] == beats, got
    assert got["bytes"] == beats * bytes_per_beat, got
    assert got["bursts"] == bursts, got
    assert got["errors"] == 0, got
    assert got["busy_cycles"] == got["beats"] + got["stall_cycles"] + got["mem_wait_cycles"], got


def random_commands(rng: random.Random, bytes_per_beat: int) -> list[tuple[int, int]]:
    """Buffers of the lengths the burst rules make interesting, from awkward beat-aligned
    starts, in disjoint 64 KB regions (so that each can be checked after all are written)."""
    lengths = [1, 255, 256, 257, 1000, rng.randint(2, 600)]
    rng.shuffle(lengths)
    commands = []
    for region, n in enumerate(lengths):
        offset = rng.choice([4096 - bytes_per_beat, 4096 - 3 * bytes_per_beat,
                             rng.randrange(0, 8192, bytes_per_beat)])
        commands.append((0x10000 * (region + 1) + offset, n))
    return commands


@cocotb.test()
async def write_then_read_back_under_stalls(dut):
    """Random buffers written, then read back, with latency and random stalls everywhere."""
    config = load_config()
    rng = random.Random(cocotb.RANDOM_SEED)
    B = config["data_width"] // 8
    ram = await setup(dut, config, rng, pause_prob=config["pause_prob"])
    commands = random_commands(rng, B)
    total = sum(n for _, n in commands)
    beats = [rng.getrandbits(config["data_width"]) for _ in range(total)]

    await write_buffers(dut, config, rng, commands, beats, stall_prob=config["stall_prob"])
    written = counters(dut, "wr")
    check_counters(written, commands, B)
    # The memory holds every beat at its address.
    position = 0
    for addr, n in commands:
        got = ram.read(addr, n * B)
        want = b"".join(v.to_bytes(B, "little") for v in beats[position:position + n])
        assert got == want, f"memory at {addr:#x} differs from the {n} beats written"
        position += n

    # Read back in another order, from the same buffers.
    order = list(range(len(commands)))
    rng.shuffle(order)
    read_cmds = [commands[i] for i in order]
    starts = list(itertools.accumulate([0] + [n for _, n in commands]))
    expected = [v for i in order for v in beats[starts[i]:starts[i] + commands[i][1]]]
    data, _ = await read_buffers(dut, config, rng, read_cmds, stall_prob=config["stall_prob"])
    assert data == expected
    read = counters(dut, "rd")
    check_counters(read, read_cmds, B)
    if config["pause_prob"] or config["stall_prob"]:
        assert read["stall_cycles"] > 0 and written["stall_cycles"] > 0
    save_results("write_then_read_back_under_stalls", {"read": read, "write": written})


@cocotb.test()
async def sustained_bandwidth(dut):
    """One long buffer written then read with no stalls: counters, cycles and wall time."""
    config = load_config()
    rng = random.Random(cocotb.RANDOM_SEED)
    B = config["data_width"] // 8
    await setup(dut, config, rng, pause_prob=0.0)
    n = config["beats"]
    commands = [(0x1000, n)]
    beats = [rng.getrandbits(config["data_width"]) for _ in range(n)]

    wall = time.perf_counter()
    write_cycles = await write_buffers(dut, config, rng, commands, beats, stall_prob=0.0)
    written = counters(dut, "wr")
    data, read_cycles = await read_buffers(dut, config, rng, commands, stall_prob=0.0)
    wall = time.perf_counter() - wall
    read = counters(dut, "rd")
    assert data == beats
    check_counters(written, commands, B)
    check_counters(read, commands, B)
    save_results("sustained_bandwidth", {
        "read": read, "write": written, "read_cycles": read_cycles,
        "write_cycles": write_cycles, "sim_seconds": wall,
    })


@cocotb.test()
async def memory_latencies_are_as_configured(dut):
    """AR handshake to R handshake and last W handshake to B handshake take the latencies."""
    config = load_config()
    rng = random.Random(0)
    await setup(dut, config, rng, pause_prob=0.0)
    dut.rd_data__ready.value = 1
    edges = {}
    read = StreamDriver(dut, "rd_cmd", dut.clk, rng)
    write = StreamDriver(dut, "wr_cmd", dut.clk, rng)
    data = StreamDriver(dut, "wr_data", dut.clk, rng)
    tasks = [cocotb.start_soon(read.send(commands_payloads(config, [(0x40, 1)]))),
             cocotb.start_soon(write.send(commands_payloads(config, [(0x80, 1)]))),
             cocotb.start_soon(data.send([0x5A]))]
    handshakes = {"ar": ("arvalid", "arready"), "r": ("rvalid", "rready"),
                  "w": ("wvalid", "wready"), "b": ("bvalid", "bready")}
    for _ in range(max(config["read_latency"], config["write_latency"]) + 100):
        await ReadOnly()
        for name, (valid, ready) in handshakes.items():
            if (name not in edges and getattr(dut, f"m_axi_{valid}").value
                    and getattr(dut, f"m_axi_{ready}").value):
                edges[name] = cycle_now() + 1
        if len(edges) == len(handshakes):
            break
        await RisingEdge(dut.clk)
    for task in tasks:
        await task
    assert edges["r"] - edges["ar"] == config["read_latency"], edges
    assert edges["b"] - edges["w"] == config["write_latency"], edges
    await RisingEdge(dut.clk)
    dut.rd_data__ready.value = 0
