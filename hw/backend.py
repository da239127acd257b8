"""The programmable back end: a sequencer that runs the firmware on the GEMM engine.

The sequencer fetches commands (:mod:`hoarfrost.firmware.isa`) from DRAM and executes them one
after another:

* ``LOAD``/``STORE`` copy bytes between DRAM and the scratchpad, ``LOADW`` from DRAM into
  the weight cache (a back end built with ``weight_cache_bytes > 0``);
* ``GEOM`` sets the window geometry registers;
* ``MATMUL`` reads the tile's per-channel parameters, starts the :class:`GemmEngine` and feeds
  it concurrently from three producers: the im2col *gatherer* (activation rows from the
  scratchpad, padding as the zero point), the *weight feeder* (one contiguous read of DRAM or,
  for ``w_addr = WCACHE | offset``, of the weight cache; the compiler lays weights out in the
  array's order) and the *bias feeder*; the *drain* takes the engine's int32 results through
  the :class:`Requantizer` into the scratchpad (CHW). ``p_addr = KEEP_PARAMS`` skips loading
  the parameters: the buffer keeps the last ones;
* ``POOL`` (max/average, or a standalone clamp as a 1x1 max) and ``ADD`` (residual) run on a
  scalar unit that shares the requantizer; a ``POOL``'s windows step on the gatherer's
  registers (position, bounds, tap addresses), which a ``MATMUL`` never uses at the same time;
* ``RECV`` (a back end built with ``stream_channels > 0``) takes pixels of the frozen front
  end's output from the ``feature_in`` stream into the scratchpad, one lane per cycle;
* ``SEND`` and ``RECVS`` (a back end built with ``sparse_engines > 0``) stream a vector from
  the scratchpad to a sparse engine (``sparse_out``) and its results back (``sparse_in``), one
  byte a cycle, so the engine runs as a coprocessor between the firmware's other commands.

Timing: nothing multiplies per element. ``GEOM``, ``MATMUL`` and ``ADD`` start with setup
states that form their products (``in_h * in_w``, the strides ``sh * in_w`` ..., ``c0 *
hw_in``, ``zp_b * mult_b`` ...) once, one a cycle, on a shared registered multiplier; the
loops then keep every scratchpad address and window position as a running sum stepped by
those strides (addresses modulo the scratchpad's size, positions saturating past every
bound). With ``add_shares_multiplier`` (small FPGAs) ``ADD``'s per-element products run on
that multiplier too, four an element. The requantizer registers its input, so the drain's lane
mux and parameter reads do not reach its multiplier.

Width: with ``compact_fields`` (the iCEBreaker preset) every command field, DRAM address,
shape and count is kept in the bits it can need (``dram_addr_bits``, ``index_bits``, the
scratchpad's address bits; :func:`hoarfrost.firmware.isa.field_bits`), not in 32 or 16; the
compiler checks the firmware fits. The other presets keep the full widths.

The DRAM port is a pair of byte streams per direction (a request ``{addr, length}`` and the
bytes), the seam where the AXI DMA plugs in. The scratchpad is one byte wide: correctness
first; the gatherer, not the array, bounds convolution speed (``rows`` cycles per activation
row), which the counters show.
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hoarfrost.firmware.isa import (FIELDS, POOL_AVG_PAD, POOL_MAX, SIGNED, WCACHE, Op,
                                    field_bits)
from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.gemm_engine import GemmEngine
from hoarfrost.hw.line_buffer import pixel_layout
from hoarfrost.hw.requant import Requantizer
from hoarfrost.hw.sparse_matvec import activation_layout

__all__ = ["BackEnd", "BACKEND_COUNTERS", "control_and_dram_ports", "dram_request_layout"]

MAX_FIELDS = max(len(f) for f in FIELDS.values())

#: Event counters of :class:`BackEnd`, in port order, reset by ``start``.
BACKEND_COUNTERS = (
    "cycles",            # from start until done
    "fetch_cycles",      # fetching and decoding commands
    "matmul_cycles", "pool_cycles", "add_cycles", "copy_cycles",  # executing, per command kind
    "commands",          # commands executed
    "dram_read_bytes", "dram_write_bytes",
    "scratch_reads", "scratch_writes",
    "macs_issued", "macs_useful",           # summed over the GEMM engine's runs
    "engine_busy_cycles", "engine_stall_cycles",
    # GEMM-engine buffer accesses, summed likewise (entries: a rows x int8, w cols weights,
    # acc one acc_width word; see hoarfrost.hw.gemm_engine.COUNTERS)
    "a_reads", "a_writes", "w_reads", "w_writes", "acc_reads", "acc_writes",
    "param_writes",      # 32-bit words written to the parameter buffers
    "recv_cycles",       # executing RECV (waiting for and writing feature-stream pixels)
    "wcache_reads", "wcache_writes",        # weight-cache bytes (MATMUL weights, LOADW)
)


def dram_request_layout() -> data.StructLayout:
    """A DRAM transfer request: ``length`` bytes from byte address ``addr``."""
    return data.StructLayout({"addr": unsigned(32), "length": unsigned(32)})


def control_and_dram_ports() -> dict:
    """The ports every back end has: ``start``, ``program_addr``, ``busy``, ``done`` and the
    DRAM byte streams (see :class:`BackEnd`)."""
    return {
        "start": In(1),
        "program_addr": In(32),
        "busy": Out(1),
        "done": Out(1),
        "rd_cmd": Out(stream.Signature(dram_request_layout())),
        "rd_data": In(stream.Signature(8)),
        "wr_cmd": Out(stream.Signature(dram_request_layout())),
        "wr_data": Out(stream.Signature(8)),
    }


def setup_products(m, step, multiplier, steps, done) -> None:
    """The body of a setup state that forms products on a shared registered multiplier
    ``multiplier = (a, b, p)`` (``p`` is ``a * b`` two cycles after the operands): ``steps``
    are ``(a, b, take)``, issued one a cycle, counted by the register ``step``; ``take(p)``
    gives the statements that take the product two cycles later (a step may use what a step
    three or more before it took). ``done()`` runs in the last cycle."""
    mul_a, mul_b, mul_p = multiplier
    m.d.sync += step.eq(step + 1)
    with m.Switch(step):
        for i in range(len(steps) + 2):
            with m.Case(i):
                if i < len(steps):
                    m.d.sync += [mul_a.eq(steps[i][0]), mul_b.eq(steps[i][1])]
                if i >= 2:
                    m.d.sync += steps[i - 2][2](mul_p)
                if i == len(steps) + 1:
                    m.d.sync += step.eq(0)
                    done()


class BackEnd(wiring.Component):
    """Sequencer, GEMM engine, scalar unit and scratchpad.

    Parameters
    ----------
    config : BackendConfig
        Array size, widths and GEMM-engine buffer depths.
    scratch_bytes : int
        Scratchpad size (bytes); the compiler allocates feature maps in it.
    param_depth : int
        Entries of the per-channel parameter buffers: the most output channels one ``MATMUL``
        may cover, and the largest pooling window plus one.
    stream_channels : int
        Lanes of the ``feature_in`` stream (the frozen front end's output channels); 0 (the
        default) builds no stream, and ``RECV`` then stops the machine like an unknown op.
    sparse_engines : int
        Sparse engines behind ``sparse_out``/``sparse_in`` (``SEND``/``RECVS``); 0 (the
        default) builds no ports, and those commands then stop the machine like unknown ops.

    The weight cache has ``config.weight_cache_bytes`` bytes (none when 0: ``LOADW`` then
    stops the machine like an unknown op).

    Members
    -------
    start : ``In(1)``
        Pulse while idle: run the program at ``program_addr``.
    program_addr : ``In(32)``
        DRAM byte address of the first command.
    busy, done : ``Out(1)``
        ``busy`` from the cycle after ``start`` until ``END``; ``done`` then pulses one cycle.
    rd_cmd : ``Out(stream.Signature(dram_request_layout()))``
        DRAM read requests.
    rd_data : ``In(stream.Signature(8))``
        The requested bytes, in order.
    wr_cmd : ``Out(stream.Signature(dram_request_layout()))``
        DRAM write requests.
    wr_data : ``Out(stream.Signature(8))``
        The bytes to write, in order.
    feature_in : ``In(stream.Signature(pixel_layout(stream_channels)))``
        Only when ``stream_channels > 0``: pixels for ``RECV``, one per beat, raster order,
        lane ``c`` = channel ``c`` (signed int8). Taken at one beat per ``stream_channels``
        cycles (the scratchpad is one byte wide).
    sparse_out : ``Out(stream.Signature(activation_layout()))``
        Only when ``sparse_engines > 0``: ``SEND``'s bytes (``data``), ``last`` on a vector's
        final one, for the engine ``sparse_sel`` names. One beat a cycle while taken.
    sparse_in : ``In(stream.Signature(signed(8)))``
        Only when ``sparse_engines > 0``: the selected engine's results for ``RECVS``, taken
        one a cycle.
    sparse_sel : ``Out(8)``
        Only when ``sparse_engines > 0``: the ``engine`` field of the last ``SEND`` or
        ``RECVS`` (held until the next), which the top uses to route the two streams.
    cycles, fetch_cycles, ... : ``Out(counter_width)``
        The counters of :data:`BACKEND_COUNTERS`. ``SEND`` counts into ``copy_cycles``,
        ``RECVS`` into ``recv_cycles`` (its wait for the engine included).
    """

    def __init__(self, config: BackendConfig, *, scratch_bytes: int = 4096, param_depth: int = 64,
                 stream_channels: int = 0, sparse_engines: int = 0):
        if not isinstance(stream_channels, int) or stream_channels < 0:
            raise ValueError(f"stream_channels must be a non-negative integer, not "
                             f"{stream_channels!r}")
        if not isinstance(sparse_engines, int) or not 0 <= sparse_engines <= 256:
            raise ValueError(f"sparse_engines must be an integer in 0..256, not "
                             f"{sparse_engines!r}")
        self.sparse_engines = sparse_engines
        self._config = config
        self.scratch_bytes = scratch_bytes
        self.param_depth = param_depth
        self.stream_channels = stream_channels
        feature_port = ({"feature_in": In(stream.Signature(pixel_layout(stream_channels)))}
                        if stream_channels else {})
        if sparse_engines:
            feature_port.update({"sparse_out": Out(stream.Signature(activation_layout())),
                                 "sparse_in": In(stream.Signature(signed(8))),
                                 "sparse_sel": Out(8)})
        cw = config.counter_width
        super().__init__({
            **control_and_dram_ports(),
            **{name: Out(cw) for name in BACKEND_COUNTERS},
            **feature_port,
        })

    @property
    def config(self) -> BackendConfig:
        return self._config

    def _field_width(self, index: int, scratch_bits: int) -> int:
        """Bits of command-field register ``index``: 32, or with ``compact_fields`` the most
        that any command's field in that place needs (:func:`field_bits`)."""
        cfg = self._config
        if not cfg.compact_fields:
            return 32
        return max(field_bits(op, names[index], dram_bits=cfg.dram_addr_bits,
                              scratch_bits=scratch_bits, weight_cache=cfg.weight_cache_bytes > 0,
                              index_bits=cfg.index_bits)
                   for op, names in FIELDS.items() if index < len(names))

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols

        m.submodules.engine = engine = GemmEngine(cfg, keep_counters=cfg.engine_keeps_counters)
        m.submodules.requant = rq = Requantizer(
            cfg.acc_width, saturating_shift=cfg.requant_saturating_shift)
        m.submodules.scratch = scratch = Memory(shape=signed(8), depth=self.scratch_bytes, init=[])
        s_rd, s_wr = scratch.read_port(), scratch.write_port()
        # Per-channel parameters of the current MATMUL (or the pooling table).
        m.submodules.bias_mem = bias_mem = Memory(shape=signed(32), depth=self.param_depth, init=[])
        m.submodules.mult_mem = mult_mem = Memory(shape=unsigned(32), depth=self.param_depth, init=[])
        m.submodules.shift_mem = shift_mem = Memory(shape=unsigned(32), depth=self.param_depth, init=[])
        bias_wr, bias_rd = bias_mem.write_port(), bias_mem.read_port()
        mult_wr, mult_rd = mult_mem.write_port(), mult_mem.read_port()
        shift_wr, shift_rd = shift_mem.write_port(), shift_mem.read_port()
        wcache_bytes = cfg.weight_cache_bytes
        if wcache_bytes:
            # Weights several MATMULs share, loaded once by LOADW (bytes, as DRAM holds them).
            m.submodules.wcache = wcache = Memory(shape=8, depth=wcache_bytes, init=[])
            wc_wr, wc_rd = wcache.write_port(), wcache.read_port()

        counters = {name: getattr(self, name) for name in BACKEND_COUNTERS}

        def count(name, amount=1):
            return counters[name].eq(counters[name] + amount)

        # --- command registers ------------------------------------------------------------------
        dab = cfg.dram_addr_bits      # bits of DRAM addresses and lengths kept
        ib = cfg.index_bits           # bits of shapes, counts and indices
        aw = len(s_rd.addr)           # bits of scratchpad addresses
        pc = Signal(dab)
        op = Signal(8)
        n_fields = Signal(8)
        fields = Array(Signal(self._field_width(i, aw), name=f"field{i}")
                       for i in range(MAX_FIELDS))

        def field(command: Op, name: str):
            value = fields[FIELDS[command].index(name)]
            return value.as_signed() if name in SIGNED else value

        def no_params(value):
            """``p_addr`` is ``NO_PARAMS``/``KEEP_PARAMS`` (all ones, in however many bits)."""
            return value == (1 << len(value)) - 1

        geom_names = FIELDS[Op.GEOM]
        geom = {name: Signal(ib, name=f"g_{name}") for name in geom_names}

        # --- DRAM read side: one requester (this FSM), bytes assembled into words ------------
        word = Signal(32)
        byte_idx = Signal(2)
        rd_left = Signal(dab)         # bytes of the current read not yet received
        word_done = Signal()          # a whole little-endian word arrived this cycle
        take_word_bytes = Signal()    # the current state consumes rd_data as words
        m.d.comb += word_done.eq(take_word_bytes & self.rd_data.valid & (byte_idx == 3))
        full_word = Signal(32)
        m.d.comb += full_word.eq(Cat(word[8:], self.rd_data.payload))     # little-endian
        with m.If(take_word_bytes & self.rd_data.valid):
            m.d.comb += self.rd_data.ready.eq(1)
            m.d.sync += [word.eq(full_word), byte_idx.eq(byte_idx + 1)]
        with m.If(self.rd_data.valid & self.rd_data.ready):
            m.d.sync += [rd_left.eq(rd_left - 1), count("dram_read_bytes")]

        def dram_read(addr, length):
            """Statements that post a read request (the state waits for rd_cmd.ready)."""
            return [self.rd_cmd.valid.eq(1), self.rd_cmd.payload.addr.eq(addr),
                    self.rd_cmd.payload.length.eq(length)]

        # --- engine control -------------------------------------------------------------------
        mt = Signal(ib)
        nt = Signal(ib)
        k_total = Signal(ib)
        # (compact fields: only their low aw bits are used as address steps)
        hw_in = Signal(aw if cfg.compact_fields else 32)    # in_h * in_w
        hw_out = Signal(aw if cfg.compact_fields else 32)   # out_h * out_w
        ox0 = Signal(ib)
        n_tiles = Signal(ib)
        k_tiles = Signal(ib)
        w_bytes = Signal(dab)         # n_tiles * k_tiles * rows * cols: the MATMUL's weights
        m.d.comb += [engine.m.eq(mt), engine.n.eq(nt), engine.k.eq(k_total),
                     engine.zero_point.eq(field(Op.MATMUL, "zp_in"))]
        engine_started = Signal()

        # --- per-command products: one registered multiplier, used by setup states ------------
        # Nothing multiplies in the per-element loops: every address below is kept as a running
        # sum stepped by these strides. Scratchpad addresses are computed modulo 2**aw, which is
        # all the memory's address port keeps of them.
        mul_a, mul_b = Signal(max(16, aw)), Signal(max(16, aw))
        mul_p = Signal(32)            # low bits of mul_a * mul_b, two cycles after the operands
        m.d.sync += mul_p.eq(mul_a * mul_b)
        setup_step = Signal(4)
        khkw = Signal(ib)             # kh * kw
        sh_in = Signal(aw)            # sh * in_w: address step of one output row
        dh_in = Signal(aw)            # dh * in_w: address step of one kernel row
        pt_in = Signal(aw)            # pad_top * in_w
        d_ky = Signal(aw)             # address step from a kernel row's last tap to the next row
        d_c = Signal(aw)              # ... from a channel's last tap to the next channel
        o_tstride = Signal(aw)        # cols * hw_out: output address step of one N tile
        # Window bounds. A position is kept as oy * sh + ky * dh (and the x twin), which is
        # outside below pad_top and from in_h + pad_top on; it saturates at SAT, past every
        # bound (sums of three index_bits-wide registers), so narrow sums decide exactly as
        # wide ones. (With 16-bit indices: 18-bit bounds, 19-bit positions, 20-bit sums.)
        SAT = 1 << (ib + 2)
        y_end, x_end = Signal(ib + 2), Signal(ib + 2)       # in_h + pad_top, in_w + pad_left
        y_pad_end, x_pad_end = Signal(ib + 2), Signal(ib + 2)   # ... + pad_bottom, + pad_right

        def sat(value):
            return Mux(value >= SAT, SAT, value)

        def products(steps, done):
            setup_products(m, setup_step, (mul_a, mul_b, mul_p), steps, done)

        def ceil_div(value, d):
            """``ceil(value / d)`` for a constant ``d`` (a shift when it is a power of two)."""
            if d & (d - 1) == 0:
                return (value + d - 1) >> (d.bit_length() - 1)
            return (value + d - 1) // d

        # --- scalar-unit / drain share of the requantizer ------------------------------------
        # Results leave the requantizer in input order; each user keeps a write pointer.
        out_addr = Signal(32)
        m.d.comb += [s_wr.addr.eq(out_addr), s_wr.data.eq(rq.o_stream.payload)]

        # ======================================================================================
        # The gatherer: activation rows for the engine (MATMUL).
        # ======================================================================================
        g_active = Signal()
        g_kt = Signal(ib)
        g_m = Signal(ib)
        g_r = Signal(range(R + 1))
        g_ox = Signal(ib)
        # The lane's k as (c, ky, kx) in strength-reduced terms: ky and kx, ky * dh and kx * dw
        # (saturating, for the bounds) and its address offset c * hw_in + ky * dh_in + kx * dw.
        lane_shapes = {"ky": ib, "kx": ib, "kyd": ib + 3, "kxd": ib + 3, "koff": aw}
        g_lane = [Signal(w, name=f"g_{n}") for n, w in lane_shapes.items()]
        g_base = [Signal(w, name=f"g_base_{n}") for n, w in lane_shapes.items()]
        g_next = [Signal(w, name=f"g_next_{n}") for n, w in lane_shapes.items()]
        g_ky, g_kx, g_kyd, g_kxd, g_koff = g_lane
        # The pixel: yb = oy * sh and xb = ox * sw (saturating), pix the address of its
        # window's first tap in channel c0, row that of the row's first pixel; mm_* are the
        # first pixel's, where every K tile starts again.
        g_yb, g_xb, mm_yb0, mm_xb0 = (Signal(ib + 3, name=n)
                                      for n in ("g_yb", "g_xb", "mm_yb0", "mm_xb0"))
        g_row, g_pix, mm_row0, mm_pix0 = (Signal(aw, name=n)
                                          for n in ("g_row", "g_pix", "mm_row0", "mm_pix0"))
        g_k = Signal(ib)              # k of the lane being requested
        g_kbase = Signal(ib)
        g_pend = Signal()
        g_pend_lane = Signal(range(R))
        g_pend_pad = Signal()
        g_beat = Signal(8 * R)        # lanes of the activation row being gathered (raw bits)
        g_full = Signal()

        zp_in = field(Op.MATMUL, "zp_in")
        # iy = oy * sh + ky * dh - pad_top, ix likewise; the address is
        # src + (c0 + c) * hw_in + iy * in_w + ix, one add of running sums.
        y, x = Signal(ib + 4), Signal(ib + 4)           # iy + pad_top, ix + pad_left
        m.d.comb += [y.eq(g_yb + g_kyd), x.eq(g_xb + g_kxd)]
        # (POOL's taps use the same registers, positions and bounds: see POOL_RUN)
        window_outside = Signal()     # the position (y, x) is padding
        m.d.comb += window_outside.eq((y < geom["pad_top"]) | (x < geom["pad_left"])
                                      | (y >= y_end) | (x >= x_end))
        g_outside = Signal()
        m.d.comb += g_outside.eq((g_k >= k_total) | window_outside)
        g_addr = Signal(aw)
        m.d.comb += g_addr.eq(g_pix + g_koff)

        m.d.comb += [engine.a_stream.valid.eq(g_full), engine.a_stream.payload.eq(g_beat)]

        def k_step(ky, kx, kyd, kxd, koff):
            """The lane terms advanced by one k (kx fastest, as the weight layout is)."""
            last_kx = kx + 1 == geom["kw"]
            last_ky = ky + 1 == geom["kh"]
            return (Mux(last_kx, Mux(last_ky, 0, ky + 1), ky),
                    Mux(last_kx, 0, kx + 1),
                    Mux(last_kx, Mux(last_ky, 0, sat(kyd + geom["dh"])), kyd),
                    Mux(last_kx, 0, sat(kxd + geom["dw"])),
                    koff + Mux(last_kx, Mux(last_ky, d_c, d_ky), geom["dw"]))

        gather_reads = Signal()
        with m.If(g_active & ~g_full):
            # Take last cycle's read into its lane.
            with m.If(g_pend):
                m.d.sync += g_beat.word_select(g_pend_lane, 8).eq(Mux(g_pend_pad, zp_in, s_rd.data))
            with m.If(g_r < R):
                m.d.comb += gather_reads.eq(~g_outside)
                m.d.sync += [g_pend.eq(1), g_pend_lane.eq(g_r),
                             g_pend_pad.eq(g_outside), g_r.eq(g_r + 1), g_k.eq(g_k + 1)]
                stepped = k_step(*g_lane)
                m.d.sync += [lane.eq(v) for lane, v in zip(g_lane, stepped)]
                with m.If(g_r == R - 1):
                    m.d.sync += [n.eq(v) for n, v in zip(g_next, stepped)]
            with m.Elif(g_pend):
                m.d.sync += [g_pend.eq(0), g_full.eq(1)]
        with m.If(engine.a_stream.valid & engine.a_stream.ready):
            m.d.sync += [g_full.eq(0), g_r.eq(0)]
            last_m = g_m + 1 == mt
            with m.If(~last_m):
                # next pixel, same K tile: lanes restart from the tile's base k
                m.d.sync += [g_m.eq(g_m + 1), g_k.eq(g_kbase),
                             *(lane.eq(b) for lane, b in zip(g_lane, g_base))]
                with m.If(g_ox + 1 == geom["out_w"]):
                    m.d.sync += [g_ox.eq(0), g_yb.eq(sat(g_yb + geom["sh"])), g_xb.eq(0),
                                 g_row.eq(g_row + sh_in), g_pix.eq(g_row + sh_in)]
                with m.Else():
                    m.d.sync += [g_ox.eq(g_ox + 1), g_xb.eq(sat(g_xb + geom["sw"])),
                                 g_pix.eq(g_pix + geom["sw"])]
            with m.Else():
                m.d.sync += [g_m.eq(0), g_ox.eq(ox0), g_yb.eq(mm_yb0), g_xb.eq(mm_xb0),
                             g_row.eq(mm_row0), g_pix.eq(mm_pix0), g_kt.eq(g_kt + 1),
                             g_kbase.eq(g_kbase + R), g_k.eq(g_kbase + R),
                             *(b.eq(n) for b, n in zip(g_base, g_next)),
                             *(lane.eq(n) for lane, n in zip(g_lane, g_next))]
                with m.If(g_kt + 1 == k_tiles):
                    m.d.sync += g_active.eq(0)

        # ======================================================================================
        # The weight feeder: DRAM bytes -> rows of ``cols`` weights.
        # ======================================================================================
        w_active = Signal()
        w_lane = Signal(range(C + 1))
        w_beat = Signal(cfg.weight_bits * C)
        w_full = Signal()
        # The byte source: DRAM's read stream, or the weight cache read as a stream of the
        # same timing: its read port always holds byte wc_ptr (the address is the pointer
        # plus the byte taken this cycle), so a byte is there every cycle from the first.
        w_cached = Signal()           # this MATMUL's weights come from the weight cache
        wc_ptr = Signal(range(max(wcache_bytes, 2)))
        wc_left = Signal(dab)         # weight-cache bytes of this MATMUL not yet taken
        wc_take = Signal()
        w_src_valid, w_src_byte, w_src_last = (
            Mux(w_cached, wc_left != 0, self.rd_data.valid),
            Mux(w_cached, wc_rd.data, self.rd_data.payload) if wcache_bytes
            else self.rd_data.payload,
            Mux(w_cached, wc_left == 1, rd_left == 1))
        m.d.comb += [engine.b_stream.valid.eq(w_full), engine.b_stream.payload.eq(w_beat)]
        with m.If(w_active & ~w_full & w_src_valid):
            with m.If(w_cached):
                m.d.comb += wc_take.eq(1)
                m.d.sync += [wc_ptr.eq(wc_ptr + 1), wc_left.eq(wc_left - 1),
                             count("wcache_reads")]
            with m.Else():
                m.d.comb += self.rd_data.ready.eq(1)
            m.d.sync += [w_beat.word_select(w_lane, cfg.weight_bits).eq(w_src_byte[:cfg.weight_bits]),
                         w_lane.eq(w_lane + 1)]
            with m.If(w_lane == C - 1):
                m.d.sync += [w_full.eq(1), w_lane.eq(0)]
                with m.If(w_src_last):
                    m.d.sync += w_active.eq(0)
        if wcache_bytes:
            m.d.comb += wc_rd.addr.eq(wc_ptr + wc_take)
        with m.If(engine.b_stream.valid & engine.b_stream.ready):
            m.d.sync += w_full.eq(0)

        # ======================================================================================
        # The bias feeder: ``cols`` biases per N tile from the parameter buffer.
        # ======================================================================================
        b_active = Signal()
        b_tile = Signal(ib)
        b_lane = Signal(range(C + 1))
        b_pend = Signal()
        b_pend_lane = Signal(range(C))
        b_pend_zero = Signal()
        b_beat = Signal(cfg.acc_width * C)
        b_full = Signal()
        b_n = Signal(ib)              # channel of the lane being requested (tile * cols + lane)
        m.d.comb += [engine.bias_stream.valid.eq(b_full), engine.bias_stream.payload.eq(b_beat),
                     bias_rd.addr.eq(b_n)]
        with m.If(b_active & ~b_full):
            with m.If(b_pend):
                m.d.sync += b_beat.word_select(b_pend_lane, cfg.acc_width).eq(Mux(b_pend_zero, 0, bias_rd.data))
            with m.If(b_lane < C):
                m.d.sync += [b_pend.eq(1), b_pend_lane.eq(b_lane),
                             b_pend_zero.eq(b_n >= nt), b_lane.eq(b_lane + 1), b_n.eq(b_n + 1)]
            with m.Elif(b_pend):
                m.d.sync += [b_pend.eq(0), b_full.eq(1)]
        with m.If(engine.bias_stream.valid & engine.bias_stream.ready):
            m.d.sync += [b_full.eq(0), b_lane.eq(0), b_tile.eq(b_tile + 1)]
            with m.If(b_tile + 1 == n_tiles):
                m.d.sync += b_active.eq(0)

        # ======================================================================================
        # The drain: engine results -> requantizer, one channel at a time.
        # ======================================================================================
        d_beat = Signal(cfg.acc_width * C)
        d_have = Signal()
        d_lane = Signal(range(C + 1))
        d_n = Signal(ib)              # channel of d_lane
        d_tile_n = Signal(ib)         # first channel of the current N tile
        d_m = Signal(ib)
        d_addr_phase = Signal()       # parameters for d_n are being read this cycle
        drain_rq = Signal()           # the drain drives the requantizer input
        m.d.comb += [engine.o_stream.ready.eq(engine_started & ~d_have),
                     mult_rd.addr.eq(d_n), shift_rd.addr.eq(d_n)]
        with m.If(engine.o_stream.valid & engine.o_stream.ready):
            m.d.sync += [d_beat.eq(engine.o_stream.payload), d_have.eq(1), d_lane.eq(0),
                         d_n.eq(d_tile_n), d_addr_phase.eq(1)]
        with m.If(d_have):
            with m.If(d_addr_phase):
                m.d.sync += d_addr_phase.eq(0)
            with m.Elif((d_lane == C) | (d_n >= nt)):
                # beat done: next pixel, or the next N tile after the last pixel
                m.d.sync += d_have.eq(0)
                with m.If(d_m + 1 == mt):
                    m.d.sync += [d_m.eq(0), d_tile_n.eq(d_tile_n + C)]
                with m.Else():
                    m.d.sync += d_m.eq(d_m + 1)
            with m.Else():
                m.d.comb += drain_rq.eq(1)
                with m.If(rq.i_stream.ready):
                    m.d.sync += [d_lane.eq(d_lane + 1), d_n.eq(d_n + 1), d_addr_phase.eq(1)]

        # MATMUL write pointer, advanced in the drain's order (channel-major within a pixel).
        w_n = Signal(ib)              # channel of the next result leaving the requantizer
        w_tile_n = Signal(ib)
        w_m = Signal(ib)
        # Its address dst + (n0 + w_n) * hw_out + m0 + w_m, as running sums: o_tile at the N
        # tile's first channel and pixel, o_pix at w_m's first channel, o_addr at w_n.
        o_base, o_tile, o_pix, o_addr = (Signal(aw, name=n)
                                         for n in ("o_base", "o_tile", "o_pix", "o_addr"))

        # ======================================================================================
        # The scalar unit: POOL and ADD, one element at a time.
        # ======================================================================================
        p_done = Signal()             # every window has been pushed
        # A window's max, or its sum of x - zp_in over at most param_depth - 1 taps (an average
        # pool's table has a record per count): compact fields (zp_in of 16 bits) bound it.
        p_acc = Signal(signed(17 + self.param_depth.bit_length() if cfg.compact_fields else 32))
        p_count = Signal(ib)
        p_rescale = Signal()
        p_phase = Signal(3)           # 0: address tap, 1: read, 2: take tap, 3: table, 4: push
        # A window's taps run on the gatherer's registers (a MATMUL and a POOL never overlap):
        # channel g_kt, output row g_m, column g_ox; the tap (ky, kx) in g_lane, stepped by
        # k_step as a MATMUL's k is (so dilation works as it does there); the window's origin
        # g_yb = oy * sh, g_xb = ox * sw, and so the same position (y, x) and padding bounds.
        # The tap's address src + c * hw_in + iy * in_w + ix is g_pix + g_koff: mm_row0 holds
        # the window origin's address at oy = ox = 0 of channel c, g_row at ox = 0, g_pix the
        # window's, g_koff the tap's offset in it.
        p_counted = Signal()          # the tap counts for POOL_AVG_PAD: inside the explicit pads
        m.d.comb += p_counted.eq((y < y_pad_end) & (x < x_pad_end))   # (y, x >= 0 always)
        # ADD, low 32 bits (all the requantizer's acc keeps) of
        # (a - zp_a) * mult_a + (b - zp_b) * mult_b = a_term + b * mult_b - zb
        a_first = Signal(signed(9))   # a - zp_a, kept while b is read
        a_term = Signal(32)           # (a - zp_a) * mult_a
        b_val = Signal(signed(8))     # b
        zb = Signal(32)               # zp_b * mult_b, once per command
        a_sum = Signal(32)            # a_term - zb
        b_term = Signal(32)           # b * mult_b
        a_mul = Signal()              # a_term and b_val taken: form b_term and a_sum
        a_push = Signal()             # a_sum + b_term waits for the requantizer
        a_idx = Signal(dab)
        a_phase = Signal(4)           # add_shares_multiplier: one-hot step of the element behind
        a_taken = Signal()            # ... b taken (ADD_TAKE_B): the element's step 0 is next

        unit_rq = Signal()            # the scalar unit drives the requantizer input
        unit_payload = Signal(rq.i_stream.payload.shape())

        # Requantizer input: the drain or the scalar unit (never both: different commands).
        with m.If(drain_rq):
            m.d.comb += [
                rq.i_stream.valid.eq(1),
                rq.i_stream.payload.acc.eq(d_beat.word_select(d_lane, cfg.acc_width).as_signed()),
                rq.i_stream.payload.multiplier.eq(mult_rd.data),
                rq.i_stream.payload.shift.eq(shift_rd.data),
                rq.i_stream.payload.zero_point.eq(field(Op.MATMUL, "zp_out")),
                rq.i_stream.payload.lo.eq(field(Op.MATMUL, "lo")),
                rq.i_stream.payload.hi.eq(field(Op.MATMUL, "hi")),
            ]
        with m.Elif(unit_rq):
            m.d.comb += [rq.i_stream.valid.eq(1), rq.i_stream.payload.eq(unit_payload)]

        # Requantizer output -> scratchpad.
        m.d.comb += rq.o_stream.ready.eq(1)
        with m.If(rq.o_stream.valid):
            m.d.comb += s_wr.en.eq(1)
            m.d.sync += [count("scratch_writes"), out_addr.eq(out_addr + 1)]
        # Beats inside the requantizer: a command is over when its last result is written.
        rq_inflight = Signal(range(8))
        rq_taken = rq.i_stream.valid & rq.i_stream.ready
        m.d.sync += rq_inflight.eq(rq_inflight + rq_taken - rq.o_stream.valid)

        # ======================================================================================
        # The receiver's registers (RECV; its logic is in _receiver).
        # ======================================================================================
        r_active = Signal()           # the sequencer is in RECV
        r_have = Signal()             # r_beat holds a beat not yet fully written
        r_lane = Signal(range(max(self.stream_channels, 2)))
        r_taken = Signal(ib if cfg.compact_fields else 32)      # beats accepted
        r_written = Signal(ib if cfg.compact_fields else 32)    # beats written
        r_pixel_addr = Signal(32)     # dst + index of the beat being written
        r_addr = Signal(32)           # dst + lane * pixels + index of the beat
        r_regs = {"active": r_active, "have": r_have, "lane": r_lane, "taken": r_taken,
                  "written": r_written, "pixel_addr": r_pixel_addr, "addr": r_addr,
                  "beat": Signal(8 * max(self.stream_channels, 1), name="r_beat")}

        # ======================================================================================
        # The sequencer.
        # ======================================================================================
        copy_i = Signal(dab)
        param_i = Signal(ib)          # parameter word being loaded
        param_words = Signal(ib)
        param_rec = Signal(2)         # words per record: 3 (bias, mult, shift) or 2 (mult, shift)
        param_r = Signal(ib)          # record of the word being loaded
        param_slot = Signal(2)        # its slot: 0 bias, 1 mult, 2 shift
        field_i = Signal(8)
        div_rem = Signal(ib)

        buffer_names = ("a_reads", "a_writes", "w_reads", "w_writes", "acc_reads", "acc_writes")
        counter_names = ("macs_issued", "macs_useful", "engine_busy_cycles", "engine_stall_cycles",
                         *buffer_names)
        engine_names = ("macs_issued", "macs_useful", "busy_cycles", "stall_cycles", *buffer_names)
        if cfg.engine_keeps_counters:
            # The engine counts on over its runs (cleared by our start): these counters are
            # its, summed over the program's MATMULs, with no adders or registers of our own.
            m.d.comb += [counters[ours].eq(getattr(engine, theirs))
                         for ours, theirs in zip(counter_names, engine_names)]
        summed = counter_names if cfg.engine_keeps_counters else ()

        with m.If(self.busy):
            m.d.sync += count("cycles")

        s_rd_addr = Signal(32)
        m.d.comb += s_rd.addr.eq(s_rd_addr)

        with m.FSM(name="sequencer"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [pc.eq(self.program_addr), self.busy.eq(1),
                                 *(c.eq(0) for name, c in counters.items() if name not in summed)]
                    if cfg.engine_keeps_counters:
                        m.d.comb += engine.clear_counters.eq(1)
                    m.next = "FETCH"

            with m.State("FETCH"):
                m.d.sync += count("fetch_cycles")
                m.d.comb += dram_read(pc, 4)
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [rd_left.eq(4), byte_idx.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.sync += count("fetch_cycles")
                m.d.comb += take_word_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += [op.eq(full_word[24:]), n_fields.eq(full_word[:8]),
                                 pc.eq(pc + 4), field_i.eq(0), count("commands")]
                    with m.If(full_word[:8] == 0):
                        m.next = "DISPATCH"
                    with m.Else():
                        m.next = "FIELDS_REQ"

            with m.State("FIELDS_REQ"):
                m.d.sync += count("fetch_cycles")
                m.d.comb += dram_read(pc, n_fields * 4)
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [rd_left.eq(n_fields * 4), byte_idx.eq(0)]
                    m.next = "FIELDS"

            with m.State("FIELDS"):
                m.d.sync += count("fetch_cycles")
                m.d.comb += take_word_bytes.eq(1)
                with m.If(word_done):
                    m.d.sync += [fields[field_i].eq(full_word), field_i.eq(field_i + 1),
                                 pc.eq(pc + 4)]
                    with m.If(field_i + 1 == n_fields):
                        m.next = "DISPATCH"

            with m.State("DISPATCH"):
                m.d.sync += count("fetch_cycles")
                with m.Switch(op):
                    with m.Case(Op.LOAD):
                        m.next = "LOAD_REQ"
                    if wcache_bytes:
                        with m.Case(Op.LOADW):          # (LOAD's fields, LOAD's states)
                            m.next = "LOAD_REQ"
                    with m.Case(Op.STORE):
                        m.next = "STORE_REQ"
                    with m.Case(Op.GEOM):
                        m.d.sync += [geom[name].eq(field(Op.GEOM, name)) for name in geom_names]
                        m.next = "GEOM_SETUP"
                    with m.Case(Op.MATMUL):
                        m.d.sync += [mt.eq(field(Op.MATMUL, "mt")), nt.eq(field(Op.MATMUL, "nt")),
                                     n_tiles.eq(ceil_div(field(Op.MATMUL, "nt")[:ib], C)),
                                     div_rem.eq(field(Op.MATMUL, "m0")),
                                     mm_yb0.eq(0),
                                     mm_row0.eq(field(Op.MATMUL, "src") - pt_in - geom["pad_left"])]
                        m.next = "MM_DIVIDE"
                    with m.Case(Op.POOL):
                        m.next = "POOL_SETUP"
                    with m.Case(Op.ADD):
                        m.d.sync += [a_idx.eq(0), out_addr.eq(field(Op.ADD, "dst")), p_phase.eq(0),
                                     a_mul.eq(0), a_push.eq(0)]
                        m.next = "ADD_SETUP"
                    with m.Case(Op.SYNC):
                        m.next = "FETCH"
                    if self.stream_channels:
                        with m.Case(Op.RECV):
                            m.d.sync += [r_taken.eq(0), r_written.eq(0), r_have.eq(0),
                                         r_lane.eq(0), r_pixel_addr.eq(field(Op.RECV, "dst")),
                                         r_addr.eq(field(Op.RECV, "dst"))]
                            m.next = "RECV"
                    if self.sparse_engines:
                        with m.Case(Op.SEND):
                            m.d.sync += [copy_i.eq(0), s_rd_addr.eq(field(Op.SEND, "src")),
                                         self.sparse_sel.eq(field(Op.SEND, "engine"))]
                            m.next = "SEND_FIRST"
                        with m.Case(Op.RECVS):
                            m.d.sync += [copy_i.eq(0),
                                         self.sparse_sel.eq(field(Op.RECVS, "engine"))]
                            m.next = "RECVS"
                    with m.Case(Op.END):
                        m.next = "END"
                    with m.Default():
                        m.next = "END"          # an unknown op stops the machine

            with m.State("GEOM_SETUP"):
                # the strides the MATMULs and POOLs of this geometry step their addresses by
                m.d.sync += count("fetch_cycles")
                m.d.sync += [y_end.eq(geom["in_h"] + geom["pad_top"]),
                             x_end.eq(geom["in_w"] + geom["pad_left"]),
                             y_pad_end.eq(geom["in_h"] + geom["pad_top"] + geom["pad_bottom"]),
                             x_pad_end.eq(geom["in_w"] + geom["pad_left"] + geom["pad_right"])]

                def geom_done():
                    m.next = "FETCH"

                products([
                    (geom["in_h"], geom["in_w"], lambda p: [hw_in.eq(p)]),
                    (geom["out_h"], geom["out_w"], lambda p: [hw_out.eq(p)]),
                    (geom["kh"], geom["kw"], lambda p: [khkw.eq(p)]),
                    (geom["sh"], geom["in_w"], lambda p: [sh_in.eq(p)]),
                    (geom["dh"], geom["in_w"], lambda p: [dh_in.eq(p)]),
                    (geom["pad_top"], geom["in_w"], lambda p: [pt_in.eq(p)]),
                    (geom["kw"] - 1, geom["dw"], lambda p: [d_ky.eq(dh_in - p), d_c.eq(hw_in - p)]),
                    (geom["kh"] - 1, dh_in, lambda p: [d_c.eq(d_c - p)]),
                    (C, hw_out, lambda p: [o_tstride.eq(p)]),
                ], geom_done)

            # ---- LOAD / STORE ---------------------------------------------------------------
            with m.State("LOAD_REQ"):
                m.d.sync += count("copy_cycles")
                m.d.comb += dram_read(field(Op.LOAD, "dram_addr"), field(Op.LOAD, "length"))
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [rd_left.eq(field(Op.LOAD, "length")), copy_i.eq(0)]
                    m.next = "LOAD_DATA"
            with m.State("LOAD_DATA"):
                m.d.sync += count("copy_cycles")
                with m.If(copy_i == field(Op.LOAD, "length")):
                    m.next = "FETCH"
                with m.Elif(self.rd_data.valid):
                    m.d.comb += self.rd_data.ready.eq(1)
                    m.d.sync += copy_i.eq(copy_i + 1)
                    with m.If(op == Op.LOAD):
                        m.d.comb += [s_wr.en.eq(1), s_wr.addr.eq(field(Op.LOAD, "dst") + copy_i),
                                     s_wr.data.eq(self.rd_data.payload)]
                        m.d.sync += count("scratch_writes")
                    if wcache_bytes:
                        with m.Else():
                            m.d.comb += [wc_wr.en.eq(1),
                                         wc_wr.addr.eq(field(Op.LOADW, "dst") + copy_i),
                                         wc_wr.data.eq(self.rd_data.payload)]
                            m.d.sync += count("wcache_writes")

            with m.State("STORE_REQ"):
                m.d.sync += count("copy_cycles")
                m.d.comb += [self.wr_cmd.valid.eq(1),
                             self.wr_cmd.payload.addr.eq(field(Op.STORE, "dram_addr")),
                             self.wr_cmd.payload.length.eq(field(Op.STORE, "length"))]
                with m.If(self.wr_cmd.ready):
                    m.d.sync += [copy_i.eq(0), s_rd_addr.eq(field(Op.STORE, "src"))]
                    m.next = "STORE_READ"
            with m.State("STORE_READ"):
                m.d.sync += count("copy_cycles")
                with m.If(copy_i == field(Op.STORE, "length")):
                    m.next = "FETCH"
                with m.Else():
                    m.d.sync += count("scratch_reads")
                    m.next = "STORE_SEND"       # the read port has the byte next cycle
            with m.State("STORE_SEND"):
                m.d.sync += count("copy_cycles")
                m.d.comb += [self.wr_data.valid.eq(1), self.wr_data.payload.eq(s_rd.data)]
                with m.If(self.wr_data.ready):
                    m.d.sync += [copy_i.eq(copy_i + 1), s_rd_addr.eq(s_rd_addr + 1),
                                 count("dram_write_bytes")]
                    m.next = "STORE_READ"

            # ---- MATMUL ---------------------------------------------------------------------
            with m.State("MM_DIVIDE"):
                # (oy0, ox0) = divmod(m0, out_w) by repeated subtraction (at most out_h steps),
                # stepping the first pixel's row terms by one output row each
                m.d.sync += count("matmul_cycles")
                with m.If(div_rem >= geom["out_w"]):
                    m.d.sync += [div_rem.eq(div_rem - geom["out_w"]),
                                 mm_yb0.eq(sat(mm_yb0 + geom["sh"])), mm_row0.eq(mm_row0 + sh_in)]
                with m.Else():
                    m.d.sync += ox0.eq(div_rem)
                    m.next = "MM_SETUP"
            with m.State("MM_SETUP"):
                m.d.sync += count("matmul_cycles")

                def mm_setup_done():
                    m.d.sync += [param_i.eq(0), param_words.eq((nt << 1) + nt), param_rec.eq(3),
                                 param_r.eq(0), param_slot.eq(0)]
                    with m.If(no_params(field(Op.MATMUL, "p_addr"))):
                        m.next = "MM_START"     # the parameter buffer holds them already
                    with m.Else():
                        m.next = "MM_PARAMS_REQ"

                products([
                    (field(Op.MATMUL, "cg"), khkw, lambda p: [k_total.eq(p)]),
                    (field(Op.MATMUL, "c0"), hw_in,
                     lambda p: [mm_row0.eq(mm_row0 + p), k_tiles.eq(ceil_div(k_total, R))]),
                    (field(Op.MATMUL, "n0"), hw_out,
                     lambda p: [o_base.eq(field(Op.MATMUL, "dst") + field(Op.MATMUL, "m0") + p)]),
                    (ox0, geom["sw"],
                     lambda p: [mm_xb0.eq(sat(p)), mm_pix0.eq(mm_row0 + p)]),
                    (n_tiles, k_tiles, lambda p: [w_bytes.eq(p * (R * C))]),
                ], mm_setup_done)
            with m.State("MM_PARAMS_REQ"):
                m.d.sync += count("matmul_cycles")
                # nt records of 12 bytes (shifts and an add: a constant product would take a DSP)
                m.d.comb += dram_read(field(Op.MATMUL, "p_addr"), (nt << 3) + (nt << 2))
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [rd_left.eq((nt << 3) + (nt << 2)), byte_idx.eq(0)]
                    m.next = "PARAMS"
            with m.State("MM_START"):
                m.d.sync += count("matmul_cycles")
                w_addr = field(Op.MATMUL, "w_addr")
                cached = (w_addr & WCACHE).any() if wcache_bytes else 0
                started = Signal()
                if wcache_bytes:
                    with m.If(cached):
                        # the cache's read port fetches the first byte now
                        m.d.comb += [started.eq(1), wc_rd.addr.eq(w_addr[:len(wc_ptr)])]
                    with m.Else():
                        m.d.comb += [*dram_read(w_addr, w_bytes), started.eq(self.rd_cmd.ready)]
                else:
                    m.d.comb += [*dram_read(w_addr, w_bytes), started.eq(self.rd_cmd.ready)]
                with m.If(started):
                    m.d.comb += engine.start.eq(1)
                    m.d.sync += [
                        rd_left.eq(Mux(cached, 0, w_bytes)), engine_started.eq(1),
                        w_cached.eq(cached), wc_ptr.eq(w_addr[:len(wc_ptr)]),
                        wc_left.eq(Mux(cached, w_bytes, 0)),
                        # gatherer
                        g_active.eq(1), g_full.eq(0), g_pend.eq(0), g_kt.eq(0), g_m.eq(0),
                        g_r.eq(0), g_ox.eq(ox0), g_yb.eq(mm_yb0), g_xb.eq(mm_xb0),
                        g_row.eq(mm_row0), g_pix.eq(mm_pix0), g_k.eq(0), g_kbase.eq(0),
                        *(lane.eq(0) for lane in g_lane), *(b.eq(0) for b in g_base),
                        # weight and bias feeders
                        w_active.eq(1), w_full.eq(0), w_lane.eq(0),
                        b_active.eq(1), b_full.eq(0), b_pend.eq(0), b_lane.eq(0), b_tile.eq(0),
                        b_n.eq(0),
                        # drain and write pointer
                        d_have.eq(0), d_tile_n.eq(0), d_m.eq(0),
                        w_n.eq(0), w_tile_n.eq(0), w_m.eq(0),
                        o_tile.eq(o_base), o_pix.eq(o_base), o_addr.eq(o_base),
                    ]
                    m.next = "MM_RUN"
            with m.State("MM_RUN"):
                m.d.sync += count("matmul_cycles")
                with m.If(rq.o_stream.valid):
                    m.d.comb += s_wr.addr.eq(o_addr)
                    # next result: the next channel of this pixel, else the next pixel
                    with m.If((w_n + 1 == nt) | (w_n + 1 == w_tile_n + C)):
                        with m.If(w_m + 1 == mt):
                            m.d.sync += [w_m.eq(0), w_tile_n.eq(w_tile_n + C), w_n.eq(w_tile_n + C),
                                         o_tile.eq(o_tile + o_tstride),
                                         o_pix.eq(o_tile + o_tstride), o_addr.eq(o_tile + o_tstride)]
                        with m.Else():
                            m.d.sync += [w_m.eq(w_m + 1), w_n.eq(w_tile_n),
                                         o_pix.eq(o_pix + 1), o_addr.eq(o_pix + 1)]
                    with m.Else():
                        m.d.sync += [w_n.eq(w_n + 1), o_addr.eq(o_addr + hw_out)]
                with m.If(gather_reads):
                    m.d.sync += count("scratch_reads")
                # done when the engine has sent its last beat, the drain has pushed it and the
                # requantizer has written every result
                with m.If(engine_started & ~engine.busy & ~d_have & (rq_inflight == 0)):
                    m.d.sync += [engine_started.eq(0)]
                    if not cfg.engine_keeps_counters:
                        m.d.sync += [counters[ours].eq(counters[ours] + getattr(engine, theirs))
                                     for ours, theirs in zip(counter_names, engine_names)]
                    m.next = "FETCH"

            # ---- parameter loading (MATMUL records, pooling tables) ----------------------------
            with m.State("PARAMS"):
                with m.If(op == Op.MATMUL):
                    m.d.sync += count("matmul_cycles")
                with m.Else():
                    m.d.sync += count("pool_cycles")
                m.d.comb += take_word_bytes.eq(1)
                with m.If(word_done):
                    m.d.comb += [bias_wr.addr.eq(param_r), mult_wr.addr.eq(param_r),
                                 shift_wr.addr.eq(param_r),
                                 bias_wr.data.eq(full_word), mult_wr.data.eq(full_word),
                                 shift_wr.data.eq(full_word)]
                    # records of 3 words (bias, mult, shift) or 2 (mult, shift)
                    with m.If(param_slot == 2):
                        m.d.sync += [param_r.eq(param_r + 1),
                                     param_slot.eq(Mux(param_rec == 3, 0, 1))]
                    with m.Else():
                        m.d.sync += param_slot.eq(param_slot + 1)
                    with m.Switch(param_slot):
                        with m.Case(0):
                            m.d.comb += bias_wr.en.eq(1)
                        with m.Case(1):
                            m.d.comb += mult_wr.en.eq(1)
                        with m.Case(2):
                            m.d.comb += shift_wr.en.eq(1)
                    m.d.sync += [param_i.eq(param_i + 1), count("param_writes")]
                    with m.If(param_i + 1 == param_words):
                        with m.If(op == Op.MATMUL):
                            m.next = "MM_START"
                        with m.Else():
                            m.next = "POOL_RUN"

            # ---- POOL -----------------------------------------------------------------------
            with m.State("POOL_SETUP"):
                m.d.sync += count("pool_cycles")
                origin = field(Op.POOL, "src") - pt_in - geom["pad_left"]
                m.d.sync += [g_kt.eq(0), g_m.eq(0), g_ox.eq(0), *(lane.eq(0) for lane in g_lane),
                             p_phase.eq(0), p_count.eq(0), out_addr.eq(field(Op.POOL, "dst")),
                             # (hw_out, of narrow factors, is 0 only when one of them is)
                             p_done.eq((geom["in_c"] == 0) | ((geom["out_h"] == 0)
                                       | (geom["out_w"] == 0) if cfg.compact_fields
                                       else hw_out == 0)),
                             g_yb.eq(0), g_xb.eq(0),
                             mm_row0.eq(origin), g_row.eq(origin), g_pix.eq(origin),
                             p_acc.eq(Mux(field(Op.POOL, "kind") == POOL_MAX, -128, 0)),
                             p_rescale.eq(~no_params(field(Op.POOL, "p_addr"))),
                             param_i.eq(0), param_rec.eq(2), param_r.eq(0), param_slot.eq(1),
                             param_words.eq(Mux(field(Op.POOL, "kind") == POOL_MAX, 2,
                                                (khkw + 1) * 2))]
                with m.If(no_params(field(Op.POOL, "p_addr"))):
                    m.next = "POOL_RUN"
                with m.Else():
                    m.next = "POOL_PARAMS_REQ"
            with m.State("POOL_PARAMS_REQ"):
                m.d.sync += count("pool_cycles")
                m.d.comb += dram_read(field(Op.POOL, "p_addr"), param_words * 4)
                with m.If(self.rd_cmd.ready):
                    m.d.sync += [rd_left.eq(param_words * 4), byte_idx.eq(0)]
                    m.next = "PARAMS"
            with m.State("POOL_RUN"):
                m.d.sync += count("pool_cycles")
                kind = field(Op.POOL, "kind")
                is_max = kind == POOL_MAX
                last_tap = (g_kx + 1 == geom["kw"]) & (g_ky + 1 == geom["kh"])
                inside = ~window_outside
                with m.If(p_done):
                    with m.If(rq_inflight == 0):
                        m.next = "FETCH"
                with m.Elif(p_phase == 0):
                    # request the tap (a padded tap needs no read)
                    m.d.sync += [s_rd_addr.eq(g_addr), p_phase.eq(1)]
                    with m.If(inside):
                        m.d.sync += count("scratch_reads")
                with m.Elif(p_phase == 1):
                    # the read port holds the tap now (address was registered last cycle) -> wait one more
                    m.d.sync += p_phase.eq(2)
                with m.Elif(p_phase == 2):
                    value = s_rd.data
                    with m.If(inside):
                        with m.If(is_max):
                            with m.If(value > p_acc):
                                m.d.sync += p_acc.eq(value)
                        with m.Else():
                            m.d.sync += p_acc.eq(p_acc + value - field(Op.POOL, "zp_in"))
                    with m.If(Mux(kind == POOL_AVG_PAD, p_counted, inside)):
                        m.d.sync += p_count.eq(p_count + 1)
                    with m.If(last_tap):
                        m.d.sync += p_phase.eq(3)
                    with m.Else():
                        m.d.sync += [p_phase.eq(0),
                                     *(lane.eq(v) for lane, v in zip(g_lane, k_step(*g_lane)))]
                with m.Elif(p_phase == 3):
                    # the table entry for this window's element count is read next cycle
                    m.d.comb += [mult_rd.addr.eq(Mux(is_max, 0, p_count)),
                                 shift_rd.addr.eq(Mux(is_max, 0, p_count))]
                    m.d.sync += p_phase.eq(4)
                with m.Else():
                    # push the window's result into the requantizer
                    clamped = Signal(signed(max(len(p_acc), 16)))
                    lo_in, hi_in = field(Op.POOL, "lo_in"), field(Op.POOL, "hi_in")
                    m.d.comb += clamped.eq(Mux(p_acc < lo_in, lo_in, Mux(p_acc > hi_in, hi_in, p_acc)))
                    m.d.comb += [mult_rd.addr.eq(Mux(is_max, 0, p_count)),
                                 shift_rd.addr.eq(Mux(is_max, 0, p_count))]
                    m.d.comb += unit_rq.eq(1)
                    with m.If(is_max):
                        with m.If(p_rescale):
                            m.d.comb += [unit_payload.acc.eq(clamped - field(Op.POOL, "zp_in")),
                                         unit_payload.multiplier.eq(mult_rd.data),
                                         unit_payload.shift.eq(shift_rd.data),
                                         unit_payload.zero_point.eq(field(Op.POOL, "zp_out"))]
                        with m.Else():
                            m.d.comb += [unit_payload.acc.eq(clamped), unit_payload.multiplier.eq(1),
                                         unit_payload.shift.eq(0), unit_payload.zero_point.eq(0)]
                        m.d.comb += [unit_payload.lo.eq(-128), unit_payload.hi.eq(127)]
                    with m.Else():
                        m.d.comb += [unit_payload.acc.eq(p_acc), unit_payload.multiplier.eq(mult_rd.data),
                                     unit_payload.shift.eq(shift_rd.data),
                                     unit_payload.zero_point.eq(field(Op.POOL, "zp_out")),
                                     unit_payload.lo.eq(lo_in), unit_payload.hi.eq(hi_in)]
                    with m.If(rq.i_stream.ready):
                        m.d.sync += [p_phase.eq(0), *(lane.eq(0) for lane in g_lane),
                                     p_count.eq(0), p_acc.eq(Mux(is_max, -128, 0))]
                        with m.If(g_ox + 1 == geom["out_w"]):
                            m.d.sync += [g_ox.eq(0), g_xb.eq(0)]
                            with m.If(g_m + 1 == geom["out_h"]):
                                m.d.sync += [g_m.eq(0), g_kt.eq(g_kt + 1), g_yb.eq(0),
                                             mm_row0.eq(mm_row0 + hw_in),
                                             g_row.eq(mm_row0 + hw_in), g_pix.eq(mm_row0 + hw_in)]
                                with m.If(g_kt + 1 == geom["in_c"]):
                                    m.d.sync += p_done.eq(1)
                            with m.Else():
                                m.d.sync += [g_m.eq(g_m + 1), g_yb.eq(sat(g_yb + geom["sh"])),
                                             g_row.eq(g_row + sh_in), g_pix.eq(g_row + sh_in)]
                        with m.Else():
                            m.d.sync += [g_ox.eq(g_ox + 1), g_xb.eq(sat(g_xb + geom["sw"])),
                                         g_pix.eq(g_pix + geom["sw"])]

            # ---- ADD ------------------------------------------------------------------------
            with m.State("ADD_SETUP"):
                # zp_b * mult_b (low 32 bits) from 16-bit halves; sharing the multiplier, the
                # constant (zp_a + 128) * mult_a + (zp_b + 128) * mult_b (see below)
                m.d.sync += count("add_cycles")

                def add_setup_done():
                    m.next = "ADD_A"

                def low_product(x, y, first):
                    """Steps adding the low 32 bits of ``x * y`` (32-bit operands) into zb."""
                    return [(x[:16], y[:16], lambda p: [zb.eq(p if first else zb + p)]),
                            (x[:16], y[16:], lambda p: [zb.eq(zb + (p << 16))]),
                            (x[16:], y[:16], lambda p: [zb.eq(zb + (p << 16))])]

                def unsigned32(value):
                    """A signed field's two's complement in 32 bits (a compact one extended)."""
                    if len(value) == 32:
                        return value.as_unsigned()
                    wide = Signal(signed(32))
                    m.d.comb += wide.eq(value)
                    return wide.as_unsigned()

                zp_a, mult_a = unsigned32(field(Op.ADD, "zp_a")), field(Op.ADD, "mult_a")
                zp_b, mult_b = unsigned32(field(Op.ADD, "zp_b")), field(Op.ADD, "mult_b")
                if cfg.add_shares_multiplier:
                    products(low_product((zp_a + 128)[:32], mult_a, True)
                             + low_product((zp_b + 128)[:32], mult_b, False), add_setup_done)
                else:
                    products(low_product(zp_b, mult_b, True), add_setup_done)
            with m.State("ADD_A"):
                # (the elements' products and pushes run behind these states, see below)
                m.d.sync += count("add_cycles")
                with m.If(a_idx == field(Op.ADD, "length")):
                    element_done = (a_phase == 0) if cfg.add_shares_multiplier else ~a_mul & ~a_push
                    with m.If(element_done & (rq_inflight == 0)):
                        m.next = "FETCH"
                with m.Else():
                    m.d.sync += [s_rd_addr.eq(field(Op.ADD, "src_a") + a_idx),
                                 count("scratch_reads")]
                    m.next = "ADD_B"
            with m.State("ADD_B"):
                m.d.sync += count("add_cycles")
                m.d.sync += [s_rd_addr.eq(field(Op.ADD, "src_b") + a_idx), count("scratch_reads")]
                m.next = "ADD_TAKE_A"
            with m.State("ADD_TAKE_A"):
                m.d.sync += count("add_cycles")
                if cfg.add_shares_multiplier:
                    m.d.sync += [mul_a.eq(s_rd.data.as_unsigned() ^ 0x80),
                                 mul_b.eq(field(Op.ADD, "mult_a")[:16])]
                else:
                    m.d.sync += a_first.eq(s_rd.data - field(Op.ADD, "zp_a"))
                m.next = "ADD_TAKE_B"
            with m.State("ADD_TAKE_B"):
                m.d.sync += count("add_cycles")
                if cfg.add_shares_multiplier:
                    m.d.sync += [mul_b.eq(field(Op.ADD, "mult_a")[16:]), b_val.eq(s_rd.data),
                                 a_idx.eq(a_idx + 1)]
                    m.d.comb += a_taken.eq(1)
                    m.next = "ADD_A"
                else:
                    with m.If(~a_mul):      # (the read port keeps b while the previous one waits)
                        m.d.sync += [a_term.eq(a_first * field(Op.ADD, "mult_a")),
                                     b_val.eq(s_rd.data), a_mul.eq(1), a_idx.eq(a_idx + 1)]
                        m.next = "ADD_A"

            # ---- RECV -----------------------------------------------------------------------
            if self.stream_channels:
                with m.State("RECV"):
                    m.d.sync += count("recv_cycles")
                    m.d.comb += r_active.eq(1)
                    with m.If(r_written == field(Op.RECV, "pixels")):
                        m.next = "FETCH"

            # ---- SEND / RECVS ---------------------------------------------------------------
            if self.sparse_engines:
                with m.State("SEND_FIRST"):
                    # the read port takes src this cycle; its byte is there in SEND_PUSH
                    m.d.sync += count("copy_cycles")
                    with m.If(field(Op.SEND, "length") == 0):
                        m.next = "FETCH"
                    with m.Else():
                        m.d.sync += count("scratch_reads")
                        m.next = "SEND_PUSH"
                with m.State("SEND_PUSH"):
                    # one byte a beat: while a beat is taken the read port already fetches the
                    # next byte (address src + copy_i + 1), so the stream runs at one a cycle
                    m.d.sync += count("copy_cycles")
                    last = copy_i + 1 == field(Op.SEND, "length")
                    m.d.comb += [self.sparse_out.valid.eq(1),
                                 self.sparse_out.payload.data.eq(s_rd.data),
                                 self.sparse_out.payload.last.eq(last)]
                    with m.If(self.sparse_out.ready):
                        m.d.comb += s_rd.addr.eq(s_rd_addr + 1)
                        m.d.sync += [copy_i.eq(copy_i + 1), s_rd_addr.eq(s_rd_addr + 1)]
                        with m.If(last):
                            m.next = "FETCH"
                        with m.Else():
                            m.d.sync += count("scratch_reads")
                with m.State("RECVS"):
                    m.d.sync += count("recv_cycles")
                    with m.If(copy_i == field(Op.RECVS, "length")):
                        m.next = "FETCH"
                    with m.Else():
                        m.d.comb += self.sparse_in.ready.eq(1)
                        with m.If(self.sparse_in.valid):
                            m.d.comb += [s_wr.en.eq(1),
                                         s_wr.addr.eq(field(Op.RECVS, "dst") + copy_i),
                                         s_wr.data.eq(self.sparse_in.payload)]
                            m.d.sync += [copy_i.eq(copy_i + 1), count("scratch_writes")]

            with m.State("END"):
                m.d.sync += self.busy.eq(0)
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"

        if cfg.add_shares_multiplier:
            self._add_on_shared_multiplier(m, field, unit_rq, unit_payload, a_phase, a_taken,
                                           a_sum, b_val, zb, mul_a, mul_b, mul_p)
        else:
            # ADD's element pipeline behind its states: the cycle after ADD_TAKE_B forms b * mult_b
            # and a_term - zb, the next pushes their sum (one element every four cycles).
            with m.If(a_push):
                m.d.comb += [unit_rq.eq(1),
                             unit_payload.acc.eq(a_sum + b_term),
                             unit_payload.multiplier.eq(1),
                             unit_payload.shift.eq(field(Op.ADD, "shift")),
                             unit_payload.zero_point.eq(field(Op.ADD, "zp_out")),
                             unit_payload.lo.eq(field(Op.ADD, "lo")),
                             unit_payload.hi.eq(field(Op.ADD, "hi"))]
                with m.If(rq.i_stream.ready):
                    m.d.sync += a_push.eq(0)
            with m.If(a_mul & (~a_push | rq.i_stream.ready)):
                m.d.sync += [b_term.eq(b_val * field(Op.ADD, "mult_b")), a_sum.eq(a_term - zb),
                             a_mul.eq(0), a_push.eq(1)]

        # The gatherer owns the scratchpad read port while a MATMUL runs.
        with m.If(g_active & ~g_full):
            m.d.comb += s_rd.addr.eq(g_addr)

        if self.stream_channels:
            self._receiver(m, s_wr, field, count, r_regs)
        return m

    def _add_on_shared_multiplier(self, m, field, unit_rq, unit_payload, a_phase, a_taken,
                                  a_sum, b_val, zb, mul_a, mul_b, mul_p):
        """ADD's element products on the shared 16 x 16 multiplier (``add_shares_multiplier``).

        With ``a + 128`` unsigned (``a ^ 0x80``, 8 bits) the element's sum is, modulo 2**32,
        ``(a + 128) * mult_a + (b + 128) * mult_b - zb``, ``zb = (zp_a + 128) * mult_a +
        (zp_b + 128) * mult_b`` from ``ADD_SETUP``: four 8 x 16 products, one issued a cycle
        (``ADD_TAKE_A`` a by mult_a's low half, ``ADD_TAKE_B`` its high half, the next two
        cycles b's), which is what an element's four states leave the multiplier. ``a_phase``
        (one-hot, entered from ``ADD_TAKE_B``) steps the element behind the states: the two b
        products are issued, the products summed into ``a_sum`` as they leave the multiplier,
        and the sum pushed four cycles after ``ADD_TAKE_B``. The requantizer's output is always
        taken, so its input is always ready and the push never waits."""
        mult_b = field(Op.ADD, "mult_b")
        m.d.sync += a_phase.eq(Cat(a_taken, a_phase[:3]))
        with m.If(a_phase[0]):
            m.d.sync += [mul_a.eq(b_val.as_unsigned() ^ 0x80), mul_b.eq(mult_b[:16]),
                         a_sum.eq(mul_p - zb)]
        with m.If(a_phase[1]):
            m.d.sync += [mul_b.eq(mult_b[16:]), a_sum.eq(a_sum + (mul_p << 16))]
        with m.If(a_phase[2]):
            m.d.sync += a_sum.eq(a_sum + mul_p)
        with m.If(a_phase[3]):
            m.d.comb += [unit_rq.eq(1),
                         unit_payload.acc.eq(a_sum + (mul_p << 16)),
                         unit_payload.multiplier.eq(1),
                         unit_payload.shift.eq(field(Op.ADD, "shift")),
                         unit_payload.zero_point.eq(field(Op.ADD, "zp_out")),
                         unit_payload.lo.eq(field(Op.ADD, "lo")),
                         unit_payload.hi.eq(field(Op.ADD, "hi"))]

    def _receiver(self, m, s_wr, field, count, r):
        """RECV: feature-stream beats -> scratchpad, CHW. A beat is held in a register and
        written one lane per cycle (the scratchpad has one byte-wide write port); the next beat
        is taken in the cycle its last lane is written, so a beat costs ``stream_channels``
        cycles. The receiver owns the write port while the sequencer is in ``RECV``."""
        lanes = self.stream_channels
        pixels = field(Op.RECV, "pixels")
        last_lane = r["lane"] == lanes - 1
        with m.If(r["active"]):
            with m.If(r["have"]):
                m.d.comb += [s_wr.en.eq(1), s_wr.addr.eq(r["addr"]),
                             s_wr.data.eq(r["beat"].word_select(r["lane"], 8))]
                m.d.sync += count("scratch_writes")
                with m.If(last_lane):
                    # next beat: channel 0 of the next pixel
                    m.d.sync += [r["have"].eq(0), r["lane"].eq(0),
                                 r["written"].eq(r["written"] + 1),
                                 r["pixel_addr"].eq(r["pixel_addr"] + 1),
                                 r["addr"].eq(r["pixel_addr"] + 1)]
                with m.Else():
                    # next lane: the same pixel of the next channel plane
                    m.d.sync += [r["lane"].eq(r["lane"] + 1), r["addr"].eq(r["addr"] + pixels)]
            m.d.comb += self.feature_in.ready.eq((~r["have"] | last_lane) & (r["taken"] != pixels))
            with m.If(self.feature_in.valid & self.feature_in.ready):
                m.d.sync += [r["beat"].eq(self.feature_in.payload.as_value()), r["have"].eq(1),
                             r["taken"].eq(r["taken"] + 1)]
