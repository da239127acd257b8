"""The host link in amaranth.sim, driven by the host driver itself and by hand-made frames.

Behind the link: a Python memory on the memory port that stalls and answers reads after a
random latency, and :class:`ControlRegisters` whose accelerator is a Python model (busy for
``RUN_CYCLES`` after each start, then a done pulse; counters: starts and busy cycles). In front:
either the link's byte streams directly (fast), or the UART pins through a host-side
``UartTx``/``UartRx`` pair at 4 and 4.5 clocks per bit.
"""

import gc
import random
import struct

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hoarfrost.firmware.host import (CSR_ID_VALUE, CTRL_CLEAR_DONE, STATUS_BUSY, STATUS_DONE,
                                     AmaranthTransport, AsyncDevice, Command, Csr, FrameDecoder,
                                     LinkError, Status, decode_response, encode_request,
                                     encode_response)
from hoarfrost.hw.axi_share import HostBusAxi
from hoarfrost.hw.host_link import (ControlRegisters, HostBusSignature,
                                    HostLink, UartHostLink, crc16_step)
from hoarfrost.hw.uart import UartRx, UartTx
from hoarfrost.sim.axi_model import AxiMemoryModel

MEM_BYTES = 512
MAX_PAYLOAD = 32
RUN_CYCLES = 300
COUNTERS = ("starts", "busy_cycles")


