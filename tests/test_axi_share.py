"""AxiShare + HostBusAxi: the host's byte accesses and a burst manager share one AxiSram."""

import random

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hoarfrost.hw.axi import AxiResp, AxiSignature
from hoarfrost.hw.axi_share import AxiShare, HostBusAxi
from hoarfrost.hw.axi_sram import AxiSram
from hoarfrost.hw.host_link import HostBusSignature

from axi_manager import burst_coroutine

SIZE = 2048
HOST_REGION = range(0, 1024)          # bytes the host touches
BURST_BEATS = range(256, 512)         # beats (of 4 bytes) the burst manager touches


class ShareTop(wiring.Component):
    def __init__(self):
        super().__init__({
            "host": In(HostBusSignature(addr_width=32, data_width=8)),
            "b": In(AxiSignature(data_width=32, wstrb=True)),
            "owner": Out(1), "host_errors": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.host_axi = host_axi = HostBusAxi()
        m.submodules.share = share = AxiShare()
        m.submodules.sram = sram = AxiSram(SIZE)
        wiring.connect(m, wiring.flipped(self.host), host_axi.bus)
        wiring.connect(m, host_axi.m_axi, share.a)
        wiring.connect(m, wiring.flipped(self.b), share.b)
        wiring.connect(m, share.m_axi, sram.s_axi)
        m.d.comb += [self.owner.eq(share.owner), self.host_errors.eq(host_axi.errors)]
        return m


async def host_access(ctx, bus, rng, addr, value=None):
    """One access on the host bus: a write of ``value``, or a read returning the byte."""
    ctx.set(bus.addr, addr)
    ctx.set(bus.we, value is not None)
    ctx.set(bus.wdata, value or 0)
    ctx.set(bus.valid, 1)
    await ctx.tick().until(bus.ready)
    ctx.set(bus.valid, 0)
    if value is None:
        *_, data = await ctx.tick().sample(bus.rdata).until(bus.rvalid)
        return data
    return None


@pytest.mark.parametrize("seed, stall_prob", [(1, 0.0), (2, 0.4)])
def test_host_bytes_and_bursts_interleave_without_loss(seed, stall_prob):
    dut = ShareTop()
    rng = random.Random(seed)
    host_ops = [(rng.choice(HOST_REGION), rng.getrandbits(8)) for _ in range(40)]
    bursts, expected, memory = [], [], {}
    for _ in range(10):
        beat = rng.randrange(BURST_BEATS.start, BURST_BEATS.stop - 16)
        beats = rng.randint(1, 16)
        if rng.random() < 0.5:
            data = [rng.getrandbits(32) for _ in range(beats)]
            bursts.append(("w", beat, data, [0xF] * beats))
            memory.update({beat + i: d for i, d in enumerate(data)})
        else:
            bursts.append(("r", beat, beats))
            expected.append([memory.get(beat + i, 0) for i in range(beats)])
    host_reads, owners = [], set()
    reads, writes = [], []

    async def host(ctx):
        written = {}
        for addr, value in host_ops:
            await host_access(ctx, dut.host, rng, addr, value)
            written[addr] = value
            owners.add(ctx.get(dut.owner))
            await ctx.tick()
        for addr in sorted(written):
            host_reads.append((await host_access(ctx, dut.host, rng, addr), written[addr]))

    async def manager(ctx):
        await burst_coroutine(ctx, dut.b, bursts, 4, random.Random(seed + 7), stall_prob,
                              reads, writes)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.add_testbench(manager)
    sim.run()
    assert [got for got, _ in host_reads] == [want for _, want in host_reads]
    assert [[d for d, *_ in got] for got in reads] == expected
    assert all(resp == AxiResp.OKAY for got in reads for _, resp, _, _ in got)
    assert writes == [[AxiResp.OKAY, 3]] * sum(b[0] == "w" for b in bursts)
    assert owners == {0, 1}                            # both took turns


def test_host_access_past_the_end_counts_an_error():
    dut = ShareTop()

    async def host(ctx):
        await host_access(ctx, dut.host, None, SIZE + 5, 0x12)
        assert await host_access(ctx, dut.host, None, SIZE + 5) == 0
        await ctx.tick()
        assert ctx.get(dut.host_errors) == 2

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.run()
