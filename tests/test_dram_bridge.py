"""The byte-stream DRAM port on AXI4 (AxiDramBridge) in amaranth.sim against a Python AXI memory.

Reads and writes at any byte address and of any length, with memory latency and random stalls
on every AXI channel and on the byte streams: every byte read equals a byte-addressed reference
memory that applies the requests in order, every byte written lands (and its neighbours in a
partial beat stay), the bursts are the DMA's split of the covering beats, the counters add up,
and a long transfer moves one byte per cycle with several bursts in flight.
"""

import gc
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hoarfrost.firmware.isa import FIELDS, NO_PARAMS, POOL_MAX, Op
from hoarfrost.gen.compiler import CompileLimits, compile_graph
from hoarfrost.hw.axi import verilog_ports
from hoarfrost.hw.axi_dma import split_bursts
from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd
from hoarfrost.hw.config import DEFAULT
from hoarfrost.hw.dram_bridge import (BRIDGE_COUNTERS, DRAM_PORT_STREAMS, AxiDramBridge,
                                      BackEndAxi, DramPortSignature)
from hoarfrost.sim.axi_model import AxiMemoryModel
from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.golden import quantize_input, run_int
from hoarfrost.sim.streams import stream_get, stream_put
from test_backend import SMALL, tiny_network


def covering_beats(addr, length, B):
    """Beats of a request: every beat that holds one of its bytes."""
    return (addr % B + length + B - 1) // B if length else 0


