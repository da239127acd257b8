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


class Requantizer(wiring.Component):
    """Scale an accumulator back to int8.

    Parameters
    ----------
    acc_width : int
        Width of the signed accumulators (32 for int32).
    saturating_shift : bool
        Shift in two steps that saturate (by ``8 * (shift >> 3)``, then ``shift & 7``) and
        keep 10 bits, not the whole product: the same results (a value past 10 bits is clamped
        to the same int8 bound either way) from a narrower shifter, offset and clamp.

    Members
    -------
    i_stream : ``In(stream.Signature(requant_layout(acc_width)))``
        Accumulator with its multiplier, shift, output zero point and clamp bounds.
    o_stream : ``Out(stream.Signature(signed(8)))``
        The int8 result, five cycles after its input when the output is not stalled.

    The five stages advance together whenever the last one is empty or being read, so a beat
    per cycle flows at full rate and nothing is lost under backpressure.
    """

    def __init__(self, acc_width: int = 32, *, saturating_shift: bool = False):
        if acc_width < 2:
            raise ValueError(f"acc_width must be at least 2, not {acc_width!r}")
        self.acc_width = acc_width
        self.saturating_shift = saturating_shift
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
        p0 = Signal(requant_layout(self.acc_width))
        # Stage 1: partial products of the accumulator's unsigned halves. With
        # acc = hi * 2**split + lo - neg * 2**acc_width (two's complement), the product is
        # lo * mult + (hi * mult << split) - (neg ? mult << acc_width : 0).
        split = min(16, self.acc_width)
        validp = Signal()
        lo_product = Signal(split + MULTIPLIER_BITS)
        hi_product = Signal(self.acc_width - split + MULTIPLIER_BITS)
        negative = Signal()
        pp = Signal(requant_layout(self.acc_width))
        # Stage 2: the product.
        valid1 = Signal()
        product = Signal(signed(width))
        p1 = Signal(requant_layout(self.acc_width))
        # Stage 3: rounding and the arithmetic shift.
        valid2 = Signal()
        shifted = Signal(signed(10 if self.saturating_shift else width))
        p2 = Signal(requant_layout(self.acc_width))

        with m.If(advance):
            m.d.sync += [
                valid0.eq(self.i_stream.valid),
                p0.eq(self.i_stream.payload),
                validp.eq(valid0),
                lo_product.eq(p0.acc.as_unsigned()[:split] * p0.multiplier),
                hi_product.eq(p0.acc.as_unsigned()[split:] * p0.multiplier),
                negative.eq(p0.acc[-1]),
                pp.eq(p0),
                valid1.eq(validp),
                product.eq(lo_product + (hi_product << split)
                           - Mux(negative, pp.multiplier << self.acc_width, 0)),
                p1.eq(pp),
                valid2.eq(valid1),
                p2.eq(p1),
                self.o_stream.valid.eq(valid2),
            ]
            # 2**(shift-1) added before the shift rounds half up; (1 << shift) without its
            # bit 0 is exactly that, and 0 for shift 0.
            half = Signal(unsigned(width))
            m.d.comb += half.eq((Const(1, 1) << p1.shift)[1:])
            if self.saturating_shift:
                # floor shifts compose: x >> s == (x >> 8 * (s >> 3)) >> (s & 7). Saturating
                # between them to 18 bits and after them to 10 changes no clamped result: past
                # 10 bits, zero_point + value is past every int8 bound, on the same side.
                rounded = Signal(signed(width))
                coarse = Signal(signed(width))
                m.d.comb += [rounded.eq(product + half),
                             coarse.eq(rounded >> Cat(Const(0, 3), p1.shift[3:]))]
                m.d.sync += shifted.eq(_saturate(_saturate(coarse, 18) >> p1.shift[:3], 10))
            else:
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
