"""``hoarfrost bench dram``: the DMA engines' Verilog in Verilator against an AXI4 memory.

One buffer of ``--beats`` beats is written through :class:`~hoarfrost.hw.axi_dma.AxiWriteDma`
and read back through :class:`~hoarfrost.hw.axi_dma.AxiReadDma` on cocotbext-axi's AxiRam,
given ``--latency`` cycles from each read request to its first data (and from each burst's
last write beat to its response), with no stalls. The bench prints the sustained bandwidth of
each direction (bytes per busy cycle, and as a share of the bus peak of ``data_width / 8``
bytes per cycle), the engines' counters, and the DRAM energy of the bytes moved at the
per-32-bit figures of ``sim/energy.toml``; it fails loudly if the data read differs from the
data written.

It then compiles the example CNN (``--model``, quantized with ``--calib``) for batch 1 and batch
``--batch`` on the back end of ``--config`` (default: the ``default`` preset, 4 x 4 array and
4 KB scratchpad) with both batch schedules of :mod:`hoarfrost.gen.batch`, layer by layer and
mini-batch serialization, runs every program on the functional ISA simulator to check that
each image's output equals the golden model's, and reports the DRAM bytes each schedule moves
(:func:`hoarfrost.gen.traffic.dram_traffic`) against the compulsory minimum.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError

HELP = ("DMA engines on an AXI4 memory in Verilator: sustained read/write bandwidth and energy; "
        "DRAM bytes of a batch, layer by layer against mini-batch serialization")

DATA_WIDTHS = (32, 64, 128)
MAX_BEATS = 1 << 16
MAX_LATENCY = 1000
#: Why the batch figures are what they are (printed with them).
NOTES = ("mini-batch serialization keeps feature maps on chip; in both schedules each "
         "convolution's weights enter the weight cache once (LOADW) and every image's MATMUL "
         "streams them from there, while the parameter buffer is reloaded when layers alternate "
         "(once per sub-batch with MBS).")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MAX_BATCH = 256


def add_arguments(parser) -> None:
    parser.add_argument("--latency", type=int, default=20,
                        help="memory latency in cycles, request to first data (default 20)")
    parser.add_argument("--beats", type=int, default=8192,
                        help="length of the buffer written and read, in beats (default 8192)")
    parser.add_argument("--data-width", type=int, default=64, metavar="32|64|128",
                        help="AXI data width in bits (default 64)")
    parser.add_argument("--outstanding", type=int, default=4,
                        help="bursts each engine keeps in flight (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random data")
    parser.add_argument("--model", default=str(EXAMPLES / "digits_cnn.onnx"),
                        help="model of the batch traffic figures (default: the example CNN)")
    parser.add_argument("--calib", default=str(EXAMPLES / "digits_calib.npy"),
                        help="calibration inputs .npy for a float --model; its first --batch "
                        "images are the batch (default: the examples' calibration set)")
    parser.add_argument("--config", metavar="PRESET|FILE.toml",
                        help="back end of the batch figures, as for `hoarfrost compile` "
                        "(default: the `default` preset)")
    parser.add_argument("--batch", type=int, default=16,
                        help="batch compared with batch 1 (default 16)")


def _check_args(args) -> None:
    if args.data_width not in DATA_WIDTHS:
        raise HoarfrostError(f"--data-width must be one of {', '.join(map(str, DATA_WIDTHS))}, "
                             f"not {args.data_width!r}")
    if not 2 <= args.latency <= MAX_LATENCY:
        raise HoarfrostError(f"--latency must be from 2 to {MAX_LATENCY} cycles (the memory "
                             f"model needs 2 of its own), not {args.latency!r}")
    if not 1 <= args.beats <= MAX_BEATS:
        raise HoarfrostError(f"--beats must be from 1 to {MAX_BEATS}, not {args.beats!r}")
    if not 1 <= args.outstanding <= 64:
        raise HoarfrostError(f"--outstanding must be from 1 to 64, not {args.outstanding!r}")
    if not 1 <= args.batch <= MAX_BATCH:
        raise HoarfrostError(f"--batch must be from 1 to {MAX_BATCH}, not {args.batch!r}")


def direction_summary(counters: dict, data_width: int) -> dict:
    """Bandwidth of one engine from its counters: over its busy cycles, and against peak."""
    peak = data_width // 8
    cycles = counters["busy_cycles"]
    per_cycle = counters["bytes"] / cycles if cycles else 0.0
    return {**counters, "bytes_per_cycle": per_cycle, "peak_bytes_per_cycle": peak,
            "fraction_of_peak": per_cycle / peak}


def dram_energy(read_bytes: int, write_bytes: int) -> dict[str, float]:
    """DRAM energy of the bytes moved, priced per 32 bits (``dram_read32`` / ``dram_write32``)."""
    from hoarfrost.sim.energy import energy_pj

    return energy_pj({"dram_read32": read_bytes * 8 / 32, "dram_write32": write_bytes * 8 / 32})


def schedule_comparison(graph, limits, x_int8) -> dict:
    """Both batch schedules for ``len(x_int8)`` images: DRAM bytes (firmware apart) against
    the compulsory minimum, and whether every output equals the golden model's."""
    from hoarfrost.gen.batch import SCHEDULES, compile_batch
    from hoarfrost.gen.traffic import dram_traffic
    from hoarfrost.sim.batch_host import run_batch
    from hoarfrost.sim.golden import run_int

    golden = run_int(graph, x_int8)
    result = {}
    for schedule in SCHEDULES:
        program = compile_batch(graph, limits, len(x_int8), schedule)
        traffic = dram_traffic(program, limits.rows, limits.cols)
        result[schedule] = {
            **{k: traffic[k] for k in ("total_bytes", "read_bytes", "written_bytes",
                                       "weight_bytes", "spill_bytes", "input_bytes",
                                       "output_bytes", "firmware_bytes", "ratio")},
            "groups": program.groups, "layers": traffic["layers"],
            "equals_golden": bool(np.array_equal(run_batch(program, x_int8, limits), golden)),
        }
        result["compulsory_bytes"] = traffic["compulsory_bytes"]
    result["batch"] = len(x_int8)
    result["identical_outputs"] = all(result[s]["equals_golden"] for s in SCHEDULES)
    result["reduction"] = 1 - result["mbs"]["total_bytes"] / result["layer"]["total_bytes"]
    return result


