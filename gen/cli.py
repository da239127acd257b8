"""The ``hoarfrost`` command line.

Every mistake a user can make (missing or bad file, unsupported op, wrong shape, bad option)
ends in one line ``hoarfrost: error: ...`` on stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hoarfrost import __version__
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Graph, macs, params

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --- shared input handling -------------------------------------------------------------------

def load_model(path: str) -> Graph:
    from hoarfrost.gen.onnx_import import import_onnx
    return import_onnx(path)


def load_npy(path: str, option: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise HoarfrostError(f"{option} {path!r}: no such file")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:
        raise HoarfrostError(f"{option} {path!r} is not a numpy .npy array "
                             f"({str(exc).splitlines()[0][:120]})") from None


def check_inputs(graph: Graph, x: np.ndarray, option: str) -> np.ndarray:
    """A batch of model inputs: float (quantized on the way in) or, for a quantized model,
    int8 already quantized. A single sample without the batch axis is accepted too."""
    sample = tuple(graph.shapes[graph.input])
    allowed = (np.float16, np.float32, np.float64) + ((np.int8,) if graph.is_quantized else ())
    if x.dtype.type not in allowed:
        names = ", ".join(np.dtype(t).name for t in allowed)
        raise HoarfrostError(f"{option}: dtype {x.dtype} is not supported (expected {names})")
    if x.shape == sample:
        x = x[None]
    if x.shape[1:] != sample or x.shape[0] == 0:
        raise HoarfrostError(f"{option}: shape {x.shape} does not fit input {graph.input!r} "
                             f"(expected (N, {', '.join(map(str, sample))}))")
    if x.dtype != np.int8 and not np.isfinite(x).all():
        raise HoarfrostError(f"{option}: contains NaN or infinite values")
    return x if x.dtype == np.int8 else x.astype(np.float32)


def check_labels(y: np.ndarray, count: int) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise HoarfrostError(f"--labels: expected a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) != count:
        raise HoarfrostError(f"--labels: {len(y)} labels for {count} inputs")
    return y


def load_images(graph: Graph, args) -> tuple[np.ndarray, np.ndarray | None]:
    """``--inputs``, ``--labels`` (optional) and ``--limit`` (optional) of ``sim`` and ``run``:
    the images and their labels, the first ``--limit`` of them."""
    x = check_inputs(graph, load_npy(args.inputs, "--inputs"), "--inputs")
    labels = check_labels(load_npy(args.labels, "--labels"), len(x)) if args.labels else None
    if args.limit is not None:
        if args.limit < 1:
            raise HoarfrostError(f"--limit must be at least 1, not {args.limit!r}")
        x = x[:args.limit]
        labels = None if labels is None else labels[:args.limit]
    return x, labels


def emit(args, summary: dict, text: str) -> None:
    print(json.dumps(summary) if getattr(args, "json", False) else text)


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


# --- inspect ---------------------------------------------------------------------------------

def layer_rows(graph: Graph) -> list[dict]:
    rows = []
    for layer in graph.layers:
        weight = getattr(layer, "weight", None)
        rows.append({
            "name": layer.name,
            "op": layer.op,
            "inputs": [list(graph.shapes[t]) for t in layer.inputs],
            "output": list(graph.shapes[layer.output]),
            "macs": macs(layer, graph.shapes),
            "params": params(layer),
            "weight_sparsity": None if weight is None else float(np.mean(weight == 0)),
            "weight_bits": getattr(layer, "weight_bits", None),
            "activation": _activation_name(getattr(layer, "clip", None)),
        })
    return rows


def _activation_name(clip) -> str | None:
    if clip is None:
        return None
    lo, hi = clip
    if lo == -np.inf and hi == np.inf:
        return None
    if lo == 0 and hi == np.inf:
        return "relu"
    if lo == 0 and hi == 6:
        return "relu6"
    return f"clip({lo:g},{hi:g})"


def cmd_inspect(args) -> int:
    graph = load_model(args.model)
    rows = layer_rows(graph)
    total_macs = sum(r["macs"] for r in rows)
    total_params = sum(r["params"] for r in rows)
    weights = [getattr(l, "weight") for l in graph.layers if getattr(l, "weight", None) is not None]
    zeros = sum(int((w == 0).sum()) for w in weights)
    size = sum(int(w.size) for w in weights)
    summary = {"model": args.model, "name": graph.name, "quantized": graph.is_quantized,
               "input": {"name": graph.input, "shape": list(graph.shapes[graph.input])},
               "output": {"name": graph.output, "shape": list(graph.shapes[graph.output])},
               "layers": rows, "macs": total_macs, "params": total_params,
               "weight_sparsity": zeros / size if size else 0.0}
    lines = [f"{args.model}: {'quantized (QDQ)' if graph.is_quantized else 'float'} model "
             f"{graph.name!r}, input {graph.input!r} {tuple(graph.shapes[graph.input])}",
             f"{'layer':<28} {'op':<8} {'output':<14} {'MACs':>8} {'params':>7} {'zero w':>7}  act"]
    for r in rows:
        sparsity = "" if r["weight_sparsity"] is None else _percent(r["weight_sparsity"])
        lines.append(f"{r['name'][:28]:<28} {r['op']:<8} {str(tuple(r['output'])):<14} "
                     f"{r['macs']:>8} {r['params']:>7} {sparsity:>7}  {r['activation'] or ''}")
    lines.append(f"total: {total_macs} MACs, {total_params} parameters, "
                 f"{_percent(summary['weight_sparsity'])} of weights zero")
    emit(args, summary, "\n".join(lines))
    return 0


# --- quantize --------------------------------------------------------------------------------

def _float_calib(args, graph: Graph) -> np.ndarray:
    """``--calib``'s inputs for the float ``graph``, checked."""
    calib = check_inputs(graph, load_npy(args.calib, "--calib"), "--calib")
    if calib.dtype == np.int8:
        raise HoarfrostError("--calib: calibration data must be float")
    return calib


