"""EIE-style zero-skipping sparse matrix-vector engine for compressed fully connected layers.

Data flow (Han et al., "EIE", ISCA 2016)::

    i_stream --> front end ------ (x - zp, ptr, count) --> FIFO --> SparsePE 0 --+
     one x per   skips x == zp,   only to PEs that have   ...         ...        +--> drain -->
     beat, in    sums each PE's   entries in the column   FIFO --> SparsePE N-1 -+  bias,
     column      column counts                                                       requant,
     order       into pointers                                                       o_stream

Row ``r`` belongs to PE ``r % pes``. Each PE holds its rows' entries (4-bit relative row index,
codebook index) in its own memory, column after column; per PE the front end holds the
per-column entry counts (short words with an escape to an extension list, see
:meth:`~hoarfrost.gen.sparse.SparseEncoding.count_split`) and turns them into start pointers
with one running sum, since every column passes it anyway. A PE performs one multiply-accumulate per cycle; its queue absorbs the
difference between its work and the other PEs'. Accumulators are double-buffered (two banks
per row), so the drain of one vector's results overlaps the next vector's computation.
"""

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hoarfrost.gen.ir import Dense, QParams
from hoarfrost.gen.sparse import REL_BITS, SparseEncoding

__all__ = ["SparseMatVec", "SparsePE", "activation_layout", "work_layout"]

ACC_WIDTH = 32
#: An activation minus its zero point: -255..255.
ACT_BITS = 9


def activation_layout() -> data.StructLayout:
    """Payload of :class:`SparseMatVec`'s input stream: one int8 activation, end of vector."""
    return data.StructLayout({"data": signed(8), "last": 1})


def work_layout(ptr_bits: int, count_bits: int) -> data.StructLayout:
    """One broadcast activation as a PE sees it.

    ``act`` is ``x - zp``; the column's entries are ``ptr .. ptr + count - 1`` of the PE's
    memory; ``bank`` selects the accumulator bank of the vector; ``end`` marks the end-of-vector
    token (no work, ``count == 0``).
    """
    return data.StructLayout({
        "act": signed(ACT_BITS), "ptr": unsigned(ptr_bits), "count": unsigned(count_bits),
        "bank": 1, "end": 1,
    })


def _range_signal(n, **kwargs):
    # A counter over n values, never zero bits wide (n may be 1).
    return Signal(range(max(2, n)), **kwargs)


