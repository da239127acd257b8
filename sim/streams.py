"""Stream helpers shared by every testbench: amaranth.sim coroutines and cocotb driver/sink.

Both sides speak ``amaranth.lib.stream``'s protocol: a beat moves on a clock edge at which
``valid`` and ``ready`` are both high. Random idle cycles (a producer that is sometimes not
ready to send) and random stalls (a consumer that sometimes refuses) come from a seeded
:class:`random.Random`, so a failing pattern of backpressure can be replayed.

Port names in Verilog: ``amaranth.back.verilog.convert`` flattens a stream port ``i_stream`` of a
``wiring.Component`` into ``i_stream__valid``, ``i_stream__ready`` and ``i_stream__payload``. A
``data.StructLayout`` payload stays *one* port of the layout's total width (fields appear only as
internal wires such as ``\\i_stream__payload.a``), so cocotb drives it as an integer built with
:func:`pack_struct` and reads it back with :func:`unpack_struct`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.handle import SimHandleBase
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = [
    "stream_put", "stream_get", "pack_struct", "unpack_struct", "to_signed",
    "StreamDriver", "StreamSink",
]


def _check_random(name: str, probability: float, rng: random.Random | None) -> None:
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"{name} must be in [0, 1), not {probability!r}")
    if probability and rng is None:
        raise ValueError(f"{name} {probability!r} needs a seeded random.Random")


# --- amaranth.sim (async testbenches) -----------------------------------------------------------

async def stream_put(ctx, stream, payload, *, rng: random.Random | None = None,
                     idle_prob: float = 0.0) -> None:
    """Send one beat on ``stream`` (a ``stream.Interface`` the testbench drives).

    Before the beat, waits a random number of idle cycles with ``valid`` low: each cycle is idle
    with probability ``idle_prob``. With ``idle_prob=0`` consecutive calls send one beat per
    cycle. Returns just after the clock edge that transferred the beat.
    """
    _check_random("idle_prob", idle_prob, rng)
    while idle_prob and rng.random() < idle_prob:
        await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, rng: random.Random | None = None, stall_prob: float = 0.0):
    """Receive one beat from ``stream`` (a ``stream.Interface`` the testbench consumes).

    Each cycle ``ready`` is held low with probability ``stall_prob`` (backpressure). Returns the
    payload sampled at the clock edge that transferred the beat, just after that edge.
    """
    _check_random("stall_prob", stall_prob, rng)
    while True:
        ready = not (stall_prob and rng.random() < stall_prob)
        ctx.set(stream.ready, ready)
        *_, payload, valid = await ctx.tick().sample(stream.payload, stream.valid)
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload


# --- payload packing ------------------------------------------------------------------------------

def to_signed(value: int, width: int) -> int:
    """Read the low ``width`` bits of ``value`` as a two's complement number."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


def pack_struct(layout: data.StructLayout, fields: Mapping[str, int]) -> int:
    """The integer a ``layout`` payload port carries for ``fields`` (each placed at its offset).

    Every field of ``layout`` must be given, and each value must fit its field's shape; negative
    values of signed fields are stored in two's complement.
    """
    if missing := set(dict(layout)) - set(fields):
        raise ValueError(f"Missing fields {sorted(missing)!r} for layout {layout!r}")
    if extra := set(fields) - set(dict(layout)):
        raise ValueError(f"Unknown fields {sorted(extra)!r} for layout {layout!r}")
    raw = 0
    for name, field in layout:
        shape = Shape.cast(field.shape)
        value = int(fields[name])
        low, high = (-(1 << shape.width - 1), 1 << shape.width - 1) if shape.signed \
            else (0, 1 << shape.width)
        if not low <= value < high:
            raise ValueError(f"Field {name!r} value {value!r} does not fit {shape!r}")
        raw |= (value & ((1 << shape.width) - 1)) << field.offset
    return raw


def unpack_struct(layout: data.StructLayout, raw: int) -> dict[str, int]:
    """Split a ``layout`` payload integer into its fields (signed fields sign-extended)."""
    fields = {}
    for name, field in layout:
        shape = Shape.cast(field.shape)
        bits = (raw >> field.offset) & ((1 << shape.width) - 1)
        fields[name] = to_signed(bits, shape.width) if shape.signed else bits
    return fields


