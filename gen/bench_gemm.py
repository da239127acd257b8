"""``hoarfrost bench gemm``: one GEMM on the systolic-array engine's Verilog in Verilator.

Random operands (int8 A with a zero point, ``--weight-bits`` B, int32 bias) go in through the
engine's load streams at full rate while it computes; the results come out of its output
stream. The bench prints measured cycles (whole run and compute phase) against the ideal
``M*N*K / (rows*cols)`` and the analytic cycle model, the utilization, the energy priced from
the engine's counters, and fails loudly if C differs from numpy's.

With ``--synth ecp5|ice40`` it also synthesizes the engine (``--backend``: the whole back end)
with yosys and places and routes it with nextpnr (:mod:`hoarfrost.gen.synth`), for the ULX3S
85F or the iCEBreaker, and reports utilization and Fmax against ``--freq``; ``--no-sim`` skips
the simulation. The design built then starts from the board's preset (``ULX3S`` /
``ICE40_ARRAY``: its buffer depths) resized to ``--rows`` x ``--cols``; the back end also takes
the board's scratchpad size and parameter depth (``ulx3s-85f`` / ``icebreaker`` in
:data:`hoarfrost.gen.config.PRESETS`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.hw.config import DEFAULT, ICE40_ARRAY, ULX3S, BackendConfig

HELP = ("one GEMM on the systolic-array engine in Verilator: measured vs ideal and modelled "
        "cycles; --synth ecp5|ice40 adds utilization and Fmax")

#: Board preset and default clock target (MHz) of each ``--synth`` target.
SYNTH_TARGETS = {"ecp5": (ULX3S, 50.0), "ice40": (ICE40_ARRAY, 25.0)}

#: The board preset (:data:`hoarfrost.gen.config.PRESETS`) whose scratchpad and parameter
#: buffer ``--backend`` builds on each ``--synth`` target.
SYNTH_BOARDS = {"ecp5": "ulx3s-85f", "ice40": "icebreaker"}

#: Verilator arguments of the engine's builds: one C++ file at -O0 roughly halves the compile
#: time, which dominates these runs of a few thousand cycles.
GEMM_BUILD_ARGS = ("--output-split", "0", "-CFLAGS", "-O0")

#: Largest array the bench builds (Verilator build time grows with the PE count).
MAX_PES = 256


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, required=True, help="PE rows of the array")
    parser.add_argument("--cols", type=int, required=True, help="PE columns of the array")
    parser.add_argument("--m", type=int, help="rows of A and C (required unless --no-sim)")
    parser.add_argument("--n", type=int, help="columns of B and C (required unless --no-sim)")
    parser.add_argument("--k", type=int, help="columns of A, rows of B "
                        "(required unless --no-sim)")
    parser.add_argument("--weight-bits", type=int, default=8, metavar="8|4|2",
                        help="weight precision (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random operands")
    parser.add_argument("--synth", choices=sorted(SYNTH_TARGETS),
                        help="also synthesize and place-and-route: ecp5 (ULX3S 85F) or "
                             "ice40 (iCEBreaker UP5K)")
    parser.add_argument("--freq", type=float, help="clock target in MHz for --synth "
                        "(default 50 on ecp5, 25 on ice40)")
    parser.add_argument("--backend", action="store_true",
                        help="with --synth: synthesize the whole back end (sequencer, engine, "
                             "requantizer, scratchpad), not only the GEMM engine")
    parser.add_argument("--no-sim", action="store_true",
                        help="with --synth: skip the simulation, report only synthesis")
    parser.add_argument("--pnr-seed", type=int, default=1, help="nextpnr placer seed")


def bench_config(rows: int, cols: int, weight_bits: int, m: int | None, n: int | None,
                 k: int | None, base: BackendConfig = DEFAULT) -> BackendConfig:
    """The engine configuration the bench builds: ``base`` resized, buffers fitted to the GEMM
    (when its sizes are given)."""
    config = dataclasses.replace(base, rows=rows, cols=cols, weight_bits=weight_bits,
                                 w_depth=max(4, 1 << (2 * rows - 1).bit_length()))
    return config if None in (m, n, k) else config.sized_for(m, n, k)


def _check_args(args) -> None:
    if args.no_sim and not args.synth:
        raise HoarfrostError("--no-sim needs --synth ecp5|ice40 (else there is nothing to do)")
    if (args.backend or args.freq is not None) and not args.synth:
        raise HoarfrostError("--backend and --freq need --synth ecp5|ice40")
    if args.freq is not None and not 0 < args.freq <= 1000:
        raise HoarfrostError(f"--freq must be a clock in MHz from 0 to 1000, not {args.freq!r}")
    for option in ("m", "n", "k"):
        if getattr(args, option) is None and not args.no_sim:
            raise HoarfrostError(f"--{option} is required unless --no-sim")
    for option in ("rows", "cols", "m", "n", "k"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise HoarfrostError(f"--{option} must be a positive integer, not {value!r}")
    if args.rows * args.cols > MAX_PES:
        raise HoarfrostError(f"--rows {args.rows} x --cols {args.cols} = "
                             f"{args.rows * args.cols} PEs; the bench builds at most {MAX_PES}")
    if any(v is not None and v > 4096 for v in (args.m, args.n, args.k)):
        raise HoarfrostError("--m, --n and --k must each be at most 4096")
    if args.weight_bits not in (8, 4, 2):
        raise HoarfrostError(f"--weight-bits must be 8, 4 or 2, not {args.weight_bits!r}")


def energy_counts(config: BackendConfig, counters: dict) -> dict[str, float]:
    """Energy events of a run: one 8-bit multiply and one 32-bit add per MAC issued (padding
    PEs switch too), buffer accesses converted to 32-bit SRAM words by their width."""
    from hoarfrost.sim.energy import buffer_words
    return {"mul8": counters["macs_issued"], "add32": counters["macs_issued"],
            **buffer_words(config, counters)}


def run(args) -> tuple[dict, str]:
    _check_args(args)
    base, default_freq = SYNTH_TARGETS[args.synth] if args.synth else (DEFAULT, None)
    config = bench_config(args.rows, args.cols, args.weight_bits, args.m, args.n, args.k,
                          base=base)
    summary, lines = {}, []
    if not args.no_sim:
        summary, text = _simulate(args, config)
        lines.append(text)
    if args.synth:
        synth, text = _synthesize(args, config, args.freq or default_freq)
        summary.setdefault("rows", args.rows)
        summary.setdefault("cols", args.cols)
        summary["synth"] = synth
        lines.append(text)
    return summary, "\n".join(lines)


def _synthesize(args, config: BackendConfig, freq_mhz: float) -> tuple[dict, str]:
    """Synthesis and place-and-route figures of the engine (or back end) of ``config``."""
    from hoarfrost.gen.synth import ToolchainError, synthesize_component

    if args.backend:
        from hoarfrost.gen.config import PRESETS
        from hoarfrost.hw.backend import BackEnd
        board = PRESETS[SYNTH_BOARDS[args.synth]]
        design = BackEnd(config, scratch_bytes=board.scratch_bytes,
                         param_depth=board.param_depth)
        what = (f"back end ({board.name}: scratch_bytes {board.scratch_bytes}, "
                f"param_depth {board.param_depth})")
    else:
        from hoarfrost.hw.gemm_engine import GemmEngine
        design, what = GemmEngine(config), "GEMM engine"
    started = time.perf_counter()
    try:
        result = synthesize_component(design, args.synth, freq_mhz, seed=args.pnr_seed)
    except ToolchainError as error:
        unplaced = [line for line in str(error).splitlines() if "no BELs remaining" in line]
        if unplaced and error.stat is not None:
            # a measurement with a definite answer: it does not fit; say why and how big it is
            from hoarfrost.gen.synth import TARGETS
            st = error.stat
            raise HoarfrostError(
                f"the {what} does not fit the {TARGETS[args.synth].description}: "
                f"{unplaced[0].removeprefix('ERROR: ')} (yosys: {st['luts']} LUT4, "
                f"{st['ffs']} FF, DSP {st['dsps'] or 0}, BRAM {st['brams'] or 0})") from None
        raise RuntimeError(f"synthesis of the {what} failed: {error}") from None
    seconds = time.perf_counter() - started
    summary = {"design": "BackEnd" if args.backend else "GemmEngine",
               "config": dataclasses.asdict(config), **result.summary(),
               "seconds": round(seconds, 1)}
    text = (f"{what} {config.rows}x{config.cols}, {config.weight_bits}-bit weights "
            f"(a_depth {config.a_depth}, w_depth {config.w_depth}, acc_depth {config.acc_depth}),"
            f" synthesized in an IoShell (see gen/synth.py):\n{result.table()}")
    return summary, text


def _simulate(args, config: BackendConfig) -> tuple[dict, str]:
    """Run the GEMM in Verilator and compare with numpy and the cycle model."""
    from amaranth.back import verilog

    from hoarfrost.hw.gemm_engine import GemmEngine
    from hoarfrost.sim.cycle_model import compute_phase_bound, predict_gemm
    from hoarfrost.sim.energy import energy_pj, energy_source
    from hoarfrost.sim.gemm_streams import assemble_output, random_gemm, reference_gemm
    from hoarfrost.sim.tb.gemm_tb import write_vectors
    from hoarfrost.sim.verilator import cocotb_run

    R, C = args.rows, args.cols
    m, n, k = args.m, args.n, args.k
    predicted = predict_gemm(config, m, n, k)
    g = random_gemm(config, m, n, k, args.seed)
    expected = reference_gemm(g["a"], g["b"], g["bias"], g["zero_point"], config.acc_width)

    started = time.perf_counter()
    design = verilog.convert(GemmEngine(config), name="gemm_engine")
    with tempfile.TemporaryDirectory(prefix="hoarfrost-bench-") as tmp:
        vectors = write_vectors(Path(tmp) / "vectors.npz", config, g, expected)
        results_path = Path(tmp) / "results.json"
        result = cocotb_run(design, "gemm_engine", "hoarfrost.sim.tb.gemm_tb",
                            env={"HOARFROST_VECTORS": str(vectors),
                                 "HOARFROST_RESULTS": str(results_path)},
                            build_args=GEMM_BUILD_ARGS, testcase="gemm_at_full_rate",
                            seed=args.seed)
        if not results_path.is_file():
            raise RuntimeError(f"the GEMM testbench wrote no results:\n{result.log_tail()}")
        measured = json.loads(results_path.read_text())["gemm_at_full_rate"]
    seconds = time.perf_counter() - started

    got = assemble_output(C, measured["out_beats"], m, n)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        bad = np.argwhere(got != expected) if got.shape == expected.shape else [[0, 0]]
        raise RuntimeError(f"RTL result differs from numpy ({len(bad)} entries, first at "
                           f"{tuple(bad[0])}); testbench log: {result.log}")
    if result.failed:
        raise RuntimeError(f"the GEMM testbench failed (results equal numpy, a counter check "
                           f"did not):\n{result.log_tail()}")

    counters = measured["counters"]
    cycles, compute = counters["cycles"], counters["compute_cycles"]
    ideal = m * n * k / (R * C)
    energy = energy_pj(energy_counts(config, counters))
    summary = {
        "rows": R, "cols": C, "m": m, "n": n, "k": k, "weight_bits": args.weight_bits,
        "seed": args.seed, "result_equals_numpy": True,
        "cycles": cycles, "compute_cycles": compute,
        "predicted_cycles": predicted.cycles,
        "predicted_compute_cycles": predicted.compute_cycles,
        "model_error": (cycles - predicted.cycles) / predicted.cycles,
        "ideal_cycles": ideal,
        "utilization": ideal / cycles,
        "compute_utilization": ideal / compute,
        "counters": counters,
        "energy_pj": energy, "energy_source": energy_source(),
        "verilator_cache_hit": result.cache_hit,
        "seconds": seconds, "sim_seconds": measured["sim_seconds"],
    }
    if R == C == m == n == k:
        summary["compute_bound_4n_minus_3"] = compute_phase_bound(R)

    lines = [
        f"GEMM C[{m},{n}] = A[{m},{k}] @ B[{k},{n}] on a {R}x{C} array, "
        f"{args.weight_bits}-bit weights (seed {args.seed}): result equals numpy",
        f"  cycles, whole run    {cycles:>10}   predicted {predicted.cycles} "
        f"({100 * summary['model_error']:+.2f}%)",
        f"  cycles, compute      {compute:>10}   predicted {predicted.compute_cycles}"
        + (f"  (bound 4n-3 = {compute_phase_bound(R)})" if "compute_bound_4n_minus_3" in summary
           else ""),
        f"  ideal cycles         {ideal:>10.1f}   M*N*K / (rows*cols)",
        f"  utilization          {100 * summary['utilization']:>9.2f}%   whole run "
        f"({100 * summary['compute_utilization']:.2f}% of the compute phase)",
        f"  stalls               {counters['stall_cycles']:>10}   issue waits "
        f"(operands, accumulator bank); output stalls {counters['out_stall_cycles']}",
        f"  MACs                 {counters['macs_useful']:>10}   useful of "
        f"{counters['macs_issued']} issued",
        f"  buffer accesses      A {counters['a_reads']}r/{counters['a_writes']}w, "
        f"W {counters['w_reads']}r/{counters['w_writes']}w, "
        f"acc {counters['acc_reads']}r/{counters['acc_writes']}w",
        f"  energy               {energy['total'] / 1000:>10.2f} nJ   "
        + ", ".join(f"{name} {value / 1000:.2f}" for name, value in energy.items()
                    if name != "total")
        + f" nJ ({energy_source()})",
        f"  time                 {seconds:>10.1f} s    "
        f"(simulation {measured['sim_seconds']:.1f} s, "
        f"Verilator build {'cached' if result.cache_hit else 'included'})",
    ]
    return summary, "\n".join(lines)
