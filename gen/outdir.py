"""``hoarfrost compile``: a quantized model and a configuration in, the OUT/ directory out.

OUT/ holds everything needed to simulate or build the accelerator without the source model:

=================  =========================================================================
``backend.v``      Verilog of the back end (:class:`~hoarfrost.hw.backend.BackEnd`), top
                   module ``backend``; with ``--freeze N`` or ``--sparse N`` instead
                   ``accelerator.v``, the :class:`~hoarfrost.hw.accelerator.Accelerator`: the
                   frozen first ``N`` convolutions streaming into the back end, and/or the
                   last ``N`` fully connected layers on sparse engines (their compressed
                   weights in the Verilog), top module ``accelerator``
``firmware.bin``   the command stream (:func:`hoarfrost.firmware.isa.encode`); with
                   ``--freeze`` it starts with the ``RECV`` of the frozen layers' output
``firmware.asm``   its disassembly
``weights.bin``    the DRAM image from address 0: weights, parameters, I/O buffers (no input
                   buffer with ``--freeze``: the input streams into the frozen block)
``model_q.onnx``   the QDQ model that was compiled: the golden model ``sim`` checks against
``manifest.json``  configuration, partition, DRAM layout, layer table (the back end's layers),
                   file digests; with ``--freeze`` also ``frozen``: the frozen layers, their
                   MACs, pixel counts and events per frame; with ``--sparse`` also
                   ``sparse``: per engine its layer, shape, non-zero weights and storage
=================  =========================================================================

The directory is built next to OUT under a temporary name and renamed into place at the end,
so a failure (or a model that does not fit) leaves nothing behind, and an existing OUT is only
ever replaced whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hoarfrost import __version__
from hoarfrost.firmware.isa import (KEEP_PARAMS, NO_PARAMS, IsaError, Op, check_compact_fields,
                                    decode, disassemble, encode)
from hoarfrost.gen.config import HardwareConfig
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.ir import Graph, macs

__all__ = ["TOPLEVEL", "FILES", "FROZEN_TOPLEVEL", "FROZEN_FILES", "compile_to_dir",
           "read_manifest", "sha256", "frozen_partition"]

TOPLEVEL = "backend"
FILES = ("backend.v", "firmware.bin", "firmware.asm", "weights.bin", "model_q.onnx")
FROZEN_TOPLEVEL = "accelerator"
FROZEN_FILES = ("accelerator.v", *FILES[1:])
MANIFEST_VERSION = 1
#: Work items each sparse PE's queue holds (the Accelerator's default).
SPARSE_FIFO_DEPTH = 8


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _progress(message: str) -> None:
    print(f"hoarfrost: {message}", file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=4)
def backend_verilog(backend, scratch_bytes: int, param_depth: int) -> str:
    """Verilog of the back end (seconds to elaborate; kept for repeated compiles in a process)."""
    from amaranth.back import verilog

    from hoarfrost.hw.backend import BackEnd
    from hoarfrost.hw.serial_backend import SerialBackEnd
    design = (SerialBackEnd(backend, scratch_bytes=scratch_bytes) if backend.serial
              else BackEnd(backend, scratch_bytes=scratch_bytes, param_depth=param_depth))
    return verilog.convert(design, name=TOPLEVEL)


def accelerator_verilog(backend, scratch_bytes: int, param_depth: int, specs,
                        sparse_layers=()) -> tuple[str, dict | None]:
    """Verilog of the accelerator with the frozen layers ``specs`` in front of the back end
    and the sparse engines ``sparse_layers`` (see :class:`~hoarfrost.hw.accelerator.
    Accelerator`) behind it, and the frozen block's events per frame
    (:func:`hoarfrost.gen.freeze.frame_events`, from the structure just elaborated, None
    without frozen layers), which ``sim`` prices."""
    from amaranth.back import verilog

    from hoarfrost.gen.freeze import frame_events
    from hoarfrost.hw.accelerator import Accelerator
    design = Accelerator(backend, specs, scratch_bytes=scratch_bytes, param_depth=param_depth,
                         sparse_layers=sparse_layers, sparse_fifo_depth=SPARSE_FIFO_DEPTH)
    text = verilog.convert(design, name=FROZEN_TOPLEVEL, emit_src=False)
    return text, None if design.frozen is None else frame_events(design.frozen)


def frozen_partition(graph: Graph, freeze: int):
    """``(frozen layers, specs, front, back)`` of ``graph`` with its first ``freeze``
    convolutions frozen: the front half goes into the frozen block, the back half onto the back
    end. A bad ``freeze`` is a :class:`HoarfrostError` naming ``--freeze``."""
    from hoarfrost.gen.freeze import freeze_specs, frozen_layers
    from hoarfrost.gen.ir import split_graph
    try:
        layers = frozen_layers(graph, freeze)
        specs = freeze_specs(graph, freeze)
    except HoarfrostError as exc:
        # gen.freeze words its errors for `bench freeze --layers N`; here the option is --freeze
        message = str(exc).replace("--layers", "--freeze")
        raise HoarfrostError(message if "--freeze" in message
                             else f"--freeze {freeze}: {message}") from None
    try:
        front, back = split_graph(graph, layers[-1].output)
    except ValueError as exc:
        raise HoarfrostError(f"--freeze {freeze}: {exc}") from None
    return layers, specs, front, back


def check_fits(graph: Graph, config: HardwareConfig) -> None:
    """What the compiler does not check itself: the weights' width against the array's."""
    where = f"--config {config.name}"
    for layer in graph.layers:
        bits = getattr(layer, "weight_bits", None)
        if bits is not None and bits > config.backend.weight_bits:
            raise HoarfrostError(f"layer {layer.name!r} has {bits}-bit weights, the back end "
                                 f"multiplies {config.backend.weight_bits}-bit ones; raise "
                                 f"backend.weight_bits ({where}) or quantize with "
                                 f"--weight-bits {config.backend.weight_bits}")


def layer_table(graph: Graph, program, config: HardwareConfig, sparse=()) -> list[dict]:
    """Per layer: shapes, MACs, its commands (first index and count) and DRAM bytes.

    Command 0 is the input ``LOAD`` (``RECV`` behind a frozen front end); the layers' commands
    follow in order (Flatten/Reshape have none); the program ends with the output ``STORE``,
    ``SYNC`` and ``END``.
    """
    rows_, cols = config.backend.rows, config.backend.cols
    first = 1
    table = []
    for layer, entry in zip(graph.layers, program.layers):
        commands = program.commands[first:first + entry["commands"]]
        weight_bytes = param_bytes = 0
        seen = set()
        k = 1
        for c in commands:
            if c.op == Op.GEOM:
                k = c.kh * c.kw
            elif c.op == Op.MATMUL:
                # a tile's weights and parameters once (later commands may read them from
                # the weight cache and keep the parameter buffer)
                if ("w", c.w_addr) not in seen:
                    seen.add(("w", c.w_addr))
                    weight_bytes += (math.ceil(c.nt / cols) * math.ceil(c.cg * k / rows_)
                                     * rows_ * cols)
                if c.p_addr != KEEP_PARAMS and ("p", c.p_addr) not in seen:
                    seen.add(("p", c.p_addr))
                    param_bytes += 12 * c.nt
            elif c.op == Op.POOL and c.p_addr != NO_PARAMS and c.p_addr not in seen:
                seen.add(c.p_addr)
                param_bytes += 8 * (1 if c.kind == 0 else k + 1)
        table.append({"name": layer.name, "op": layer.op,
                      "engine": "sparse" if layer.name in sparse else "backend",
                      "inputs": [list(graph.shapes[t]) for t in layer.inputs],
                      "output": list(graph.shapes[layer.output]),
                      "macs": macs(layer, graph.shapes),
                      "first_command": first, "commands": entry["commands"],
                      "weight_bytes": weight_bytes, "param_bytes": param_bytes})
        first += entry["commands"]
    if (program.commands[0].op not in (Op.LOAD, Op.RECV) or first != len(program.commands) - 3
            or [c.op for c in program.commands[first:]] != [Op.STORE, Op.SYNC, Op.END]):
        raise RuntimeError("compiled program does not have the expected LOAD ... STORE SYNC "
                           "END framing; the layer table would be wrong")
    return table


def _tensor(graph: Graph, name: str) -> dict:
    q = graph.quant[name]
    return {"name": name, "shape": list(graph.shapes[name]), "dtype": "int8",
            "scale": q.scale, "zero_point": q.zero_point}


def check_fields(program, config: HardwareConfig) -> None:
    """Raise :class:`HoarfrostError` if the program's DRAM image (weights, tensors, firmware)
    needs more address bits than the back end keeps (``dram_addr_bits``), or a field does not
    fit a back end built with ``compact_fields``."""
    backend = config.backend
    firmware_end = -(-program.dram_bytes // 4) * 4 + len(encode(program.commands))
    if firmware_end > 1 << backend.dram_addr_bits:
        raise HoarfrostError(f"the DRAM image (weights, tensors and firmware) needs "
                             f"{firmware_end} bytes, more than the back end's "
                             f"{backend.dram_addr_bits} address bits reach "
                             f"(dram_addr_bits = {backend.dram_addr_bits})")
    if backend.serial:
        from hoarfrost.hw.serial_backend import check_serial_fields
        try:
            check_serial_fields(program.commands)
        except IsaError as exc:
            raise HoarfrostError(f"the firmware does not suit the serial back end: {exc}") \
                from None
    if backend.compact_fields:
        try:
            check_compact_fields(program.commands, dram_bits=backend.dram_addr_bits,
                                 scratch_bits=max(1, (config.scratch_bytes - 1).bit_length()),
                                 weight_cache=backend.weight_cache_bytes > 0,
                                 index_bits=backend.index_bits)
        except IsaError as exc:
            raise HoarfrostError(f"the firmware does not fit the back end's compact fields: "
                                 f"{exc}") from None


def compile_to_dir(qgraph: Graph, config: HardwareConfig, out: Path, *, source: dict,
                   force: bool = False, freeze: int | None = None, sparse: int | None = None,
                   sparse_density: float | None = None, codebook_bits: int = 4,
                   calib=None) -> dict:
    """Compile ``qgraph`` for ``config`` and write OUT/; returns the manifest.

    ``source`` describes the model compiled (path, sha256, how it was quantized). ``freeze``
    puts the first ``freeze`` convolutions (and the pooling/activations in line with them) into
    a frozen front end and compiles the rest for the back end, its input arriving by ``RECV``.
    ``sparse`` puts the last ``sparse`` fully connected layers on sparse engines of
    ``config.sparse_pes`` PEs each, pruned to ``sparse_density`` (None: their own zeros) and
    weight-shared to ``2**codebook_bits`` codebook entries (:mod:`hoarfrost.gen.sparse_partition`);
    model_q.onnx then holds the compressed layers, the golden model ``sim`` checks. With
    ``calib`` (the float calibration inputs) pruned layers are re-fitted to their dense outputs
    on them (:func:`hoarfrost.gen.sparse.refit_pruned`).
    Raises :class:`HoarfrostError` (nothing written) if OUT exists without ``force``, the model
    does not fit the configuration or cannot be frozen that deep, or has fewer fully connected
    layers than ``sparse``.
    """
    from hoarfrost.gen.sparse_partition import (compress_for_engines, engine_layers,
                                                sparse_layer_names)
    from hoarfrost.gen.compiler import CompileLimits, compile_graph, compile_streamed
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.qdq import save_qdq

    out = Path(out)
    if not out.parent.is_dir():
        raise HoarfrostError(f"-o {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if out.exists() and not force:
        raise HoarfrostError(f"-o {str(out)!r} exists; pass --force to replace it")
    if out.exists() and not (out / "manifest.json").is_file():
        # --force replaces a compile output, never an arbitrary directory or file
        raise HoarfrostError(f"-o {str(out)!r} exists and is not a hoarfrost compile output; "
                             f"not replacing it")
    limits = CompileLimits.for_backend(config.backend, config.scratch_bytes, config.param_depth)
    if config.backend.serial and (freeze is not None or sparse is not None):
        raise HoarfrostError(f"--{'freeze' if freeze is not None else 'sparse'} needs the "
                             f"systolic back end; --config {config.name} builds the serial one "
                             f"(backend.serial = true)")

    def back_end_part(graph):
        """(frozen layers, specs, the graph the back end runs, its program)."""
        if freeze is None:
            return [], [], graph, compile_graph(graph, limits, sparse=names)
        layers, specs, _, back = frozen_partition(graph, freeze)
        return layers, specs, back, compile_streamed(back, limits, sparse=names)

    # a bad --freeze first (the cause to fix), then --sparse, then what the back end runs must
    # fit it (the sparse layers run on their engines, 8-bit codebooks, not on the array)
    back_graph = qgraph if freeze is None else frozen_partition(qgraph, freeze)[3]
    names = [] if sparse is None else sparse_layer_names(back_graph, sparse)
    if names:
        qgraph = compress_for_engines(qgraph, names, density=sparse_density,
                                      codebook_bits=codebook_bits, pes=config.sparse_pes,
                                      calib=calib)
    check_fits(Graph(back_graph.input, back_graph.output, back_graph.shapes,
                     [layer for layer in back_graph.layers if layer.name not in names],
                     back_graph.quant, back_graph.name), config)
    try:
        # does it fit? before anything is written
        check_fields(back_end_part(qgraph)[3], config)
    except HoarfrostError as exc:
        # the compiler names the limit to raise; say where it is set
        raise HoarfrostError(f"{exc} ([backend] of --config {config.name})") from None

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        # Compile the model as written and re-read, so the golden model `sim` loads from
        # model_q.onnx is exactly what the firmware implements.
        save_qdq(qgraph, tmp / "model_q.onnx")
        graph = import_onnx(tmp / "model_q.onnx")
        frozen, specs, back, program = back_end_part(graph)
        firmware = encode(program.commands)
        assert decode(firmware) == program.commands
        (tmp / "firmware.bin").write_bytes(firmware)
        (tmp / "firmware.asm").write_text(disassemble(program.commands))
        (tmp / "weights.bin").write_bytes(program.image)
        accelerator = freeze is not None or bool(names)
        files = FROZEN_FILES if accelerator else FILES
        engines = engine_layers(graph, names, config.sparse_pes)
        frame_events = None
        if not accelerator:
            _progress(f"elaborating the back end's Verilog ({config.backend.rows}x"
                      f"{config.backend.cols} array) ...")
            (tmp / files[0]).write_text(
                backend_verilog(config.backend, config.scratch_bytes, config.param_depth))
        else:
            _progress(f"elaborating the accelerator's Verilog ({len(specs)} frozen stage(s) "
                      f"in front of the {config.backend.rows}x{config.backend.cols} back end, "
                      f"{len(engines)} sparse engine(s)) ...")
            text, frame_events = accelerator_verilog(config.backend, config.scratch_bytes,
                                                     config.param_depth, specs, engines)
            (tmp / files[0]).write_text(text)
        firmware_addr = -(-program.dram_bytes // 4) * 4      # as sim.backend_host.dram_image
        layers = layer_table(back, program, config, names)
        streamed = program.input_addr is None
        manifest = {
            "format": MANIFEST_VERSION,
            "hoarfrost_version": __version__,
            "toplevel": FROZEN_TOPLEVEL if accelerator else TOPLEVEL,
            "verilog": files[0],
            "config": config.to_json(),
            "source_model": source,
            "partition": {
                "frontend_frozen": [layer.name for layer in frozen], "sparse_engine": names,
                "backend": [layer.name for layer in back.layers if layer.name not in names],
                "note": _partition_note(freeze, names),
            },
            **({} if freeze is None else
               {"frozen": {**_frozen_entry(graph, frozen, specs, freeze),
                           "frame_events": frame_events}}),
            **({} if not names else
               {"sparse": _sparse_entry(engines, config.sparse_pes, sparse_density,
                                        codebook_bits,
                                        refit=calib is not None and sparse_density is not None)}),
            "input": _tensor(graph, graph.input),
            "output": _tensor(graph, graph.output),
            "dram": {"image_bytes": len(program.image),
                     "input_addr": program.input_addr,
                     "input_bytes": 0 if streamed else math.prod(program.input_shape),
                     **({"input_note": "input_addr unused: the input streams into the frozen "
                                       "block's `pixels` port, the firmware RECVs its output"}
                        if streamed else {}),
                     "output_addr": program.output_addr,
                     "output_bytes": math.prod(program.output_shape),
                     "firmware_addr": firmware_addr, "firmware_bytes": len(firmware),
                     "total_bytes": firmware_addr + len(firmware)},
            "scratch_peak_bytes": program.scratch_peak,
            "commands": len(program.commands),
            "macs": sum(row["macs"] for row in layers),
            "layers": layers,
            "files": {name: sha256((tmp / name).read_bytes()) for name in files},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)                          # mkdtemp (and mkstemp) are owner-only
        for name in (*files, "manifest.json"):
            os.chmod(tmp / name, 0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "out")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _partition_note(freeze: int | None, names) -> str:
    if freeze is None and not names:
        return "back-end-only accelerator: every layer runs on the programmable back end"
    parts = [f"the first {freeze} convolution(s) frozen in logic, streaming into the back end"
             if freeze is not None else "no frozen front end"]
    parts.append(f"the last {len(names)} fully connected layer(s) on sparse engines, which the "
                 f"back end's firmware feeds by SEND and reads by RECVS" if names else
                 "no sparse engine")
    return "; ".join(parts) + "; every other layer on the programmable back end"


def _sparse_entry(engines, pes: int, density: float | None, codebook_bits: int, *,
                  refit: bool) -> dict:
    """The manifest's description of the sparse engines (engine ``i`` runs ``engines[i]``)."""
    rows = []
    for enc, layer, _ in engines:
        storage = enc.storage_bits()
        rows.append({"name": layer.name, "rows": enc.rows, "cols": enc.cols,
                     "nonzero_weights": int((layer.weight_q != 0).sum()),
                     "density": float((layer.weight_q != 0).mean()),
                     "entries": enc.entries, "padding": enc.padding,
                     "codebook": [int(v) for v in enc.codebook],
                     "storage_bits": storage["total"],
                     "bits_per_weight": storage["per_weight"]})
    return {"pes": pes, "fifo_depth": SPARSE_FIFO_DEPTH, "pruned_to_density": density,
            "refit_to_calibration": refit, "codebook_bits": codebook_bits, "engines": rows}