# --- cocotb ---------------------------------------------------------------------------------------
#
# Timing discipline, the same in driver and sink: write outputs right after a rising edge, then
# wait for ReadOnly (the end of that time step, all combinational logic settled) and decide from
# what is visible there whether a beat moves at the *next* edge. Sampling after RisingEdge instead
# would see registers already updated by that edge on Verilator, and would miss a `ready` that
# depends combinationally on the payload just driven.

class StreamDriver:
    """Drives the input stream ``<prefix>__valid/__payload`` of a cocotb ``dut``.

    Parameters
    ----------
    dut : SimHandleBase
        The toplevel handle.
    prefix : str
        Stream port name, e.g. ``"i_stream"``.
    clk : SimHandleBase
        The clock of the stream.
    rng : random.Random
        Source of the idle cycles.
    idle_prob : float
        Probability of an idle cycle (``valid`` low) before each beat.
    """

    def __init__(self, dut: SimHandleBase, prefix: str, clk: SimHandleBase, rng: random.Random,
                 idle_prob: float = 0.0):
        _check_random("idle_prob", idle_prob, rng)
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._clk = clk
        self._rng = rng
        self._idle_prob = idle_prob
        self.beats = 0
        self._valid.value = 0

    async def send(self, payloads: Iterable[int]) -> None:
        """Send each payload (an unsigned integer, see :func:`pack_struct`) as one beat.

        Call just after a rising edge; returns just after the edge that moved the last beat.
        """
        for payload in payloads:
            while self._idle_prob and self._rng.random() < self._idle_prob:
                self._valid.value = 0
                await RisingEdge(self._clk)
            self._valid.value = 1
            self._payload.value = payload
            while True:
                await ReadOnly()
                accepted = bool(self._ready.value)
                await RisingEdge(self._clk)
                if accepted:
                    break
            self.beats += 1
        self._valid.value = 0


class StreamSink:
    """Consumes the output stream ``<prefix>__valid/__ready/__payload`` of a cocotb ``dut``.

    After :meth:`start` it decides every cycle whether to be ready (stalling with
    probability ``stall_prob``) and appends each transferred payload to :attr:`items`.

    Parameters
    ----------
    dut : SimHandleBase
        The toplevel handle.
    prefix : str
        Stream port name, e.g. ``"o_stream"``.
    clk : SimHandleBase
        The clock of the stream.
    rng : random.Random
        Source of the stalls.
    stall_prob : float
        Probability of holding ``ready`` low in a cycle.
    signed : bool
        Collect payloads as two's complement (else unsigned) integers.

    Attributes
    ----------
    items : list of int
        Payloads received, in order.
    stall_cycles : int
        Cycles in which ``valid`` was high and this sink not ready.
    """

    def __init__(self, dut: SimHandleBase, prefix: str, clk: SimHandleBase, rng: random.Random,
                 stall_prob: float = 0.0, *, signed: bool = False):
        _check_random("stall_prob", stall_prob, rng)
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._clk = clk
        self._rng = rng
        self._stall_prob = stall_prob
        self._signed = signed
        self.items: list[int] = []
        self.stall_cycles = 0
        self._ready.value = 0

    def start(self):
        """Start consuming in a background task (call just after a rising edge); returns it."""
        import cocotb

        return cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            ready = not (self._stall_prob and self._rng.random() < self._stall_prob)
            self._ready.value = int(ready)
            await ReadOnly()
            if self._valid.value:
                if ready:
                    value = self._payload.value
                    self.items.append(value.to_signed() if self._signed else value.to_unsigned())
                else:
                    self.stall_cycles += 1
            await RisingEdge(self._clk)

    async def wait_for(self, count: int, *, timeout_cycles: int) -> list[int]:
        """Wait until ``count`` items have arrived; fail after ``timeout_cycles`` cycles."""
        for _ in range(timeout_cycles):
            if len(self.items) >= count:
                return self.items
            await RisingEdge(self._clk)
        raise TimeoutError(f"{len(self.items)} of {count} items after {timeout_cycles} cycles")