def fill_byte(model, addr):
    """The byte at ``addr`` of the model's memory before anything is written."""
    B = model.bytes_per_beat
    return model.fill(addr // B) >> 8 * (addr % B) & 0xFF


def memory_byte(model, addr):
    B = model.bytes_per_beat
    return model.read_beat(addr // B) >> 8 * (addr % B) & 0xFF


def reference(model, requests):
    """What a byte-addressed memory taking ``requests`` in order gives: each read's bytes and
    the memory's bytes at the end (written ones only)."""
    memory, reads = {}, []
    for kind, addr, length, payload in requests:
        if kind == "w":
            memory.update((addr + i, b) for i, b in enumerate(payload))
        else:
            reads.append(bytes(memory.get(a, fill_byte(model, a))
                               for a in range(addr, addr + length)))
    return reads, memory


def run_bridge(dut, requests, *, seed=0, read_latency=1, write_latency=1, mem_stall=0.0,
               byte_stall=0.0, cmd_idle=0.0):
    """Run ``requests`` (``("r" | "w", addr, length, payload)``) through ``dut``.

    Returns the memory model and what was seen: the bytes of each read, the counters once the
    bridge is idle, and clock stamps (``cycle`` of the first request taken, of the last byte
    read and written, and of the fall of ``rd_busy``/``wr_busy``).
    """
    rng = random.Random(seed)
    model = AxiMemoryModel(dut.m_axi, data_width=8 * dut.bytes_per_beat,
                           rng=random.Random(seed + 1), read_latency=read_latency,
                           write_latency=write_latency, stall_prob=mem_stall)
    reads = [r for r in requests if r[0] == "r"]
    writes = [r for r in requests if r[0] == "w"]
    total = sum(r[2] for r in requests)
    seen = {"cycle": 0, "reads": [], "done": 0}
    limit = 30 * total + 200 * len(requests) * (max(read_latency, write_latency) + 1) + 1000

    async def clock(ctx):
        async for _ in ctx.tick():
            seen["cycle"] += 1
            assert seen["cycle"] < limit, f"timed out: {seen}"

    async def requester(ctx):
        for i, (kind, addr, length, _) in enumerate(requests):
            await stream_put(ctx, dut.rd_cmd if kind == "r" else dut.wr_cmd,
                             {"addr": addr, "length": length}, rng=rng, idle_prob=cmd_idle)
            if i == 0:
                seen["first_request"] = seen["cycle"]

    async def reader(ctx):
        for _, _, length, _ in reads:
            got = bytearray()
            for _ in range(length):
                got.append(await stream_get(ctx, dut.rd_data, rng=rng, stall_prob=byte_stall))
            seen["reads"].append(bytes(got))
            seen["last_read_byte"] = seen["cycle"]
        seen["done"] += 1

    async def writer(ctx):
        for _, _, _, payload in writes:
            for byte in payload:
                await stream_put(ctx, dut.wr_data, byte, rng=rng, idle_prob=byte_stall)
            seen["last_written_byte"] = seen["cycle"]
        seen["done"] += 1

    async def finisher(ctx):
        while seen["done"] < 2:        # a Python flag: poll it each cycle
            await ctx.tick()
        await ctx.tick().until(~dut.wr_busy & ~dut.rd_busy)
        seen["idle"] = seen["cycle"]
        await ctx.tick()
        seen["counters"] = {name: ctx.get(getattr(dut, name)) for name in BRIDGE_COUNTERS}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(requester)
    sim.add_testbench(reader)
    sim.add_testbench(writer)
    sim.add_testbench(finisher)
    sim.run()
    return model, seen


def check_bridge(dut, requests, model, seen):
    """Data, memory, bursts and counters are exactly what the requests imply."""
    B = dut.bytes_per_beat
    max_burst = dut._reader.max_burst
    want_reads, want_memory = reference(model, requests)
    assert seen["reads"] == want_reads
    # Every byte of every beat a write touched: the written ones, and the neighbours kept.
    for kind, addr, length, _ in requests:
        if kind == "w" and length:
            first = addr - addr % B
            for a in range(first, first + covering_beats(addr, length, B) * B):
                assert memory_byte(model, a) == want_memory.get(a, fill_byte(model, a)), hex(a)

    c = seen["counters"]
    for side, kind, bursts in (("rd", "r", model.read_bursts), ("wr", "w", model.write_bursts)):
        mine = [(a, n) for k, a, n, _ in requests if k == kind]
        beats = sum(covering_beats(a, n, B) for a, n in mine)
        want_bursts = [b for a, n in mine if n
                       for b in split_bursts(a, covering_beats(a, n, B), B, max_burst)]
        assert bursts == want_bursts
        assert c[f"{side}_requests"] == len(mine)
        assert c[f"{side}_port_bytes"] == sum(n for _, n in mine)
        assert c[f"{side}_beats"] == beats
        assert c[f"{side}_bytes"] == beats * B
        assert c[f"{side}_bursts"] == len(want_bursts)
        assert c[f"{side}_errors"] == 0
        # Every cycle an engine is busy is a beat, a byte-side stall or a wait for memory.
        assert c[f"{side}_busy_cycles"] == (c[f"{side}_beats"] + c[f"{side}_stall_cycles"]
                                            + c[f"{side}_mem_wait_cycles"])
    assert model.max_reads_in_flight <= dut._reader.max_outstanding


def random_requests(rng, B, count, *, region=(0x0F00, 0x1300), long_every=6):
    """Reads and writes at random byte addresses in a small region across a 4 KB boundary (so
    they overlap and reads see earlier writes), of random lengths: empty, sub-beat, and every
    ``long_every``-th one several bursts long."""
    requests = []
    lo, hi = region
    for i in range(count):
        kind = rng.choice("rw")
        if i % long_every == long_every - 1:
            length = rng.randint(40 * B, 80 * B)
        else:
            length = rng.choice([0, 1, rng.randint(1, B), rng.randint(B, 4 * B),
                                 rng.randint(1, 40 * B)])
        addr = rng.randint(lo, hi - length)
        payload = bytes(rng.getrandbits(8) for _ in range(length)) if kind == "w" else b""
        requests.append((kind, addr, length, payload))
    return requests


# --- the port ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_the_bridge_serves_exactly_the_back_ends_dram_port():
    # Same streams, opposite directions: BackEnd's rd_cmd/rd_data/wr_cmd/wr_data connect 1:1.
    backend, bridge = BackEnd(DEFAULT), AxiDramBridge(data_width=32)
    for name in DRAM_PORT_STREAMS:
        assert backend.signature.members[name] == DramPortSignature().members[name]
        assert bridge.signature.members[name] == DramPortSignature().members[name].flip()
    # The AXI side has AXI names, and byte strobes for partial-beat writes.
    ports = verilog_ports(bridge)
    assert ports["m_axi_wstrb"][0].shape().width == 4
    assert ports["m_axi_wdata"][0].shape().width == ports["m_axi_rdata"][0].shape().width == 32
    assert "rd_cmd__payload" in ports and "wr_port_bytes" in ports
    del backend, bridge, ports
    gc.collect()  # the unelaborated blocks warn when collected; let them do so here


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("kwargs, message", [
    ({"data_width": 8}, "Data width must be a power of two from 16 to 1024, not 8"),
    ({"data_width": 48}, "Data width must be a power of two from 16 to 1024, not 48"),
    ({"max_burst": 0}, "Longest burst must be an integer from 1 to 256 beats, not 0"),
    ({"max_outstanding": 65}, "Outstanding bursts must be an integer from 1 to 64, not 65"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AxiDramBridge(**kwargs)
    gc.collect()  # a half-built engine warns when collected


# --- every byte right under latency and stalls --------------------------------------------------

@pytest.mark.parametrize("data_width, max_burst, seed", [(32, 16, 1), (64, 256, 2)])
def test_random_unaligned_requests_under_latency_and_stalls(data_width, max_burst, seed):
    # 30% stalls on every AXI channel, on the request stream and on both byte streams;
    # 9 cycles of read latency, 5 of write-response latency.
    B = data_width // 8
    rng = random.Random(seed)
    requests = random_requests(rng, B, 24)
    # Every lane as a first and as a last byte, and a write read straight back.
    requests += [("w", 0x1001 + lane, 1, bytes([0xA0 + lane])) for lane in range(B)]
    requests += [("r", 0x1000, 2 * B, b""), ("w", 0xFFD, 7, bytes(range(7))),
                 ("r", 0xFFC, 9, b"")]
    dut = AxiDramBridge(data_width=data_width, max_burst=max_burst, max_outstanding=3)
    model, seen = run_bridge(dut, requests, seed=seed, read_latency=9, write_latency=5,
                             mem_stall=0.3, byte_stall=0.3, cmd_idle=0.3)
    check_bridge(dut, requests, model, seen)
    c = seen["counters"]
    assert c["rd_stall_cycles"] > 0 and c["rd_mem_wait_cycles"] > 0
    assert c["wr_stall_cycles"] > 0 and c["wr_mem_wait_cycles"] > 0
    # Partial beats were written: the model merged strobed lanes (checked above).
    assert any(n % B or a % B for k, a, n, _ in requests if k == "w" and n)


def test_a_read_after_a_write_sees_it_even_when_the_write_response_is_slow():
    # The read is offered right after the write's bytes; it must wait for the B response
    # (30 cycles), else AXI would let it overtake the write.
    payload = bytes(range(1, 14))
    requests = [("w", 0x203, len(payload), payload), ("r", 0x200, 20, b"")]
    dut = AxiDramBridge(data_width=32)
    model, seen = run_bridge(dut, requests, read_latency=3, write_latency=30)
    check_bridge(dut, requests, model, seen)
    assert seen["reads"][0][3:16] == payload


# --- throughput ---------------------------------------------------------------------------------

def test_a_long_read_moves_a_byte_per_cycle_with_bursts_in_flight():
    # 3000 bytes from an odd address over a 32-bit bus at 20 cycles of latency: the requests
    # run ahead of the bytes (more than one burst in flight), so after the latency and the
    # bridge's three cycles (two for the DMA to plan the first burst, one into the byte
    # register) one byte leaves per cycle: the last one latency + 3 + (length - 1) edges
    # after the request.
    length, latency = 3000, 20
    requests = [("r", 0x1003, length, b"")]
    dut = AxiDramBridge(data_width=32, max_outstanding=4)
    model, seen = run_bridge(dut, requests, read_latency=latency)
    check_bridge(dut, requests, model, seen)
    assert seen["last_read_byte"] - seen["first_request"] == latency + 2 + length
    assert model.max_reads_in_flight >= 2
    c = seen["counters"]
    # The engine waited for memory only before the first beat (its splitter's cycle, then the
    # latency); afterwards the memory waited on the byte side.
    assert c["rd_mem_wait_cycles"] == 1 + latency
    assert c["rd_stall_cycles"] == c["rd_busy_cycles"] - c["rd_beats"] - 1 - latency > 2000
    assert c["rd_beats"] == covering_beats(0x1003, length, 4) == 751


def test_a_long_write_takes_a_byte_per_cycle():
    # 3000 bytes to an odd address over a 64-bit bus, 20 cycles of write-response latency:
    # the bytes are taken one per cycle from the edge after the request (when the bridge
    # starts it), never waiting for the bus.
    length = 3000
    rng = random.Random(4)
    payload = bytes(rng.getrandbits(8) for _ in range(length))
    requests = [("w", 0x2005, length, payload)]
    dut = AxiDramBridge(data_width=64, max_outstanding=4)
    model, seen = run_bridge(dut, requests, write_latency=20)
    check_bridge(dut, requests, model, seen)
    assert seen["last_written_byte"] - seen["first_request"] == length + 1
    c = seen["counters"]
    # The engine waited on the bytes in every cycle whose byte did not finish a beat, and on
    # memory only for its start (two cycles) and the last write response.
    assert c["wr_stall_cycles"] == length - c["wr_beats"]
    assert c["wr_mem_wait_cycles"] == 2 + 20


def test_back_to_back_short_reads_overlap_their_latency():
    # Eight 4-byte reads (the sequencer's command fetches) offered back to back: they queue
    # ahead, so the latency shows once, not eight times.
    latency = 20
    requests = [("r", 0x400 + 4 * i, 4, b"") for i in range(8)]
    dut = AxiDramBridge(data_width=64)
    model, seen = run_bridge(dut, requests, read_latency=latency)
    check_bridge(dut, requests, model, seen)
    assert seen["last_read_byte"] - seen["first_request"] < latency + 8 * 8


# --- the back end on AXI -------------------------------------------------------------------------

def back_end_requests(program, firmware_addr: int, rows: int, cols: int):
    """The DRAM requests ``(addr, length)`` the sequencer makes running ``program``, as lists
    of reads (each command's header, then its fields; the input ``LOAD``; each ``MATMUL``'s
    parameters and weights; pooling tables) and of writes (``STORE``)."""
    reads, writes, pc, geom = [], [], firmware_addr, {}
    for command in program.commands:
        fields = len(FIELDS[command.op])
        reads.append((pc, 4))
        if fields:
            reads.append((pc + 4, 4 * fields))
        pc += 4 * (1 + fields)
        if command.op == Op.GEOM:
            geom = dict(command.fields)
        elif command.op == Op.LOAD:
            reads.append((command.dram_addr, command.length))
        elif command.op == Op.STORE:
            writes.append((command.dram_addr, command.length))
        elif command.op == Op.MATMUL:
            k = command.cg * geom["kh"] * geom["kw"]
            reads.append((command.p_addr, 12 * command.nt))
            reads.append((command.w_addr, -(-command.nt // cols) * -(-k // rows) * rows * cols))
        elif command.op == Op.POOL and command.p_addr != NO_PARAMS:
            entries = 1 if command.kind == POOL_MAX else geom["kh"] * geom["kw"] + 1
            reads.append((command.p_addr, 8 * entries))
    return reads, writes


def test_a_tiny_network_runs_bit_exact_on_the_back_end_with_axi_memory():
    # BackEndAxi (the back end, the bridge, one AXI port) runs a network touching every command
    # from a Python AXI memory with 7 cycles of latency and 30% stalls on every channel; on a
    # 64-bit bus the sequencer's 4-byte fetches are partial beats.
    data_width, seed = 64, 1
    B = data_width // 8
    qgraph, rng = tiny_network(seed, "AveragePool", residual=True, depthwise=False)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    program = compile_graph(qgraph, CompileLimits.for_backend(SMALL, 2048, 16))
    dram, firmware_addr = dram_image(program, x[0])
    dut = BackEndAxi(SMALL, scratch_bytes=2048, param_depth=16, data_width=data_width)
    model = AxiMemoryModel(dut.m_axi, data_width=data_width, rng=random.Random(seed),
                           read_latency=7, write_latency=7, stall_prob=0.3,
                           fill=lambda i: int.from_bytes(dram[i * B:(i + 1) * B], "little"))
    got = {}

    async def host(ctx):
        ctx.set(dut.program_addr, firmware_addr)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        got["busy_after_done"] = ctx.get(dut.dram_busy)
        await ctx.tick().until(~dut.dram_busy)
        await ctx.tick()
        got.update({name: ctx.get(getattr(dut, name))
                    for name in (*BACKEND_COUNTERS, *BRIDGE_COUNTERS)})

    async def watchdog(ctx):
        for _ in range(100_000):
            await ctx.tick()
        raise AssertionError("the back end did not reach END in 100000 cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(watchdog, background=True)
    sim.add_testbench(host)
    sim.run()

    n = int(np.prod(program.output_shape))
    out = [memory_byte(model, program.output_addr + i) for i in range(n)]
    assert np.array(out, dtype=np.uint8).view(np.int8).tolist() == \
        run_int(qgraph, x)[0].reshape(-1).tolist()
    reads, writes = back_end_requests(program, firmware_addr, SMALL.rows, SMALL.cols)
    assert got["commands"] == len(program.commands)
    assert got["rd_requests"] == len(reads) and got["wr_requests"] == len(writes) == 1
    assert got["rd_port_bytes"] == got["dram_read_bytes"] == sum(n for _, n in reads)
    assert got["wr_port_bytes"] == got["dram_write_bytes"] == n == 3
    assert got["rd_beats"] == sum(covering_beats(a, n, B) for a, n in reads)
    assert got["wr_beats"] == sum(covering_beats(a, n, B) for a, n in writes)
    assert got["rd_errors"] == got["wr_errors"] == 0
    # The SYNC after the STORE is fetched only once the write is in memory.
    assert got["busy_after_done"] == 0