class SparsePE(wiring.Component):
    """One processing element: walks CSC entries and accumulates into its rows.

    Pipeline: (D) the entry at ``ptr`` and the one after it arrive from the memory's two read
    ports; the relative index becomes a row, the codebook gives the weight, the product is
    registered; (C) the product is added into the row's accumulator. One multiply-accumulate
    slot per cycle. A padding entry (codebook index 0) is folded into the entry after it in
    the same slot, so padding costs memory reads but no cycles. A new work item is taken in
    the cycle that consumes the previous one's last entry, so items follow without a bubble.

    Parameters
    ----------
    rel, index : sequence of int
        This PE's entries (relative row index, codebook index), columns concatenated.
    rows : int
        Rows this PE owns.
    codebook : sequence of int
        int8 weight values, indexed by the codebook index.
    ptr_bits, count_bits : int
        Widths of the work item's ``ptr`` and ``count``.

    Members
    -------
    i_stream : ``In(stream.Signature(work_layout(ptr_bits, count_bits)))``
        Work items: broadcast activations with this PE's entry range, and end tokens.
    rd_bank, rd_row : ``In(1)``, ``In(range(rows))``
        Accumulator the drain reads.
    rd_data : ``Out(signed(32))``
        That accumulator's value (combinational).
    clear : ``In(1)``
        Zero the accumulator at ``rd_bank``/``rd_row`` at this clock edge.
    done : ``Out(2)``
        Per bank: the end token of its vector has left the pipeline (all its MACs are in).
    done_clear : ``In(2)``
        Per bank: reset ``done`` (the drain has read the bank).
    issue : ``Out(1)``
        A multiply-accumulate slot is used this cycle.
    reads : ``Out(2)``
        Entries consumed this cycle (2 when a padding entry is folded in).
    useful : ``Out(1)``
        The slot's entry has a non-zero codebook index (a useful MAC).
    """

    def __init__(self, rel, index, *, rows: int, codebook, ptr_bits: int, count_bits: int):
        self._rel = [int(v) for v in rel]
        self._index = [int(v) for v in index]
        self._rows = int(rows)
        self._codebook = [int(v) for v in codebook]
        self._index_bits = len(self._codebook).bit_length() - 1
        self._ptr_bits = ptr_bits
        self._count_bits = count_bits
        super().__init__({
            "i_stream":   In(stream.Signature(work_layout(ptr_bits, count_bits))),
            "rd_bank":    In(1),
            "rd_row":     In(range(max(2, self._rows))),
            "rd_data":    Out(signed(ACC_WIDTH)),
            "clear":      In(1),
            "done":       Out(2),
            "done_clear": In(2),
            "issue":      Out(1),
            "reads":      Out(2),
            "useful":     Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        entry_bits = REL_BITS + self._index_bits
        # One spare word so that the look-ahead port never reads past the end.
        init = [r | (i << REL_BITS) for r, i in zip(self._rel, self._index)] + [0]
        m.submodules.entries = entries = Memory(shape=unsigned(entry_bits), depth=len(init),
                                                init=init)
        rd0 = entries.read_port()
        rd1 = entries.read_port()

        # --- stage D: the current work item; rd0/rd1 hold the entries at ptr and ptr + 1
        work = self.i_stream.payload
        ptr = Signal(self._ptr_bits)
        rem = Signal(self._count_bits)
        act = Signal(signed(ACT_BITS))
        bank = Signal()
        first = Signal()
        rel0, idx0 = rd0.data[:REL_BITS], rd0.data[REL_BITS:]
        rel1, idx1 = rd1.data[:REL_BITS], rd1.data[REL_BITS:]
        active = rem != 0
        fold = active & (idx0 == 0) & (rem >= 2)      # padding: skip 16 rows, use the next one
        consumed = Signal(2)
        m.d.comb += consumed.eq(Mux(fold, 2, Mux(active, 1, 0)))
        rem_after = Signal(self._count_bits)
        m.d.comb += rem_after.eq(rem - consumed)
        m.d.comb += [
            self.issue.eq(active),
            self.reads.eq(consumed),
            self.i_stream.ready.eq(rem_after == 0),
        ]
        take = self.i_stream.valid & self.i_stream.ready
        next_ptr = Signal(self._ptr_bits)
        m.d.comb += next_ptr.eq(Mux(take, work.ptr, ptr + consumed))
        m.d.comb += [rd0.addr.eq(next_ptr), rd1.addr.eq(next_ptr + 1)]
        m.d.sync += ptr.eq(next_ptr)
        with m.If(take):
            m.d.sync += [rem.eq(work.count), act.eq(work.act), bank.eq(work.bank),
                         first.eq(1)]
        with m.Elif(active):
            m.d.sync += [rem.eq(rem_after), first.eq(0)]

        step = Mux(fold, rel1 + (1 << REL_BITS), rel0)   # rows skipped before this entry
        idx = Mux(fold, idx1, idx0)
        row_width = max(2, self._rows + 2 * (1 << REL_BITS)).bit_length()
        last_row = Signal(row_width)
        row = Signal(row_width)
        m.d.comb += row.eq(Mux(first, step, last_row + 1 + step))
        with m.If(active):
            m.d.sync += last_row.eq(row)
        weight = Array(Const(v, signed(8)) for v in self._codebook)[idx]
        m.d.comb += self.useful.eq(active & (idx != 0))

        # --- stage C: accumulate
        valid_c, bank_c, end_c, end_bank_c = Signal(), Signal(), Signal(), Signal()
        row_c = Signal(row_width)
        prod_c = Signal(signed(ACT_BITS + 8))
        m.d.sync += [valid_c.eq(active), bank_c.eq(bank), row_c.eq(row),
                     prod_c.eq(act * weight),
                     # The end token leaves stage D behind the item's last entry.
                     end_c.eq(take & work.end), end_bank_c.eq(work.bank)]

        acc = [[Signal(signed(ACC_WIDTH), name=f"acc{b}_{r}") for r in range(self._rows)]
               for b in range(2)]
        for b in range(2):
            for r, reg in enumerate(acc[b]):
                # The drain only clears a bank no vector is accumulating into.
                with m.If(valid_c & (bank_c == b) & (row_c == r)):
                    m.d.sync += reg.eq(reg + prod_c)
                with m.If(self.clear & (self.rd_bank == b) & (self.rd_row == r)):
                    m.d.sync += reg.eq(0)
        if self._rows:
            m.d.comb += self.rd_data.eq(
                Mux(self.rd_bank, Array(acc[1])[self.rd_row], Array(acc[0])[self.rd_row]))

        # An end token taken in cycle t reaches stage C at t+1, together with (at the latest)
        # the product of the last entry consumed in cycle t: done rises with the final add.
        for b in range(2):
            with m.If(self.done_clear[b]):
                m.d.sync += self.done[b].eq(0)
            with m.If(end_c & (end_bank_c == b)):
                m.d.sync += self.done[b].eq(1)
        return m


class SparseMatVec(wiring.Component):
    """Compressed, weight-shared fully connected layer with zero-activation skipping.

    Streams in one input vector (``cols`` int8 activations, ``last`` on the final one), streams
    out ``rows`` int8 results in row order: ``clamp(zp_out + requant(sum_c (x_c - zp_in) *
    w[r, c] + bias[r]))`` with the :mod:`hoarfrost.sim.arith` formula. Vectors may follow
    back to back; the results of one drain while the next computes.

    Parameters
    ----------
    encoding : SparseEncoding
        The compressed weights (:func:`hoarfrost.gen.sparse.compress_dense`).
    layer : Dense
        The weight-shared layer: ``bias_q`` and ``requant`` (per row or one entry).
    q_in : QParams
        Quantization of the input; its zero point is what the engine skips.
    fifo_depth : int
        Work items each PE's queue holds.

    Members
    -------
    i_stream : ``In(stream.Signature(activation_layout()))``
        Activations ``data`` (int8) in column order, ``last`` on the vector's final one.
    o_stream : ``Out(stream.Signature(signed(8)))``
        Output activations in row order.
    cycles : ``Out(32)``
        Cycles in which a vector was in progress (from its first input to its last output).
    busy_cycles : ``Out(32)``
        Cycles in which at least one PE used its multiply-accumulate slot.
    skipped : ``Out(32)``
        Input activations equal to the zero point (not broadcast).
    macs : ``Out(32)``
        Useful multiply-accumulates (entries with a non-zero codebook index).
    entries : ``Out(32)``
        Entries consumed by all PEs, padding included (weight memory reads; a padding entry
        and the one after it are read together and cost one cycle).
    stall_cycles : ``Out(32)``
        Cycles in which the front end held an activation because a PE's queue was full
        (load imbalance between PEs).
    """

    def __init__(self, encoding: SparseEncoding, layer: Dense, q_in: QParams, *,
                 fifo_depth: int = 8):
        if not isinstance(fifo_depth, int) or fifo_depth < 2:
            raise ValueError(f"FIFO depth must be an integer of at least 2, not {fifo_depth!r}")
        self._enc = encoding
        rows = encoding.rows
        rq = layer.requant
        self._bias = [int(v) for v in layer.bias_q]
        self._mult = [int(v) for v in rq.multiplier] * (rows if len(rq.multiplier) == 1 else 1)
        self._shift = [int(v) for v in rq.shift] * (rows if len(rq.shift) == 1 else 1)
        if len(self._bias) != rows or len(self._mult) != rows or len(self._shift) != rows:
            raise ValueError(f"Layer {layer.name!r} does not match the encoding's {rows} rows")
        self._zp_in = q_in.zero_point
        self._zp_out, self._lo, self._hi = rq.zero_point, rq.lo, rq.hi
        self._fifo_depth = fifo_depth
        super().__init__({
            "i_stream":     In(stream.Signature(activation_layout())),
            "o_stream":     Out(stream.Signature(signed(8))),
            "cycles":       Out(32),
            "busy_cycles":  Out(32),
            "skipped":      Out(32),
            "macs":         Out(32),
            "entries":      Out(32),
            "stall_cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        enc = self._enc
        pes, cols, rows = enc.pes, enc.cols, enc.rows
        ptr_bits, count_bits = enc.ptr_bits, enc.count_bits
        layout = work_layout(ptr_bits, count_bits)

        col = _range_signal(cols)
        main_bits, ext_bits = enc.count_split()
        escape = (1 << main_bits) - 1
        pe_units, fifos, counts, escaped, ext_ptrs = [], [], [], [], []
        for p in range(pes):
            pe = SparsePE(enc.rel[p], enc.index[p], rows=enc.pe_rows(p), codebook=enc.codebook,
                          ptr_bits=ptr_bits, count_bits=count_bits)
            fifo = SyncFIFO(width=layout.size, depth=self._fifo_depth)
            m.submodules[f"pe{p}"] = pe
            m.submodules[f"fifo{p}"] = fifo
            m.d.comb += [pe.i_stream.payload.eq(fifo.r_data), pe.i_stream.valid.eq(fifo.r_rdy),
                         fifo.r_en.eq(pe.i_stream.ready)]
            pe_units.append(pe)
            fifos.append(fifo)

            # This PE's column counts: a short main word per column; an escaped (long) column
            # continues in the extension list, which is read in order, one word per escape.
            main_init, ext_init = enc.count_memories(p)
            main_mem = Memory(shape=unsigned(main_bits), depth=cols, init=main_init)
            m.submodules[f"counts{p}"] = main_mem
            main_rd = main_mem.read_port(domain="comb")
            m.d.comb += main_rd.addr.eq(col)
            count = Signal(count_bits, name=f"count{p}")
            is_escape = Signal(name=f"escape{p}")
            ext_ptr = _range_signal(len(ext_init) + 1, name=f"ext_ptr{p}")
            if ext_bits and ext_init:
                ext_mem = Memory(shape=unsigned(ext_bits), depth=len(ext_init), init=ext_init)
                m.submodules[f"count_ext{p}"] = ext_mem
                ext_rd = ext_mem.read_port(domain="comb")
                m.d.comb += [ext_rd.addr.eq(ext_ptr), is_escape.eq(main_rd.data == escape),
                             count.eq(Mux(is_escape, escape + ext_rd.data, main_rd.data))]
            else:
                m.d.comb += count.eq(main_rd.data)
            counts.append(count)
            escaped.append(is_escape)
            ext_ptrs.append(ext_ptr)

        # --- front end: skip zero activations, turn counts into pointers, broadcast
        bank_in = Signal()
        started = Signal()          # a vector is being received
        pend_end = Signal()         # its end tokens still have to be queued
        busy = Signal(2)            # per bank: a vector lives there until drained
        beat = self.i_stream.payload
        act = Signal(signed(ACT_BITS))
        m.d.comb += act.eq(beat.data - self._zp_in)
        nonzero = act != 0
        can_start = started | ~busy.bit_select(bank_in, 1)
        need = [nonzero & (c != 0) for c in counts]
        fifo_ok = Const(1)
        for n, f in zip(need, fifos):
            fifo_ok = fifo_ok & (~n | f.w_rdy)
        all_ready = Const(1)
        for f in fifos:
            all_ready = all_ready & f.w_rdy
        m.d.comb += self.i_stream.ready.eq(~pend_end & can_start & fifo_ok)
        accept = self.i_stream.valid & self.i_stream.ready

        running = [Signal(ptr_bits, name=f"ptr{p}") for p in range(pes)]
        for p, (f, c) in enumerate(zip(fifos, counts)):
            work = Signal(layout, name=f"work{p}")
            with m.If(pend_end):
                m.d.comb += [work.end.eq(1), work.bank.eq(bank_in),
                             f.w_en.eq(all_ready)]
            with m.Else():
                m.d.comb += [work.act.eq(act), work.ptr.eq(running[p]), work.count.eq(c),
                             work.bank.eq(bank_in), f.w_en.eq(accept & need[p])]
            m.d.comb += f.w_data.eq(work.as_value())
            with m.If(accept):
                m.d.sync += [
                    running[p].eq(Mux(beat.last, 0, running[p] + c)),
                    ext_ptrs[p].eq(Mux(beat.last, 0, ext_ptrs[p] + escaped[p])),
                ]

        with m.If(accept):
            m.d.sync += [started.eq(1), busy.bit_select(bank_in, 1).eq(1),
                         col.eq(Mux(beat.last, 0, col + 1))]
            with m.If(beat.last):
                m.d.sync += pend_end.eq(1)
        with m.If(pend_end & all_ready):
            m.d.sync += [pend_end.eq(0), started.eq(0), bank_in.eq(~bank_in)]

        # --- drain: bias, requantize, clamp, one row per cycle in row order
        local_rows = enc.local_rows
        bias_mem = Memory(shape=signed(ACC_WIDTH), depth=rows, init=self._bias)
        mult_bits = max(1, max(self._mult).bit_length())
        shift_bits = max(1, max(self._shift).bit_length())
        mult_mem = Memory(shape=unsigned(mult_bits), depth=rows, init=self._mult)
        shift_mem = Memory(shape=unsigned(shift_bits), depth=rows, init=self._shift)
        m.submodules.bias = bias_mem
        m.submodules.mult = mult_mem
        m.submodules.shift = shift_mem
        bias_rd = bias_mem.read_port(domain="comb")
        mult_rd = mult_mem.read_port(domain="comb")
        shift_rd = shift_mem.read_port(domain="comb")

        draining = Signal()
        d_bank = Signal()
        d_row = _range_signal(rows)
        d_pe = _range_signal(pes)
        d_loc = _range_signal(local_rows)
        all_done = Const(1)
        for pe in pe_units:
            all_done = all_done & pe.done.bit_select(d_bank, 1)
        with m.If(~draining & busy.bit_select(d_bank, 1) & all_done):
            m.d.sync += draining.eq(1)

        acc = Signal(signed(ACC_WIDTH))
        m.d.comb += [bias_rd.addr.eq(d_row), mult_rd.addr.eq(d_row), shift_rd.addr.eq(d_row),
                     acc.eq(Array(pe.rd_data for pe in pe_units)[d_pe])]
        total = Signal(signed(ACC_WIDTH))          # wraps like the int32 the golden model checks
        m.d.comb += total.eq(acc + bias_rd.data)
        prod_bits = ACC_WIDTH + mult_bits + 2
        prod = Signal(signed(prod_bits))
        m.d.comb += prod.eq(total * mult_rd.data)
        half = Signal(unsigned(prod_bits))         # 2**(shift-1), or 0 when shift is 0
        m.d.comb += half.eq((Const(1, 1) << shift_rd.data)[1:])
        scaled = Signal(signed(prod_bits + 1))
        m.d.comb += scaled.eq((prod + half) >> shift_rd.data)
        y = Signal(signed(prod_bits + 2))
        m.d.comb += y.eq(scaled + self._zp_out)
        clamped = Mux(y < self._lo, self._lo, Mux(y > self._hi, self._hi, y))

        fire = draining & (~self.o_stream.valid | self.o_stream.ready)
        for p, pe in enumerate(pe_units):
            m.d.comb += [pe.rd_bank.eq(d_bank), pe.rd_row.eq(d_loc),
                         pe.clear.eq(fire & (d_pe == p))]
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(fire):
            m.d.sync += [self.o_stream.payload.eq(clamped), self.o_stream.valid.eq(1)]
            with m.If(d_pe == pes - 1):
                m.d.sync += [d_pe.eq(0), d_loc.eq(d_loc + 1)]
            with m.Else():
                m.d.sync += d_pe.eq(d_pe + 1)
            m.d.sync += d_row.eq(d_row + 1)
            with m.If(d_row == rows - 1):
                m.d.sync += [draining.eq(0), d_row.eq(0), d_pe.eq(0), d_loc.eq(0),
                             d_bank.eq(~d_bank)]
                m.d.sync += busy.bit_select(d_bank, 1).eq(0)
                for pe in pe_units:
                    m.d.comb += pe.done_clear.bit_select(d_bank, 1).eq(1)

        # --- counters
        any_issue = Const(0)
        for pe in pe_units:
            any_issue = any_issue | pe.issue
        m.d.sync += [
            self.cycles.eq(self.cycles + (busy != 0)),
            self.busy_cycles.eq(self.busy_cycles + any_issue),
            self.skipped.eq(self.skipped + (accept & ~nonzero)),
            self.macs.eq(self.macs + sum(pe.useful for pe in pe_units)),
            self.entries.eq(self.entries + sum(pe.reads for pe in pe_units)),
            self.stall_cycles.eq(self.stall_cycles + (
                (self.i_stream.valid & ~pend_end & can_start & ~fifo_ok)
                | (pend_end & ~all_ready))),
        ]
        return m