def _quantized(args, graph: Graph, calib: np.ndarray | None = None) -> Graph:
    """``graph`` quantized from ``calib`` (default: ``--calib``'s inputs)."""
    from hoarfrost.gen.quantize import quantize
    if calib is None:
        calib = _float_calib(args, graph)
    return quantize(graph, calib, args.weight_bits)


def cmd_quantize(args) -> int:
    from hoarfrost.gen.qdq import save_qdq
    out = Path(args.output)
    if not out.parent.is_dir():
        raise HoarfrostError(f"-o {args.output!r}: directory {str(out.parent)!r} does not exist")
    graph = load_model(args.model)
    qgraph = _quantized(args, graph)
    save_qdq(qgraph, out)
    rows = [{"name": l.name, "op": l.op, "weight_bits": getattr(l, "weight_bits", None),
             "output_scale": qgraph.quant[l.output].scale,
             "output_zero_point": qgraph.quant[l.output].zero_point} for l in qgraph.layers]
    qin = qgraph.quant[qgraph.input]
    summary = {"model": args.model, "output": str(out), "weight_bits": args.weight_bits,
               "input_scale": qin.scale, "input_zero_point": qin.zero_point, "layers": rows}
    lines = [f"{'layer':<28} {'op':<8} {'w bits':>6} {'out scale':>11} {'zp':>5}"]
    lines += [f"{r['name'][:28]:<28} {r['op']:<8} {r['weight_bits'] or '':>6} "
              f"{r['output_scale']:>11.6f} {r['output_zero_point']:>5}" for r in rows]
    lines.append(f"wrote {out} ({args.weight_bits}-bit weights, int8 activations, QDQ format)")
    emit(args, summary, "\n".join(lines))
    return 0


