"""``hoarfrost sim``: run a compiled accelerator (OUT/) in Verilator, image by image.

The Verilog of OUT/backend.v (or accelerator.v, with a frozen front end) is built once
(cached by content, :mod:`hoarfrost.sim.verilator`) and run under
:mod:`hoarfrost.sim.tb.backend_tb`, one cocotb run per batch of images. Each image's output
is read back from the DRAM model and compared here with the integer golden model of
OUT/model_q.onnx (the whole graph, frozen layers included). The testbench returns the back
end's counters and a per-command cycle trace; the manifest's layer table turns the trace into
cycles per layer, printed beside the analytic cycle model's
(:mod:`hoarfrost.sim.sequencer_model`, exact for a DRAM without stalls) and its error. With
a frozen front end the image streams into the frozen block pixel by pixel, and the frozen
layers are one entry: the cycles of the firmware's ``RECV``, from its start until the frozen
block's last output pixel is in the scratchpad.

Energy per inference prices the counters with :func:`hoarfrost.sim.energy.energy_pj`:

=====================  ================================================================
counter                events
=====================  ================================================================
``macs_issued``        one ``mul8`` and one ``add32`` each (every lane the array issues,
                       padding included: it toggles the multiplier all the same)
``scratch_reads``      ``sram_read32`` per 4 bytes (the counter counts bytes)
``scratch_writes``     ``sram_write32`` per 4 bytes
``wcache_reads``,      the weight cache's bytes: ``sram_read32`` / ``sram_write32`` per 4
``wcache_writes``
``a_reads`` ...        the GEMM engine's buffer accesses (``a_``, ``w_``, ``acc_reads`` and
``acc_writes``         ``_writes``): ``sram_read32`` / ``sram_write32`` per 32 bits of the
                       entries (:func:`hoarfrost.sim.energy.buffer_words`)
``param_writes``       one ``sram_write32`` each (32-bit words)
``dram_read_bytes``    ``dram_read32`` per 4 bytes (firmware, weights, parameters, input)
``dram_write_bytes``   ``dram_write32`` per 4 bytes (the output)
=====================  ================================================================

The frozen block's events per image (adders switched, registers written), counted from its
structure by :func:`hoarfrost.gen.freeze.frame_events` when OUT was compiled (the manifest's
``frozen.frame_events``), are added. Each sparse engine's counters are priced too: a useful
multiply-accumulate (``macs``) one ``mul8`` and one ``add32``; an entry read (``entries``,
padding included) one ``sram_read32`` per 32 bits of entry (4-bit relative index + codebook
index); per output one ``sram_read32`` each for its bias, multiplier and shift and one
``mul32`` for the requantization.

With sparse engines the layers they run take the cycles of their ``SEND`` and ``RECVS``: the
sequencer model predicts them for an engine that takes every beat and has its results ready;
what the engine adds (beats held while a PE queue is full, the wait for the first result)
depends on the data and is predicted per image by replaying the engine on the layer's input
vector from the golden model (:func:`hoarfrost.sim.sparse_model.predict_sparse_vector`).

Not priced: registers, control and the parameter buffers' reads (no counter for them).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.hw.accelerator import FROZEN_COUNTERS, SPARSE_COUNTERS, sparse_counter_names

__all__ = ["TESTBENCH", "SimulationFailed", "energy_events", "command_cycles", "layer_cycles",
           "predicted_layer_cycles", "dram_for", "run_images", "debug_program",
           "first_bad_layer", "simulate"]

TESTBENCH = "hoarfrost.sim.tb.backend_tb"


class SimulationFailed(RuntimeError):
    """The RTL did not finish a batch (no ``END`` in time, or the simulator crashed)."""


def energy_events(counters: dict, config) -> dict[str, float]:
    """The energy events of one run on a back end of :class:`BackendConfig` ``config`` (see the
    module docstring for the mapping)."""
    from hoarfrost.sim.energy import buffer_words
    buffers = buffer_words(config, counters)
    return {
        "mul8": counters["macs_issued"],
        "add32": counters["macs_issued"],
        "sram_read32": ((counters["scratch_reads"] + counters.get("wcache_reads", 0)) / 4
                        + buffers["sram_read32"]),
        "sram_write32": ((counters["scratch_writes"] + counters.get("wcache_writes", 0)) / 4
                         + buffers["sram_write32"] + counters["param_writes"]),
        "dram_read32": counters["dram_read_bytes"] / 4,
        "dram_write32": counters["dram_write_bytes"] / 4,
    }


def sparse_energy_events(counters: dict, manifest: dict) -> dict[str, float]:
    """The sparse engines' energy events of one image (see the module docstring)."""
    from hoarfrost.gen.sparse import REL_BITS
    events = dict.fromkeys(("mul8", "add32", "sram_read32", "mul32"), 0.0)
    for i, engine in enumerate((manifest.get("sparse") or {}).get("engines", [])):
        index_bits = len(engine["codebook"]).bit_length() - 1
        events["mul8"] += counters[f"sparse{i}_macs"]
        events["add32"] += counters[f"sparse{i}_macs"]
        events["sram_read32"] += (counters[f"sparse{i}_entries"] * (REL_BITS + index_bits) / 32
                                  + 3 * engine["rows"])
        events["mul32"] += engine["rows"]
    return events


