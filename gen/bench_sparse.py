"""``hoarfrost bench sparse``: the zero-skipping sparse engine in Verilator on a random layer.

A random ``rows x cols`` layer is pruned to ``--density``, weight-shared into a
``2**--codebook-bits`` codebook and encoded for ``--pes`` PEs; ``--vectors`` input vectors
with ``--act-density`` non-zero activations stream through :class:`SparseMatVec` back to back
(so one vector's output drain overlaps the next one's computation, as in steady operation).
The RTL's outputs are checked against :mod:`hoarfrost.sim.golden_sparse`.

Figures printed, all for the whole batch of vectors:

- measured cycles: from the first input beat to the last output beat, no backpressure;
- ideal cycles: useful (non-zero weight x non-zero activation) MACs / PEs;
- dense cycles: ``rows * cols / PEs`` per vector, the same layer on as many MAC units;
- energy, sparse vs dense, priced by :mod:`hoarfrost.sim.energy`. Event mapping:

  =========== ========================================== ===================================
  event       dense (every weight, every activation)     sparse
  =========== ========================================== ===================================
  mul8        rows*cols per vector                       MAC slots the PEs used (a padding
                                                         entry folded into the next one
                                                         takes none)
  add32       rows*cols per vector                       MAC slots
  sram_read32 rows*cols*8/32 per vector (int8 weights)   entries read (RTL counter, padding
                                                         included) * (index+4 bits)/32,
                                                         plus every stored column count
                                                         (pointer bits/32) per vector
  =========== ========================================== ===================================

  Activation, bias and requantization costs are the same for both and left out.
- storage bits per original weight (entries, pointers and codebook included).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Dense, QParams
from hoarfrost.gen.sparse import (CODEBOOK_BITS, REL_BITS, SparseEncoding, random_activations,
                                  random_layer)

HELP = "zero-skipping sparse matrix-vector engine (EIE) on a random pruned layer"

TOPLEVEL = "sparse_matvec"
TESTBENCH = "hoarfrost.sim.tb.sparse_tb"
#: Extra Verilator arguments of the sparse engine's builds (none: the defaults serve).
BUILD_ARGS: tuple[str, ...] = ()


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, required=True, help="output neurons")
    parser.add_argument("--cols", type=int, required=True, help="input activations")
    parser.add_argument("--density", type=float, required=True,
                        help="fraction of weights kept after magnitude pruning")
    parser.add_argument("--act-density", type=float, required=True,
                        help="fraction of input activations different from the zero point")
    parser.add_argument("--pes", type=int, required=True, help="processing elements")
    parser.add_argument("--codebook-bits", type=int, default=4, metavar="2|3|4",
                        help="codebook index bits (default 4: 16 shared weights)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--vectors", type=int, default=8,
                        help="input vectors streamed back to back (default 8)")
    parser.add_argument("--fifo-depth", type=int, default=8,
                        help="work items per PE queue (default 8)")


def write_vectors(path: Path, layer: Dense, q_in: QParams, enc: SparseEncoding, x: np.ndarray,
                  *, idle_prob: float = 0.0, stall_prob: float = 0.0):
    """Golden outputs and counts for ``x``, saved as :mod:`hoarfrost.sim.tb.sparse_tb` reads
    them; returns ``(expected, counts)``."""
    from hoarfrost.sim.golden_sparse import SparseCounts, sparse_dense_int

    counts = SparseCounts()
    expected = sparse_dense_int(x, enc, layer, q_in, counts)
    np.savez(path, x=x, expected=expected, skipped=counts.skipped, macs=counts.macs,
             entries=counts.entries, idle_prob=idle_prob, stall_prob=stall_prob)
    return expected, counts


def verilog_of(layer: Dense, q_in: QParams, enc: SparseEncoding, fifo_depth: int = 8) -> str:
    from amaranth.back import verilog

    from hoarfrost.hw.sparse_matvec import SparseMatVec

    return verilog.convert(SparseMatVec(enc, layer, q_in, fifo_depth=fifo_depth),
                           name=TOPLEVEL, emit_src=False)


def energy_events(enc: SparseEncoding, vectors: int, entries: int,
                  slots: int) -> tuple[dict, dict]:
    """``(dense, sparse)`` event counts (see the module docstring for the mapping)."""
    weights = enc.rows * enc.cols * vectors
    dense = {"mul8": weights, "add32": weights, "sram_read32": weights * 8 / 32}
    sparse = {"mul8": slots, "add32": slots,
              "sram_read32": entries * (enc.index_bits + REL_BITS) / 32
              + vectors * enc.storage_bits()["pointers"] / 32}
    return dense, sparse


def _check_args(args) -> None:
    if args.pes < 1:
        raise HoarfrostError(f"--pes must be at least 1, not {args.pes!r}")
    if args.codebook_bits not in CODEBOOK_BITS:
        raise HoarfrostError(f"--codebook-bits must be 2, 3 or 4, not {args.codebook_bits!r}")
    if args.vectors < 1:
        raise HoarfrostError(f"--vectors must be at least 1, not {args.vectors!r}")
    if args.fifo_depth < 2:
        raise HoarfrostError(f"--fifo-depth must be at least 2, not {args.fifo_depth!r}")
    for name in ("density", "act_density"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise HoarfrostError(f"--{name.replace('_', '-')} must be in [0, 1], not {value!r}")
    if args.rows < 1 or args.cols < 1:
        raise HoarfrostError(f"--rows and --cols must be positive, not {args.rows!r}, "
                             f"{args.cols!r}")


def run(args) -> tuple[dict, str]:
    from hoarfrost.sim.energy import energy_pj
    from hoarfrost.sim.verilator import cocotb_run

    _check_args(args)
    layer, q_in, enc = random_layer(args.rows, args.cols, args.density,
                                    codebook_bits=args.codebook_bits, pes=args.pes,
                                    seed=args.seed)
    x = random_activations(np.random.default_rng(args.seed + 1), args.vectors, args.cols,
                           args.act_density, q_in.zero_point)
    with tempfile.TemporaryDirectory(prefix="hoarfrost-bench-sparse-") as tmp:
        vectors, results = Path(tmp) / "vectors.npz", Path(tmp) / "results.json"
        expected, counts = write_vectors(vectors, layer, q_in, enc, x)
        result = cocotb_run(verilog_of(layer, q_in, enc, args.fifo_depth), TOPLEVEL, TESTBENCH,
                            env={"HOARFROST_VECTORS": str(vectors),
                                 "HOARFROST_RESULTS": str(results)},
                            testcase="full_speed", seed=args.seed, build_args=BUILD_ARGS)
        if result.failed or not results.is_file():
            raise RuntimeError(f"SparseMatVec RTL does not match golden_sparse "
                               f"(see {result.log}):\n{result.log_tail()}")
        rtl = json.loads(results.read_text())
    if rtl["outputs"] != expected.reshape(-1).tolist():
        raise RuntimeError("SparseMatVec RTL outputs differ from golden_sparse")

    cycles = rtl["measured_cycles"]
    ideal = counts.macs / args.pes
    done = rtl["vector_done"]
    # One vector alone: its inputs, its MACs and the drain of its rows, nothing overlapped.
    latency = done[0]
    # Back to back, a vector's drain hides under the next one's MACs.
    interval = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else None
    dense_cycles = args.vectors * args.rows * args.cols / args.pes
    dense_ev, sparse_ev = energy_events(enc, args.vectors, rtl["entries"],
                                        int(counts.pe_slots.sum()))
    e_dense, e_sparse = energy_pj(dense_ev)["total"], energy_pj(sparse_ev)["total"]
    storage = enc.storage_bits()
    summary = {
        "rows": args.rows, "cols": args.cols, "density": args.density,
        "act_density": args.act_density, "pes": args.pes, "codebook_bits": args.codebook_bits,
        "seed": args.seed, "vectors": args.vectors,
        "cycles": cycles, "ideal_cycles": ideal, "dense_cycles": dense_cycles,
        "first_vector_latency": latency, "steady_cycles_per_vector": interval,
        "busiest_pe_mac_cycles": int(counts.pe_slots.max()),
        "speedup_vs_dense": dense_cycles / cycles,
        "cycles_over_ideal": cycles / ideal if ideal else None,
        "energy_pj": e_sparse, "dense_energy_pj": e_dense,
        "energy_vs_dense": e_sparse / e_dense,
        "storage_bits_per_weight": storage["per_weight"], "storage_bits": storage,
        "counters": {k: rtl[k] for k in ("cycles", "busy_cycles", "skipped", "macs",
                                         "entries", "stall_cycles")},
        "padding_entries": enc.padding, "golden_match": True,
        "verilator_cache_hit": result.cache_hit,
    }
    ratio = "n/a" if ideal == 0 else f"{cycles / ideal:.3f}"
    text = "\n".join([
        f"sparse {args.rows}x{args.cols}, weight density {args.density}, activation density "
        f"{args.act_density}, {args.pes} PEs, {1 << args.codebook_bits}-entry codebook, "
        f"{args.vectors} vectors, seed {args.seed}",
        f"  measured cycles      {cycles}   (per vector {cycles / args.vectors:.1f})",
        f"  ideal cycles         {ideal:.1f}   (useful MACs {counts.macs} / {args.pes} PEs; "
        f"busiest PE {int(counts.pe_slots.max())} MAC cycles)",
        f"  dense cycles         {dense_cycles:.0f}   (rows*cols/PEs per vector)",
        f"  speedup vs dense     {dense_cycles / cycles:.2f}x",
        f"  cycles / ideal       {ratio}",
        f"  first vector         {latency} cycles from its first input to its last output"
        + ("" if interval is None else
           f"; then one vector every {interval:.1f} cycles "
           f"({interval / (ideal / args.vectors):.3f}x ideal)" if ideal else ""),
        f"  energy               {e_sparse / 1e3:.2f} nJ vs dense {e_dense / 1e3:.2f} nJ "
        f"({e_sparse / e_dense:.3f}x)",
        f"  storage              {storage['per_weight']:.3f} bits/weight "
        f"(entries {storage['entries']}, pointers {storage['pointers']}, codebook "
        f"{storage['codebook']} bits; {enc.padding} padding entries)",
        f"  counters             " + ", ".join(f"{k} {v}" for k, v in summary["counters"].items()),
        "  output               equal to golden_sparse",
    ])
    return summary, text
