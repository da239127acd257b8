"""The one configuration of the programmable back end: gateware, cycle model and bench read it.

A :class:`BackendConfig` fixes the size of the systolic array, the operand and accumulator
widths and the depths of the on-chip buffers. Named presets are made from :data:`DEFAULT` with
:func:`dataclasses.replace`, so every preset differs from it only where it says so (after
Gemmini's ``GemminiConfigs.scala``).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["BackendConfig", "DEFAULT", "ICE40_ARRAY", "ICEBREAKER", "ULX3S"]


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """Size and widths of the systolic array and its GEMM engine.

    Parameters
    ----------
    rows : int
        Processing-element rows of the array: the K extent of a weight tile.
    cols : int
        Processing-element columns: the N extent of a weight tile.
    weight_bits : int
        Width of the signed weights, 8, 4 or 2.
    act_bits : int
        Width of the int8 activations as stored; the array multiplies ``x - zero_point``,
        one bit wider.
    acc_width : int
        Width of the signed accumulators and of the results (wrapping, as ``int32`` does).
    a_depth : int
        Entries of the activation buffer, each ``rows`` activations (one row of A restricted to
        one K tile). A GEMM needs ``M * ceil(K / rows)`` of them.
    w_depth : int
        Entries of the weight buffer, each ``cols`` weights (one row of a weight tile); a power
        of two of at least ``2 * rows`` so the next tile loads while the current one computes.
    acc_depth : int
        Rows of each of the two accumulator banks: the largest M the engine takes.
    weight_cache_bytes : int
        Bytes of the back end's weight cache (``LOADW``), from which a ``MATMUL`` may stream
        weights that several commands share instead of reading them from DRAM again; 0 builds
        none.
    counter_width : int
        Width of the event counters (they wrap).
    add_shares_multiplier : bool
        Form ``ADD``'s element products (``(a - zp_a) * mult_a``, ``(b - zp_b) * mult_b``) on
        the back end's shared 16 x 16 setup multiplier, four a element, instead of two 9 x 32
        multipliers of their own: four DSP blocks fewer (for the iCE40 UP5K's eight), at three
        more ``ADD_SETUP`` cycles and two more at the end of each ``ADD``
        (:mod:`hoarfrost.sim.sequencer_model`); elements still take four cycles each.
    requant_saturating_shift : bool
        Build the requantizer with its narrow saturating shifter
        (:class:`hoarfrost.hw.requant.Requantizer`'s ``saturating_shift``): the same results
        from fewer LUTs.
    dram_addr_bits : int
        Bits of DRAM byte addresses and transfer lengths the back end keeps (its program
        counter, its transfer counters; the DRAM port's requests stay 32 bits, zero-extended).
        A board with a small memory (the iCEBreaker's 64 KB) needs 17, not 32.
    index_bits : int
        Bits of the geometry registers, tile counts and window indices (shapes up to
        ``2**index_bits - 1``); 16 by default, fewer with ``compact_fields`` only (the compiler
        then checks every shape and count fits).
    compact_fields : bool
        Keep each command field in the bits its kind can need
        (:func:`hoarfrost.firmware.isa.field_bits`: DRAM addresses in ``dram_addr_bits``,
        scratchpad offsets in the scratchpad's address bits, activation values in 16), not in 32:
        fewer flip-flops and narrower compares for a small FPGA. The compiler then checks every
        field fits (:func:`hoarfrost.firmware.isa.check_compact_fields`).
    serial : bool
        Build the serial back end (:class:`~hoarfrost.hw.serial_backend.SerialBackEnd`): one
        multiply-accumulate a cycle through a tap pipeline instead of the systolic array,
        for an FPGA too small for the array's gatherer and drain. The array must be 1 x 1 (the
        firmware's weight layout follows it), with no weight cache; ``a_depth`` is then the
        weight buffer's bytes, the largest ``K`` (``cg * kh * kw``) a ``MATMUL`` may have, and
        the other buffer depths are unused.
    engine_keeps_counters : bool
        The GEMM engine counts on over its runs (``GemmEngine(keep_counters=True)``) and the
        back end's MAC and buffer counters are its, not sums the back end adds up at each
        ``MATMUL``'s end: ten counters' adders and registers fewer; the counts at ``done``
        are the same.
    """

    rows: int = 4
    cols: int = 4
    weight_bits: int = 8
    act_bits: int = 8
    acc_width: int = 32
    a_depth: int = 512
    w_depth: int = 16
    acc_depth: int = 128
    weight_cache_bytes: int = 2048
    counter_width: int = 32
    add_shares_multiplier: bool = False
    requant_saturating_shift: bool = False
    engine_keeps_counters: bool = False
    dram_addr_bits: int = 32
    index_bits: int = 16
    compact_fields: bool = False
    serial: bool = False

    def __post_init__(self):
        for name in ("rows", "cols", "a_depth", "acc_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.weight_bits not in (2, 4, 8):
            raise ValueError(f"weight_bits must be 8, 4 or 2, not {self.weight_bits!r}")
        if self.act_bits != 8:
            raise ValueError(f"act_bits must be 8 (int8 activations), not {self.act_bits!r}")
        if self.acc_width < self.act_bits + 1 + self.weight_bits:
            raise ValueError(f"acc_width must be at least {self.act_bits + 1 + self.weight_bits}, "
                             f"not {self.acc_width!r}")
        if not _is_power_of_two(self.w_depth) or self.w_depth < 2 * self.rows:
            raise ValueError(f"w_depth must be a power of two of at least 2 * rows = "
                             f"{2 * self.rows}, not {self.w_depth!r}")
        if not isinstance(self.weight_cache_bytes, int) or self.weight_cache_bytes < 0:
            raise ValueError(f"weight_cache_bytes must be a non-negative integer, not "
                             f"{self.weight_cache_bytes!r}")
        if self.counter_width < 16:
            raise ValueError(f"counter_width must be at least 16, not {self.counter_width!r}")
        if not isinstance(self.dram_addr_bits, int) or not 16 <= self.dram_addr_bits <= 32:
            raise ValueError(f"dram_addr_bits must be an integer from 16 to 32, not "
                             f"{self.dram_addr_bits!r}")
        if not isinstance(self.index_bits, int) or not 8 <= self.index_bits <= 16:
            raise ValueError(f"index_bits must be an integer from 8 to 16, not "
                             f"{self.index_bits!r}")
        if self.index_bits < 16 and not self.compact_fields:
            raise ValueError("index_bits below 16 needs compact_fields (its command fields are "
                             "checked against it)")
        for name in ("add_shares_multiplier", "requant_saturating_shift", "engine_keeps_counters",
                     "compact_fields", "serial"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}")
        if self.serial and (self.rows, self.cols) != (1, 1):
            raise ValueError(f"serial needs a 1 x 1 array (rows = cols = 1), not "
                             f"{self.rows} x {self.cols}")
        if self.serial and self.weight_cache_bytes:
            raise ValueError("serial has no weight cache: weight_cache_bytes must be 0, not "
                             f"{self.weight_cache_bytes}")

    @property
    def pe_count(self) -> int:
        return self.rows * self.cols

    @property
    def x_bits(self) -> int:
        """Width of ``x - zero_point`` as the array multiplies it (signed)."""
        return self.act_bits + 1

    def tiles(self, m: int, n: int, k: int) -> tuple[int, int, int]:
        """``(k_tiles, n_tiles, slots)`` of a GEMM: tile counts and cycles issued per tile."""
        return (math.ceil(k / self.rows), math.ceil(n / self.cols),
                max(m, self.rows, self.cols))

    def check_gemm(self, m: int, n: int, k: int) -> None:
        """Raise ``ValueError`` naming the cause if ``C[m, n] = A[m, k] @ B[k, n]`` does not fit."""
        for name, value in (("M", m), ("N", n), ("K", k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if m > self.acc_depth:
            raise ValueError(f"M = {m} exceeds the accumulator bank depth {self.acc_depth}")
        k_tiles = math.ceil(k / self.rows)
        if m * k_tiles > self.a_depth:
            raise ValueError(f"A needs {m} x {k_tiles} = {m * k_tiles} activation-buffer entries, "
                             f"more than a_depth = {self.a_depth}")

    def sized_for(self, m: int, n: int, k: int) -> "BackendConfig":
        """This configuration with buffers just large enough (powers of two) for one GEMM."""
        k_tiles = math.ceil(k / self.rows)
        return dataclasses.replace(
            self,
            a_depth=max(self.a_depth, 1 << (m * k_tiles - 1).bit_length()),
            acc_depth=max(self.acc_depth, 1 << (m - 1).bit_length()),
        )


#: A mid-sized array for simulation and tests.
DEFAULT = BackendConfig()

#: A 2 x 2 array with every area saving of the systolic back end, for the iCE40 (``hoarfrost
#: bench gemm --synth ice40``): small buffers, no weight cache, compact fields (17-bit DRAM
#: addresses for 64 KB, 14-bit shapes), 24-bit counters (``cycles`` wraps after 2**24
#: cycles, 1.4 s at 12 MHz). Its whole back end needs some 7,000 LUT4, more than the UP5K's
#: 5,280 logic cells.
ICE40_ARRAY = dataclasses.replace(DEFAULT, rows=2, cols=2, a_depth=256, w_depth=4,
                                  acc_depth=64, weight_cache_bytes=0, add_shares_multiplier=True,
                                  requant_saturating_shift=True, engine_keeps_counters=True,
                                  dram_addr_bits=17, index_bits=14, compact_fields=True,
                                  counter_width=24)

#: iCEBreaker (iCE40 UP5K, 8 DSPs, 5,280 logic cells): the serial back end (one MAC a cycle,
#: :class:`~hoarfrost.hw.serial_backend.SerialBackEnd`) with ICE40_ARRAY's savings, a
#: 512-byte weight buffer (``a_depth``: the largest ``K = cg * kh * kw``), DRAM addresses in
#: 16 bits (the board's 64 KB) and shapes and counts in 12 (up to 4,095).
ICEBREAKER = dataclasses.replace(ICE40_ARRAY, rows=1, cols=1, a_depth=512, w_depth=2,
                                 serial=True, dram_addr_bits=16, index_bits=12)

#: ULX3S 85F (ECP5, 156 multipliers): an 8 x 8 array.
ULX3S = dataclasses.replace(DEFAULT, rows=8, cols=8, a_depth=1024, w_depth=16, acc_depth=128)
