"""The accelerator on a board: host link, control registers, accelerator and its memory.

::

    UART rx/tx -- UartHostLink --mem--> HostBusAxi --a--+
                      |                                 AxiShare -- AxiSram (SPRAM / block RAM)
                      +--csr--> ControlRegisters        |
                                  | start, program_addr |
                                  v                     |
                 Accelerator (back end) -- AxiDramBridge --b--+

The host (:mod:`hoarfrost.firmware.host`) writes the firmware, the weights and the input into
the memory over the UART, sets ``PROGRAM_ADDR``, pulses ``CTRL.start``, polls ``STATUS`` and
reads the output and the counters back. The accelerator sees the memory as its DRAM through the
same AXI4 port as in simulation (where cocotbext-axi's ``AxiRam`` serves it); on the ULX3S the
memory may be the board's SDRAM (:class:`~hoarfrost.hw.sdram.AxiSdram`) instead.

With a frozen front end the input does not go through the memory: the host starts the
accelerator and then sends the image's pixels (all channels of a pixel together, raster order)
with the link's ``STREAM`` request; :class:`PixelPacker` gathers each pixel's bytes into one
beat of the frozen block's input, like a camera streaming into it. Sparse engines sit behind
the back end inside the accelerator (its firmware's ``SEND``/``RECVS``)::

    UartHostLink --stream_out--> PixelPacker --pixels--> Accelerator (frozen -> back end -> sparse)

LEDs: ``led 0`` lights while the accelerator runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.accelerator import FROZEN_COUNTERS, Accelerator, sparse_counter_names
from hoarfrost.hw.axi_share import AxiShare, HostBusAxi
from hoarfrost.hw.axi_sram import SPRAM_BYTES, AxiSram
from hoarfrost.hw.backend import BACKEND_COUNTERS
from hoarfrost.hw.dram_bridge import AxiDramBridge, connect_dram
from hoarfrost.hw.host_link import ControlRegisters, UartHostLink
from hoarfrost.hw.line_buffer import pixel_layout
from hoarfrost.hw.sdram import (ULX3S_32MB, AxiSdram, SdramPinsSignature, SdramTiming,
                                connect_platform_sdram)

__all__ = ["BoardTop", "BOARD_COUNTERS", "PixelPacker", "board_counters", "memory_bytes",
           "MEMORIES"]

#: The accelerator's memory: on-chip (SPRAM or block RAM) or the ULX3S's SDRAM.
MEMORIES = ("onchip", "sdram")

#: The counters the host reads from the CSRs, in register order (``Csr.COUNTER_BASE + i``).
BOARD_COUNTERS = (*BACKEND_COUNTERS, "link_frames", "link_crc_errors", "link_timeouts",
                  "uart_errors")


def board_counters(frozen: bool, sparse_engines: int = 0) -> tuple[str, ...]:
    """The CSR counters of a board top with (``frozen``) or without a frozen front end and with
    ``sparse_engines`` sparse engines: the back end's and the link's, then the frozen block's,
    then the engines'."""
    return (*BOARD_COUNTERS, *(FROZEN_COUNTERS if frozen else ()),
            *sparse_counter_names(sparse_engines))


class PixelPacker(wiring.Component):
    """Bytes to pixels: every ``channels`` bytes of ``i_stream`` (channel 0 first) leave as one
    beat of ``o_stream``.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
    o_stream : ``Out(stream.Signature(pixel_layout(channels)))``
        Lane ``c`` is the pixel's byte ``c`` as a signed int8.
    """

    def __init__(self, channels: int):
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Channels must be a positive integer, not {channels!r}")
        self.channels = channels
        super().__init__({"i_stream": In(stream.Signature(8)),
                          "o_stream": Out(stream.Signature(pixel_layout(channels)))})

    def elaborate(self, platform):
        m = Module()
        i, o, n = self.i_stream, self.o_stream, self.channels
        lanes = Signal(8 * n)           # the pixel being gathered, channel 0 in the low byte
        have = Signal(range(n + 1))     # bytes gathered
        m.d.comb += [o.payload.as_value().eq(lanes), o.valid.eq(have == n),
                     i.ready.eq(have != n)]
        with m.If(o.valid & o.ready):
            m.d.sync += have.eq(0)
        with m.If(i.valid & i.ready):
            # each byte enters at the top and the earlier ones move down one lane
            m.d.sync += [lanes.eq((lanes >> 8) | (i.payload << (8 * (n - 1)))),
                         have.eq(have + 1)]
        return m

DATA_WIDTH = 32


def memory_bytes(family: str) -> int:
    """The accelerator's memory on each FPGA family: two SPRAMs side by side on the iCE40
    UP5K (32-bit words), 64 KB of block RAM (32 DP16KD) on the ECP5."""
    return SPRAM_BYTES * DATA_WIDTH // 16 if family == "ice40" else 64 * 1024