class LinkTop(wiring.Component):
    """The link (direct or through UARTs) with control registers; the host's byte streams."""

    def __init__(self, *, clk_freq=1_000_000, baud=None, timeout_cycles=400):
        self.clk_freq = clk_freq
        if baud is None:
            self.link = HostLink(max_payload=MAX_PAYLOAD, timeout_cycles=timeout_cycles,
                                 addr_width=16)
            self.host_uart = None
        else:
            self.link = UartHostLink(clk_freq=clk_freq, baud=baud, max_payload=MAX_PAYLOAD,
                                     timeout_cycles=timeout_cycles, addr_width=16)
            self.host_uart = (UartTx(clk_freq=clk_freq, baud=baud),
                              UartRx(clk_freq=clk_freq, baud=baud))
        self.regs = ControlRegisters(counters=len(COUNTERS))
        super().__init__({
            "to_device": In(stream.Signature(8)), "from_device": Out(stream.Signature(8)),
            "mem": Out(HostBusSignature(addr_width=16, data_width=8)),
            "start": Out(1), "busy": In(1), "done": In(1),
            "counters": In(32).array(len(COUNTERS)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.link, m.submodules.regs = link, regs = self.link, self.regs
        if self.host_uart is None:
            wiring.connect(m, wiring.flipped(self.to_device), link.i_stream)
            wiring.connect(m, link.o_stream, wiring.flipped(self.from_device))
        else:
            m.submodules.host_tx, m.submodules.host_rx = tx, rx = self.host_uart
            wiring.connect(m, wiring.flipped(self.to_device), tx.i_stream)
            wiring.connect(m, rx.o_stream, wiring.flipped(self.from_device))
            m.d.comb += [link.rx.eq(tx.tx), rx.rx.eq(link.tx)]
        wiring.connect(m, wiring.flipped(self.mem), link.mem)
        wiring.connect(m, link.csr, regs.csr)
        m.d.comb += [self.start.eq(regs.start), regs.busy.eq(self.busy),
                     regs.done.eq(self.done)]
        for k in range(len(COUNTERS)):
            m.d.comb += regs.counters[k].eq(self.counters[k])
        return m


class Harness:
    """Runs a host coroutine against :class:`LinkTop` with the memory and accelerator models."""

    def __init__(self, dut, *, seed=0, stall_prob=0.3, max_latency=3):
        self.dut = dut
        self.rng = random.Random(seed)
        self.memory = bytearray(self.rng.randrange(256) for _ in range(MEM_BYTES))
        self.stall_prob, self.max_latency = stall_prob, max_latency
        self.writes = 0
        self.starts = 0
        self.finished = False

    async def serve_memory(self, ctx):
        port, rng = self.dut.mem, self.rng
        countdown, rdata = None, 0
        while True:
            ready = countdown is None and rng.random() >= self.stall_prob
            ctx.set(port.ready, ready)
            ctx.set(port.rvalid, countdown == 0)
            ctx.set(port.rdata, rdata)
            if countdown == 0:
                countdown = None
            *_, valid, we, addr, wdata = await ctx.tick().sample(port.valid, port.we,
                                                                 port.addr, port.wdata)
            if countdown is not None:
                countdown -= 1
            if valid and ready:
                if we:
                    self.memory[addr] = wdata
                    self.writes += 1
                else:
                    rdata = self.memory[addr]
                    countdown = rng.randrange(self.max_latency)

    async def accelerator(self, ctx):
        dut, remaining, busy_cycles = self.dut, 0, 0
        async for _, _, start in ctx.tick().sample(dut.start):
            ctx.set(dut.done, 0)
            if remaining:
                remaining -= 1
                busy_cycles += 1
                if not remaining:
                    ctx.set(dut.busy, 0)
                    ctx.set(dut.done, 1)
            if start:
                self.starts += 1
                remaining = RUN_CYCLES
                ctx.set(dut.busy, 1)
            ctx.set(dut.counters[0], self.starts)
            ctx.set(dut.counters[1], busy_cycles)

    def run(self, host, *, clocks):
        async def main(ctx):
            await host(ctx, AmaranthTransport(ctx, self.dut.to_device, self.dut.from_device,
                                              clk_freq=self.dut.clk_freq))
            self.finished = True

        async def watchdog(ctx):
            await ctx.delay(clocks / self.dut.clk_freq)
            raise AssertionError(f"host did not finish within {clocks} clocks")

        sim = Simulator(self.dut)
        sim.add_clock(1 / self.dut.clk_freq)
        for background in (self.serve_memory, self.accelerator, watchdog):
            sim.add_testbench(background, background=True)
        sim.add_testbench(main)
        sim.run()           # until the host is done (the others run in the background)
        assert self.finished


async def exchange(transport, frame, *, timeout=0.005):
    """Send raw ``frame`` bytes and return the one response frame that comes back."""
    await transport.send(frame)
    decoder, frames = FrameDecoder(), []
    deadline = transport.now() + timeout
    while not frames and transport.now() < deadline:
        frames = decoder.feed(await transport.recv(deadline - transport.now()))
    assert len(frames) == 1 and decoder.corrupt == 0, (frames, decoder.corrupt)
    f = frames[0]
    raw = encode_response(f.command & 0x7F, f.seq, f.payload[0], f.payload[1:])
    return decode_response(raw)


def test_crc_step_matches_the_reference_crc():
    from amaranth import Const
    from hoarfrost.firmware.host import crc16

    # Fold the hardware step over "123456789" by evaluating its constant expressions.
    sim_crc = 0xFFFF
    for byte in b"123456789":
        value = crc16_step(Const(sim_crc, 16), Const(byte, 8))
        sim_crc = _evaluate(value)
    assert sim_crc == crc16(b"123456789") == 0x29B1


def _evaluate(value):
    """Value of a constant expression, through a one-signal simulation."""
    from amaranth import Signal

    m = Module()
    out = Signal(16)
    m.d.comb += out.eq(value)
    result = []

    async def tb(ctx):
        result.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    return result[0]


# --- through the driver -------------------------------------------------------------------

# Through the UART every byte costs 45 clocks of simulation: one (4.5 clocks per bit, the
# harder case; tests/test_uart.py covers 4) with a shorter write and read.
@pytest.mark.parametrize("clk_freq,baud", [(1_000_000, None), (9_000_000, 2_000_000)],
                         ids=["streams", "uart-4.5-clocks"])
def test_driver_writes_reads_and_runs_the_accelerator(clk_freq, baud):
    dut = LinkTop(clk_freq=clk_freq, baud=baud,
                  timeout_cycles=400 if baud is None else 40 * 12)
    h = Harness(dut, seed=baud or 1)
    size = 70 if baud is None else 30   # more than one frame either way (28 data bytes each)
    data = bytes(h.rng.randrange(256) for _ in range(size))
    addr = 0x123
    before = bytes(h.memory)
    seen = {}

    async def host(ctx, transport):
        dev = AsyncDevice(transport, timeout=0.002 if baud is None else 0.004,
                          counter_names=COUNTERS)
        info = await dev.info()
        assert (info.version, info.max_payload, info.addr_width) == (1, MAX_PAYLOAD, 16)
        await dev.write(addr, data)
        seen["read"] = await dev.read(addr - 3, size + 6)
        assert await dev.read_csr(Csr.ID) == CSR_ID_VALUE
        await dev.write_csr(Csr.PROGRAM_ADDR, 0xDEADBEEF)
        seen["program_addr"] = await dev.read_csr(Csr.PROGRAM_ADDR)
        await dev.start()
        t0 = transport.cycles
        await dev.wait_done(timeout=0.01)
        seen["wait"] = transport.cycles - t0
        seen["counters"] = await dev.counters()
        seen["resends"] = dev.resends

    h.run(host, clocks=200_000)
    expected = before[:addr] + data + before[addr + size:]
    assert bytes(h.memory) == expected
    assert h.writes == size
    assert seen["read"] == expected[addr - 3:addr + size + 3]
    assert seen["program_addr"] == 0xDEADBEEF
    assert seen["counters"] == {"starts": 1, "busy_cycles": RUN_CYCLES}
    assert h.starts == 1 and seen["resends"] == 0
    assert seen["wait"] >= RUN_CYCLES - 20       # it did wait for the accelerator


def test_driver_resends_a_corrupted_request_and_the_link_executes_it_once():
    dut = LinkTop()
    h = Harness(dut, seed=3)
    seen = {}

    class CorruptFirstSend:
        """Flips one payload bit of the first frame sent, as line noise would."""

        def __init__(self, inner):
            self.inner, self.sent = inner, 0

        async def send(self, data):
            self.sent += 1
            if self.sent == 2:           # the first WRITE (the first frame is INFO)
                data = bytearray(data)
                data[9] ^= 0x10
            await self.inner.send(bytes(data))

        async def recv(self, timeout):
            return await self.inner.recv(timeout)

        def now(self):
            return self.inner.now()

    async def host(ctx, transport):
        dev = AsyncDevice(CorruptFirstSend(transport), timeout=0.002)
        await dev.write(0x40, b"\x01\x02\x03\x04\x05\x06")
        seen["read"] = await dev.read(0x40, 6)
        seen["resends"] = dev.resends
        seen["crc_errors"] = ctx.get(dut.link.crc_errors)

    h.run(host, clocks=40_000)
    assert seen["read"] == b"\x01\x02\x03\x04\x05\x06"
    assert seen["resends"] == 1 and seen["crc_errors"] == 1
    assert h.writes == 6                 # the corrupted frame wrote nothing


def test_driver_resends_after_a_lost_response_and_start_happens_once():
    dut = LinkTop()
    h = Harness(dut, seed=4)
    seen = {}

    class LoseFirstStartResponse:
        """Swallows what the link answers to the first CTRL write."""

        def __init__(self, inner):
            self.inner, self.dropping, self.dropped = inner, False, False

        async def send(self, data):
            self.dropping = (not self.dropped and data[1] == Command.WRITE_CSR
                             and data[5] == Csr.CTRL)
            await self.inner.send(data)

        async def recv(self, timeout):
            got = await self.inner.recv(timeout)
            if self.dropping and got:
                while got:               # the rest of that response
                    got = await self.inner.recv(0.0002)
                self.dropping, self.dropped = False, True
            return got

        def now(self):
            return self.inner.now()

    async def host(ctx, transport):
        dev = AsyncDevice(LoseFirstStartResponse(transport), timeout=0.002,
                          counter_names=COUNTERS)
        await dev.start()
        await dev.wait_done(timeout=0.01)
        seen["counters"] = await dev.counters()
        seen["resends"] = dev.resends

    h.run(host, clocks=40_000)
    assert seen["resends"] == 1
    # The retry carried the same sequence number: answered OK, not executed a second time.
    assert h.starts == 1 and seen["counters"]["starts"] == 1


def test_driver_gives_up_with_link_error_when_nothing_answers():
    dut = LinkTop()
    h = Harness(dut, seed=5)
    seen = {}

    class Deaf:
        """Loses every request: the link never hears, so never answers."""

        def __init__(self, inner):
            self.inner = inner

        async def send(self, data):
            pass

        async def recv(self, timeout):
            return await self.inner.recv(timeout)

        def now(self):
            return self.inner.now()

    async def host(ctx, transport):
        dev = AsyncDevice(Deaf(transport), timeout=0.001, retries=2)
        with pytest.raises(LinkError, match=r"^INFO seq 0: no response within 0.001 s after 3 "
                                            r"attempts$"):
            await dev.info()
        seen["resends"] = dev.resends
        seen["cycles"] = transport.cycles

    h.run(host, clocks=10_000)
    assert seen["resends"] == 2
    assert 3000 <= seen["cycles"] <= 3010     # three timeouts of 1000 clocks


# --- hand-made frames ----------------------------------------------------------------------

def test_frames_get_answers_with_their_sequence_numbers_and_statuses():
    dut = LinkTop()
    h = Harness(dut, seed=6)
    before = bytes(h.memory)
    answers, seen_frames = [], []

    async def host(ctx, transport):
        async def ask(command, seq, payload, corrupt=False):
            frame = bytearray(encode_request(command, seq, payload))
            if corrupt:
                frame[-3] ^= 0x01        # a payload bit (or the length, if no payload)
            answers.append(await exchange(transport, bytes(frame)))

        await ask(Command.WRITE, 17, struct.pack("<I", 8) + b"ABCD", corrupt=True)
        await ask(Command.READ, 18, struct.pack("<IH", 8, 4))
        await ask(0x33, 19, b"")                                         # unknown command
        await ask(Command.READ_CSR, 20, b"\x00\x00")                      # one byte too many
        await ask(Command.WRITE, 21, bytes(MAX_PAYLOAD + 1))              # too long to buffer
        await ask(Command.READ, 22, struct.pack("<IH", 0, MAX_PAYLOAD + 1))   # too long
        await ask(Command.READ, 23, struct.pack("<IH", 0, 0))             # empty read is fine
        await ask(Command.READ_CSR, 255, bytes([Csr.COUNTER_COUNT]))
        await ask(Command.INFO, 0, b"")
        # Garbage before a sync byte is skipped.
        await transport.send(b"\x00\x13\x37")
        answers.append(await exchange(transport, encode_request(Command.READ, 24,
                                                                struct.pack("<IH", 8, 2))))
        seen_frames.append(ctx.get(dut.link.frames))

    h.run(host, clocks=40_000)
    got = [(a.command, a.seq, a.status, a.data) for a in answers]
    assert got == [
        (Command.WRITE, 17, Status.BAD_CRC, b""),
        (Command.READ, 18, Status.OK, before[8:12]),
        (0x33, 19, Status.BAD_COMMAND, b""),
        (Command.READ_CSR, 20, Status.BAD_LENGTH, b""),
        (Command.WRITE, 21, Status.BAD_LENGTH, b""),
        (Command.READ, 22, Status.BAD_LENGTH, b""),
        (Command.READ, 23, Status.OK, b""),
        (Command.READ_CSR, 255, Status.OK, struct.pack("<I", len(COUNTERS))),
        (Command.INFO, 0, Status.OK, struct.pack("<BHB", 1, MAX_PAYLOAD, 16)),
        (Command.READ, 24, Status.OK, before[8:10]),
    ]
    assert bytes(h.memory) == before and h.writes == 0   # nothing was written
    assert seen_frames == [10]


def test_a_stalled_partial_frame_is_dropped_and_the_link_recovers():
    dut = LinkTop(timeout_cycles=200)
    h = Harness(dut, seed=7)
    seen = {}

    async def host(ctx, transport):
        frame = encode_request(Command.WRITE, 1, struct.pack("<I", 0) + b"xyz")
        await transport.send(frame[:7])          # header and two payload bytes, then silence
        seen["nothing"] = await transport.recv(0.0005)
        seen["timeouts"] = ctx.get(dut.link.timeouts)
        seen["answer"] = await exchange(transport, encode_request(
            Command.WRITE, 2, struct.pack("<I", 0) + b"xyz"))

    h.run(host, clocks=10_000)
    assert seen["nothing"] == b"" and seen["timeouts"] == 1
    assert (seen["answer"].seq, seen["answer"].status) == (2, Status.OK)
    assert bytes(h.memory[:3]) == b"xyz"


def test_a_repeated_sequence_number_is_not_executed_twice():
    dut = LinkTop()
    h = Harness(dut, seed=8)
    answers = []

    async def host(ctx, transport):
        start = encode_request(Command.WRITE_CSR, 9, bytes([Csr.CTRL]) + struct.pack("<I", 1))
        answers.append(await exchange(transport, start))
        await ctx.tick().repeat(RUN_CYCLES + 10)
        answers.append(await exchange(transport, start))         # a retry: same seq
        await ctx.tick().repeat(RUN_CYCLES + 10)
        answers.append(await exchange(transport, encode_request(
            Command.WRITE_CSR, 10, bytes([Csr.CTRL]) + struct.pack("<I", 1))))  # a new start
        write = encode_request(Command.WRITE, 11, struct.pack("<I", 0x20) + b"once")
        answers.append(await exchange(transport, write))
        answers.append(await exchange(transport, write))          # a retry: same seq

    h.run(host, clocks=10_000)
    assert [(a.seq, a.status) for a in answers] == [(9, Status.OK), (9, Status.OK),
                                                    (10, Status.OK), (11, Status.OK),
                                                    (11, Status.OK)]
    assert h.starts == 2
    assert h.writes == 4 and h.memory[0x20:0x24] == b"once"


# --- on AXI memory, a byte a beat -----------------------------------------------------

class DramTop(wiring.Component):
    """The link's memory port as an AXI4 manager (:class:`HostBusAxi`), as on the board."""

    clk_freq = 1_000_000

    def __init__(self):
        self.link = HostLink(max_payload=MAX_PAYLOAD, timeout_cycles=400)
        self.host_axi = HostBusAxi(data_width=32)
        super().__init__({
            "to_device": In(stream.Signature(8)), "from_device": Out(stream.Signature(8)),
            "m_axi": Out(self.host_axi.signature.members["m_axi"].signature),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.link, m.submodules.host_axi = self.link, self.host_axi
        wiring.connect(m, wiring.flipped(self.to_device), self.link.i_stream)
        wiring.connect(m, self.link.o_stream, wiring.flipped(self.from_device))
        wiring.connect(m, self.link.mem, self.host_axi.bus)
        wiring.connect(m, self.host_axi.m_axi, wiring.flipped(self.m_axi))
        return m


def test_driver_writes_and_reads_axi_memory_byte_by_byte():
    dut = DramTop()
    model = AxiMemoryModel(dut.m_axi, data_width=32, rng=random.Random(9), read_latency=3,
                           write_latency=2, stall_prob=0.3)
    data = bytes(random.Random(10).randrange(256) for _ in range(13))
    seen = {}

    async def host(ctx):
        transport = AmaranthTransport(ctx, dut.to_device, dut.from_device, clk_freq=dut.clk_freq)
        dev = AsyncDevice(transport, timeout=0.003)
        await dev.write(0x1003, data)                 # unaligned start and end
        seen["read"] = await dev.read(0x1000, 20)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(model.run, background=True)
    sim.add_testbench(host)
    sim.run()
    memory = b"".join(model.read_beat(0x1000 // 4 + i).to_bytes(4, "little") for i in range(5))
    assert memory[3:16] == data
    assert seen["read"] == memory
    # Bytes around the write were kept (written with WSTRB, not as whole beats).
    untouched = b"".join(model.fill(0x1000 // 4 + i).to_bytes(4, "little") for i in range(5))
    assert memory[:3] == untouched[:3] and memory[16:] == untouched[16:]


# --- STREAM: payload bytes out of the link's stream port ---------------------------------

class StreamTop(wiring.Component):
    """The link with its stream port; memory and CSR ports left idle (never ready)."""

    clk_freq = 1_000_000

    def __init__(self, *, stream_port=True):
        self.link = HostLink(max_payload=MAX_PAYLOAD, timeout_cycles=400, addr_width=16,
                             stream_port=stream_port)
        super().__init__({
            "to_device": In(stream.Signature(8)), "from_device": Out(stream.Signature(8)),
            **({"pixels": Out(stream.Signature(8))} if stream_port else {}),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = self.link
        wiring.connect(m, wiring.flipped(self.to_device), self.link.i_stream)
        wiring.connect(m, self.link.o_stream, wiring.flipped(self.from_device))
        if self.link.has_stream:
            wiring.connect(m, self.link.stream_out, wiring.flipped(self.pixels))
        return m


def _run_stream_host(dut, host, *, consumer=None, clocks=60_000):
    async def main(ctx):
        await host(ctx, AmaranthTransport(ctx, dut.to_device, dut.from_device,
                                          clk_freq=dut.clk_freq))

    sim = Simulator(dut)
    sim.add_clock(1 / dut.clk_freq)
    if consumer is not None:
        sim.add_testbench(consumer, background=True)
    sim.add_testbench(main)
    sim.run()


def test_stream_sends_payload_bytes_in_order_under_backpressure_once_per_sequence_number():
    dut = StreamTop()
    rng = random.Random(12)
    data = bytes(rng.randrange(256) for _ in range(2 * MAX_PAYLOAD + 7))   # three frames
    got, answers = bytearray(), []

    async def consumer(ctx):
        while True:
            ready = rng.random() < 0.4        # the frozen block takes a pixel now and then
            ctx.set(dut.pixels.ready, ready)
            *_, valid, byte = await ctx.tick().sample(dut.pixels.valid, dut.pixels.payload)
            if valid and ready:
                got.append(byte)

    async def host(ctx, transport):
        await AsyncDevice(transport, timeout=0.003).stream(data)
        frame = encode_request(Command.STREAM, 200, b"xyz")
        answers.append(await exchange(transport, frame))
        answers.append(await exchange(transport, frame))                 # a retry: same seq
        answers.append(await exchange(transport, encode_request(Command.STREAM, 201, b"")))

    _run_stream_host(dut, host, consumer=consumer)
    assert bytes(got) == data + b"xyz"
    assert [(a.seq, a.status) for a in answers] == [(200, Status.OK), (200, Status.OK),
                                                    (201, Status.BAD_LENGTH)]


def test_stream_without_a_stream_port_is_a_bad_command():
    dut = StreamTop(stream_port=False)
    answers = []

    async def host(ctx, transport):
        answers.append(await exchange(transport, encode_request(Command.STREAM, 5, b"ab")))

    _run_stream_host(dut, host)
    assert [(a.seq, a.status) for a in answers] == [(5, Status.BAD_COMMAND)]


# --- co-simulation ---------------------------------------------------------------------------

@pytest.mark.cosim
def test_cosim_driver_through_uart_link_on_axi_ram(tmp_path):
    # The Verilog in Verilator, the driver in cocotb (sim/tb/host_link_tb.py): 100 bytes written
    # through the UART pins, a byte a beat, into cocotbext-axi's AxiRam with latency and
    # paused channels, read back, the accelerator started and its counters read.
    import json

    from hoarfrost.hw.axi import convert
    from hoarfrost.sim.tb.host_link_tb import HostLinkCosimTop
    from hoarfrost.sim.verilator import cocotb_run

    results = tmp_path / "results.json"
    env = {"HOARFROST_LINK_CONFIG": json.dumps({"seed": 3, "read_latency": 8,
                                                "write_latency": 4, "pause_prob": 0.3}),
           "HOARFROST_RESULTS": str(results)}
    result = cocotb_run(convert(HostLinkCosimTop(), name="host_link_top"), "host_link_top",
                        "hoarfrost.sim.tb.host_link_tb", env=env)
    assert result.failed == 0 and result.tests == 1, result.log_tail()
    run = json.loads(results.read_text())["driver_runs_the_accelerator_through_the_uart_link"]
    assert run["resends"] == 0


def test_control_registers_ignore_a_start_while_busy_and_clear_done():
    dut = LinkTop()
    h = Harness(dut, seed=11)
    seen = {}

    async def host(ctx, transport):
        dev = AsyncDevice(transport, timeout=0.002)
        await dev.start()
        seen["busy"] = await dev.read_csr(Csr.STATUS)
        await dev.start()                                 # still busy: ignored
        await dev.wait_done(timeout=0.01)
        seen["done"] = await dev.read_csr(Csr.STATUS)
        await dev.write_csr(Csr.CTRL, CTRL_CLEAR_DONE)
        seen["cleared"] = await dev.read_csr(Csr.STATUS)
        seen["unknown"] = await dev.read_csr(200)

    h.run(host, clocks=20_000)
    assert h.starts == 1
    assert (seen["busy"], seen["done"], seen["cleared"]) == (STATUS_BUSY, STATUS_DONE, 0)
    assert seen["unknown"] == 0


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_argument_errors_quote_the_value():
    with pytest.raises(ValueError, match="^Largest payload must be an integer from 6 to 65535, "
                                         "not 5$"):
        HostLink(max_payload=5)
    with pytest.raises(ValueError, match="^Timeout must be a positive number of cycles, not 0$"):
        HostLink(timeout_cycles=0)
    with pytest.raises(ValueError, match="^Data width must be 8, 16 or 32, not 12$"):
        HostBusSignature(addr_width=8, data_width=12)
    with pytest.raises(ValueError, match="^Counter count must be an integer from 0 to 251, "
                                         "not 300$"):
        ControlRegisters(counters=300)
    gc.collect()  # the blocks that refused their arguments warn when collected; let them here


def test_control_registers_read_banked_counters_and_keep_the_address_bits():
    """``bank_counters``: counters 0 and 1 come from a CounterBank (one cycle of latency, as
    the register read has), counter 2 from its input; ``PROGRAM_ADDR`` keeps 16 bits."""
    from amaranth import Module
    from amaranth.sim import Simulator

    from hoarfrost.hw.counter_bank import CounterBank
    m = Module()
    m.submodules.regs = regs = ControlRegisters(counters=3, bank_counters=2,
                                                program_addr_bits=16)
    m.submodules.bank = bank = CounterBank(2, 24)
    m.d.comb += [bank.rd_index.eq(regs.bank_index), regs.bank_value.eq(bank.rd_value),
                 regs.counters[0].eq(777)]
    got = {}

    async def bench(ctx):
        csr = regs.csr
        ctx.set(bank.events, 0b01)                # counter 0 counts every cycle, 1 never
        for _ in range(100):
            await ctx.tick()
        ctx.set(bank.events, 0)
        await ctx.tick()

        async def access(index, value=None):
            ctx.set(csr.addr, index)
            ctx.set(csr.we, value is not None)
            ctx.set(csr.wdata, value or 0)
            ctx.set(csr.valid, 1)
            await ctx.tick()
            ctx.set(csr.valid, 0)
            assert ctx.get(csr.rvalid) == (value is None)
            return ctx.get(csr.rdata)

        for k in range(3):
            got[k] = await access(Csr.COUNTER_BASE + k)
        got["count"] = await access(Csr.COUNTER_COUNT)
        await access(Csr.PROGRAM_ADDR, 0x1234_5678)
        got["addr"] = await access(Csr.PROGRAM_ADDR)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == {0: 100, 1: 0, 2: 777, "count": 3, "addr": 0x5678}
