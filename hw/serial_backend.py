"""The serial back end: the firmware's commands on one multiply-accumulate a cycle.

A small FPGA (the iCEBreaker's UP5K: 5,280 logic cells) has no room for the systolic back end
(:class:`~hoarfrost.hw.backend.BackEnd`): its GEMM engine, gatherer, drain and per-channel
buffers need about twice the chip. :class:`SerialBackEnd` runs the same firmware (same ISA,
same encoding, same DRAM image, compiled for a 1 x 1 array, whose weight layout is plainly
``W[n, k]`` row-major) with one tap pipeline that every compute command shares:

* ``MATMUL``: per output channel ``n`` it reads the channel's bias, multiplier and shift (12
  bytes) and its ``K`` weights (into the weight buffer, ``a_depth`` bytes of block RAM), then
  for each output pixel issues the ``K`` taps of its window, one a cycle, and pushes the sum
  into the requantizer; results go to the scratchpad in the order they were pushed (CHW, the
  pixels of one channel contiguous);
* ``POOL``: per channel and window, the window's taps through the same pipeline (max on a
  comparator, average as a sum with weight 1), then (average) the table entry for the
  window's element count (8 bytes from DRAM) and the push;
* ``ADD``: per element two taps, ``(a - zp_a) * mult_a`` and ``(b - zp_b) * mult_b``, summed and
  pushed with multiplier 1 and the command's shift;
* ``LOAD``/``STORE`` copy one byte a cycle; ``GEOM`` sets the geometry and its strides.

``RECV``, ``LOADW``, ``SEND`` and ``RECVS`` (frozen front end, weight cache, sparse engines)
are not built: like an unknown op they stop the machine. ``KEEP_PARAMS`` reads the last
loaded parameter records again from DRAM (the image does not change while a program runs), so
it means what it means on the systolic back end.

The tap pipeline: stage 0 steps the window's tap (``kx`` fastest, then ``ky``, then the
channel, as :func:`~hoarfrost.firmware.isa.weight_tiles` orders ``K``) and posts the reads of
the scratchpad and the weight buffer; stage 1 forms ``x - zero_point`` (0 for a tap outside the
input) and registers its product with the weight; stage 2 accumulates (and keeps the running
maximum and the element count); stage 3 pushes the finished window into the requantizer, whose
results are written in push order behind it. Windows follow each other without a gap, so a
``MATMUL`` takes ``K`` cycles per output. Every address and window position is a running sum
stepped by strides that ``GEOM`` and the command's setup form on one shared multiplier, as
the systolic back end does; the addresses step on one shared adder (a step moves one of
them and restarts those below it at the same sum).

Area (the iCEBreaker's top must fit 5,280 logic cells): the command fields are kept in the
bits they need (:data:`SERIAL_KIND_BITS`, the configuration's compact widths), GEOM's
setup-only fields are not copied, the requantizer takes its parameters from its input
(``held_params``; every change of them waits for the pipeline to empty), and with
``counter_events`` the counters are event strobes for a block-RAM counter bank.

Timing is read off this FSM by :mod:`hoarfrost.sim.serial_model`.
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from hoarfrost.firmware.isa import (FIELD_KINDS, FIELDS, POOL_AVG_PAD, POOL_MAX, SIGNED, IsaError,
                                    Op, field_bits)
from hoarfrost.hw.backend import BACKEND_COUNTERS, control_and_dram_ports, setup_products
from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.requant import Requantizer
from hoarfrost.sim.arith import MULTIPLIER_BITS

__all__ = ["SerialBackEnd", "SERIAL_ALIASES", "SERIAL_COUNTERS", "SERIAL_KIND_BITS", "SERIAL_OPS",
           "backend_counters", "check_serial_fields"]

#: The commands the serial back end runs; any other stops it.
SERIAL_OPS = (Op.LOAD, Op.STORE, Op.GEOM, Op.MATMUL, Op.POOL, Op.ADD, Op.SYNC, Op.END)

#: The counters of :data:`~hoarfrost.hw.backend.BACKEND_COUNTERS` this back end counts; the
#: others read 0 (it has no GEMM engine buffers, parameter buffer, weight cache or feature
#: stream). Three more are one of these (:data:`SERIAL_ALIASES`): every MAC it issues is useful
#: (``macs_useful``, padding taps included as the golden model counts them), takes one cycle
#: of the pipeline (``engine_busy_cycles``) and one weight-buffer read (``w_reads``); and
#: ``engine_stall_cycles`` is the MATMUL cycles that issue none (``matmul_cycles -
#: macs_issued``: loading parameters and weights, walking to ``m0``, draining).
SERIAL_COUNTERS = ("cycles", "fetch_cycles", "matmul_cycles", "pool_cycles", "add_cycles",
                   "copy_cycles", "commands", "dram_read_bytes", "dram_write_bytes",
                   "scratch_reads", "scratch_writes", "macs_issued", "w_writes")
SERIAL_ALIASES = {"macs_useful": "macs_issued", "engine_busy_cycles": "macs_issued",
                  "w_reads": "macs_issued"}


#: Bits of the field kinds (:data:`~hoarfrost.firmware.isa.FIELD_KINDS`) this back end uses
#: fewer of than the ISA's compact widths: zero points and clamps are int8 values, which
#: ``x - zero_point`` takes in 9 bits, and ``ADD``'s multipliers are the requantizer's 16-bit
#: ones (its tap pipeline multiplies by them). :func:`check_serial_fields` checks a program.
SERIAL_KIND_BITS = {"value": 9, "word": MULTIPLIER_BITS}


def check_serial_fields(commands) -> None:
    """Raise :class:`~hoarfrost.firmware.isa.IsaError` naming the first command the serial
    back end cannot run as the ISA says: an op it does not build, or a value or multiplier
    wider than :data:`SERIAL_KIND_BITS`."""
    for index, command in enumerate(commands):
        if command.op not in SERIAL_OPS:
            raise IsaError(f"command {index} ({command.op.name}) is not built in the serial "
                           f"back end")
        for name, value in command.fields:
            bits = SERIAL_KIND_BITS.get(FIELD_KINDS[name])
            if bits is None:
                continue
            lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in SIGNED
                      else (0, (1 << bits) - 1))
            if not lo <= value <= hi:
                raise IsaError(f"command {index} ({command.op.name}): {name} = {value} does "
                               f"not fit the serial back end's {bits} bits")


def backend_counters(serial_values: dict[str, int]) -> dict[str, int]:
    """All of :data:`~hoarfrost.hw.backend.BACKEND_COUNTERS` from the serial back end's
    :data:`SERIAL_COUNTERS` (a board with a serial back end reads only those)."""
    values = {name: serial_values.get(SERIAL_ALIASES.get(name, name), 0)
              for name in BACKEND_COUNTERS}
    values["engine_stall_cycles"] = values["matmul_cycles"] - values["macs_issued"]
    return values


_EXEC_OPS = [op for op in SERIAL_OPS if FIELDS[op]]
#: The geometry a MATMUL's or POOL's loops read; GEOM's other fields (in_h, in_w and the
#: bottom and right padding) are read only by its own setup, from the command registers.
_GEOM_KEPT = ("in_c", "out_h", "out_w", "kh", "kw", "sh", "sw", "pad_top", "pad_left", "dh", "dw")


class SerialBackEnd(wiring.Component):
    """Sequencer, one multiply-accumulate pipeline, requantizer, scratchpad, weight buffer.

    Parameters
    ----------
    config : BackendConfig
        Widths (``acc_width``, ``counter_width``, ``compact_fields``, ``dram_addr_bits``,
        ``index_bits``); its ``a_depth`` is the weight buffer's bytes, the largest ``K`` of a
        ``MATMUL``. The array must be 1 x 1 (the firmware's weight layout follows it).
    scratch_bytes : int
        Scratchpad size (bytes).
    counter_events : bool
        Leave the counting to the user (a :class:`~hoarfrost.hw.counter_bank.CounterBank`):
        build ``events`` and ``events_clear`` instead of the counters.

    Members
    -------
    The ports of :class:`~hoarfrost.hw.backend.BackEnd` without a feature stream or sparse
    engines: ``start``, ``program_addr``, ``busy``, ``done``, the DRAM byte streams ``rd_cmd``,
    ``rd_data``, ``wr_cmd``, ``wr_data`` and the counters of
    :data:`~hoarfrost.hw.backend.BACKEND_COUNTERS` (see :data:`SERIAL_COUNTERS`), or with
    ``counter_events``:

    events : ``Out(len(SERIAL_COUNTERS))``
        Bit ``i``: counter ``SERIAL_COUNTERS[i]`` counts one this cycle.
    events_clear : ``Out(1)``
        The counters restart from 0 (pulses as ``start`` is taken).
    """

    def __init__(self, config: BackendConfig, *, scratch_bytes: int = 4096,
                 counter_events: bool = False):
        if (config.rows, config.cols) != (1, 1):
            raise ValueError(f"the serial back end runs a 1 x 1 array's firmware, not "
                             f"{config.rows} x {config.cols}")
        if not isinstance(scratch_bytes, int) or scratch_bytes < 2:
            raise ValueError(f"scratch_bytes must be an integer of at least 2, not "
                             f"{scratch_bytes!r}")
        self._config = config
        self.scratch_bytes = scratch_bytes
        self.counter_events = counter_events
        cw = config.counter_width
        counter_ports = ({"events": Out(len(SERIAL_COUNTERS)), "events_clear": Out(1)}
                         if counter_events else {name: Out(cw) for name in BACKEND_COUNTERS})
        super().__init__({**control_and_dram_ports(), **counter_ports})

    @property
    def config(self) -> BackendConfig:
        return self._config

    def _field_width(self, index: int, scratch_bits: int) -> int:
        """Bits of command-field register ``index``: the most any executed command's field in
        that place needs (:func:`field_bits`, narrowed by :data:`SERIAL_KIND_BITS`), 32
        without ``compact_fields``."""
        cfg = self._config
        if not cfg.compact_fields:
            return 32
        return max(SERIAL_KIND_BITS.get(FIELD_KINDS[FIELDS[op][index]],
                                        field_bits(op, FIELDS[op][index],
                                                   dram_bits=cfg.dram_addr_bits,
                                                   scratch_bits=scratch_bits, weight_cache=False,
                                                   index_bits=cfg.index_bits))
                   for op in _EXEC_OPS if index < len(FIELDS[op]))

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        ib, dab = cfg.index_bits, cfg.dram_addr_bits

        # (the requantization parameters change only while nothing is in flight: every
        # change waits for ``idle_pipe``)
        m.submodules.requant = rq = Requantizer(cfg.acc_width,
                                                saturating_shift=cfg.requant_saturating_shift,
                                                held_params=True)
        m.submodules.scratch = scratch = Memory(shape=signed(8), depth=self.scratch_bytes, init=[])
        s_rd, s_wr = scratch.read_port(), scratch.write_port()
        m.submodules.wbuf = wbuf = Memory(shape=signed(8), depth=cfg.a_depth, init=[])
        w_rd, w_wr = wbuf.read_port(), wbuf.write_port()
        aw = len(s_rd.addr)

        # --- counters -----------------------------------------------------------------------
        # Every count is an event strobe (comb); counted here into registers or outside.
        events = {name: Signal(name=f"ev_{name}") for name in SERIAL_COUNTERS}
        counters_clear = Signal()

        def count(name):
            return events[name].eq(1)

        if self.counter_events:
            m.d.comb += [self.events.eq(Cat(events[name] for name in SERIAL_COUNTERS)),
                         self.events_clear.eq(counters_clear)]
        else:
            cw = cfg.counter_width
            counters = {name: Signal(cw, name=f"n_{name}") for name in SERIAL_COUNTERS}
            for name in BACKEND_COUNTERS:
                source = counters.get(SERIAL_ALIASES.get(name, name))
                m.d.comb += getattr(self, name).eq(0 if source is None else source)
            m.d.comb += self.engine_stall_cycles.eq(counters["matmul_cycles"]
                                                    - counters["macs_issued"])
            for name, counter in counters.items():
                with m.If(counters_clear):
                    m.d.sync += counter.eq(0)
                with m.Elif(events[name]):
                    m.d.sync += counter.eq(counter + 1)

        # --- command registers ----------------------------------------------------------------
        pc = Signal(dab)
        op = Signal(8)
        n_fields = Signal(8)
        field_i = Signal(8)
        n_regs = max(len(FIELDS[o]) for o in _EXEC_OPS)
        fields = Array(Signal(self._field_width(i, aw), name=f"field{i}") for i in range(n_regs))
        geom = {name: Signal(ib, name=f"g_{name}") for name in _GEOM_KEPT}

        def field(command: Op, name: str):
            value = fields[FIELDS[command].index(name)]
            return value.as_signed() if name in SIGNED else value

        def no_params(value):
            """``p_addr`` is ``NO_PARAMS``/``KEEP_PARAMS`` (all ones, in however many bits)."""
            return value == (1 << len(value)) - 1

        is_mm, is_pool, is_add = Signal(), Signal(), Signal()
        m.d.comb += [is_mm.eq(op == Op.MATMUL), is_pool.eq(op == Op.POOL),
                     is_add.eq(op == Op.ADD)]
        pool_max = Signal()
        m.d.comb += pool_max.eq(field(Op.POOL, "kind") == POOL_MAX)

        # --- DRAM reads: one request at a time; bytes assembled into little-endian words -------
        word = Signal(32)
        byte_idx = Signal(2)
        take_bytes = Signal()        # the state consumes rd_data this cycle if it is valid
        got_byte = Signal()
        m.d.comb += got_byte.eq(take_bytes & self.rd_data.valid)
        m.d.comb += self.rd_data.ready.eq(take_bytes)
        full_word = Signal(32)
        m.d.comb += full_word.eq(Cat(word[8:], self.rd_data.payload))
        word_done = Signal()
        m.d.comb += word_done.eq(got_byte & (byte_idx == 3))
        with m.If(got_byte):
            m.d.sync += [word.eq(full_word), byte_idx.eq(byte_idx + 1)]
            m.d.comb += count("dram_read_bytes")

        def dram_read(addr, length):
            return [self.rd_cmd.valid.eq(1), self.rd_cmd.payload.addr.eq(addr),
                    self.rd_cmd.payload.length.eq(length)]

        # --- setup products: one registered multiplier ----------------------------------------
        pw = max(ib, aw)
        mul_a, mul_b = Signal(pw), Signal(pw)
        mul_p = Signal(2 * pw, reset_less=True)   # (no reset: the DSP's output register)
        m.d.sync += mul_p.eq(mul_a * mul_b)
        setup_step = Signal(4)

        def products(steps, done):
            setup_products(m, setup_step, (mul_a, mul_b, mul_p), steps, done)

        # strides of the geometry (GEOM) and of the command (MATMUL setup)
        hw_in = Signal(aw)            # in_h * in_w: one channel
        hw_out = Signal(aw)           # out_h * out_w
        sh_in = Signal(aw)            # sh * in_w: one output row
        dh_in = Signal(aw)            # dh * in_w: one kernel row
        org = Signal(aw)              # pad_top * in_w + pad_left: window (0, 0)'s first tap
        khkw = Signal(ib)
        k_total = Signal(ib)          # taps of a window: cg * kh * kw (MATMUL), kh * kw (POOL)
        # Window bounds in padded coordinates (a tap at y = oy * sh + ky * dh is inside the
        # input for pad_top <= y < y_end); positions saturate at SAT, past every bound.
        SAT = 1 << (ib + 2)
        y_end, x_end = Signal(ib + 2), Signal(ib + 2)
        y_pad_end, x_pad_end = Signal(ib + 2), Signal(ib + 2)

        def sat(value):
            return Mux(value >= SAT, SAT, value)

        # --- the window walker: output pixel, tap within the window --------------------------
        ox, oy = Signal(ib), Signal(ib)
        yb, xb = Signal(ib + 3), Signal(ib + 3)           # oy * sh, ox * sw (saturating)
        line = Signal(aw)             # address of the current output row's window (0, 0) tap
        pix = Signal(aw)              # ... of the current pixel's
        kx, ky = Signal(ib), Signal(ib)
        kxd, kyd = Signal(ib + 3), Signal(ib + 3)         # kx * dw, ky * dh (saturating)
        tap = Signal(aw)              # address of the tap (ADD: of a's element)
        row = Signal(aw)              # of the tap's kernel row's first tap (ADD: b's element)
        chan = Signal(aw)             # of the tap's channel's first tap
        k_idx = Signal(ib)            # the tap's k (the weight buffer's address)
        ty, tx = Signal(ib + 4), Signal(ib + 4)
        m.d.comb += [ty.eq(yb + kyd), tx.eq(xb + kxd)]
        inside = Signal()
        m.d.comb += inside.eq((ty >= geom["pad_top"]) & (tx >= geom["pad_left"])
                              & (ty < y_end) & (tx < x_end))
        in_padded = Signal()          # inside the explicit padding's frame (not the ceil part)
        m.d.comb += in_padded.eq((ty < y_pad_end) & (tx < x_pad_end))
        last_kx, last_ky = Signal(), Signal()
        last_tap = Signal()           # the window's last tap
        m.d.comb += [last_kx.eq(kx + 1 == geom["kw"]), last_ky.eq(ky + 1 == geom["kh"]),
                     last_tap.eq(k_idx + 1 == k_total)]
        last_ox, last_oy = Signal(), Signal()
        m.d.comb += [last_ox.eq(ox + 1 == geom["out_w"]), last_oy.eq(oy + 1 == geom["out_h"])]

        # The addresses move by one sum a step, on one shared adder: the tap steps along the
        # kernel row (+dw), to the next kernel row (+dh * in_w) or channel (+in_h * in_w); the
        # pixel steps along the output row (+sw) or to the next (+sh * in_w); each move also
        # restarts the registers below it (row, channel, pixel) at the same address. `corner`
        # is the window (0, 0) tap of output pixel 0 in the current channel.
        corner = Signal(aw)
        moves = ("tap_x", "tap_y", "tap_c", "pix_x", "pix_y", "corner", "next_chan",
                 "add_a", "add_b")
        move = {name: Signal(name=f"move_{name}") for name in moves}
        operands = {"tap_x": (tap, geom["dw"]), "tap_y": (row, dh_in), "tap_c": (chan, hw_in),
                    "pix_x": (pix, geom["sw"]), "pix_y": (line, sh_in), "corner": (corner, 0),
                    "next_chan": (corner, hw_in), "add_a": (tap, 1), "add_b": (row, 1)}
        addend, step = Signal(aw), Signal(aw)
        for name in moves:
            with m.If(move[name]):
                m.d.comb += [addend.eq(operands[name][0]), step.eq(operands[name][1])]
        moved = Signal(aw)
        m.d.comb += moved.eq(addend + step)
        # which registers take the sum, by move
        takers = [(tap, [n for n in moves if n != "add_b"]),
                  (row, ["tap_y", "tap_c", "pix_x", "pix_y", "corner", "next_chan", "add_b"]),
                  (chan, ["tap_c", "pix_x", "pix_y", "corner", "next_chan"]),
                  (pix, ["pix_x", "pix_y", "corner", "next_chan"]),
                  (line, ["pix_y", "corner", "next_chan"]),
                  (corner, ["next_chan"])]
        for register, names in takers:
            with m.If(Cat(move[name] for name in names).any()):
                m.d.sync += register.eq(moved)

        def restart_taps():
            """The tap counters back at the window's first tap."""
            return [kx.eq(0), ky.eq(0), kxd.eq(0), kyd.eq(0), k_idx.eq(0)]

        def step_tap():
            """The next tap of the window (kx fastest, then ky, then the channel)."""
            m.d.sync += k_idx.eq(k_idx + 1)
            with m.If(~last_kx):
                m.d.sync += [kx.eq(kx + 1), kxd.eq(sat(kxd + geom["dw"]))]
                m.d.comb += move["tap_x"].eq(1)
            with m.Elif(~last_ky):
                m.d.sync += [kx.eq(0), kxd.eq(0), ky.eq(ky + 1), kyd.eq(sat(kyd + geom["dh"]))]
                m.d.comb += move["tap_y"].eq(1)
            with m.Else():
                m.d.sync += [kx.eq(0), kxd.eq(0), ky.eq(0), kyd.eq(0)]
                m.d.comb += move["tap_c"].eq(1)

        def step_pixel():
            """The next output pixel (raster order) and its window's first tap."""
            m.d.sync += restart_taps()
            with m.If(~last_ox):
                m.d.sync += [ox.eq(ox + 1), xb.eq(sat(xb + geom["sw"]))]
                m.d.comb += move["pix_x"].eq(1)
            with m.Else():
                m.d.sync += [ox.eq(0), xb.eq(0), oy.eq(oy + 1), yb.eq(sat(yb + geom["sh"]))]
                m.d.comb += move["pix_y"].eq(1)

        def restart_pixels(next_channel=False):
            """The walker at output pixel 0 of the channel at ``corner`` (or, with
            ``next_channel``, of the next channel)."""
            m.d.sync += [ox.eq(0), oy.eq(0), xb.eq(0), yb.eq(0), *restart_taps()]
            m.d.comb += move["next_chan" if next_channel else "corner"].eq(1)

        # --- the tap pipeline ------------------------------------------------------------------
        issue = Signal()              # stage 0 issues a tap this cycle
        t_first, t_last, t_b = Signal(), Signal(), Signal()
        t_inside, t_counted = Signal(), Signal()
        m.d.comb += [w_rd.addr.eq(k_idx)]
        v1, first1, last1, b1, inside1, counted1 = (Signal(name=f"{n}1") for n in
                                                    ("v", "first", "last", "b", "inside",
                                                     "counted"))
        m.d.sync += [v1.eq(issue), first1.eq(t_first), last1.eq(t_last), b1.eq(t_b),
                     inside1.eq(t_inside), counted1.eq(t_counted)]
        # stage 1: the operands (the scratchpad and weight-buffer reads arrive now)
        zp_sel = Signal(signed(9))
        m.d.comb += zp_sel.eq(Mux(is_add, Mux(b1, field(Op.ADD, "zp_b"), field(Op.ADD, "zp_a")),
                                  Mux(is_mm, field(Op.MATMUL, "zp_in"), field(Op.POOL, "zp_in"))))
        xz = Signal(signed(10))
        m.d.comb += xz.eq(Mux(inside1, s_rd.data - zp_sel, 0))
        wop = Signal(signed(MULTIPLIER_BITS + 1))
        m.d.comb += wop.eq(Mux(is_mm, w_rd.data,
                               Mux(is_add, Mux(b1, field(Op.ADD, "mult_b")[:MULTIPLIER_BITS],
                                               field(Op.ADD, "mult_a")[:MULTIPLIER_BITS]), 1)))
        v2, first2, last2, counted2 = Signal(), Signal(), Signal(), Signal()
        prod2 = Signal(signed(len(xz) + len(wop)), reset_less=True)
        xv2 = Signal(signed(10))      # the element for the maximum: -129 outside the input
        m.d.sync += [v2.eq(v1), first2.eq(first1), last2.eq(last1), counted2.eq(counted1),
                     prod2.eq(xz * wop), xv2.eq(Mux(inside1, s_rd.data, -129))]
        # stage 2: accumulate
        acc = Signal(signed(cfg.acc_width))
        mx = Signal(signed(10))
        cnt = Signal(ib)
        bias = Signal(signed(cfg.acc_width))
        v3 = Signal()
        m.d.sync += v3.eq(v2 & last2)
        with m.If(v2):
            m.d.sync += [acc.eq(Mux(first2, Mux(is_mm, bias, 0), acc) + prod2),
                         mx.eq(Mux(first2 | (xv2 > mx), xv2, mx)),
                         cnt.eq(Mux(first2, 0, cnt) + counted2)]
        pipe_busy = Signal()
        m.d.comb += pipe_busy.eq(v1 | v2 | v3)

        # stage 3: the requantizer. Its output is always taken (written to the scratchpad), so
        # its input is always ready.
        rq_mult = Signal(MULTIPLIER_BITS)
        rq_shift = Signal(len(rq.i_stream.payload.shift))
        push = Signal()
        lo_in, hi_in = field(Op.POOL, "lo_in"), field(Op.POOL, "hi_in")
        clipped = Signal(signed(10))
        m.d.comb += clipped.eq(Mux(mx < lo_in, lo_in, Mux(mx > hi_in, hi_in, mx)))
        has_table = Signal()
        m.d.comb += has_table.eq(~no_params(field(Op.POOL, "p_addr")))
        payload = rq.i_stream.payload
        m.d.comb += [rq.i_stream.valid.eq(push), payload.multiplier.eq(rq_mult),
                     payload.shift.eq(rq_shift), rq.o_stream.ready.eq(1)]
        with m.If(is_mm):
            m.d.comb += [payload.acc.eq(acc), payload.zero_point.eq(field(Op.MATMUL, "zp_out")),
                         payload.lo.eq(field(Op.MATMUL, "lo")), payload.hi.eq(field(Op.MATMUL, "hi"))]
        with m.Elif(is_add):
            m.d.comb += [payload.acc.eq(acc), payload.zero_point.eq(field(Op.ADD, "zp_out")),
                         payload.lo.eq(field(Op.ADD, "lo")), payload.hi.eq(field(Op.ADD, "hi"))]
        with m.Elif(pool_max):
            # clamp first, then (with a table) rescale from the input's zero point
            m.d.comb += [payload.acc.eq(clipped - Mux(has_table, field(Op.POOL, "zp_in"), 0)),
                         payload.zero_point.eq(Mux(has_table, field(Op.POOL, "zp_out"), 0)),
                         payload.lo.eq(-128), payload.hi.eq(127)]
        with m.Else():
            m.d.comb += [payload.acc.eq(acc), payload.zero_point.eq(field(Op.POOL, "zp_out")),
                         payload.lo.eq(lo_in), payload.hi.eq(hi_in)]

        # results: written in push order
        wr_ptr = Signal(aw)
        wr_cnt = Signal(ib)           # MATMUL: the result's pixel within the channel's run
        wr_jump = Signal(aw)          # MATMUL: from a channel's last result to the next's first,
                                      # less one (the adder's carry-in adds it)
        inflight = Signal(3)          # pushed, not yet written
        m.d.comb += [s_wr.data.eq(rq.o_stream.payload), s_wr.addr.eq(wr_ptr)]
        with m.If(rq.o_stream.valid):
            m.d.comb += s_wr.en.eq(1)
            m.d.sync += [wr_ptr.eq(wr_ptr + 1), wr_cnt.eq(wr_cnt + 1)]
            m.d.comb += count("scratch_writes")
            with m.If(is_mm & (wr_cnt + 1 == field(Op.MATMUL, "mt"))):
                m.d.sync += [wr_ptr.eq(wr_ptr + wr_jump + 1), wr_cnt.eq(0)]
        m.d.sync += inflight.eq(inflight + push - rq.o_stream.valid)
        idle_pipe = Signal()          # nothing in the taps' pipeline or the requantizer
        m.d.comb += idle_pipe.eq(~pipe_busy & (inflight == 0))

        # --- command loops --------------------------------------------------------------------
        n_cnt = Signal(ib)            # MATMUL: output channel; POOL: channel
        m_cnt = Signal(max(ib, dab))  # MATMUL: pixel; ADD: element
        w_ptr = Signal(dab)           # the next output channel's weights
        p_base = Signal(dab)          # the last loaded parameter records (KEEP_PARAMS)
        p_ptr = Signal(dab)
        copy_i = Signal(dab)
        st_ptr = Signal(aw)
        st_primed = Signal()

        # scratchpad read port: STORE's pointer or the tap (ADD's b from ``row``)
        storing = Signal()
        m.d.comb += s_rd.addr.eq(Mux(storing, st_ptr, Mux(is_add & t_b, row, tap)))

        busy_prev = Signal()
        m.d.comb += self.busy.eq(busy_prev)
        with m.If(self.busy):
            m.d.comb += count("cycles")
        with m.If(issue & t_inside):
            m.d.comb += count("scratch_reads")

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.program_addr), busy_prev.eq(1)]
                    m.d.comb += counters_clear.eq(1)
                    m.next = "FETCH"

            with m.State("FETCH"):
                m.d.comb += count("fetch_cycles")
                m.d.comb += dram_read(pc, 4)
                with m.If(self.rd_cmd.ready):
                    m.d.sync += byte_idx.eq(0)
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += count("fetch_cycles")
                m.d.comb += take_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += [op.eq(full_word[24:]), n_fields.eq(full_word[:8]),
                                 pc.eq(pc + 4), field_i.eq(0)]
                    m.d.comb += count("commands")
                    with m.If(full_word[:8] == 0):
                        m.next = "DISPATCH"
                    with m.Else():
                        m.next = "FIELDS_REQ"

            with m.State("FIELDS_REQ"):
                m.d.comb += count("fetch_cycles")
                m.d.comb += dram_read(pc, n_fields * 4)
                with m.If(self.rd_cmd.ready):
                    m.next = "FIELDS"

            with m.State("FIELDS"):
                m.d.comb += count("fetch_cycles")
                m.d.comb += take_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += fields[field_i].eq(full_word)
                    m.d.sync += [field_i.eq(field_i + 1), pc.eq(pc + 4)]
                    with m.If(field_i + 1 == n_fields):
                        m.next = "DISPATCH"

            with m.State("DISPATCH"):
                m.d.comb += count("fetch_cycles")
                with m.Switch(op):
                    with m.Case(Op.LOAD):
                        m.next = "LOAD_REQ"
                    with m.Case(Op.STORE):
                        m.next = "STORE_REQ"
                    with m.Case(Op.GEOM):
                        g = {name: field(Op.GEOM, name) for name in FIELDS[Op.GEOM]}
                        y_in, x_in = Signal(ib + 1), Signal(ib + 1)   # (one sum for both bounds)
                        m.d.comb += [y_in.eq(g["in_h"] + g["pad_top"]),
                                     x_in.eq(g["in_w"] + g["pad_left"])]
                        m.d.sync += [*(geom[name].eq(g[name]) for name in _GEOM_KEPT),
                                     y_end.eq(y_in), x_end.eq(x_in),
                                     y_pad_end.eq(y_in + g["pad_bottom"]),
                                     x_pad_end.eq(x_in + g["pad_right"])]
                        m.next = "GEOM_SETUP"
                    with m.Case(Op.MATMUL):
                        p_addr = field(Op.MATMUL, "p_addr")
                        with m.If(~no_params(p_addr)):
                            m.d.sync += [p_base.eq(p_addr), p_ptr.eq(p_addr)]
                        with m.Else():
                            m.d.sync += p_ptr.eq(p_base)
                        # (src - org here, the same sum POOL's dispatch forms: + c0 * hw_in
                        # in the setup)
                        m.d.sync += [n_cnt.eq(0), w_ptr.eq(field(Op.MATMUL, "w_addr")),
                                     wr_cnt.eq(0), corner.eq(field(Op.MATMUL, "src") - org)]
                        m.next = "MM_SETUP"
                    with m.Case(Op.POOL):
                        origin = field(Op.POOL, "src") - org
                        m.d.sync += [n_cnt.eq(0), wr_ptr.eq(field(Op.POOL, "dst")),
                                     k_total.eq(khkw), ox.eq(0), oy.eq(0), xb.eq(0), yb.eq(0),
                                     *restart_taps(),
                                     *(r.eq(origin) for r in (corner, line, pix, chan, row, tap))]
                        with m.If(has_table & pool_max):
                            m.next = "TABLE_REQ"
                        with m.Else():
                            m.d.sync += [rq_mult.eq(1), rq_shift.eq(0)]
                            m.next = "POOL_RUN"
                    with m.Case(Op.ADD):
                        m.d.sync += [m_cnt.eq(0), tap.eq(field(Op.ADD, "src_a")),
                                     row.eq(field(Op.ADD, "src_b")),
                                     wr_ptr.eq(field(Op.ADD, "dst")), rq_mult.eq(1),
                                     rq_shift.eq(field(Op.ADD, "shift"))]
                        m.next = "ADD_RUN"
                    with m.Case(Op.SYNC):
                        m.next = "FETCH"
                    with m.Default():
                        m.next = "END"          # END, and an op this back end does not run

            with m.State("GEOM_SETUP"):
                m.d.comb += count("fetch_cycles")

                def geom_done():
                    m.next = "FETCH"

                g = {name: field(Op.GEOM, name) for name in FIELDS[Op.GEOM]}
                products([
                    (g["in_h"], g["in_w"], lambda p: [hw_in.eq(p)]),
                    (g["out_h"], g["out_w"], lambda p: [hw_out.eq(p)]),
                    (g["kh"], g["kw"], lambda p: [khkw.eq(p)]),
                    (g["sh"], g["in_w"], lambda p: [sh_in.eq(p)]),
                    (g["dh"], g["in_w"], lambda p: [dh_in.eq(p)]),
                    (g["pad_top"], g["in_w"], lambda p: [org.eq(p + g["pad_left"])]),
                ], geom_done)

            # ---- LOAD / STORE: one byte a cycle ---------------------------------------------
            with m.State("LOAD_REQ"):
                m.d.comb += count("copy_cycles")
                m.d.comb += dram_read(field(Op.LOAD, "dram_addr"), field(Op.LOAD, "length"))
                with m.If(self.rd_cmd.ready):
                    m.d.sync += copy_i.eq(0)
                    m.next = "LOAD_DATA"
            with m.State("LOAD_DATA"):
                m.d.comb += count("copy_cycles")
                with m.If(copy_i == field(Op.LOAD, "length")):
                    m.next = "FETCH"
                with m.Else():
                    m.d.comb += [take_bytes.eq(1), s_wr.addr.eq(field(Op.LOAD, "dst") + copy_i),
                                 s_wr.data.eq(self.rd_data.payload), s_wr.en.eq(got_byte)]
                    with m.If(got_byte):
                        m.d.sync += copy_i.eq(copy_i + 1)
                        m.d.comb += count("scratch_writes")

            with m.State("STORE_REQ"):
                m.d.comb += count("copy_cycles")
                m.d.comb += [self.wr_cmd.valid.eq(1),
                             self.wr_cmd.payload.addr.eq(field(Op.STORE, "dram_addr")),
                             self.wr_cmd.payload.length.eq(field(Op.STORE, "length")),
                             s_rd.addr.eq(field(Op.STORE, "src"))]
                with m.If(self.wr_cmd.ready):
                    # the read port holds src's byte from the next cycle on
                    m.d.sync += [copy_i.eq(0), st_ptr.eq(field(Op.STORE, "src"))]
                    m.next = "STORE_DATA"
            with m.State("STORE_DATA"):
                m.d.comb += count("copy_cycles")
                m.d.comb += storing.eq(1)
                with m.If(copy_i == field(Op.STORE, "length")):
                    m.next = "FETCH"
                with m.Else():
                    m.d.comb += [self.wr_data.valid.eq(1), self.wr_data.payload.eq(s_rd.data)]
                    with m.If(self.wr_data.ready):
                        # read the next byte now, so it is there next cycle
                        m.d.comb += s_rd.addr.eq(st_ptr + 1)
                        m.d.sync += [st_ptr.eq(st_ptr + 1), copy_i.eq(copy_i + 1)]
                        m.d.comb += [count("dram_write_bytes"), count("scratch_reads")]

            # ---- MATMUL ----------------------------------------------------------------------
            with m.State("MM_SETUP"):
                m.d.comb += count("matmul_cycles")

                def mm_done():
                    m.next = "MM_PARAMS_REQ"

                mt = field(Op.MATMUL, "mt")
                products([
                    (field(Op.MATMUL, "c0"), hw_in,
                     lambda p: [corner.eq(corner + p)]),
                    (field(Op.MATMUL, "n0"), hw_out,
                     lambda p: [wr_ptr.eq(field(Op.MATMUL, "dst") + p + field(Op.MATMUL, "m0")),
                                wr_jump.eq(hw_out - mt)]),
                    (field(Op.MATMUL, "cg"), khkw, lambda p: [k_total.eq(p)]),
                ], mm_done)

            with m.State("MM_PARAMS_REQ"):
                # one output channel: its bias, multiplier and shift
                m.d.comb += count("matmul_cycles")
                with m.If(n_cnt == field(Op.MATMUL, "nt")):
                    m.next = "DRAIN"
                with m.Elif(idle_pipe):
                    m.d.comb += dram_read(p_ptr, 12)
                    with m.If(self.rd_cmd.ready):
                        m.d.sync += [byte_idx.eq(0), field_i.eq(0), p_ptr.eq(p_ptr + 12)]
                        m.next = "MM_PARAMS"

            with m.State("MM_PARAMS"):
                m.d.comb += count("matmul_cycles")
                m.d.comb += take_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += field_i.eq(field_i + 1)
                    with m.Switch(field_i):
                        with m.Case(0):
                            m.d.sync += bias.eq(full_word)
                        with m.Case(1):
                            m.d.sync += rq_mult.eq(full_word)
                        with m.Case(2):
                            m.d.sync += rq_shift.eq(full_word)
                            m.next = "MM_WEIGHTS_REQ"

            with m.State("MM_WEIGHTS_REQ"):
                m.d.comb += count("matmul_cycles")
                m.d.comb += dram_read(w_ptr, k_total)
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [w_ptr.eq(w_ptr + k_total), k_idx.eq(0)]
                    m.next = "MM_WEIGHTS"

            with m.State("MM_WEIGHTS"):
                m.d.comb += count("matmul_cycles")
                m.d.comb += [take_bytes.eq(1), w_wr.addr.eq(k_idx),
                             w_wr.data.eq(self.rd_data.payload), w_wr.en.eq(got_byte)]
                with m.If(got_byte):
                    m.d.sync += k_idx.eq(k_idx + 1)
                    m.d.comb += count("w_writes")
                    with m.If(k_idx + 1 == k_total):
                        m.d.sync += m_cnt.eq(0)
                        restart_pixels()
                        m.next = "MM_SKIP"

            with m.State("MM_SKIP"):
                # walk to pixel m0 (raster order), one pixel a cycle
                m.d.comb += count("matmul_cycles")
                with m.If(m_cnt == field(Op.MATMUL, "m0")):
                    m.d.sync += m_cnt.eq(0)
                    m.next = "MM_RUN"
                with m.Else():
                    m.d.sync += m_cnt.eq(m_cnt + 1)
                    step_pixel()

            with m.State("MM_RUN"):
                m.d.comb += [count("matmul_cycles"), count("macs_issued")]
                m.d.comb += [issue.eq(1), t_first.eq(k_idx == 0), t_last.eq(last_tap),
                             t_inside.eq(inside)]
                with m.If(~last_tap):
                    step_tap()
                with m.Elif(m_cnt + 1 == field(Op.MATMUL, "mt")):
                    m.d.sync += n_cnt.eq(n_cnt + 1)
                    m.next = "MM_PARAMS_REQ"
                with m.Else():
                    m.d.sync += m_cnt.eq(m_cnt + 1)
                    step_pixel()

            # ---- POOL ------------------------------------------------------------------------
            with m.State("TABLE_REQ"):
                # max: the one (mult, shift) pair; average: the window's count's pair
                m.d.comb += count("pool_cycles")
                # (the pair changes only when no earlier window is in the requantizer)
                with m.If(idle_pipe):
                    m.d.comb += dram_read(field(Op.POOL, "p_addr")
                                          + Mux(pool_max, 0, cnt << 3), 8)
                    with m.If(self.rd_cmd.ready):
                        m.d.sync += [byte_idx.eq(0), field_i.eq(0)]
                        m.next = "TABLE"
            with m.State("TABLE"):
                m.d.comb += count("pool_cycles")
                m.d.comb += take_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += field_i.eq(1)
                    with m.If(field_i == 0):
                        m.d.sync += rq_mult.eq(full_word)
                    with m.Else():
                        m.d.sync += rq_shift.eq(full_word)
                        with m.If(pool_max):
                            m.next = "POOL_RUN"
                        with m.Else():
                            m.next = "POOL_PUSH"
            with m.State("POOL_PUSH"):
                # average: the window's sum, scaled by its count's pair
                m.d.comb += count("pool_cycles")
                m.d.comb += push.eq(1)
                m.next = "POOL_NEXT"

            with m.State("POOL_RUN"):
                m.d.comb += count("pool_cycles")
                kind = field(Op.POOL, "kind")
                with m.If((geom["out_h"] == 0) | (geom["out_w"] == 0) | (geom["in_c"] == 0)):
                    m.next = "DRAIN"           # nothing to do
                with m.Else():
                    m.d.comb += [issue.eq(1), t_first.eq(k_idx == 0), t_last.eq(last_tap),
                                 t_inside.eq(inside),
                                 t_counted.eq(Mux(kind == POOL_AVG_PAD, in_padded, inside))]
                    with m.If(~last_tap):
                        step_tap()
                    with m.Elif(pool_max):
                        self._next_window(m, step_pixel, restart_pixels, last_ox, last_oy,
                                          n_cnt, geom, "POOL_RUN", "DRAIN")
                    with m.Else():
                        m.next = "TABLE_REQ"

            with m.State("POOL_NEXT"):
                # average, after its push: the next window
                m.d.comb += count("pool_cycles")
                self._next_window(m, step_pixel, restart_pixels, last_ox, last_oy, n_cnt,
                                  geom, "POOL_RUN", "DRAIN")

            # ---- ADD -------------------------------------------------------------------------
            with m.State("ADD_RUN"):
                m.d.comb += count("add_cycles")
                with m.If(m_cnt == field(Op.ADD, "length")):
                    m.next = "DRAIN"
                with m.Else():
                    b_phase = Signal()
                    m.d.comb += [issue.eq(1), t_first.eq(~b_phase), t_last.eq(b_phase),
                                 t_b.eq(b_phase), t_inside.eq(1)]
                    m.d.sync += b_phase.eq(~b_phase)
                    # a's address moves on once read, b's once read
                    m.d.comb += move["add_b"].eq(b_phase)
                    m.d.comb += move["add_a"].eq(~b_phase)
                    with m.If(b_phase):
                        m.d.sync += m_cnt.eq(m_cnt + 1)

            with m.State("DRAIN"):
                # the last results through the pipeline and the requantizer
                with m.If(is_add):
                    m.d.comb += count("add_cycles")
                with m.Elif(is_mm):
                    m.d.comb += count("matmul_cycles")
                with m.Else():
                    m.d.comb += count("pool_cycles")
                with m.If(idle_pipe):
                    m.next = "FETCH"

            with m.State("END"):
                m.d.sync += [busy_prev.eq(0)]
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"

        # stage 3's push for MATMUL, max pooling and ADD: the window's last tap leaves stage 2
        with m.If(v3 & ~(is_pool & ~pool_max)):
            m.d.comb += push.eq(1)
        return m

    @staticmethod
    def _next_window(m, step_pixel, restart_pixels, last_ox, last_oy, n_cnt, geom,
                     run_state, end_state):
        """POOL: after a window, the next one: the next pixel, or the next channel's first,
        or the end."""
        with m.If(~(last_ox & last_oy)):
            step_pixel()
            m.next = run_state
        with m.Elif(n_cnt + 1 != geom["in_c"]):
            m.d.sync += n_cnt.eq(n_cnt + 1)
            restart_pixels(next_channel=True)
            m.next = run_state
        with m.Else():
            m.next = end_state