def batch_traffic(args) -> dict:
    """The batch figures of ``args`` (``--model --calib --config --batch``)."""
    from hoarfrost.gen.cli import check_inputs, load_model, load_npy
    from hoarfrost.gen.compiler import CompileLimits
    from hoarfrost.gen.config import load_config
    from hoarfrost.gen.quantize import quantize
    from hoarfrost.sim.golden import quantize_input

    config = load_config(args.config)
    if not Path(args.model).is_file():
        raise HoarfrostError(f"--model {args.model!r}: no such file")
    graph = load_model(args.model)
    calib = check_inputs(graph, load_npy(args.calib, "--calib"), "--calib")
    if len(calib) < args.batch:
        raise HoarfrostError(f"--calib {args.calib!r} has {len(calib)} images, fewer than "
                             f"--batch {args.batch}")
    if not graph.is_quantized:
        graph = quantize(graph, calib, config.backend.weight_bits)
    x = calib[:args.batch] if calib.dtype == np.int8 else quantize_input(graph, calib[:args.batch])
    limits = CompileLimits.for_backend(config.backend, config.scratch_bytes, config.param_depth)
    batches = sorted({1, args.batch})
    return {"model": args.model, "config": config.name,
            "array": f"{config.backend.rows}x{config.backend.cols}",
            "scratch_bytes": config.scratch_bytes,
            "batches": {str(b): schedule_comparison(graph, limits, x[:b]) for b in batches}}


def _group_text(groups) -> str:
    def short(name):
        return name.strip("/").split("/")[0]
    return " | ".join("+".join(short(n) for n in g["layers"]) + f" x{g['sub_batch']}"
                      for g in groups)


def traffic_text(t: dict) -> list[str]:
    lines = [f"DRAM bytes of {Path(t['model']).name} on the {t['config']!r} back end "
             f"({t['array']} array, {t['scratch_bytes']}-byte scratchpad), read + written, "
             f"firmware apart:"]
    for b, r in t["batches"].items():
        lay, mbs = r["layer"], r["mbs"]
        same = "identical outputs, equal to the golden model" if r["identical_outputs"] \
            else "OUTPUTS DIFFER"
        lines.append(f"  batch {b:>3}: compulsory {r['compulsory_bytes']}, layer-by-layer "
                     f"{lay['total_bytes']} ({lay['ratio']:.3f}x), MBS {mbs['total_bytes']} "
                     f"({mbs['ratio']:.3f}x): {100 * r['reduction']:.1f}% less with MBS; {same}")
        lines.append(f"             spills {lay['spill_bytes']} -> {mbs['spill_bytes']}, weights "
                     f"{lay['weight_bytes']} -> {mbs['weight_bytes']}, firmware fetched "
                     f"{lay['firmware_bytes']} -> {mbs['firmware_bytes']}; MBS groups "
                     f"{_group_text(mbs['groups'])}")
    b, r = max(t["batches"].items(), key=lambda item: int(item[0]))
    lines.append(f"  per layer at batch {b}, bytes read / written (weights and parameters, spilled "
                 f"feature maps; the input and output apart):")
    lines.append(f"    {'layer':<22} {'layer-by-layer':>16} {'MBS':>16} {'compulsory':>11}")
    for lay, mbs in zip(r["layer"]["layers"], r["mbs"]["layers"]):
        lines.append(f"    {lay['name'][:22]:<22} {lay['read_bytes']:>8} / "
                     f"{lay['written_bytes']:<5} {mbs['read_bytes']:>8} / "
                     f"{mbs['written_bytes']:<5} {lay['compulsory_bytes']:>11}")
    lines.append(f"    {'(input, output)':<22} {r['layer']['input_bytes']:>8} / "
                 f"{r['layer']['output_bytes']:<5} {r['mbs']['input_bytes']:>8} / "
                 f"{r['mbs']['output_bytes']:<5} "
                 f"{r['layer']['input_bytes'] + r['layer']['output_bytes']:>11}")
    return lines