def sparse_layer_extra(manifest: dict, graph, values: dict) -> dict[str, float]:
    """Per sparse layer, the mean cycles per image its engine adds to ``SEND`` and ``RECVS``
    beyond the sequencer model (:func:`hoarfrost.sim.sparse_model.predict_sparse_vector` on
    each image's input vector to the layer, ``values`` from the golden model's ``keep_all``)."""
    from hoarfrost.gen.sparse_partition import engine_layers
    from hoarfrost.sim.sparse_model import column_slots, predict_sparse_vector
    sparse = manifest.get("sparse")
    if not sparse:
        return {}
    names = manifest["partition"]["sparse_engine"]
    layers = {layer.name: layer for layer in graph.layers}
    extra = {}
    for name, (enc, _, q_in) in zip(names, engine_layers(graph, names, sparse["pes"])):
        slots = column_slots(enc)
        vectors = values[layers[name].inputs[0]].reshape(-1, enc.cols)
        timings = [predict_sparse_vector(enc, v, q_in.zero_point, slots=slots,
                                         fifo_depth=sparse.get("fifo_depth", 8))
                   for v in vectors]
        extra[name] = float(np.mean([t.send_stalls + t.recvs_wait for t in timings]))
    return extra


def command_cycles(starts: list[int], total: int) -> list[int]:
    """Cycles of each command from the trace: from its header to the next one's.

    The first command also gets the fetch of its own header; the last (``END``) runs to the
    end, so the list sums to ``total``.
    """
    bounds = [0, *starts[1:], total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def layer_cycles(manifest: dict, per_command: list[int]) -> list[dict]:
    """Per-command cycles summed per layer, plus the input load (with a frozen front end: the
    frozen layers, whose output the first command receives) and the output store."""
    frozen = manifest.get("frozen")
    if frozen is None:
        rows = [{"name": "(load input)", "op": "load", "commands": 1, "cycles": per_command[0]}]
    else:
        names = ", ".join(layer["name"] for layer in frozen["layers"])
        rows = [{"name": f"(frozen: {names})", "op": "frozen", "commands": 1,
                 "cycles": per_command[0]}]
    for layer in manifest["layers"]:
        first, count = layer["first_command"], layer["commands"]
        rows.append({"name": layer["name"], "op": layer["op"], "commands": count,
                     "cycles": sum(per_command[first:first + count])})
    tail = manifest["commands"] - 3
    rows.append({"name": "(store output)", "op": "store", "commands": 3,
                 "cycles": sum(per_command[tail:])})
    return rows


def predicted_layer_cycles(manifest: dict, firmware: bytes, backend) -> list[dict]:
    """:func:`layer_cycles` of the cycle model's prediction
    (:func:`hoarfrost.sim.sequencer_model.predict_program`) for OUT's firmware on a back end
    of :class:`BackendConfig` ``backend``, with a DRAM that does not stall. Behind a frozen
    front end the first row (its ``RECV``) assumes each of the front end's pixels is there when
    the back end can take it: exact when the back end's one lane a cycle is the bound (or the
    front end ran ahead on the previous image of a batch), a lower bound when the back end
    waits for the front end to fill (the first image of a batch behind a deep front end)."""
    from hoarfrost.sim.sequencer_model import predict_program
    frozen = manifest.get("frozen")
    per_command = predict_program(firmware, backend,
                                  stream_channels=frozen["output_channels"] if frozen else 0)
    return layer_cycles(manifest, per_command)


def dram_for(manifest: dict, weights: bytes, firmware: bytes, x: np.ndarray) -> np.ndarray:
    """DRAM contents for one int8 image: the weight image, the input, then the firmware."""
    d = manifest["dram"]
    dram = bytearray(d["total_bytes"])
    dram[:len(weights)] = weights
    if d["input_addr"] is not None:           # None: the input streams into the frozen block
        blob = np.ascontiguousarray(x, dtype=np.int8).tobytes()
        dram[d["input_addr"]:d["input_addr"] + len(blob)] = blob
    dram[d["firmware_addr"]:d["firmware_addr"] + len(firmware)] = firmware
    return np.frombuffer(bytes(dram), dtype=np.uint8)


def build_args(manifest: dict) -> tuple[str, ...]:
    """Verilator arguments for OUT's Verilog: a frozen block's thousands of adders build at
    -O0 in one file (:data:`hoarfrost.gen.freeze.VERILATOR_ARGS`), far faster than the few
    images a run simulates would repay."""
    if manifest.get("frozen") is None:
        return ()
    from hoarfrost.gen.freeze import VERILATOR_ARGS
    return VERILATOR_ARGS


def raster_pixels(x_int8: np.ndarray) -> np.ndarray:
    """One image ``(C, H, W)`` as the ``pixels`` stream carries it: ``(H*W, C)``."""
    return np.ascontiguousarray(x_int8.reshape(x_int8.shape[0], -1).T, dtype=np.int8)


def run_images(verilog: str, manifest: dict, weights: bytes, firmware: bytes,
               x_int8: np.ndarray, *, stall_prob: float = 0.0, seed: int = 1,
               max_cycles: int = 5_000_000, dram_override: np.ndarray | None = None,
               pixel_idle_prob: float = 0.0) -> list[dict]:
    """One cocotb run over a batch of images; the testbench's record for each.

    ``dram_override`` replaces the DRAM of every image (for :func:`first_bad_layer`). With a
    frozen front end each image streams into ``pixels``, idle with probability
    ``pixel_idle_prob`` before each beat.
    """
    from hoarfrost.sim.verilator import cocotb_run

    d = manifest["dram"]
    with tempfile.TemporaryDirectory(prefix="hoarfrost-sim-") as tmp:
        vectors = {"runs": len(x_int8), "stall_prob": stall_prob, "max_cycles": max_cycles,
                   "output_addr": d["output_addr"], "output_len": d["output_bytes"],
                   "firmware_addr": d["firmware_addr"]}
        for i, x in enumerate(x_int8):
            vectors[f"dram_{i}"] = (dram_for(manifest, weights, firmware, x)
                                    if dram_override is None else dram_override)
            if manifest.get("frozen") is not None:
                vectors[f"pixels_{i}"] = raster_pixels(x)
        vectors["pixel_idle_prob"] = pixel_idle_prob
        vectors["sparse_engines"] = len(manifest["partition"].get("sparse_engine", []))
        np.savez(Path(tmp) / "vectors.npz", **vectors)
        results = Path(tmp) / "results.json"
        run = cocotb_run(verilog, manifest["toplevel"], TESTBENCH, seed=seed,
                         build_args=build_args(manifest),
                         env={"HOARFROST_VECTORS": str(Path(tmp) / "vectors.npz"),
                              "HOARFROST_RESULTS": str(results)})
        if run.failed or not results.is_file():
            lines = [l for l in run.log_tail(40).splitlines() if "Error" in l or "assert" in l]
            raise SimulationFailed(f"the back end's RTL failed ({run.log}): "
                                   f"{(lines or ['no END'])[-1].strip()}")
        records = json.loads(results.read_text())
    # The frozen block's and the sparse engines' counters run on across the images of a run:
    # per image, the difference
    for name in FROZEN_COUNTERS + sparse_counter_names(int(vectors["sparse_engines"])):
        totals = [r[name] for r in records if name in r]
        for r, before, now in zip(records, [0, *totals], totals):
            r[name] = now - before
    return records


def _cycle_bound(manifest: dict) -> int:
    """Cycles after which an image counts as hung: far above anything the back end needs
    (a few cycles per MAC, per DRAM byte and per command)."""
    frozen = manifest.get("frozen") or {}
    return 20 * (manifest["macs"] + manifest["dram"]["total_bytes"]
                 + 100 * manifest["commands"] + frozen.get("input_pixels", 0)
                 + frozen.get("output_pixels", 0) * frozen.get("output_channels", 0)) + 10_000


def debug_program(manifest: dict, firmware: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The firmware with a ``STORE`` of each layer's output to DRAM right after the layer.

    The stores go past the end of the (longer) firmware; returns the new firmware and, per
    layer that has commands, ``(layer index, DRAM address, bytes)``. The scratchpad offset of
    a layer's output is the ``dst`` of its last command; Flatten/Reshape (no commands) are
    skipped, their bytes are their input's. Behind a frozen front end the ``RECV``ed frozen
    output is stored first, as layer index None.
    """
    from hoarfrost.firmware.isa import Command, Op, decode, encode

    commands = decode(firmware)
    layers = [(i, l) for i, l in enumerate(manifest["layers"]) if l["commands"]]
    if (frozen := manifest.get("frozen")) is not None:
        layers.insert(0, (None, {"first_command": 0, "commands": 1,
                                 "output": [frozen["output_channels"], frozen["output_pixels"]]}))
    sizes = [int(np.prod(l["output"])) for _, l in layers]
    # each STORE is 4 words; the dump area starts after the debug firmware
    dump = manifest["dram"]["firmware_addr"] + len(firmware) + 16 * len(layers)
    out, dumps, end = [], [], 0
    for (index, layer), size in zip(layers, sizes):
        stop = layer["first_command"] + layer["commands"]
        out += commands[end:stop]
        end = stop
        out.append(Command.make(Op.STORE, src=commands[stop - 1].dst, dram_addr=dump,
                                length=size))
        dumps.append((index, dump, size))
        dump += -(-size // 4) * 4
    out += commands[end:]
    return encode(out), dumps


def _first_difference(manifest, image, rtl, golden) -> str:
    where = np.flatnonzero(rtl.reshape(-1) != golden.reshape(-1))
    i = int(where[0])
    out = manifest["output"]
    return (f"image {image}: output {out['name']!r} of layer {manifest['layers'][-1]['name']!r} "
            f"differs from the golden model at {len(where)} of {rtl.size} positions "
            f"(first at flat index {i}: RTL {int(rtl.reshape(-1)[i])}, golden "
            f"{int(golden.reshape(-1)[i])})")


def first_bad_layer(verilog, manifest, graph, weights, firmware, x_int8) -> str | None:
    """Run one image with :func:`debug_program` and name the first layer whose output differs
    from the golden model's (None if every layer's output agrees)."""
    from hoarfrost.sim.golden import run_int

    debug, dumps = debug_program(manifest, firmware)
    d = manifest["dram"]
    total = dumps[-1][1] + dumps[-1][2] if dumps else d["firmware_addr"] + len(debug)
    patched = {**manifest, "dram": {**d, "total_bytes": total}}
    dram = dram_for(patched, weights, debug, x_int8)
    # run_images reads the output bytes only; read every dump through a wide "output" window
    lo = d["firmware_addr"] + len(debug)
    window = {**patched, "dram": {**patched["dram"], "output_addr": lo, "output_bytes": total - lo}}
    record = run_images(verilog, window, weights, debug, x_int8[None], dram_override=dram,
                        max_cycles=2 * _cycle_bound(manifest))[0]
    dumped = np.array(record["output"], dtype=np.int8)
    values = run_int(graph, x_int8[None], keep_all=True)
    outputs = {layer.name: layer.output for layer in graph.layers}   # the manifest's layers
    for index, addr, size in dumps:                                  # may be the back half
        if index is None:
            layer = {"name": "(frozen layers)", "op": "frozen"}
            want = values[manifest["frozen"]["output_tensor"]].reshape(-1)
        else:
            layer = manifest["layers"][index]
            want = values[outputs[layer["name"]]].reshape(-1)
        got = dumped[addr - lo:addr - lo + size]
        if not np.array_equal(got, want):
            k = int(np.flatnonzero(got != want)[0])
            return (f"first differing layer output: {layer['name']!r} ({layer['op']}) at "
                    f"{int((got != want).sum())} of {size} positions (first at flat index {k}: "
                    f"RTL {int(got[k])}, golden {int(want[k])})")
    return None


def simulate(out: Path, x: np.ndarray, labels: np.ndarray | None, *, batch: int = 10,
             stall_prob: float = 0.0, pixel_idle_prob: float = 0.0,
             progress: bool = True) -> tuple[dict, str, str | None]:
    """Run every image of ``x`` (float or int8, already checked) through OUT's RTL.

    Returns ``(summary, text, mismatch)``; ``mismatch`` names the first image whose output
    differs from the golden model, or is None when all are equal.
    """
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.outdir import read_manifest
    from hoarfrost.sim.energy import energy_pj, energy_source
    from hoarfrost.sim.golden import quantize_input, run_int
    from hoarfrost.sim.verilator import ensure_built

    manifest = read_manifest(out)
    graph = import_onnx(out / "model_q.onnx")
    x_int8 = quantize_input(graph, x)
    values = run_int(graph, x_int8, keep_all=True)
    golden = values[graph.output]
    verilog = (out / manifest.get("verilog", "backend.v")).read_text()
    weights, firmware = (out / "weights.bin").read_bytes(), (out / "firmware.bin").read_bytes()

    def say(message):
        if progress:
            print(f"hoarfrost: {message}", file=sys.stderr, flush=True)

    say("building the Verilator model (cached by content) ...")
    t0 = time.monotonic()
    _, cache_hit = ensure_built(verilog, manifest["toplevel"], build_args(manifest))
    build_seconds = time.monotonic() - t0
    records, sim_seconds = [], 0.0
    for start in range(0, len(x_int8), batch):
        t0 = time.monotonic()
        records += run_images(verilog, manifest, weights, firmware, x_int8[start:start + batch],
                              stall_prob=stall_prob, max_cycles=_cycle_bound(manifest),
                              pixel_idle_prob=pixel_idle_prob)
        sim_seconds += time.monotonic() - t0
        say(f"simulated {len(records)}/{len(x_int8)} images")

    shape = (len(x_int8), *manifest["output"]["shape"])
    rtl = np.array([r["output"] for r in records], dtype=np.int8).reshape(shape)
    mismatch = None
    for i in range(len(rtl)):
        if not np.array_equal(rtl[i], golden[i]):
            mismatch = _first_difference(manifest, i, rtl[i], golden[i])
            say(f"image {i} differs; running it again with every layer's output stored ...")
            bad_layer = first_bad_layer(verilog, manifest, graph, weights, firmware, x_int8[i])
            if bad_layer:
                mismatch += "; " + bad_layer
            break

    cycles = [r["cycles"] for r in records]
    per_layer = [layer_cycles(manifest, command_cycles(r["command_starts"], r["cycles"]))
                 for r in records]
    from hoarfrost.gen.config import HardwareConfig
    backend = HardwareConfig.from_json(manifest["config"]).backend
    predicted = predicted_layer_cycles(manifest, firmware, backend)
    extra = sparse_layer_extra(manifest, graph, values)
    predicted = [{**row, "cycles": row["cycles"] + extra[row["name"]]} if row["name"] in extra
                 else row for row in predicted]
    layers = [{**row, "cycles": float(np.mean([p[j]["cycles"] for p in per_layer])),
               "predicted_cycles": model["cycles"]}
              for j, (row, model) in enumerate(zip(per_layer[0], predicted))]
    events = {k: float(np.mean([energy_events(r, backend)[k] for r in records]))
              for k in energy_events(records[0], backend)}
    for name, n in (manifest.get("frozen") or {}).get("frame_events", {}).items():
        events[name] = events.get(name, 0.0) + n
    sparse_names = manifest["partition"].get("sparse_engine", [])
    if sparse_names:
        for name in sparse_energy_events(records[0], manifest):
            events[name] = events.get(name, 0.0) + float(np.mean(
                [sparse_energy_events(r, manifest)[name] for r in records]))
    energy = energy_pj(events)
    clock = manifest["config"]["clock_mhz"]
    mean_cycles = float(np.mean(cycles))
    summary = {
        "out": str(out), "images": len(rtl), "matches_golden": mismatch is None,
        "mismatch": mismatch, "cycles": cycles, "total_cycles": int(sum(cycles)),
        "mean_cycles": mean_cycles, "clock_mhz": clock,
        "predicted_cycles": sum(row["predicted_cycles"] for row in layers),
        "dram_stall": stall_prob,
        "latency_us": mean_cycles / clock, "verilator_cache_hit": cache_hit,
        "build_seconds": build_seconds, "sim_seconds": sim_seconds,
        "sim_cycles_per_second": sum(cycles) / sim_seconds if sim_seconds else None,
        "layers": layers, "energy_events": events, "energy_pj": energy,
        "energy_source": energy_source(),
        "dram_read_bytes": float(np.mean([r["dram_read_bytes"] for r in records])),
        "dram_write_bytes": float(np.mean([r["dram_write_bytes"] for r in records])),
        "macs_useful": float(np.mean([r["macs_useful"] for r in records])),
        "macs_issued": float(np.mean([r["macs_issued"] for r in records])),
        "predicted": rtl.reshape(len(rtl), -1).argmax(axis=1).tolist(),
        "recv_cycles": float(np.mean([r["recv_cycles"] for r in records])),
        "sparse": None if not sparse_names else [
            {"layer": name,
             **{counter: float(np.mean([r[f"sparse{i}_{counter}"] for r in records]))
                for counter in SPARSE_COUNTERS},
             "beyond_model": next(row["cycles"] - row["predicted_cycles"] for row in layers
                                  if row["name"] == name)}
            for i, name in enumerate(sparse_names)],
        "frozen": None if manifest.get("frozen") is None else {
            "layers": [layer["name"] for layer in manifest["frozen"]["layers"]],
            "macs": manifest["frozen"]["macs"],
            **{name[len("frozen_"):]: float(np.mean([r[name] for r in records]))
               for name in FROZEN_COUNTERS},
        },
    }
    if labels is not None:
        correct = int((np.array(summary["predicted"]) == labels).sum())
        summary["accuracy"] = correct / len(rtl)
        summary["correct"] = correct
    return summary, _text(summary, manifest), mismatch


def _error(predicted: float, measured: float) -> str:
    """The model's error against the RTL, in percent of the RTL's cycles."""
    return f"{100 * (predicted - measured) / measured:+.1f}%" if measured else "-"


def _text(s: dict, manifest: dict) -> str:
    cfg = manifest["config"]
    b = cfg["backend"]
    verdict = ("every output equals the golden model" if s["matches_golden"]
               else "OUTPUTS DIFFER from the golden model")
    parts = [p for p, on in (("frozen front end", s["frozen"] is not None),
                             (f"{len(s['sparse'] or [])} sparse engine(s)", bool(s["sparse"])))
             if on]
    top = "the back end's" if not parts else f"the accelerator's ({', '.join(parts)})"
    lines = [f"{s['out']}: {s['images']} images through {top} RTL in Verilator "
             f"({b['rows']}x{b['cols']} array, config {cfg['name']}): {verdict}"]
    shown = s["cycles"] if len(s["cycles"]) <= 20 else s["cycles"][:10]
    lines.append("cycles per image: " + ", ".join(map(str, shown))
                 + (" ..." if len(shown) < len(s["cycles"]) else ""))
    lines.append(f"cycles: mean {s['mean_cycles']:.0f} per image (min {min(s['cycles'])}, max "
                 f"{max(s['cycles'])}), total {s['total_cycles']}; {s['latency_us']:.1f} us "
                 f"per inference at {s['clock_mhz']:g} MHz")
    speed = s["sim_cycles_per_second"]
    build = ("cached" if s["verilator_cache_hit"] else f"{s['build_seconds']:.0f} s")
    lines.append(f"simulation: {s['total_cycles']} cycles in {s['sim_seconds']:.1f} s = "
                 f"{speed:,.0f} simulated cycles/s (Verilator build {build})")
    lines.append(f"cycle model: {s['predicted_cycles']:.0f} cycles per image, "
                 f"{_error(s['predicted_cycles'], s['mean_cycles'])} against the RTL"
                 + (f" (the model assumes a DRAM without stalls; this run stalled it with "
                    f"probability {s['dram_stall']:g})" if s["dram_stall"] else ""))
    lines.append(f"{'layer':<28} {'op':<8} {'cmds':>4} {'cycles':>10} {'share':>6} "
                 f"{'model':>10} {'error':>7}")
    for row in s["layers"]:
        share = row["cycles"] / s["mean_cycles"] if s["mean_cycles"] else 0
        model = row["predicted_cycles"]
        lines.append(f"{row['name'][:28]:<28} {row['op']:<8} {row['commands']:>4} "
                     f"{row['cycles']:>10.0f} {100 * share:>5.1f}% "
                     f"{model:>10.0f} {_error(model, row['cycles']):>7}")
    e = s["energy_pj"]
    lines.append(f"energy per inference: {e['total'] / 1000:.2f} nJ ({s['energy_source']}): "
                 + ", ".join(f"{k} {v / 1000:.2f} nJ" for k, v in e.items() if k != "total"))
    lines.append(f"DRAM per inference: {s['dram_read_bytes']:.0f} bytes read, "
                 f"{s['dram_write_bytes']:.0f} written; MACs {s['macs_useful']:.0f} useful of "
                 f"{s['macs_issued']:.0f} issued")
    if s["frozen"] is not None:
        f = s["frozen"]
        lines.append(f"frozen front end ({len(f['layers'])} layers, {f['macs']} MACs in logic): "
                     f"{f['out_pixels']:.0f} output pixels per image; its output waited "
                     f"{f['stall_cycles']:.0f} cycles per image for the back end, whose RECV "
                     f"took {s['layers'][0]['cycles']:.0f} (its fetch included)")
    for e in s["sparse"] or []:
        lines.append(f"sparse engine ({e['layer']}): {e['macs']:.0f} MACs, {e['skipped']:.0f} zero "
                     f"activations skipped, {e['busy_cycles']:.0f} busy cycles per image, "
                     f"{e['stall_cycles']:.0f} cycles its full PE queues held a beat; the layer "
                     f"took {e['beyond_model']:+.0f} cycles against the model (which replays the "
                     f"engine on each image's vector)")
    if "accuracy" in s:
        lines.append(f"accuracy {100 * s['accuracy']:.2f}% ({s['correct']}/{s['images']})")
    return "\n".join(lines)