class BoardTop(wiring.Component):
    """Everything on the FPGA; elaborated against an amaranth-boards platform.

    Parameters
    ----------
    config : HardwareConfig
        The compiled configuration (``OUT/manifest.json``'s ``config``).
    clk_freq : int
        Clock of the design in Hz (the board's oscillator).
    family : str
        ``"ice40"`` (memory in SPRAM) or ``"ecp5"`` (memory in block RAM).
    baud : int
        UART speed.
    frozen_specs : sequence of frozen layer specs, optional
        The frozen front end (as :class:`~hoarfrost.hw.accelerator.Accelerator`); its input
        comes from the link's ``STREAM`` requests.
    sparse_layers : sequence of (SparseEncoding, Dense, QParams), optional
        The sparse engines behind the back end (as :class:`~hoarfrost.hw.accelerator.
        Accelerator`).
    memory : str
        ``"onchip"`` (:class:`~hoarfrost.hw.axi_sram.AxiSram`) or ``"sdram"`` (ECP5 only: the
        ULX3S's SDRAM through :class:`~hoarfrost.hw.sdram.AxiSdram`, same AXI port; addressed
        as the 32 MB part, which a 64 MB board serves too with half its columns unused).

    Members
    -------
    rx : ``In(1)``, tx : ``Out(1)``
        The UART's lines (from and to the host); on a board, the platform's ``uart`` pins.
    running : ``Out(1)``
        The accelerator is busy; on a board, ``led 0``.
    sdram : ``Out(SdramPinsSignature(ULX3S_32MB))``
        With ``memory="sdram"`` only: the chip's pins (on a board, the ``sdram`` resource's;
        in simulation, for :class:`hoarfrost.sim.sdram_model.SdramChip`).
    """

    def __init__(self, config, *, clk_freq: int, family: str, baud: int = 115200,
                 frozen_specs: Sequence = (), sparse_layers: Sequence = (),
                 memory: str = "onchip"):
        if memory not in MEMORIES or (memory == "sdram" and family != "ecp5"):
            raise ValueError(f"memory must be one of {MEMORIES} (sdram on the ecp5 only), not "
                             f"{memory!r} on the {family}")
        self.config, self.clk_freq, self.family, self.baud = config, clk_freq, family, baud
        self.frozen_specs, self.sparse_layers = tuple(frozen_specs), tuple(sparse_layers)
        self.counter_names = board_counters(bool(self.frozen_specs), len(self.sparse_layers))
        self.memory = memory
        self.memory_bytes = ULX3S_32MB.size if memory == "sdram" else memory_bytes(family)
        pins = {"sdram": Out(SdramPinsSignature(ULX3S_32MB))} if memory == "sdram" else {}
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "running": Out(1),
                          **pins})

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        frozen = self.frozen_specs
        m.submodules.link = link = UartHostLink(clk_freq=self.clk_freq, baud=self.baud,
                                                stream_port=bool(frozen))
        m.submodules.csr = csr = ControlRegisters(counters=len(self.counter_names))
        m.submodules.accel = accel = Accelerator(cfg.backend, frozen,
                                                 scratch_bytes=cfg.scratch_bytes,
                                                 param_depth=cfg.param_depth,
                                                 sparse_layers=self.sparse_layers)
        if frozen:
            m.submodules.packer = packer = PixelPacker(frozen[0].in_channels)
            wiring.connect(m, link.stream_out, packer.i_stream)
            wiring.connect(m, packer.o_stream, accel.pixels)
        m.submodules.bridge = bridge = AxiDramBridge(data_width=DATA_WIDTH)
        m.submodules.host_axi = host_axi = HostBusAxi(data_width=DATA_WIDTH)
        m.submodules.share = share = AxiShare(data_width=DATA_WIDTH)
        if self.memory == "sdram":
            memory = AxiSdram(ULX3S_32MB, SdramTiming(clk_freq=self.clk_freq),
                              data_width=DATA_WIDTH)
            for path, member, value in memory.sdram.signature.flatten(memory.sdram):
                ours = getattr(self.sdram, path[0])
                m.d.comb += ours.eq(value) if member.flow == Out else value.eq(ours)
        else:
            memory = AxiSram(self.memory_bytes, data_width=DATA_WIDTH,
                             spram=self.family == "ice40")
        m.submodules.memory = memory

        wiring.connect(m, link.mem, host_axi.bus)
        wiring.connect(m, link.csr, csr.csr)
        wiring.connect(m, host_axi.m_axi, share.a)
        wiring.connect(m, bridge.m_axi, share.b)
        wiring.connect(m, share.m_axi, memory.s_axi)
        connect_dram(m, accel, bridge)
        m.d.comb += [accel.start.eq(csr.start), accel.program_addr.eq(csr.program_addr),
                     csr.busy.eq(accel.busy), csr.done.eq(accel.done)]
        values = [*(getattr(accel, name) for name in BACKEND_COUNTERS), link.frames,
                  link.crc_errors, link.timeouts, link.uart_errors,
                  *(getattr(accel, name) for name in FROZEN_COUNTERS if frozen),
                  *(getattr(accel, name)
                    for name in sparse_counter_names(len(self.sparse_layers)))]
        m.d.comb += [csr.counters[i].eq(v) for i, v in enumerate(values)]

        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx), self.running.eq(accel.busy)]
        if platform is not None:
            uart = platform.request("uart", 0)
            m.d.comb += [self.rx.eq(uart.rx.i), uart.tx.o.eq(self.tx)]
            m.d.comb += platform.request("led", 0).o.eq(self.running)
            if self.memory == "sdram":
                connect_platform_sdram(m, platform, self.sdram)
        return m