# --- predict ---------------------------------------------------------------------------------

def _onnxruntime_outputs(model_bytes: bytes, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {input_name: x.astype(np.float32)})[0]


def cmd_predict(args) -> int:
    from hoarfrost.sim.golden import run_float, run_int
    graph = load_model(args.model)
    if args.calib:
        graph = _quantized(args, graph)
    x = check_inputs(graph, load_npy(args.inputs, "--inputs"), "--inputs")
    labels = check_labels(load_npy(args.labels, "--labels"), len(x)) if args.labels else None
    if graph.is_quantized:
        out = run_int(graph, x)
        qout = graph.quant[graph.output]
        output = {"values": out.tolist(), "dtype": "int8", "scale": qout.scale,
                  "zero_point": qout.zero_point, "shape": list(out.shape)}
        mode = f"integer golden model"
    else:
        out = run_float(graph, x).astype(np.float32)
        output = {"values": out.tolist(), "dtype": "float32", "shape": list(out.shape)}
        mode = "float model (float reference; quantize it for the integer golden model)"
    predicted = out.reshape(len(x), -1).argmax(axis=1)
    summary = {"model": args.model, "mode": "int8" if graph.is_quantized else "float",
               "inputs": int(len(x)), "predicted": predicted.tolist(), "output": output}
    lines = [f"{args.model}: {mode}, {len(x)} inputs"]
    if labels is not None:
        correct = int((predicted == labels).sum())
        summary["accuracy"] = correct / len(x)
        lines.append(f"accuracy {_percent(correct / len(x))} ({correct}/{len(x)})")
    else:
        shown = ", ".join(map(str, predicted[:20])) + (" ..." if len(x) > 20 else "")
        lines.append(f"predicted classes: {shown}")
    if args.check_onnxruntime:
        summary["onnxruntime"] = _compare_onnxruntime(args, graph, x, out, predicted)
        c = summary["onnxruntime"]
        lines.append(f"onnxruntime on the same model: argmax agrees on {c['argmax_agree']}/"
                     f"{len(x)} inputs, largest difference {c['max_diff']:g}"
                     f"{' LSB' if graph.is_quantized else ''}")
    emit(args, summary, "\n".join(lines))
    return 0


def _compare_onnxruntime(args, graph, x, out, predicted) -> dict:
    """Run the model in onnxruntime (the independent reference) and compare with ours."""
    if args.calib:
        from hoarfrost.gen.qdq import to_qdq
        model_bytes = to_qdq(graph).SerializeToString()
    else:
        model_bytes = Path(args.model).read_bytes()
    xf = graph.quant[graph.input].dequantize(x) if x.dtype == np.int8 else x
    ref = _onnxruntime_outputs(model_bytes, graph.input, xf)
    if graph.is_quantized:
        qout = graph.quant[graph.output]
        ref = np.rint(ref / qout.scale) + qout.zero_point      # back to the int8 codes
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    agree = int((ref.reshape(len(x), -1).argmax(axis=1) == predicted).sum())
    return {"argmax_agree": agree, "max_diff": float(diff.max())}


# --- compile and sim ---------------------------------------------------------------------

