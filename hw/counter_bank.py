"""Event counters in block RAM: wide counters for a design that has no flip-flops to spare.

A ``W``-bit counter in flip-flops costs ``W`` logic cells and ``W`` bits of every mux that reads
it. :class:`CounterBank` keeps only the low ``L`` bits of each counter in flip-flops and the
high ``W - L`` in block RAM, which one shared adder updates: a *scanner* visits the counters in
turn, two cycles each (read, then write back plus the carry), and moves each one's pending
carry (a flag set when its low bits wrap) into the RAM. With ``2**L > 2 * count`` a counter
cannot wrap twice between two visits, so no carry is lost. A second read port of the RAM serves
reads of any counter at any time, so no multiplexer of whole counters is built.

(Rocket Chip's ``WideCounter`` splits a counter the same way, a small low part that counts
every event and a high part that counts its carries; here the high parts share one RAM and
one adder.)
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["CounterBank"]


class CounterBank(wiring.Component):
    """``count`` wrapping ``width``-bit event counters, read one at a time.

    Parameters
    ----------
    count : int
        Number of counters.
    width : int
        Bits of each counter (it wraps).
    clearable : int, optional
        How many of the counters (the first) ``clear`` can clear; all by default. The others
        run on from power-up.
    low_bits : int, optional
        Bits of each counter kept in flip-flops; by default the fewest with
        ``2**low_bits > 2 * count`` (what keeps every carry).

    Members
    -------
    events : ``In(count)``
        Bit ``i``: counter ``i`` counts one this cycle.
    clear : ``In(clearable)``
        Bit ``i``: counter ``i`` is 0 from the next cycle on (its event of this cycle is not
        counted).
    rd_index : ``In(range(count))``
        The counter to read.
    rd_value : ``Out(width)``
        The value counter ``rd_index`` had in the cycle before (before that cycle's events and
        clears): a read has one cycle of latency, like a block RAM's.
    """

    def __init__(self, count: int, width: int, *, clearable: int | None = None,
                 low_bits: int | None = None):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}")
        clearable = count if clearable is None else clearable
        if not isinstance(clearable, int) or not 0 <= clearable <= count:
            raise ValueError(f"clearable must be an integer from 0 to {count}, not "
                             f"{clearable!r}")
        least = (2 * count).bit_length()          # 2**least > 2 * count
        if low_bits is None:
            low_bits = least
        if not isinstance(low_bits, int) or low_bits < least:
            raise ValueError(f"low_bits must be at least {least} for {count} counters (a "
                             f"counter must not wrap twice between visits), not {low_bits!r}")
        if not isinstance(width, int) or width <= low_bits:
            raise ValueError(f"width must be an integer above low_bits = {low_bits}, not "
                             f"{width!r}")
        self.count, self.width, self.low_bits = count, width, low_bits
        self.clearable = clearable
        super().__init__({
            "events": In(count),
            "clear": In(max(clearable, 1)),
            "rd_index": In(range(count)),
            "rd_value": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        n, low = self.count, self.low_bits
        high_bits = self.width - low
        # (block RAM even for a few counters: in flip-flops it would be what this avoids)
        m.submodules.high = high = Memory(shape=high_bits, depth=n, init=[],
                                          attrs={"ram_style": "block"})
        scan_rd, host_rd = high.read_port(), high.read_port()
        scan_wr = high.write_port()

        lows = Array(Signal(low, name=f"low{i}") for i in range(n))
        pending = Signal(n)            # bit i: counter i's low bits wrapped, not yet carried
        zero = Signal(n)               # bit i: counter i's high part reads as 0 (cleared)

        # The scanner: counter `scan` is read in phase 0 and written back in phase 1.
        scan = Signal(range(n))
        phase = Signal()
        m.d.sync += phase.eq(~phase)
        m.d.comb += scan_rd.addr.eq(scan)
        writing = Signal(n)            # one-hot: the counter written back this cycle
        with m.If(phase):
            m.d.comb += [scan_wr.addr.eq(scan), scan_wr.en.eq(1),
                         scan_wr.data.eq(Mux(zero.bit_select(scan, 1), 0, scan_rd.data)
                                         + pending.bit_select(scan, 1)),
                         writing.eq(1 << scan)]
            m.d.sync += scan.eq(Mux(scan == n - 1, 0, scan + 1))

        for i in range(n):
            wrap = Signal(name=f"wrap{i}")
            m.d.comb += wrap.eq(self.events[i] & (lows[i] == (1 << low) - 1))
            with m.If(self.events[i]):
                m.d.sync += lows[i].eq(lows[i] + 1)
            # a carry written back now leaves the flag, unless a new one arrives
            m.d.sync += pending[i].eq(wrap | (pending[i] & ~writing[i]))
            with m.If(writing[i]):
                m.d.sync += zero[i].eq(0)
            if i < self.clearable:          # (a clear wins over all of the above)
                with m.If(self.clear[i]):
                    m.d.sync += [lows[i].eq(0), pending[i].eq(0), zero[i].eq(1)]

        # Reads: the RAM's second port and a snapshot of the flip-flop parts, both taken at
        # the edge that ends the cycle rd_index is presented (before its write-back).
        m.d.comb += host_rd.addr.eq(self.rd_index)
        low_r = Signal(low)
        pending_r, zero_r = Signal(), Signal()
        m.d.sync += [low_r.eq(lows[self.rd_index]),
                     pending_r.eq(pending.bit_select(self.rd_index, 1)),
                     zero_r.eq(zero.bit_select(self.rd_index, 1))]
        high_value = Signal(high_bits)
        m.d.comb += [high_value.eq(Mux(zero_r, 0, host_rd.data) + pending_r),
                     self.rd_value.eq(Cat(low_r, high_value))]
        return m