def _frozen_entry(graph: Graph, layers, specs, freeze: int) -> dict:
    """The manifest's description of the frozen front end."""
    first, last = specs[0], specs[-1]
    return {
        "convolutions": freeze,
        "layers": [{"name": layer.name, "op": layer.op, "output": list(graph.shapes[layer.output]),
                    "macs": macs(layer, graph.shapes)} for layer in layers],
        "macs": sum(macs(layer, graph.shapes) for layer in layers),
        "output_tensor": layers[-1].output,
        "input_pixels": first.height * first.width, "input_channels": first.in_channels,
        "output_pixels": last.out_height * last.out_width, "output_channels": last.out_channels,
    }


def read_manifest(out: Path) -> dict:
    """OUT/manifest.json, with every listed file present and matching its digest."""
    out = Path(out)
    path = out / "manifest.json"
    if not path.is_file():
        raise HoarfrostError(f"{str(out)!r} has no manifest.json: not a `hoarfrost compile` "
                             f"output")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HoarfrostError(f"{str(path)!r} is not valid JSON ({exc})") from None
    if manifest.get("format") != MANIFEST_VERSION:
        raise HoarfrostError(f"{str(path)!r}: manifest format {manifest.get('format')!r}, "
                             f"this hoarfrost reads {MANIFEST_VERSION}; compile again")
    for name, digest in manifest["files"].items():
        if not (out / name).is_file():
            raise HoarfrostError(f"{str(out / name)!r} is missing; compile again")
        if sha256((out / name).read_bytes()) != digest:
            raise HoarfrostError(f"{str(out / name)!r} changed since it was compiled "
                                 f"(digest differs from manifest.json); compile again")
    return manifest