def _with_defaults(args) -> argparse.Namespace:
    """``args`` with the options a programmatic caller left out at their defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **vars(args)})


def run(args) -> tuple[dict, str]:
    args = _with_defaults(args)
    _check_args(args)
    traffic = batch_traffic(args)
    from hoarfrost.hw.axi import convert
    from hoarfrost.hw.axi_dma import DmaTestTop
    from hoarfrost.sim.energy import energy_source
    from hoarfrost.sim.verilator import cocotb_run

    W, L, N, O = args.data_width, args.latency, args.beats, args.outstanding
    started = time.perf_counter()
    design = convert(DmaTestTop(data_width=W, max_outstanding=O), name="dma_top")
    with tempfile.TemporaryDirectory(prefix="hoarfrost-bench-") as tmp:
        results_path = Path(tmp) / "results.json"
        config = {"data_width": W, "read_latency": L, "write_latency": L, "beats": N}
        result = cocotb_run(design, "dma_top", "hoarfrost.sim.tb.dma_tb",
                            env={"HOARFROST_DMA_CONFIG": json.dumps(config),
                                 "HOARFROST_RESULTS": str(results_path)},
                            testcase="sustained_bandwidth", seed=args.seed)
        if result.failed or not results_path.is_file():
            raise RuntimeError(f"the DMA testbench failed (data read back differs from data "
                               f"written, or a counter check failed):\n{result.log_tail()}")
        measured = json.loads(results_path.read_text())["sustained_bandwidth"]
    seconds = time.perf_counter() - started

    read = direction_summary(measured["read"], W)
    write = direction_summary(measured["write"], W)
    energy = dram_energy(read["bytes"], write["bytes"])
    summary = {
        "data_width": W, "latency": L, "beats": N, "outstanding": O, "seed": args.seed,
        "data_equal": True, "read": read, "write": write,
        "read_cycles": measured["read_cycles"], "write_cycles": measured["write_cycles"],
        "energy_pj": energy, "energy_source": energy_source(),
        "verilator_cache_hit": result.cache_hit,
        "seconds": seconds, "sim_seconds": measured["sim_seconds"],
        "traffic": traffic, "notes": NOTES,
    }

    def line(name, d):
        return (f"  {name:<6} {d['bytes_per_cycle']:>6.3f} B/cycle  "
                f"{100 * d['fraction_of_peak']:>6.2f}% of peak {d['peak_bytes_per_cycle']} B/cycle"
                f"   {d['beats']} beats, {d['bytes']} bytes, {d['bursts']} bursts, "
                f"{d['busy_cycles']} cycles, {d['mem_wait_cycles']} waiting on memory, "
                f"{d['stall_cycles']} stalled")

    lines = [
        f"DMA on a {W}-bit AXI4 port, {L}-cycle memory latency, "
        f"{O} burst{'s' if O != 1 else ''} in flight, "
        f"{N}-beat buffer written then read (seed {args.seed}): data read equals data written",
        line("read", read),
        line("write", write),
        f"  energy {energy['total'] / 1e6:>8.3f} uJ   DRAM read {energy['dram_read32'] / 1e6:.3f}"
        f" uJ, write {energy['dram_write32'] / 1e6:.3f} uJ, per 32 bits ({energy_source()})",
        f"  time   {seconds:>8.1f} s    (simulation {measured['sim_seconds']:.1f} s, "
        f"Verilator build {'cached' if result.cache_hit else 'included'})",
        *traffic_text(traffic),
        f"  note: {NOTES}",
    ]
    return summary, "\n".join(lines)