def _sha256_file(path: str) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cmd_compile(args) -> int:
    from hoarfrost.gen.config import load_config
    from hoarfrost.gen.outdir import compile_to_dir
    config = load_config(args.config)
    out = Path(args.output)
    if out.exists() and not args.force:        # before the (slow) import and quantization
        raise HoarfrostError(f"-o {args.output!r} exists; pass --force to replace it")
    if args.freeze is not None and args.freeze < 1:
        raise HoarfrostError(f"--freeze must be a positive number of convolutions, not "
                             f"{args.freeze!r}")
    if args.freeze is None and config.freeze:
        args.freeze = config.freeze               # the configuration's `freeze = N`
    elif args.freeze is not None:                 # the manifest records what was built
        import dataclasses
        config = dataclasses.replace(config, freeze=args.freeze)
    if args.sparse is not None and args.sparse < 1:
        raise HoarfrostError(f"--sparse must be a positive number of fully connected layers, "
                             f"not {args.sparse!r}")
    if args.sparse_density is not None and not 0 < args.sparse_density <= 1:
        raise HoarfrostError(f"--sparse-density must be in (0, 1], not {args.sparse_density!r}")
    if args.sparse is None and (args.sparse_density is not None
                                or args.codebook_bits is not None):
        option = "--sparse-density" if args.sparse_density is not None else "--codebook-bits"
        raise HoarfrostError(f"{option} applies to the sparse engines: add --sparse N")
    graph = load_model(args.model)
    source = {"path": args.model, "sha256": _sha256_file(args.model),
              "quantized": graph.is_quantized}
    if graph.is_quantized:
        # a QDQ model's --calib serves only to re-fit pruned layers (--sparse-density)
        if (args.calib and args.sparse_density is None) or args.weight_bits is not None:
            option = "--weight-bits" if args.weight_bits is not None else "--calib"
            raise HoarfrostError(f"{option}: {args.model!r} is already quantized (QDQ); "
                                 f"drop {option}")
        qgraph, calib = graph, None
        if args.calib:
            calib = check_inputs(graph, load_npy(args.calib, "--calib"), "--calib")
            source.update(calib_sha256=_sha256_file(args.calib))
    else:
        if not args.calib:
            raise HoarfrostError(f"{args.model!r} is a float model: give --calib X.npy to "
                                 f"quantize it (or compile a QDQ model)")
        if args.weight_bits is None:
            args.weight_bits = config.backend.weight_bits
        calib = _float_calib(args, graph)     # for the quantizer and the pruning refit
        qgraph = _quantized(args, graph, calib)
        source.update(calib_sha256=_sha256_file(args.calib), weight_bits=args.weight_bits)
    m = compile_to_dir(qgraph, config, out, source=source, force=args.force,
                       freeze=args.freeze, sparse=args.sparse,
                       sparse_density=args.sparse_density,
                       codebook_bits=args.codebook_bits or 4, calib=calib)
    d = m["dram"]
    summary = {"out": str(out), "manifest": m}
    b = m["config"]["backend"]
    frozen = m.get("frozen")
    n_sparse = len(m["partition"]["sparse_engine"])
    where = ("every layer on the back end" if frozen is None and not n_sparse else
             ("" if frozen is None else f"{len(frozen['layers'])} layer(s) frozen in logic, ")
             + f"{len(m['layers']) - n_sparse} on the back end")
    if n_sparse:
        sparse = m["sparse"]
        pruned = ("" if sparse["pruned_to_density"] is None else
                  f", pruned to density {sparse['pruned_to_density']:g}"
                  + (" and re-fitted to the calibration data"
                     if sparse["refit_to_calibration"] else ""))
        where += (f", {n_sparse} on sparse engine(s) of {m['config']['sparse_pes']} PEs "
                  f"(commands SEND/RECVS{pruned})")
    lines = [f"{args.model} -> {out}/ for config {config.name!r} ({b['rows']}x{b['cols']} array, "
             f"scratchpad {b['scratch_bytes']} bytes, {m['config']['clock_mhz']:g} MHz): {where}",
             f"{'layer':<28} {'op':<8} {'output':<14} {'MACs':>8} {'cmds':>5} {'w bytes':>8}"]
    if frozen is not None:
        lines += [f"{r['name'][:28]:<28} {r['op']:<8} {str(tuple(r['output'])):<14} "
                  f"{r['macs']:>8} {'frozen':>5} {0:>8}" for r in frozen["layers"]]
    lines += [f"{r['name'][:28]:<28} {r['op']:<8} {str(tuple(r['output'])):<14} {r['macs']:>8} "
              f"{r['commands']:>5} {r['weight_bytes']:>8}" for r in m["layers"]]
    for e in (m.get("sparse") or {}).get("engines", []):
        lines.append(f"sparse engine: {e['name']} {e['rows']}x{e['cols']}, "
                     f"{e['nonzero_weights']} non-zero weights ({100 * e['density']:.1f}%), "
                     f"{len(e['codebook'])}-entry codebook, {e['bits_per_weight']:.2f} bits per "
                     f"weight on chip")
    lines.append(f"{m['commands']} commands ({d['firmware_bytes']} bytes of firmware), DRAM "
                 f"image {d['image_bytes']} bytes, scratchpad peak {m['scratch_peak_bytes']} "
                 f"bytes; wrote {m['verilog']}, firmware.bin/.asm, weights.bin, model_q.onnx, "
                 f"manifest.json")
    emit(args, summary, "\n".join(lines))
    return 0


