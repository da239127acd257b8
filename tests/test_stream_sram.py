"""StreamSram in amaranth.sim: the DRAM port and the host bus on one on-chip memory.

Random reads and writes at any byte address (wrapping past the end) and of any length, with
random backpressure on the read bytes and gaps between the written ones, and host-bus reads
and writes between them, all against a Python bytearray that applies the requests in order.
Then the timing the docstring promises: a byte per cycle each way, the first byte read two
cycles after the request is taken.
"""

import gc
import random

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from hoarfrost.hw.dram_bridge import DRAM_PORT_STREAMS, DramPortSignature
from hoarfrost.hw.stream_sram import StreamSram
from hoarfrost.sim.streams import stream_get, stream_put

SIZE = 256


def reference(size, ops):
    """What a byte-addressed memory of ``size`` bytes (zeros at first, addresses taken modulo
    ``size``) gives for ``ops`` in order: the bytes of each stream read and each host read."""
    memory, reads, host_reads = bytearray(size), [], []
    for op in ops:
        kind, addr = op[0], op[1]
        if kind == "w":
            for i, byte in enumerate(op[3]):
                memory[(addr + i) % size] = byte
        elif kind == "r":
            reads.append(bytes(memory[(addr + i) % size] for i in range(op[2])))
        elif kind == "hw":
            memory[addr % size] = op[2]
        else:
            host_reads.append(memory[addr % size])
    return reads, host_reads


def run_ops(dut, ops, *, seed=0, read_stall=0.0, write_gap=0.0, cmd_idle=0.0):
    """Run ``ops`` through ``dut``: ``("r", addr, length)`` and ``("w", addr, length, payload)``
    on the DRAM port, ``("hr", addr)`` and ``("hw", addr, byte)`` on the host bus, issued in
    order by one requester (a host access right after a request: the memory makes it wait
    for the transfer). Returns the bytes of the stream reads, the host reads and the clock
    stamps of every byte moved."""
    rng = random.Random(seed)
    reads = [op for op in ops if op[0] == "r"]
    writes = [op for op in ops if op[0] == "w"]
    seen = {"cycle": 0, "reads": [], "host_reads": [], "taken": [], "read_at": [],
            "written_at": []}
    limit = 10 * sum(op[2] for op in ops if op[0] in "rw") + 20 * len(ops) + 200

    async def clock(ctx):
        async for _ in ctx.tick():
            seen["cycle"] += 1
            assert seen["cycle"] < limit, "timed out"

    async def requester(ctx):
        bus = dut.bus
        for op in ops:
            kind, addr = op[0], op[1]
            if kind in ("r", "w"):
                await stream_put(ctx, dut.rd_cmd if kind == "r" else dut.wr_cmd,
                                 {"addr": addr, "length": op[2]}, rng=rng, idle_prob=cmd_idle)
                seen["taken"].append(seen["cycle"])
                continue
            ctx.set(bus.addr, addr)
            ctx.set(bus.we, kind == "hw")
            ctx.set(bus.wdata, op[2] if kind == "hw" else rng.getrandbits(8))
            ctx.set(bus.valid, 1)
            *_, busy = await ctx.tick().sample(dut.busy).until(bus.ready)
            assert not busy                      # never during a transfer
            ctx.set(bus.valid, 0)
            ctx.set(bus.wdata, rng.getrandbits(8))   # held only until accepted
            if kind == "hr":
                *_, rvalid, rdata = await ctx.tick().sample(bus.rvalid, bus.rdata)
                assert rvalid                    # the cycle after the acceptance
                seen["host_reads"].append(rdata)
            else:
                assert not ctx.get(bus.rvalid)

    async def reader(ctx):
        for _, _, length in reads:
            got = bytearray()
            for _ in range(length):
                got.append(await stream_get(ctx, dut.rd_data, rng=rng, stall_prob=read_stall))
                seen["read_at"].append(seen["cycle"])
            seen["reads"].append(bytes(got))

    async def writer(ctx):
        for *_, payload in writes:
            for byte in payload:
                await stream_put(ctx, dut.wr_data, byte, rng=rng, idle_prob=write_gap)
                seen["written_at"].append(seen["cycle"])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(clock, background=True)
    for bench in (requester, reader, writer):
        sim.add_testbench(bench)
    sim.run()
    return seen


def random_ops(rng, size, count):
    """Stream reads and writes and host accesses at random byte addresses, some past the end
    (in the next copies of the memory, up to the top of the 32-bit space), so they wrap; of
    random lengths: empty, one byte, short, and now and then longer than the memory."""
    ops = []
    for _ in range(count):
        kind = rng.choice(["r", "r", "w", "w", "hr", "hw"])
        addr = rng.choice([rng.randrange(size), rng.randrange(size - 8, size + 8),
                           rng.randrange(1 << 32)])
        if kind == "hw":
            ops.append((kind, addr, rng.getrandbits(8)))
        elif kind == "hr":
            ops.append((kind, addr))
        else:
            length = rng.choice([0, 1, rng.randint(1, 5), rng.randint(1, 40),
                                 rng.randint(size - 4, 2 * size + 3)])
            if kind == "w":
                ops.append((kind, addr, length, bytes(rng.getrandbits(8) for _ in range(length))))
            else:
                ops.append((kind, addr, length))
    return ops


