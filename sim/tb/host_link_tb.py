"""cocotb testbench: the host driver against the UART host link's Verilog on an AXI RAM.

:class:`HostLinkCosimTop` is the design: a host-side ``UartTx``/``UartRx`` pair wired pin to
pin to a :class:`~hoarfrost.hw.host_link.UartHostLink` (4.5 clocks per bit), whose memory port
reaches cocotbext-axi's ``AxiRam`` as an AXI4 manager (:class:`~hoarfrost.hw.axi_share.HostBusAxi`,
as on the board), and whose CSR port serves
:class:`~hoarfrost.hw.host_link.ControlRegisters` of a stand-in accelerator (busy for
``RUN_CYCLES`` after each start; counters: starts and busy cycles).

:class:`CocotbTransport` is the driver's :class:`~hoarfrost.firmware.host.AsyncTransport` on
the host-side byte streams, so :class:`~hoarfrost.firmware.host.AsyncDevice` here runs the very
code a board's :class:`~hoarfrost.firmware.host.Device` runs.

Configuration: JSON in ``$HOARFROST_LINK_CONFIG`` with ``seed``, ``read_latency``,
``write_latency`` (of the RAM, as in ``dma_tb``) and ``pause_prob`` (AXI channels paused per
cycle). Results (``$HOARFROST_RESULTS``): cycles and resends of the run.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.simtime import get_sim_time
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiBus

from hoarfrost.firmware.host import CSR_ID_VALUE, AsyncDevice, Csr
from hoarfrost.hw.axi_share import HostBusAxi
from hoarfrost.hw.host_link import ControlRegisters, UartHostLink
from hoarfrost.hw.uart import UartRx, UartTx
from hoarfrost.sim.streams import StreamDriver, StreamSink
from hoarfrost.sim.tb.common import CLOCK_NS, clock_and_reset, save_results
from hoarfrost.sim.tb.dma_tb import LatencyAxiRam

#: The link's clock and baud rate: 4.5 clocks per bit, a ratio that is not a whole number.
CLK_FREQ, BAUD = 9_000_000, 2_000_000
RUN_CYCLES = 500
COUNTERS = ("starts", "busy_cycles")
MEMORY_BYTES = 1 << 16


class HostLinkCosimTop(wiring.Component):
    """The design under test (see the module docstring).

    Members
    -------
    to_device : ``In(stream.Signature(8))``
        Bytes the host sends (into the host-side UART transmitter).
    from_device : ``Out(stream.Signature(8))``
        Bytes the host receives (from the host-side UART receiver).
    m_axi : ``Out(AxiSignature(32, 32, 4, wstrb=True))``
        The DRAM.
    """

    def __init__(self):
        self.link = UartHostLink(clk_freq=CLK_FREQ, baud=BAUD, max_payload=64,
                                 timeout_cycles=20 * 45)
        self.host_axi = HostBusAxi(data_width=32)
        super().__init__({
            "to_device": In(stream.Signature(8)), "from_device": Out(stream.Signature(8)),
            "m_axi": Out(self.host_axi.signature.members["m_axi"].signature),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.host_tx = host_tx = UartTx(clk_freq=CLK_FREQ, baud=BAUD)
        m.submodules.host_rx = host_rx = UartRx(clk_freq=CLK_FREQ, baud=BAUD)
        m.submodules.link = link = self.link
        m.submodules.host_axi = host_axi = self.host_axi
        m.submodules.regs = regs = ControlRegisters(counters=len(COUNTERS))

        wiring.connect(m, wiring.flipped(self.to_device), host_tx.i_stream)
        wiring.connect(m, host_rx.o_stream, wiring.flipped(self.from_device))
        m.d.comb += [link.rx.eq(host_tx.tx), host_rx.rx.eq(link.tx)]
        wiring.connect(m, link.mem, host_axi.bus)
        wiring.connect(m, host_axi.m_axi, wiring.flipped(self.m_axi))
        wiring.connect(m, link.csr, regs.csr)

        # A stand-in accelerator: busy for RUN_CYCLES after a start, then a done pulse.
        left = Signal(range(RUN_CYCLES + 1))
        starts, busy_cycles = Signal(32), Signal(32)
        m.d.comb += [regs.busy.eq(left != 0), regs.done.eq(left == 1),
                     regs.counters[0].eq(starts), regs.counters[1].eq(busy_cycles)]
        with m.If(regs.start):
            m.d.sync += [left.eq(RUN_CYCLES), starts.eq(starts + 1)]
        with m.Elif(left != 0):
            m.d.sync += [left.eq(left - 1), busy_cycles.eq(busy_cycles + 1)]
        return m


class CocotbTransport:
    """:class:`~hoarfrost.firmware.host.AsyncTransport` on a design's byte streams in cocotb.

    Parameters
    ----------
    dut, clk
        The toplevel and its clock.
    to_device, from_device : str
        Stream port prefixes (``"to_device"`` for ``to_device__valid`` ...).
    clk_freq : int
        The design's clock in Hz: the driver's seconds are this clock's.
    """

    def __init__(self, dut, clk, *, to_device: str, from_device: str, clk_freq: int):
        rng = random.Random(0)          # no idle cycles or stalls: the UART paces the bytes
        self._driver = StreamDriver(dut, to_device, clk, rng)
        self._sink = StreamSink(dut, from_device, clk, rng)
        self._sink.start()
        self._clk, self._clk_freq = clk, clk_freq

    @property
    def cycles(self) -> int:
        """Clock cycles simulated so far."""
        return int(get_sim_time("ns")) // CLOCK_NS

    async def send(self, data: bytes) -> None:
        await self._driver.send(data)

    async def recv(self, timeout: float) -> bytes:
        for _ in range(max(1, round(timeout * self._clk_freq))):
            if self._sink.items:
                break
            await RisingEdge(self._clk)
        data = bytes(self._sink.items)
        self._sink.items.clear()
        return data

    def now(self) -> float:
        return self.cycles / self._clk_freq


@cocotb.test()
async def driver_runs_the_accelerator_through_the_uart_link(dut):
    config = json.loads(os.environ.get("HOARFROST_LINK_CONFIG", "{}"))
    rng = random.Random(config.get("seed", 1))
    await clock_and_reset(dut, low=("to_device__valid", "from_device__ready"))
    ram = LatencyAxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=MEMORY_BYTES,
                        read_latency=config.get("read_latency", 1),
                        write_latency=config.get("write_latency", 1))
    ram.pause_all(rng, config.get("pause_prob", 0.0))
    background = bytes(rng.randrange(256) for _ in range(256))
    ram.write(0x2000, background)

    transport = CocotbTransport(dut, dut.clk, to_device="to_device", from_device="from_device",
                                clk_freq=CLK_FREQ)
    dev = AsyncDevice(transport, timeout=0.002, counter_names=COUNTERS)
    data = bytes(rng.randrange(256) for _ in range(100))
    await dev.write(0x2011, data)                       # two frames, unaligned at both ends
    expected = background[:0x11] + data + background[0x11 + 100:]
    assert ram.read(0x2000, 256) == expected, "the AXI RAM does not hold what was written"
    assert await dev.read(0x2000, 140) == expected[:140]
    assert await dev.read_csr(Csr.ID) == CSR_ID_VALUE
    start_cycle = transport.cycles
    await dev.start()
    await dev.wait_done(timeout=0.01)
    waited = transport.cycles - start_cycle
    assert waited >= RUN_CYCLES, f"done after {waited} cycles, before the run could end"
    counters = await dev.counters()
    assert counters == {"starts": 1, "busy_cycles": RUN_CYCLES}, counters
    save_results("driver_runs_the_accelerator_through_the_uart_link",
                 {"cycles": transport.cycles, "resends": dev.resends})