def cmd_sim(args) -> int:
    from hoarfrost.gen.outdir import read_manifest
    from hoarfrost.sim.rtl_run import SimulationFailed, simulate
    out = Path(args.out)
    read_manifest(out)                         # a bad OUT is a one-line error before anything
    graph = load_model(str(out / "model_q.onnx"))
    x, labels = load_images(graph, args)
    if args.batch < 1:
        raise HoarfrostError(f"--batch must be at least 1, not {args.batch!r}")
    if not 0 <= args.dram_stall < 1:
        raise HoarfrostError(f"--dram-stall must be in [0, 1), not {args.dram_stall!r}")
    if not 0 <= args.pixel_gaps < 1:
        raise HoarfrostError(f"--pixel-gaps must be in [0, 1), not {args.pixel_gaps!r}")
    try:
        summary, text, mismatch = simulate(out, x, labels, batch=args.batch,
                                           stall_prob=args.dram_stall,
                                           pixel_idle_prob=args.pixel_gaps)
    except SimulationFailed as exc:            # a hardware bug, not the user's mistake
        print(f"hoarfrost: sim: {exc}", file=sys.stderr)
        return 1
    emit(args, summary, text)
    # kept next to the build for `hoarfrost report`
    from hoarfrost.gen.qdq import write_atomically
    write_atomically(out / "sim.json", (json.dumps(summary, indent=1) + "\n").encode())
    if mismatch:
        print(f"hoarfrost: sim: {mismatch}", file=sys.stderr)
        return 1
    return 0


# --- bench ---------------------------------------------------------------------------------

#: ``hoarfrost bench KIND`` runs ``hoarfrost.gen.bench_<kind>``: each module defines
#: ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> (summary, text)``.
BENCHES = ("gemm", "sparse", "freeze", "dram")


def _bench_modules():
    import importlib
    for kind in BENCHES:
        yield kind, importlib.import_module(f"hoarfrost.gen.bench_{kind}")


def cmd_bench(args) -> int:
    summary, text = args.bench_module.run(args)
    emit(args, summary, text)
    return 0


