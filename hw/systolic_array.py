"""A weight-stationary systolic array of multiply-accumulate processing elements.

Arithmetic contract (DESIGN.md "Arithmetic"): an accumulator is ``sum((x - zp) * w) + bias``.
The array multiplies the zero-point-subtracted activation ``x - zp`` directly, as a signed
9-bit number (int8 minus an int8 zero point lies in -255..255), rather than multiplying int8 ``x``
and correcting by ``zp * sum(w)`` afterwards: one bit wider multipliers instead of a second
accumulation path and a per-column correction term. The subtraction happens once per
activation at the array edge (in :class:`~hoarfrost.hw.gemm_engine.GemmEngine`); the buffers
keep int8.

Dataflow (weight stationary, as the TPU): processing element ``(r, c)`` holds weight
``B[k0 + r, n0 + c]``. A *wave* is one row of A restricted to a K tile: element ``r`` enters row
``r`` of the array ``r`` cycles after element 0 (the input skew is inside the array) and moves
one column right per cycle. Partial sums move one row down per cycle, so the sum over all rows
for column ``c`` leaves the bottom ``rows + c`` cycles after the wave entered.

Each PE has two weight registers. The *shadow* register is written by the row-wide weight load
bus; the *active* register is used for multiplying. A wave marked ``first`` copies shadow into
active as it passes, so the next tile's weights load row by row while the current tile computes
and the switch moves through the array with the skewed wavefront, with no bubble between tiles.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.config import BackendConfig

__all__ = ["ProcessingElement", "SystolicArray"]


class ProcessingElement(wiring.Component):
    """One multiply-accumulate cell: ``psum_out <= psum_in + x_in * weight``, registered.

    The activation, its valid and first flags are passed on to the right one cycle later; the
    partial sum goes down one cycle later. On a valid ``first`` wave the shadow weight (or, in
    the same cycle, the weight being loaded) becomes the active weight and is used for that wave.

    Parameters
    ----------
    x_bits : int
        Width of the signed activation ``x - zp``.
    weight_bits : int
        Width of the signed weight.
    acc_width : int
        Width of the signed partial sum (wraps).

    Members
    -------
    x_in, valid_in, first_in : ``In``
        Activation from the left, whether it belongs to a real wave, and whether that wave is
        the first of a new weight tile.
    x_out, valid_out, first_out : ``Out``
        The same, one cycle later, to the right neighbour.
    psum_in : ``In(signed(acc_width))``
        Partial sum from above (0 at the top row).
    psum_out : ``Out(signed(acc_width))``
        ``psum_in + x_in * weight``, registered.
    w_load : ``In(1)``
        Write ``w_data`` into the shadow weight this cycle.
    w_data : ``In(signed(weight_bits))``
        Weight for the shadow register.
    """

    def __init__(self, *, x_bits: int = 9, weight_bits: int = 8, acc_width: int = 32):
        super().__init__({
            "x_in":      In(signed(x_bits)),
            "valid_in":  In(1),
            "first_in":  In(1),
            "psum_in":   In(signed(acc_width)),
            "w_load":    In(1),
            "w_data":    In(signed(weight_bits)),
            "x_out":     Out(signed(x_bits)),
            "valid_out": Out(1),
            "first_out": Out(1),
            "psum_out":  Out(signed(acc_width)),
        })
        self._weight_bits = weight_bits

    def elaborate(self, platform):
        m = Module()
        shadow = Signal(signed(self._weight_bits))
        active = Signal(signed(self._weight_bits))
        # Bypass: a weight loaded in the cycle its tile's first wave arrives is used at once,
        # which lets the engine read weight row r from its buffer just in time for row r.
        shadow_next = Mux(self.w_load, self.w_data, shadow)
        switch = self.valid_in & self.first_in
        weight = Mux(switch, shadow_next, active)

        m.d.sync += [
            shadow.eq(shadow_next),
            self.x_out.eq(self.x_in),
            self.valid_out.eq(self.valid_in),
            self.first_out.eq(self.first_in),
            self.psum_out.eq(self.psum_in + self.x_in * weight),
        ]
        with m.If(switch):
            m.d.sync += active.eq(shadow_next)
        return m


class SystolicArray(wiring.Component):
    """``rows x cols`` processing elements, weight stationary, with input skew inside.

    A wave presented at cycle ``t`` (``x``, ``valid``, ``first``) reaches row ``r`` at cycle
    ``t + r``; column ``c`` of the bottom row outputs its column sum on ``y[c]`` (with
    ``y_valid[c]``) at cycle ``t + rows + c``. Weights are loaded one row per cycle through
    ``w_row`` / ``w_row_index`` / ``w_load``; row ``r`` of a new tile must be loaded no later
    than the cycle the tile's first wave reaches row ``r`` (``t + r``; a load in that very cycle is
    bypassed into column 0) and no earlier than the cycle after the previous tile's first wave
    reached the row's last column (``t_prev + r + cols``), so tiles are at least ``cols`` cycles
    apart.

    Parameters
    ----------
    config : BackendConfig
        ``rows``, ``cols``, ``weight_bits``, ``acc_width`` and ``x_bits`` are used.

    Members
    -------
    x : ``In(ArrayLayout(signed(x_bits), rows))``
        One wave: ``x[r] = A[m, k0 + r] - zp``.
    valid : ``In(1)``
        The wave is real (else a bubble: nothing in it is used).
    first : ``In(1)``
        The wave is the first of a new weight tile.
    w_row : ``In(ArrayLayout(signed(weight_bits), cols))``
        One row of weights for the shadow registers.
    w_row_index : ``In(range(rows))``
        Which row ``w_row`` is for.
    w_load : ``In(1)``
        Load ``w_row`` this cycle.
    y : ``Out(ArrayLayout(signed(acc_width), cols))``
        Column sums of the bottom row, column ``c`` delayed ``c`` cycles more than column 0.
    y_valid : ``Out(cols)``
        Bit ``c``: ``y[c]`` is the sum of a real wave.
    """

    def __init__(self, config: BackendConfig):
        self._config = config
        super().__init__({
            "x":           In(data.ArrayLayout(signed(config.x_bits), config.rows)),
            "valid":       In(1),
            "first":       In(1),
            "w_row":       In(data.ArrayLayout(signed(config.weight_bits), config.cols)),
            "w_row_index": In(range(config.rows)),
            "w_load":      In(1),
            "y":           Out(data.ArrayLayout(signed(config.acc_width), config.cols)),
            "y_valid":     Out(config.cols),
        })

    @property
    def config(self) -> BackendConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        rows, cols = cfg.rows, cfg.cols

        pes = [[ProcessingElement(x_bits=cfg.x_bits, weight_bits=cfg.weight_bits,
                                  acc_width=cfg.acc_width) for _ in range(cols)]
               for _ in range(rows)]
        for r in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]

        for r in range(rows):
            # Input skew: row r sees the wave r cycles late, through r registers.
            x, valid, first = self.x[r], self.valid, self.first
            for i in range(r):
                x_d = Signal(signed(cfg.x_bits), name=f"skew_x_{r}_{i}")
                valid_d = Signal(name=f"skew_valid_{r}_{i}")
                first_d = Signal(name=f"skew_first_{r}_{i}")
                m.d.sync += [x_d.eq(x), valid_d.eq(valid), first_d.eq(first)]
                x, valid, first = x_d, valid_d, first_d
            load_row = self.w_load & (self.w_row_index == r)
            for c in range(cols):
                pe = pes[r][c]
                m.d.comb += [
                    pe.x_in.eq(x), pe.valid_in.eq(valid), pe.first_in.eq(first),
                    pe.psum_in.eq(pes[r - 1][c].psum_out if r else 0),
                    pe.w_load.eq(load_row), pe.w_data.eq(self.w_row[c]),
                ]
                x, valid, first = pe.x_out, pe.valid_out, pe.first_out

        for c in range(cols):
            m.d.comb += [
                self.y[c].eq(pes[rows - 1][c].psum_out),
                self.y_valid[c].eq(pes[rows - 1][c].valid_out),
            ]
        return m
