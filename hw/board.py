"""The accelerator on a board: host link, control registers, accelerator and its memory.

On the ULX3S (ECP5) the memory is an AXI4 subordinate, block RAM or the board's SDRAM::

    UART rx/tx -- UartHostLink --mem--> HostBusAxi --a--+
                      |                                 AxiShare -- AxiSram (block RAM)
                      +--csr--> ControlRegisters        |           or AxiSdram (SDRAM)
                                  | start, program_addr |
                                  v                     |
                 Accelerator (back end) -- AxiDramBridge --b--+

The accelerator sees the memory as its DRAM through the same AXI4 port as in simulation (where
cocotbext-axi's ``AxiRam`` serves it), so the SDRAM controller
(:class:`~hoarfrost.hw.sdram.AxiSdram`) plugs in where the block RAM is.

On the iCEBreaker (iCE40 UP5K) the memory is the chip's SPRAM, and the link's byte bus and the
back end's byte-stream DRAM port go straight to it::

    UART rx/tx -- UartHostLink --mem--> StreamSram (SPRAM) <--rd/wr streams-- Accelerator
                      +--csr--> ControlRegisters --start, program_addr--> (back end)

The UP5K (5,280 logic cells) has no room for the AXI path, which an on-chip RAM does not need:
its bridge, share, host adapter and AXI memory take some 2,200 LUT4 (yosys ``synth_ice40
-noabc -noflatten``), :class:`~hoarfrost.hw.stream_sram.StreamSram` about 210; synthesized whole
(``-dsp -abc9``) the iCEBreaker's top went from 10,649 LUT4 to 9,261, and from 14,023 logic
cells to 11,930 as nextpnr packs them. With a serial back end (the iCEBreaker's preset) the
back end's counters and the link's are counted in a
:class:`~hoarfrost.hw.counter_bank.CounterBank` that the CSRs read: the top fits the UP5K
(5,194 logic cells).

The host (:mod:`hoarfrost.firmware.host`) writes the firmware, the weights and the input into
the memory over the UART, sets ``PROGRAM_ADDR``, pulses ``CTRL.start``, polls ``STATUS`` and
reads the output and the counters back.

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

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.accelerator import FROZEN_COUNTERS, Accelerator, sparse_counter_names
from hoarfrost.hw.axi_share import AxiShare, HostBusAxi
from hoarfrost.hw.axi_sram import SPRAM_BYTES, AxiSram
from hoarfrost.hw.counter_bank import CounterBank
from hoarfrost.hw.backend import BACKEND_COUNTERS
from hoarfrost.hw.dram_bridge import AxiDramBridge, connect_dram
from hoarfrost.hw.host_link import ControlRegisters, UartHostLink
from hoarfrost.hw.line_buffer import pixel_layout
from hoarfrost.hw.serial_backend import SERIAL_COUNTERS
from hoarfrost.hw.sdram import (ULX3S_32MB, AxiSdram, SdramPinsSignature, SdramTiming,
                                connect_platform_sdram)
from hoarfrost.hw.stream_sram import StreamSram

__all__ = ["BoardTop", "BOARD_COUNTERS", "LINK_COUNTERS", "PixelPacker", "board_counters", "memory_bytes",
           "MEMORIES"]

#: The accelerator's memory: on-chip (SPRAM or block RAM) or the ULX3S's SDRAM.
MEMORIES = ("onchip", "sdram")

#: The counters the host reads from the CSRs, in register order (``Csr.COUNTER_BASE + i``).
BOARD_COUNTERS = (*BACKEND_COUNTERS, "link_frames", "link_crc_errors", "link_timeouts",
                  "uart_errors")


#: The link's counters, after the back end's.
LINK_COUNTERS = ("link_frames", "link_crc_errors", "link_timeouts", "uart_errors")


def board_counters(frozen: bool, sparse_engines: int = 0, *,
                   serial: bool = False) -> tuple[str, ...]:
    """The CSR counters of a board top with (``frozen``) or without a frozen front end and with
    ``sparse_engines`` sparse engines: the back end's and the link's, then the frozen block's,
    then the engines'. A serial back end (``serial``) has its own, fewer counters
    (:data:`~hoarfrost.hw.serial_backend.SERIAL_COUNTERS`; expand them with
    :func:`~hoarfrost.hw.serial_backend.backend_counters`)."""
    if serial:
        return (*SERIAL_COUNTERS, *LINK_COUNTERS)
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

#: Bits of the iCE40's memory word (:class:`~hoarfrost.hw.stream_sram.StreamSram`): one SPRAM's
#: width, the two SPRAMs one above the other.
ICE40_WORD_BITS = 16


def memory_bytes(family: str) -> int:
    """The accelerator's memory on each FPGA family: two SPRAMs on the iCE40 UP5K (64 KB),
    64 KB of block RAM (32 DP16KD) on the ECP5."""
    return 2 * SPRAM_BYTES if family == "ice40" else 64 * 1024


class BoardTop(wiring.Component):
    """Everything on the FPGA; elaborated against an amaranth-boards platform.

    Parameters
    ----------
    config : HardwareConfig
        The compiled configuration (``OUT/manifest.json``'s ``config``).
    clk_freq : int
        Clock of the design in Hz (the board's oscillator).
    family : str
        ``"ice40"`` (memory in SPRAM, on :class:`~hoarfrost.hw.stream_sram.StreamSram`) or
        ``"ecp5"`` (memory in block RAM or SDRAM, behind the AXI bridge; see the module
        docstring).
    baud : int
        UART speed.
    frozen_specs : sequence of frozen layer specs, optional
        The frozen front end (as :class:`~hoarfrost.hw.accelerator.Accelerator`); its input
        comes from the link's ``STREAM`` requests.
    sparse_layers : sequence of (SparseEncoding, Dense, QParams), optional
        The sparse engines behind the back end (as :class:`~hoarfrost.hw.accelerator.
        Accelerator`).
    memory : str
        ``"onchip"`` (:class:`~hoarfrost.hw.axi_sram.AxiSram` on the ECP5,
        :class:`~hoarfrost.hw.stream_sram.StreamSram` on the iCE40) or ``"sdram"`` (ECP5
        only: the ULX3S's SDRAM through :class:`~hoarfrost.hw.sdram.AxiSdram`, same AXI port;
        addressed as the 32 MB part, which a 64 MB board serves too with half its columns
        unused).
    spram : bool, optional
        iCE40 only: build the memory from SB_SPRAM256KA primitives (the default) or, with
        ``False``, from :class:`~amaranth.lib.memory.Memory`, for a simulator without a model
        of the primitive (the co-simulation adds yosys's, and runs the SPRAMs).

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
                 memory: str = "onchip", spram: bool | None = None):
        if memory not in MEMORIES or (memory == "sdram" and family != "ecp5"):
            raise ValueError(f"memory must be one of {MEMORIES} (sdram on the ecp5 only), not "
                             f"{memory!r} on the {family}")
        if spram is not None and family != "ice40":
            raise ValueError(f"spram is for the ice40 only, not the {family}")
        self.spram = family == "ice40" if spram is None else spram
        self.config, self.clk_freq, self.family, self.baud = config, clk_freq, family, baud
        self.frozen_specs, self.sparse_layers = tuple(frozen_specs), tuple(sparse_layers)
        self.serial = config is not None and config.backend.serial
        self.counter_names = board_counters(bool(self.frozen_specs), len(self.sparse_layers),
                                            serial=self.serial)
        self.memory = memory
        self.memory_bytes = ULX3S_32MB.size if memory == "sdram" else memory_bytes(family)
        pins = {"sdram": Out(SdramPinsSignature(ULX3S_32MB))} if memory == "sdram" else {}
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "running": Out(1),
                          **pins})

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        frozen = self.frozen_specs
        ice40 = self.family == "ice40"
        # On the iCE40 the link's addresses are the memory's 16 bits (INFO reports them).
        narrow = {"addr_width": self.memory_bytes.bit_length() - 1} if ice40 else {}
        m.submodules.link = link = UartHostLink(clk_freq=self.clk_freq, baud=self.baud,
                                                stream_port=bool(frozen), **narrow)
        # A serial back end's counters and the link's live in a counter bank (block RAM),
        # which the CSRs read one at a time: no flip-flops or multiplexer of 24-bit counters.
        banked = len(SERIAL_COUNTERS) + len(LINK_COUNTERS) if self.serial else 0
        m.submodules.csr = csr = ControlRegisters(
            counters=len(self.counter_names), bank_counters=banked,
            program_addr_bits=(self.memory_bytes - 1).bit_length())
        m.submodules.accel = accel = Accelerator(cfg.backend, frozen,
                                                 scratch_bytes=cfg.scratch_bytes,
                                                 param_depth=cfg.param_depth,
                                                 sparse_layers=self.sparse_layers,
                                                 counter_events=self.serial)
        if self.serial:
            m.submodules.counters = bank = CounterBank(banked, cfg.backend.counter_width,
                                                       clearable=len(SERIAL_COUNTERS))
            # The link counts into its own counters; each count toggles their bit 0, which is
            # all of them the bank needs (the rest is then unused and not built). The back
            # end's counters restart at its start, the link's run on.
            link_events = []
            for counter in (link.frames, link.crc_errors, link.timeouts, link.uart_errors):
                last = Signal()
                m.d.sync += last.eq(counter[0])
                link_events.append(counter[0] ^ last)
            m.d.comb += [bank.events.eq(Cat(accel.events, *link_events)),
                         bank.clear.eq(Mux(accel.events_clear, -1, 0)),
                         bank.rd_index.eq(csr.bank_index), csr.bank_value.eq(bank.rd_value)]
        if frozen:
            m.submodules.packer = packer = PixelPacker(frozen[0].in_channels)
            wiring.connect(m, link.stream_out, packer.i_stream)
            wiring.connect(m, packer.o_stream, accel.pixels)
        if ice40:
            # The SPRAM serves the link and the back end directly (see the module docstring).
            m.submodules.memory = memory = StreamSram(self.memory_bytes,
                                                      data_width=ICE40_WORD_BITS,
                                                      spram=self.spram, **narrow)
            wiring.connect(m, link.mem, memory.bus)
            wiring.connect(m, link.csr, csr.csr)
            connect_dram(m, accel, memory)
        else:
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
                memory = AxiSram(self.memory_bytes, data_width=DATA_WIDTH)
            m.submodules.memory = memory

            wiring.connect(m, link.mem, host_axi.bus)
            wiring.connect(m, link.csr, csr.csr)
            wiring.connect(m, host_axi.m_axi, share.a)
            wiring.connect(m, bridge.m_axi, share.b)
            wiring.connect(m, share.m_axi, memory.s_axi)
            connect_dram(m, accel, bridge)
        m.d.comb += [accel.start.eq(csr.start), accel.program_addr.eq(csr.program_addr),
                     csr.busy.eq(accel.busy), csr.done.eq(accel.done)]
        if not self.serial:
            values = [*(getattr(accel, name) for name in BACKEND_COUNTERS),
                      link.frames, link.crc_errors, link.timeouts, link.uart_errors,
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
