"""A streaming multiply-accumulate unit: dot products of int8 activations and narrow weights."""

from amaranth import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MacUnit", "mac_input_layout"]

#: Bits of an activation (int8, see DESIGN.md "Arithmetic").
ACTIVATION_BITS = 8


def mac_input_layout(weight_bits: int) -> data.StructLayout:
    """Payload of :class:`MacUnit`'s input stream: one activation, one weight, end-of-vector."""
    return data.StructLayout({
        "a":    signed(ACTIVATION_BITS),
        "b":    signed(weight_bits),
        "last": 1,
    })


class MacUnit(wiring.Component):
    """Accumulates ``a * b`` over a vector and emits the dot product on its last beat.

    Every accepted input beat adds ``a * b`` to an ``acc_width``-bit two's complement
    accumulator (wrapping on overflow, as an ``int32`` does). The beat with ``last`` set
    completes the vector: the sum including that beat is sent on ``o_stream`` and the
    accumulator restarts from zero, so back-to-back vectors need no idle cycle.

    Input beats that do not end a vector are accepted even while ``o_stream`` is stalled; only a
    ``last`` beat waits until the output register is free. This keeps the unit at one beat per
    cycle unless the consumer is slower than one result per vector.

    Parameters
    ----------
    weight_bits : int
        Width of the signed weight ``b``, 2 to 8.
    acc_width : int
        Width of the signed accumulator and of the output, at least ``8 + weight_bits``.

    Members
    -------
    i_stream : ``In(stream.Signature(mac_input_layout(weight_bits)))``
        Input beats: ``a`` (signed 8 bits), ``b`` (signed ``weight_bits``), ``last``.
    o_stream : ``Out(stream.Signature(signed(acc_width)))``
        One dot product per input vector.
    macs : ``Out(32)``
        Input beats consumed (multiply-accumulates performed), wrapping.
    stall_cycles : ``Out(32)``
        Cycles in which ``o_stream.valid`` was high and ``o_stream.ready`` low, wrapping.
    """

    def __init__(self, *, weight_bits: int = 8, acc_width: int = 32):
        if not isinstance(weight_bits, int) or not 2 <= weight_bits <= 8:
            raise ValueError(f"Weight width must be an integer from 2 to 8, not {weight_bits!r}")
        if not isinstance(acc_width, int) or acc_width < ACTIVATION_BITS + weight_bits:
            raise ValueError(f"Accumulator width must be an integer of at least "
                             f"{ACTIVATION_BITS + weight_bits}, not {acc_width!r}")
        self._weight_bits = weight_bits
        self._acc_width = acc_width
        super().__init__({
            "i_stream":     In(stream.Signature(mac_input_layout(weight_bits))),
            "o_stream":     Out(stream.Signature(signed(acc_width))),
            "macs":         Out(32),
            "stall_cycles": Out(32),
        })

    @property
    def weight_bits(self) -> int:
        return self._weight_bits

    @property
    def acc_width(self) -> int:
        return self._acc_width

    def elaborate(self, platform):
        m = Module()

        beat = self.i_stream.payload
        acc = Signal(signed(self._acc_width))
        # The full-width sum including this beat; `.eq` into acc_width bits wraps it.
        total = Signal(signed(self._acc_width))
        m.d.comb += total.eq(acc + beat.a * beat.b)

        # The output register is free if empty or being read this cycle.
        out_free = ~self.o_stream.valid | self.o_stream.ready
        m.d.comb += self.i_stream.ready.eq(~beat.last | out_free)

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += self.macs.eq(self.macs + 1)
            with m.If(beat.last):
                m.d.sync += [
                    self.o_stream.payload.eq(total),
                    self.o_stream.valid.eq(1),
                    acc.eq(0),
                ]
            with m.Else():
                m.d.sync += acc.eq(total)

        with m.If(self.o_stream.valid & ~self.o_stream.ready):
            m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)

        return m