# --- parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hoarfrost", description=(
        "Turn a trained ONNX network into a bit-exact, synthesizable DNN accelerator. "
        "Bad input ends in one error line and exit status 2."))
    parser.add_argument("--version", action="version", version=f"hoarfrost {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("inspect", help="layers, shapes, MACs, parameters, sparsity",
                       description="Import MODEL (float or QDQ ONNX) and list its layers with "
                                   "shapes, multiply-accumulates, parameters and weight sparsity.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file")
    p.add_argument("--json", action="store_true", help="print one JSON summary instead")
    p.set_defaults(func=cmd_inspect)

    def quant_options(p, required):
        p.add_argument("--calib", metavar="X.npy", required=required,
                       help="calibration inputs, float (N, *input shape), e.g. a few hundred "
                            "training samples")
        p.add_argument("--weight-bits", type=int, default=8, choices=(8, 4, 2), metavar="8|4|2",
                       help="weight precision, symmetric per output channel (default 8)")

    p = sub.add_parser("quantize", help="post-training quantization to a QDQ model",
                       description="Quantize a float MODEL from calibration data: int8 "
                                   "activations per tensor (asymmetric), weights per output "
                                   "channel at 8, 4 or 2 bits, int32 biases. Writes a QDQ ONNX "
                                   "model that onnxruntime and hoarfrost both run.")
    p.add_argument("model", metavar="MODEL", help="a float .onnx file")
    quant_options(p, required=True)
    p.add_argument("-o", "--output", required=True, metavar="Q.onnx", help="QDQ model to write")
    p.add_argument("--json", action="store_true", help="print one JSON summary")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("predict", help="golden-model outputs for a batch of inputs",
                       description="Run MODEL on a batch of inputs. A quantized (QDQ) model runs "
                                   "in the integer golden model, whose outputs are the bits the "
                                   "accelerator must produce; a float model runs in float, or is "
                                   "quantized first when --calib is given.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file (float or QDQ)")
    p.add_argument("--inputs", required=True, metavar="X.npy",
                   help="inputs (N, *input shape), float; int8 for a quantized model means "
                        "already quantized")
    p.add_argument("--labels", metavar="Y.npy", help="integer labels (N,): report accuracy")
    quant_options(p, required=False)
    p.add_argument("--check-onnxruntime", action="store_true",
                   help="also run the model in onnxruntime and report the agreement")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary (inputs, predicted, output values, scale, "
                        "zero point, accuracy)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("compile", help="Verilog, firmware and weights for a model (OUT/)",
                       description="Compile MODEL for the accelerator: quantize it if it is "
                                   "float (--calib), compile it to the back end's firmware and "
                                   "DRAM image, elaborate the back end's Verilog, and write OUT/ "
                                   "with backend.v, firmware.bin, firmware.asm, weights.bin, "
                                   "model_q.onnx (the QDQ model compiled) and manifest.json "
                                   "(configuration, partition, DRAM layout, layer table, source "
                                   "model hash). OUT appears whole or not at all. A model that "
                                   "does not fit the configuration is an error naming the "
                                   "setting to raise. Every layer runs on the programmable back "
                                   "end unless --freeze N puts the first N convolutions into a "
                                   "frozen front end (weights as constants in the logic) that "
                                   "streams into it, and/or --sparse N puts the last N fully "
                                   "connected layers on zero-skipping sparse engines behind it; "
                                   "OUT/ then has accelerator.v instead of backend.v.")
    p.add_argument("model", metavar="MODEL", help="an .onnx file (float with --calib, or QDQ)")
    p.add_argument("--config", metavar="C",
                   help="a preset (default, icebreaker, ulx3s-85f) or a .toml file: "
                        "preset = \"NAME\" to start from, board, clock_mhz, and a [backend] "
                        "table (rows, cols, weight_bits, a_depth, w_depth, acc_depth, "
                        "scratch_bytes, param_depth, ...); default: the default preset")
    p.add_argument("--calib", metavar="X.npy",
                   help="calibration inputs for a float MODEL, float (N, *input shape)")
    p.add_argument("--weight-bits", type=int, default=None, choices=(8, 4, 2), metavar="8|4|2",
                   help="weight precision when quantizing (default: the configuration's "
                        "weight_bits)")
    p.add_argument("--freeze", type=int, metavar="N",
                   help="generate the first N convolutions (with the max pooling and "
                        "activations in line with them) as a frozen front end whose output "
                        "streams into the back end; they must form a chain from the input")
    p.add_argument("--sparse", type=int, metavar="N",
                   help="run the last N fully connected layers on zero-skipping sparse engines "
                        "(one each, sparse_pes PEs from the configuration, weights compressed "
                        "on chip), fed by the back end's SEND and read back by RECVS; the "
                        "layers are weight-shared to a codebook (and pruned with "
                        "--sparse-density), and model_q.onnx holds them so")
    p.add_argument("--sparse-density", type=float, metavar="D",
                   help="with --sparse: prune those layers by magnitude to this fraction of "
                        "non-zero weights, then (given --calib, also for a QDQ model) re-fit "
                        "the weights kept and the biases by least squares to the dense "
                        "layers' outputs on the calibration data (default: keep the zeros the "
                        "model has)")
    p.add_argument("--codebook-bits", type=int, choices=(2, 3, 4), metavar="2|3|4",
                   help="with --sparse: codebook of 2**B entries (default 4: 16)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--json", action="store_true", help="print one JSON summary (the manifest)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("sim", help="run OUT/ in Verilator, checked against the golden model",
                       description="Run a batch of inputs through the compiled accelerator's "
                                   "RTL (OUT/backend.v or accelerator.v in Verilator, cocotb "
                                   "testbench with a DRAM model, and with a frozen front end the "
                                   "image streamed into it pixel by pixel with random gaps; the "
                                   "build is cached by content) and check every "
                                   "output against the integer golden model of OUT/model_q.onnx. "
                                   "Prints cycles per image and in total, simulated cycles per "
                                   "second, cycles per layer, energy per inference with its "
                                   "breakdown, DRAM bytes, and accuracy when labels are given. "
                                   "Exit status 1 if any output differs (the first such image "
                                   "is named on stderr).")
    p.add_argument("out", metavar="OUT", help="a directory written by `hoarfrost compile`")
    p.add_argument("--inputs", required=True, metavar="X.npy",
                   help="inputs (N, *input shape), float, or int8 already quantized")
    p.add_argument("--labels", metavar="Y.npy", help="integer labels (N,): report accuracy")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N inputs")
    p.add_argument("--batch", type=int, default=10, metavar="B",
                   help="images per simulator run (default 10)")
    p.add_argument("--dram-stall", type=float, default=0.0, metavar="P",
                   help="probability that the DRAM model stalls a stream in a cycle (default 0)")
    p.add_argument("--pixel-gaps", type=float, default=0.0, metavar="P",
                   help="with a frozen front end: probability of an idle cycle before each "
                        "input pixel streamed into it (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary (per-image cycles, per-layer cycles, energy, "
                        "DRAM bytes, accuracy, sim speed)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("bench", help="micro-benchmarks of the hardware blocks in simulation",
                       description="Run one hardware block in Verilator on a synthetic workload "
                                   "and print measured against ideal and predicted figures.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
    kinds.required = True
    for kind, module in _bench_modules():
        k = kinds.add_parser(kind, help=module.HELP, description=module.HELP)
        module.add_arguments(k)
        k.add_argument("--json", action="store_true", help="print one JSON summary")
        k.set_defaults(func=cmd_bench, bench_module=module)

    from hoarfrost.gen import build
    p = sub.add_parser("build", help=build.HELP, description=build.DESCRIPTION)
    build.add_arguments(p)
    p.set_defaults(func=build.run)

    from hoarfrost.gen import flash
    p = sub.add_parser("flash", help=flash.HELP, description=flash.DESCRIPTION)
    flash.add_arguments(p)
    p.set_defaults(func=flash.run)

    from hoarfrost.gen import run_board
    p = sub.add_parser("run", help=run_board.HELP, description=run_board.DESCRIPTION)
    run_board.add_arguments(p)
    p.set_defaults(func=run_board.run)

    from hoarfrost.gen import report
    p = sub.add_parser("report", help=report.HELP, description=report.DESCRIPTION)
    report.add_arguments(p)
    p.set_defaults(func=report.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:          # usage errors, --help, --version
        return exc.code
    try:
        return args.func(args)
    except HoarfrostError as exc:
        print(f"hoarfrost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:            # e.g. piped into head: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("hoarfrost: interrupted", file=sys.stderr)
        return 130