@pytest.mark.parametrize("data_width", [16, 32])
@pytest.mark.parametrize("seed, read_stall, write_gap, cmd_idle",
                         [(1, 0.0, 0.0, 0.0), (2, 0.3, 0.3, 0.2), (3, 0.7, 0.6, 0.5)])
def test_random_requests_and_host_accesses_match_a_bytearray(data_width, seed, read_stall,
                                                             write_gap, cmd_idle):
    rng = random.Random(seed)
    ops = random_ops(rng, SIZE, 60)
    # and a run of host accesses back to back, as the link's WRITE and READ make them
    base = rng.randrange(SIZE)
    ops += [("hw", base + i, rng.getrandbits(8)) for i in range(6)]
    ops += [("hr", base + i) for i in range(7)] + [("r", base, 6)]
    # and a write longer than the memory across its end, read back from a copy higher up
    long = bytes(rng.getrandbits(8) for _ in range(SIZE + 50))
    ops += [("w", SIZE - 20, len(long), long), ("r", 5 * SIZE - 30, SIZE + 60)]
    want_reads, want_host = reference(SIZE, ops)
    seen = run_ops(StreamSram(SIZE, data_width=data_width), ops, seed=seed,
                   read_stall=read_stall, write_gap=write_gap, cmd_idle=cmd_idle)
    assert seen["reads"] == want_reads
    assert seen["host_reads"] == want_host
    assert want_reads[-1][60:60 + SIZE] == long[-SIZE:]   # (the model wraps, too)


@pytest.mark.parametrize("data_width", [16, 32])
@pytest.mark.parametrize("addr", [0, 1, 3])
def test_a_byte_per_cycle_each_way_the_first_read_two_cycles_after_the_request(data_width,
                                                                               addr):
    payload = bytes(range(7, 107))
    ops = [("w", addr, len(payload), payload), ("r", addr, len(payload))]
    seen = run_ops(StreamSram(SIZE, data_width=data_width), ops)
    assert seen["reads"] == [payload]
    written, read = seen["written_at"], seen["read_at"]
    # the write request is taken at once and its bytes then go one per cycle
    assert written == list(range(seen["taken"][0] + 1, seen["taken"][0] + 1 + len(payload)))
    # the read request waits for the write's last byte, then is taken at the next edge
    assert seen["taken"][1] == written[-1] + 1
    assert read == list(range(seen["taken"][1] + 2, seen["taken"][1] + 2 + len(payload)))


def test_two_groups_of_spram_one_above_the_other_act_as_one_memory(monkeypatch):
    # Verilator and amaranth.sim cannot run SB_SPRAM256KA: the stack's groups become Memory
    # banks of the SPRAM's shape (16384 words, reads held while en is low), so the group
    # selection is what is tested, with transfers across the groups' boundary and the end.
    from hoarfrost.hw import stream_sram

    monkeypatch.setattr(stream_sram, "_SpramBank", stream_sram._RamBank)
    size, rng = 64 * 1024, random.Random(7)
    ops = []
    for _ in range(40):
        kind = rng.choice(["r", "w", "hr", "hw"])
        addr = rng.choice([rng.randrange(size // 2 - 40, size // 2 + 40),
                           rng.randrange(size - 40, size + 40), rng.randrange(1 << 32)])
        length = rng.randint(0, 90)
        ops.append({"r": (kind, addr, length), "hr": (kind, addr),
                    "hw": (kind, addr, rng.getrandbits(8)),
                    "w": (kind, addr, length, rng.randbytes(length))}[kind])
    ops += [("w", size // 2 - 3, 6, b"abcdef"), ("r", size // 2 - 4, 8)]
    want_reads, want_host = reference(size, ops)
    dut = StreamSram(size, spram=True)
    seen = run_ops(dut, ops, seed=7, read_stall=0.3, write_gap=0.3)
    assert seen["reads"] == want_reads and seen["host_reads"] == want_host
    assert want_reads[-1][1:7] == b"abcdef"


def test_spram_storage_is_the_primitives_one_above_the_other():
    for data_width, count in ((16, 2), (32, 2)):
        text = verilog.convert(StreamSram(64 * 1024, data_width=data_width, spram=True))
        assert text.count("SB_SPRAM256KA ") == count
    text = verilog.convert(StreamSram(128 * 1024, data_width=32, spram=True))
    assert text.count("SB_SPRAM256KA ") == 4


def test_the_memory_serves_exactly_the_back_ends_dram_port():
    sram = StreamSram(SIZE)
    for name in DRAM_PORT_STREAMS:
        assert sram.signature.members[name] == DramPortSignature().members[name].flip()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("args, message", [
    ((SIZE,), None),
    ((3 * 256,), r"^Size must be a power of two of at least one word \(2 bytes\), not 768$"),
    ((1,), r"^Size must be a power of two of at least one word \(2 bytes\), not 1$"),
    ((SIZE, 8), r"^Data width must be 16 or 32, not 8$"),
    ((16 * 1024, 16, True),
     r"^SPRAM storage of 16-bit words comes in multiples of 32768 bytes, not 16384$"),
    ((32 * 1024, 32, True),
     r"^SPRAM storage of 32-bit words comes in multiples of 65536 bytes, not 32768$"),
])
def test_bad_parameters_are_one_line_errors(args, message):
    keys = ("size", "data_width", "spram")
    kwargs = dict(zip(keys[1:], args[1:]))
    if message is None:
        StreamSram(args[0], **kwargs)
    else:
        with pytest.raises(ValueError, match=message):
            StreamSram(args[0], **kwargs)
    gc.collect()
