"""UART transmitter and receiver, 8N1, as byte streams.

A character is a start bit (0), eight data bits least significant first and one stop bit (1);
the line idles high. The bit period is ``clk_freq / baud`` clocks, an exact fraction: a
phase accumulator adds ``D`` each clock and ticks when it passes ``N`` (``N / D`` the period
in lowest terms), so every bit lasts ``floor`` or ``ceil`` of the period and the average rate
is exact. 12 MHz at 115200 baud (104.17 clocks per bit) has no rate error at all, and so does
a design clocked at 4.5 times the baud rate.
"""


from fractions import Fraction

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["bit_period", "UartTx", "UartRx", "MIN_CLOCKS_PER_BIT"]

#: The receiver samples mid-bit after a start edge found to within one clock; at fewer than
#: four clocks per bit that clock would be a quarter of the bit or more.
MIN_CLOCKS_PER_BIT = 4


def bit_period(clk_freq: int, baud: int) -> Fraction:
    """Clocks per bit, ``clk_freq / baud`` as an exact fraction, checked to be usable."""
    if not isinstance(clk_freq, int) or clk_freq <= 0:
        raise ValueError(f"Clock frequency must be a positive integer (Hz), not {clk_freq!r}")
    if not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
    period = Fraction(clk_freq, baud)
    if period < MIN_CLOCKS_PER_BIT:
        raise ValueError(f"A {clk_freq} Hz clock gives {float(period):.3g} clocks per bit at "
                         f"{baud} baud; the UART needs at least {MIN_CLOCKS_PER_BIT}")
    return period


def _bit_timer(m: Module, period: Fraction, run, preset=None) -> Signal:
    """A phase accumulator that ticks once per ``period`` clocks while ``run`` is high.

    Returns the tick (combinational, high in the last clock of each period). ``preset`` is
    ``(condition, value)``: load the accumulator with ``value`` when ``condition`` holds (it
    overrides counting), which starts the next period part-way through.
    """
    N, D = period.numerator, period.denominator
    acc = Signal(range(N + D), init=0)
    tick = Signal()
    m.d.comb += tick.eq(run & (acc + D >= N))
    with m.If(run):
        m.d.sync += acc.eq(acc + D - (tick * N))
    if preset is not None:
        condition, value = preset
        with m.If(condition):
            m.d.sync += acc.eq(value)
    return tick


class UartTx(wiring.Component):
    """UART transmitter: each byte taken from ``i_stream`` leaves on ``tx`` as one character.

    Back-to-back bytes leave with no idle time between stop bit and next start bit.

    Parameters
    ----------
    clk_freq : int
        Clock frequency in Hz.
    baud : int
        Bits per second; ``clk_freq / baud`` must be at least :data:`MIN_CLOCKS_PER_BIT`.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes to send.
    tx : ``Out(1)``
        The serial line (idle high).
    busy : ``Out(1)``
        A character is being sent.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, *, clk_freq: int, baud: int):
        self.period = bit_period(clk_freq, baud)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)   # the line, LSB first; ones shift in behind the stop bit
        bits = Signal(range(11))         # bits still to finish
        busy = bits != 0
        start = Signal()
        tick = _bit_timer(m, self.period, busy, preset=(start & ~busy, 0))

        m.d.comb += [
            self.tx.eq(shreg[0]),
            self.busy.eq(busy),
            # Ready in the last clock of the stop bit too, so characters follow without a gap.
            self.i_stream.ready.eq(~busy | (tick & (bits == 1))),
            start.eq(self.i_stream.valid & self.i_stream.ready),
        ]
        with m.If(tick):
            m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1)]
        with m.If(start):
            m.d.sync += [shreg.eq(Cat(0, self.i_stream.payload, 1)), bits.eq(10)]
        return m


class UartRx(wiring.Component):
    """UART receiver: each character on ``rx`` with a good stop bit becomes a byte on ``o_stream``.

    ``rx`` passes a two-flop synchronizer (it comes from another clock domain, the host's).
    A falling edge in idle starts a character; the receiver then samples the middle of every
    bit: the start bit again (a glitch shorter than half a bit is ignored), eight data bits and
    the stop bit. A stop bit of 0 is a framing error: the byte is dropped, ``framing_error``
    pulses, and the receiver waits for the line to go high again (so a held-low line, a
    *break*, is one error, not a stream of zero bytes). A byte that completes while the last
    one has not yet been taken is dropped and ``overrun`` pulses.

    Parameters
    ----------
    clk_freq : int
        Clock frequency in Hz.
    baud : int
        Bits per second; ``clk_freq / baud`` must be at least :data:`MIN_CLOCKS_PER_BIT`.

    Members
    -------
    rx : ``In(1)``
        The serial line (idle high).
    o_stream : ``Out(stream.Signature(8))``
        Bytes received.
    framing_error : ``Out(1)``
        Pulses one clock for each character whose stop bit was 0.
    overrun : ``Out(1)``
        Pulses one clock for each byte dropped because ``o_stream`` was not ready.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, clk_freq: int, baud: int):
        self.period = bit_period(clk_freq, baud)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1, stages=2)

        shreg = Signal(8)
        nbits = Signal(range(8))
        receiving = Signal()
        edge = Signal()
        # The edge is seen up to one clock after it happened; preset half a period less half a
        # clock so the first tick lands, on average, in the middle of the start bit.
        N, D = self.period.numerator, self.period.denominator
        half = (N + D) // 2
        tick = _bit_timer(m, self.period, receiving, preset=(edge, half))

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM(name="rx_fsm"):
            with m.State("IDLE"):
                m.d.comb += edge.eq(~rx)
                with m.If(~rx):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += receiving.eq(1)
                with m.If(tick):
                    m.d.sync += nbits.eq(0)
                    with m.If(rx):
                        m.next = "IDLE"      # a glitch, not a start bit
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += receiving.eq(1)
                with m.If(tick):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), nbits.eq(nbits + 1)]
                    with m.If(nbits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.comb += receiving.eq(1)
                with m.If(tick):
                    with m.If(~rx):
                        m.d.comb += self.framing_error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        # Back to idle at mid-stop-bit: half a bit remains to find the next edge.
                        m.next = "IDLE"
                        with m.If(self.o_stream.valid & ~self.o_stream.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o_stream.valid.eq(1),
                                         self.o_stream.payload.eq(shreg)]
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m
