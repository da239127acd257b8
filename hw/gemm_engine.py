"""A GEMM engine: ``C[M, N] = (A[M, K] - zp) @ B[K, N] + bias`` tiled over a systolic array.

The engine keeps three on-chip buffers (``amaranth.lib.memory.Memory``):

* the **activation buffer**, ``a_depth`` entries of ``rows`` int8, holds all of A (one entry is
  one row of A restricted to one K tile); every N tile reads it again;
* the **weight buffer**, a ring of ``w_depth >= 2 * rows`` weight rows, through which B streams
  once; the next tile's rows arrive while the current tile computes (double buffering);
* the **accumulator buffer**, two banks (by N-tile parity) of one ``acc_width`` memory per
  array column, ``acc_depth`` rows each: one bank accumulates over the K tiles of N tile ``j``
  while the other drains N tile ``j - 1`` to the output stream.

Schedule. For each N tile, for each K tile, the engine issues ``P = max(M, rows, cols)``
*slots*, one per cycle: slot ``s < M`` sends wave ``A[s, K tile]`` into the array, slot
``s < rows`` reads weight row ``s`` of the tile into the array's shadow registers (just in
time for the wave front). ``P >= rows, cols`` is what the double-buffered weight registers need
to switch tiles without a bubble. A wave's column sums leave the array ``rows + c`` cycles
later and are added into the accumulator bank (the first K tile writes them, later ones
read-modify-write); a control word (row, bank, first/last K tile) rides a delay line beside the
array so that each column finds its address at its own skewed time. When the last K tile's
last row has been written, the bank is drained one row (``cols`` results plus bias) per cycle.

The issue stage waits (a *stall*, a bubble into the array) only at a tile's slot 0 until the
tile's ``rows`` weight rows, the first ``min(M, rows)`` of its activation rows and (for a new N
tile) a drained accumulator bank are there, and at a slot ``s >= rows`` until activation row
``s`` has been loaded. So loading A, loading B, computing and draining all overlap.

Stream formats (the host, later the firmware, does the tiling and padding):

* ``a_stream``: ``M * ceil(K / rows)`` beats, for each K tile ``kt``, for each row ``m``:
  ``A[m, kt*rows : kt*rows + rows]`` (entries past K are don't-care: their weights are 0);
* ``b_stream``: ``ceil(N / cols) * ceil(K / rows) * rows`` beats, for each N tile, for each
  K tile, for each row ``r``: ``B[kt*rows + r, nt*cols : nt*cols + cols]``, **zero** past K or N;
* ``bias_stream``: ``ceil(N / cols)`` beats, ``bias[nt*cols : nt*cols + cols]``;
* ``o_stream``: ``ceil(N / cols) * M`` beats, for each N tile, for each row ``m``:
  ``C[m, nt*cols : nt*cols + cols]`` (columns past N hold the bias there, and are to be dropped).

Load streams are only accepted while the engine is busy (after ``start``). The host must keep
the load streams flowing without waiting for ``o_stream``: a tile's last results may wait in the
array for the next tile's operands.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.systolic_array import SystolicArray

__all__ = ["GemmEngine", "COUNTERS", "a_layout", "b_layout", "bias_layout", "o_layout"]

#: Event counters of :class:`GemmEngine`, in port order; all are reset by ``start``.
COUNTERS = (
    "cycles",          # cycles from start until done
    "compute_cycles",  # from the first wave issued to the last accumulator write, inclusive
    "busy_cycles",     # cycles in which a real wave entered the array
    "stall_cycles",    # cycles the issue stage waited for operands or a free accumulator bank
    "out_stall_cycles",  # cycles o_stream was valid and not ready
    "macs_issued",     # rows * cols per real wave, padding included
    "macs_useful",     # multiply-accumulates with both operands inside A and B
    "a_writes", "a_reads",      # activation-buffer entries (rows x int8 each)
    "w_writes", "w_reads",      # weight-buffer entries (cols x weight_bits each)
    "acc_writes", "acc_reads",  # accumulator-buffer words (acc_width each)
    "out_beats",       # o_stream beats transferred
)


def a_layout(config: BackendConfig) -> data.ArrayLayout:
    """Payload of ``a_stream``: ``rows`` int8 activations."""
    return data.ArrayLayout(signed(config.act_bits), config.rows)


def b_layout(config: BackendConfig) -> data.ArrayLayout:
    """Payload of ``b_stream``: ``cols`` signed weights."""
    return data.ArrayLayout(signed(config.weight_bits), config.cols)


def bias_layout(config: BackendConfig) -> data.ArrayLayout:
    """Payload of ``bias_stream``: ``cols`` biases."""
    return data.ArrayLayout(signed(config.acc_width), config.cols)


def o_layout(config: BackendConfig) -> data.ArrayLayout:
    """Payload of ``o_stream``: ``cols`` results."""
    return data.ArrayLayout(signed(config.acc_width), config.cols)


class GemmEngine(wiring.Component):
    """Computes ``C = (A - zero_point) @ B + bias`` for any M (up to ``acc_depth``), N and K.

    Parameters
    ----------
    config : BackendConfig
        Array size, widths and buffer depths.

    Members
    -------
    start : ``In(1)``
        Pulse while not busy: latch ``m``, ``n``, ``k``, ``zero_point``, reset the counters and
        begin accepting operands.
    m, n, k : ``In``
        GEMM sizes, each at least 1; ``m <= acc_depth`` and ``m * ceil(k / rows) <= a_depth``.
    zero_point : ``In(signed(8))``
        Subtracted from every activation (``x - zp`` is multiplied as signed 9 bits).
    busy : ``Out(1)``
        From the cycle after ``start`` until the last result has left ``o_stream``.
    a_stream : ``In(stream.Signature(a_layout(config)))``
        Activation rows (see the module docstring for the order).
    b_stream : ``In(stream.Signature(b_layout(config)))``
        Weight rows.
    bias_stream : ``In(stream.Signature(bias_layout(config)))``
        One beat per N tile.
    o_stream : ``Out(stream.Signature(o_layout(config)))``
        One row of an output tile per beat.
    cycles, compute_cycles, ... : ``Out(counter_width)``
        The event counters named in :data:`COUNTERS`.
    clear_counters : ``In(1)``
        Only with ``keep_counters``: zero the counters (``start`` then leaves them counting on
        from the last run, so a user that sums the runs needs no counters of its own).
    """

    def __init__(self, config: BackendConfig, *, keep_counters: bool = False):
        self._config = config
        self.keep_counters = keep_counters
        cw = config.counter_width
        clear_port = {"clear_counters": In(1)} if keep_counters else {}
        super().__init__({
            "start":       In(1),
            "m":           In(range(config.acc_depth + 1)),
            "n":           In(16),
            "k":           In(16),
            "zero_point":  In(signed(config.act_bits)),
            "busy":        Out(1),
            "a_stream":    In(stream.Signature(a_layout(config))),
            "b_stream":    In(stream.Signature(b_layout(config))),
            "bias_stream": In(stream.Signature(bias_layout(config))),
            "o_stream":    Out(stream.Signature(o_layout(config))),
            **{name: Out(cw) for name in COUNTERS},
            **clear_port,
        })

    @property
    def config(self) -> BackendConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols
        max_slots = max(cfg.acc_depth, R, C)

        m.submodules.array = array = SystolicArray(cfg)
        m.submodules.a_buf = a_buf = Memory(shape=a_layout(cfg), depth=cfg.a_depth, init=[])
        m.submodules.w_buf = w_buf = Memory(shape=b_layout(cfg), depth=cfg.w_depth, init=[])
        a_wp, a_rp = a_buf.write_port(), a_buf.read_port()
        w_wp, w_rp = w_buf.write_port(), w_buf.read_port()

        running = Signal()
        m.d.comb += self.busy.eq(running)

        # --- parameters, latched at start ---------------------------------------------------
        m_reg = Signal.like(self.m)
        k_reg = Signal.like(self.k)
        zp = Signal.like(self.zero_point)
        last_slot_no = Signal(range(max_slots + 1))   # P - 1, P = max(M, rows, cols)

        # --- issue-stage state ----------------------------------------------------------------
        issuing = Signal()
        slot = Signal(range(max_slots + 1))
        k_left = Signal(16)                           # K not yet covered, this K tile included
        n_left = Signal(16)
        first_k = Signal()
        a_base = Signal(range(cfg.a_depth + 1))       # activation entry of row 0, this K tile
        n_tile = Signal(16)                           # N tiles started
        computed = Signal(16)                         # N tiles fully accumulated
        drained = Signal(16)                          # N tiles whose rows all left the banks
        drained_1 = Signal(17)                        # drained + 1
        a_written = Signal(range(cfg.a_depth + 1))
        w_count = Signal(range(cfg.w_depth + 1))      # weight rows loaded and not yet read
        w_wr_addr = Signal(range(cfg.w_depth))
        w_rd_addr = Signal(range(cfg.w_depth))
        computing = Signal()
        # Kept as registers so that the issue decision (go) is compares only, no adds before
        # them: rows the first slot needs, a_base + min(M, rows), and a_base + slot.
        rows_first = Signal(range(R + 1))
        a_need0 = Signal(range(cfg.a_depth + R + 1))
        a_slot = Signal(range(cfg.a_depth + max_slots + 1))

        counters = {name: getattr(self, name) for name in COUNTERS}

        def count(name, amount=1):
            return counters[name].eq(counters[name] + amount)

        with m.If(~running & self.start):
            m.d.sync += [
                running.eq(1), issuing.eq(1),
                m_reg.eq(self.m), k_reg.eq(self.k), zp.eq(self.zero_point),
                last_slot_no.eq(Mux(self.m > max(R, C), self.m, max(R, C)) - 1),
                slot.eq(0), k_left.eq(self.k), n_left.eq(self.n), first_k.eq(1), a_base.eq(0),
                n_tile.eq(0), computed.eq(0), drained.eq(0), a_written.eq(0), w_count.eq(0),
                drained_1.eq(1), rows_first.eq(Mux(self.m < R, self.m, R)),
                a_need0.eq(Mux(self.m < R, self.m, R)), a_slot.eq(0),
                w_wr_addr.eq(0), w_rd_addr.eq(0), computing.eq(0),
                *(() if self.keep_counters else (c.eq(0) for c in counters.values())),
            ]
        with m.If(running):
            m.d.sync += count("cycles")

        # --- loading A and B ----------------------------------------------------------------
        m.d.comb += [
            self.a_stream.ready.eq(running & (a_written < cfg.a_depth)),
            a_wp.addr.eq(a_written),
            a_wp.data.eq(self.a_stream.payload),
            a_wp.en.eq(self.a_stream.valid & self.a_stream.ready),
            self.b_stream.ready.eq(running & (w_count < cfg.w_depth)),
            w_wp.addr.eq(w_wr_addr),
            w_wp.data.eq(self.b_stream.payload),
            w_wp.en.eq(self.b_stream.valid & self.b_stream.ready),
        ]
        with m.If(a_wp.en):
            m.d.sync += [a_written.eq(a_written + 1), count("a_writes")]
        with m.If(w_wp.en):
            m.d.sync += [w_wr_addr.eq(w_wr_addr + 1), count("w_writes")]

        # --- issue stage --------------------------------------------------------------------
        last_k = k_left <= R
        last_n = n_left <= C
        last_slot = slot == last_slot_no
        wave = slot < m_reg
        weight_row = slot < R
        bank_free = ~first_k | (n_tile <= drained_1)
        ready_slot0 = (w_count >= R) & (a_written >= a_need0) & bank_free
        ready_late = ~wave | (slot < R) | (a_written > a_slot)
        go = Signal()
        m.d.comb += go.eq(running & issuing & Mux(slot == 0, ready_slot0, ready_late))

        m.d.comb += [
            a_rp.addr.eq(a_slot),
            a_rp.en.eq(go),
            w_rp.addr.eq(w_rd_addr),
            w_rp.en.eq(go),
        ]
        with m.If(running & issuing & ~go):
            m.d.sync += count("stall_cycles")
        with m.If(go):
            m.d.sync += [slot.eq(slot + 1), a_slot.eq(a_slot + 1)]
            with m.If(wave):
                rows_used = Mux(k_left < R, k_left, R)
                cols_used = Mux(n_left < C, n_left, C)
                # rows_used * cols_used as shifts and adds (rows_used <= R): a count is not
                # worth a multiplier, of which the iCE40 UP5K has eight
                useful = sum(Mux(rows_used[i], cols_used << i, 0) for i in range(R.bit_length()))
                m.d.sync += [count("busy_cycles"), count("a_reads"),
                             count("macs_issued", R * C),
                             count("macs_useful", useful)]
            with m.If(weight_row):
                m.d.sync += [w_rd_addr.eq(w_rd_addr + 1), count("w_reads")]
            with m.If(last_slot):
                next_base = Signal.like(a_base)
                m.d.comb += next_base.eq(a_base + m_reg)
                m.d.sync += [slot.eq(0), first_k.eq(0), a_base.eq(next_base),
                             a_slot.eq(next_base), a_need0.eq(next_base + rows_first),
                             k_left.eq(k_left - R)]
                with m.If(last_k):
                    m.d.sync += [first_k.eq(1), a_base.eq(0), a_slot.eq(0),
                                 a_need0.eq(rows_first), k_left.eq(k_reg),
                                 n_left.eq(n_left - C), n_tile.eq(n_tile + 1)]
                    with m.If(last_n):
                        m.d.sync += issuing.eq(0)
        # A row read and a row loaded in the same cycle: the count stays.
        with m.If(running):
            m.d.sync += w_count.eq(w_count + w_wp.en - (go & weight_row))

        # --- into the array (one cycle after issue, when the buffers' read data is there) ----
        wave_1 = Signal()
        first_1 = Signal()
        load_1 = Signal()
        row_1 = Signal(range(R))
        m.d.sync += [wave_1.eq(go & wave), first_1.eq(go & (slot == 0)),
                     load_1.eq(go & weight_row), row_1.eq(slot)]
        m.d.comb += [
            array.valid.eq(wave_1),
            array.first.eq(first_1),
            array.w_row.eq(w_rp.data),
            array.w_row_index.eq(row_1),
            array.w_load.eq(load_1),
        ]
        for r in range(R):
            m.d.comb += array.x[r].eq(a_rp.data[r] - zp)

        # --- control delay line beside the array ------------------------------------------------
        ctl_layout = data.StructLayout({
            "valid": 1, "row": range(max(cfg.acc_depth, 2)), "bank": 1,
            "first_k": 1, "tile_end": 1,
        })
        ctl = [Signal(ctl_layout, name=f"ctl_{i}") for i in range(R + C)]
        m.d.sync += [
            ctl[0].valid.eq(go & wave),
            ctl[0].row.eq(slot),
            ctl[0].bank.eq(n_tile[0]),
            ctl[0].first_k.eq(first_k),
            ctl[0].tile_end.eq(last_k & (slot == m_reg - 1)),
        ]
        for i in range(1, R + C):
            m.d.sync += ctl[i].eq(ctl[i - 1])

        # --- drain-side state (declared here: the banks' read ports are shared with it) ---------
        d_row = Signal(range(max(cfg.acc_depth, 2)))
        d_tile = Signal(16)                           # N tile being read out
        bias_reg = Signal(bias_layout(cfg))
        bias_valid = Signal()
        r_valid = Signal()                            # read data of one row is in the ports
        r_last = Signal()
        r_bank = Signal()
        r_bias = Signal(bias_layout(cfg))
        out_free = ~self.o_stream.valid | self.o_stream.ready
        can_read = running & (d_tile < computed) & bias_valid
        d_read = Signal()
        m.d.comb += d_read.eq(can_read & (~r_valid | out_free))
        d_bank = d_tile[0]
        d_last = d_row == m_reg - 1
        with m.If(~running & self.start):
            m.d.sync += [d_row.eq(0), d_tile.eq(0), bias_valid.eq(0), r_valid.eq(0),
                         self.o_stream.valid.eq(0)]

        # --- accumulator banks ------------------------------------------------------------------
        rdata = [[None] * C for _ in range(2)]
        for c in range(C):
            rtap, wtap = ctl[R + c - 1], ctl[R + c]
            write_ports = []
            for b in range(2):
                mem = Memory(shape=signed(cfg.acc_width), depth=cfg.acc_depth, init=[])
                m.submodules[f"acc_{b}_{c}"] = mem
                wp = mem.write_port()
                # Transparent: with one slot per tile a row is read in the cycle it is written.
                rp = mem.read_port(transparent_for=(wp,))
                rdata[b][c] = rp.data
                write_ports.append(wp)
                compute_read = rtap.valid & ~rtap.first_k & (rtap.bank == b)
                m.d.comb += [
                    rp.addr.eq(Mux(compute_read, rtap.row, d_row)),
                    rp.en.eq(compute_read | (d_read & (d_bank == b))),
                    wp.addr.eq(wtap.row),
                    wp.en.eq(wtap.valid & (wtap.bank == b)),
                ]
            # The first K tile writes the column sum, later ones add it to what is there.
            old = Mux(wtap.bank, rdata[1][c], rdata[0][c])
            m.d.comb += [wp.data.eq(array.y[c] + Mux(wtap.first_k, 0, old))
                         for wp in write_ports]

        tap0_r, tap0_w, tap_end = ctl[R - 1], ctl[R], ctl[R + C - 1]
        # Compute and drain may both read in one cycle (different banks): one sum, one update.
        compute_reads = tap0_r.valid & ~tap0_r.first_k
        with m.If(running):
            m.d.sync += count("acc_reads", Mux(compute_reads, C, 0) + Mux(d_read, C, 0))
        with m.If(tap0_w.valid):
            m.d.sync += count("acc_writes", C)
        with m.If(tap_end.valid & tap_end.tile_end):
            m.d.sync += computed.eq(computed + 1)
            with m.If(~issuing & (computed + 1 == n_tile)):
                m.d.sync += computing.eq(0)

        with m.If(go & ~computing & (slot == 0) & first_k & (n_tile == 0)):
            m.d.sync += computing.eq(1)
        with m.If(computing | (go & (n_tile == 0) & first_k & (slot == 0))):
            m.d.sync += count("compute_cycles")

        # --- drain: accumulator bank -> (+ bias) -> o_stream ------------------------------------
        release = d_read & d_last
        m.d.comb += self.bias_stream.ready.eq(running & (~bias_valid | release))
        with m.If(self.bias_stream.valid & self.bias_stream.ready):
            m.d.sync += [bias_reg.eq(self.bias_stream.payload), bias_valid.eq(1)]
        with m.Elif(release):
            m.d.sync += bias_valid.eq(0)

        with m.If(d_read):
            m.d.sync += [d_row.eq(d_row + 1), r_bias.eq(bias_reg), r_bank.eq(d_bank),
                         r_last.eq(d_last)]
            with m.If(d_last):
                m.d.sync += [d_row.eq(0), d_tile.eq(d_tile + 1)]
        with m.If(~r_valid | out_free):
            m.d.sync += r_valid.eq(d_read)

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(r_valid & out_free):
            m.d.sync += self.o_stream.valid.eq(1)
            for c in range(C):
                m.d.sync += self.o_stream.payload[c].eq(
                    Mux(r_bank, rdata[1][c], rdata[0][c]) + r_bias[c])
            # The bank is free for reuse only once its last row has left the read ports.
            with m.If(r_last):
                m.d.sync += [drained.eq(drained + 1), drained_1.eq(drained_1 + 1)]
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += count("out_beats")
        with m.If(self.o_stream.valid & ~self.o_stream.ready):
            m.d.sync += count("out_stall_cycles")

        with m.If(running & ~issuing & (drained == n_tile) & ~r_valid &
                  (~self.o_stream.valid | self.o_stream.ready)):
            m.d.sync += running.eq(0)
        if self.keep_counters:
            # last, so that it wins over any count in the same cycle
            with m.If(self.clear_counters):
                m.d.sync += [c.eq(0) for c in counters.values()]
        return m
