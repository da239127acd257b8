"""The requantizer: the hardware form of ``sim/arith.py``'s contract.

``y = clamp(zero_point + ((acc * multiplier + 2**(shift-1)) >> shift), lo, hi)``, pipelined in
five stages (input register, partial products, product, round and shift, offset and clamp)
behind a stream handshake. The input register keeps whatever selects the operands (the back
end's drain muxes a result lane and reads a parameter memory) off the multiplier's path. The
product is two unsigned 16 x 16 multiplies (one DSP each on iCE40 and ECP5) of the
accumulator's halves, added in the next stage with the sign's correction. Every
parameter travels with its accumulator, so per-channel multipliers, fused ReLU/ReLU6 bounds and
zero points change from beat to beat at no cost.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.sim.arith import MAX_SHIFT, MULTIPLIER_BITS

SHIFT_BITS = MAX_SHIFT.bit_length()


def _saturate(value, bits: int):
    """Signed ``value`` clamped to the range of ``bits`` signed bits, as ``signed(bits)``: it
    is in range when every bit from ``bits - 1`` up equals the sign."""
    top = value[bits - 1:]
    inside = (top == 0) | (top == (1 << len(top)) - 1)
    bound = Mux(value[-1], 1 << (bits - 1), (1 << (bits - 1)) - 1)     # -2**(bits-1) or max
    return Mux(inside, value[:bits], bound)[:bits].as_signed()


def requant_layout(acc_width: int = 32) -> data.StructLayout:
    """One accumulator and the parameters that scale it."""
    return data.StructLayout({
        "acc": signed(acc_width),
        "multiplier": unsigned(MULTIPLIER_BITS),
        "shift": unsigned(SHIFT_BITS),
        "zero_point": signed(8),
        "lo": signed(8),
        "hi": signed(8),
    })


def _byte_shift_saturated(m, value, bytes_, bits: int):
    """``_saturate(value >> 8 * bytes_, bits)`` for a signed ``value``, built as a multiplexer
    of the ``bits``-wide windows and of one "all sign above the window" flag per shift: a
    barrel shifter of the whole value followed by a saturation would shift bits that are then
    only tested."""
    width = len(value)
    sign = value[-1]
    windows, fits = [], []
    for q in range(1 << len(bytes_)):
        lo = min(8 * q, width - 1)
        window = value.as_signed()[lo:lo + bits] if lo + bits <= width else \
            Cat(value[lo:], *([sign] * (lo + bits - width)))
        above = value[lo + bits - 1:] if lo + bits - 1 < width else sign
        windows.append(window)
        fits.append((above == 0) | (above == (1 << len(above)) - 1))
    chosen = Signal(bits)
    fit = Signal()
    with m.Switch(bytes_):
        for q, (window, ok) in enumerate(zip(windows, fits)):
            with m.Case(q):
                m.d.comb += [chosen.eq(window), fit.eq(ok)]
    bound = Mux(sign, 1 << (bits - 1), (1 << (bits - 1)) - 1)
    return Mux(fit, chosen, bound)[:bits].as_signed()


class Requantizer(wiring.Component):
    """Scale an accumulator back to int8.

    Parameters
    ----------
    acc_width : int
        Width of the signed accumulators (32 for int32).
    saturating_shift : bool
        Shift by ``shift - 1`` in two steps that saturate (by a multiple of 8, then the rest)
        to 12 bits, then round with one 12-bit add, not the whole product's: the same results
        (a value past 10 bits is clamped to the same int8 bound either way) from a narrower
        shifter, rounding adder, offset and clamp.
    held_params : bool
        The user offers the same multiplier, shift, zero point and bounds on ``i_stream``
        from a beat's push until its result is out (it changes them only while nothing is in
        flight), so every stage reads them there instead of carrying its own copy: some 190
        flip-flops fewer.

    Members
    -------
    i_stream : ``In(stream.Signature(requant_layout(acc_width)))``
        Accumulator with its multiplier, shift, output zero point and clamp bounds.
    o_stream : ``Out(stream.Signature(signed(8)))``
        The int8 result, five cycles after its input when the output is not stalled.

    The five stages advance together whenever the last one is empty or being read, so a beat
    per cycle flows at full rate and nothing is lost under backpressure.
    """

    def __init__(self, acc_width: int = 32, *, saturating_shift: bool = False,
                 held_params: bool = False):
        if acc_width < 2:
            raise ValueError(f"acc_width must be at least 2, not {acc_width!r}")
        self.acc_width = acc_width
        self.saturating_shift = saturating_shift
        self.held_params = held_params
        super().__init__({
            "i_stream": In(stream.Signature(requant_layout(acc_width))),
            "o_stream": Out(stream.Signature(signed(8))),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.acc_width + MULTIPLIER_BITS + 1
        advance = Signal()
        m.d.comb += advance.eq(~self.o_stream.valid | self.o_stream.ready)
        m.d.comb += self.i_stream.ready.eq(advance)

        # Stage 0: the operands, registered.
        valid0 = Signal()
        p0 = Signal(requant_layout(self.acc_width), reset_less=True)
        # Stage 1: partial products of the accumulator's unsigned halves. With
        # acc = hi * 2**split + lo - neg * 2**acc_width (two's complement), the product is
        # lo * mult + (hi * mult << split) - (neg ? mult << acc_width : 0).
        split = min(16, self.acc_width)
        validp = Signal()
        lo_product = Signal(split + MULTIPLIER_BITS, reset_less=True)
        hi_product = Signal(self.acc_width - split + MULTIPLIER_BITS, reset_less=True)
        negative = Signal()
        pp = Signal(requant_layout(self.acc_width))
        # Stage 2: the product.
        valid1 = Signal()
        product = Signal(signed(width))
        p1 = Signal(requant_layout(self.acc_width))
        # Stage 3: rounding and the arithmetic shift.
        valid2 = Signal()
        shifted = Signal(signed(12 if self.saturating_shift else width))
        p2 = Signal(requant_layout(self.acc_width))
        params = p0
        if self.held_params:
            # every beat in flight has the parameters the input offers now
            params = pp = p1 = p2 = self.i_stream.payload

        with m.If(advance):
            m.d.sync += [
                valid0.eq(self.i_stream.valid),
                p0.eq(self.i_stream.payload),
                validp.eq(valid0),
                lo_product.eq(p0.acc.as_unsigned()[:split] * params.multiplier),
                hi_product.eq(p0.acc.as_unsigned()[split:] * params.multiplier),
                negative.eq(p0.acc[-1]),
                valid1.eq(validp),
                product.eq(lo_product + (hi_product << split)
                           - Mux(negative, pp.multiplier << self.acc_width, 0)),
                valid2.eq(valid1),
                self.o_stream.valid.eq(valid2),
            ]
            if not self.held_params:
                m.d.sync += [pp.eq(p0), p1.eq(pp), p2.eq(p1)]
            if self.saturating_shift:
                # Round after shifting, on 12 bits instead of 49: for s >= 1,
                # (x + 2**(s-1)) >> s == ((x >> (s-1)) + 1) >> 1. Floor shifts compose:
                # x >> a == (x >> 8 * (a >> 3)) >> (a & 7). Saturating between them to 18 bits
                # and after them to 12 changes no clamped result: past 10 bits, zero_point +
                # value is past every int8 bound, on the same side, and stays so rounded.
                amount = Mux(p1.shift == 0, 0, p1.shift - 1)[:len(p1.shift)]
                coarse = Signal(signed(18))
                floor = Signal(signed(12))
                m.d.comb += coarse.eq(_byte_shift_saturated(m, product, amount[3:], 18))
                m.d.comb += floor.eq(_saturate(coarse >> amount[:3], 12))
                m.d.sync += shifted.eq(Mux(p1.shift == 0, floor, (floor + 1) >> 1))
            else:
                # 2**(shift-1) added before the shift rounds half up; (1 << shift) without its
                # bit 0 is exactly that, and 0 for shift 0.
                half = Signal(unsigned(width))
                m.d.comb += half.eq((Const(1, 1) << p1.shift)[1:])
                m.d.sync += shifted.eq((product + half) >> p1.shift)
            # Stage 4: offset by the zero point and clamp (this also saturates to int8).
            value = Signal(signed(len(shifted) + 1))
            m.d.comb += value.eq(shifted + p2.zero_point)
            with m.If(value < p2.lo):
                m.d.sync += self.o_stream.payload.eq(p2.lo)
            with m.Elif(value > p2.hi):
                m.d.sync += self.o_stream.payload.eq(p2.hi)
            with m.Else():
                m.d.sync += self.o_stream.payload.eq(value)
        return m
