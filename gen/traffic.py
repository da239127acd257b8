"""DRAM traffic of a compiled program, per layer, against the compulsory minimum.

Off-chip bytes cost ~100x an on-chip SRAM access (640 pJ against 5 pJ per 32 bits at 45 nm),
so the compiler reports what each layer moves: the weights and parameters its ``MATMUL``/
``POOL`` commands read (a ``MATMUL`` streams its weights from DRAM, or from the weight cache a
``LOADW`` filled: a tile that several commands use, every output-pixel tile or in a batch
every image, is read once while it stays cached; a ``MATMUL`` that keeps the parameter buffer
reads no parameters), the feature maps it spills to DRAM and loads back, the input it loads and
the output it stores, and the firmware the sequencer fetches. The compulsory minimum reads
every weight (unpadded) and parameter byte once, every input image once, and writes every
output once.

Single-image programs (:func:`~hoarfrost.gen.compiler.compile_graph`) and batch programs
(:func:`~hoarfrost.gen.batch.compile_batch`) are both reported; a batch program says which
layer each command belongs to (``command_layers``).
"""

from __future__ import annotations

from hoarfrost.firmware.isa import FIELDS, KEEP_PARAMS, NO_PARAMS, POOL_MAX, WCACHE, Op

PARAM_BYTES = 12        # (bias int32, multiplier uint32, shift uint32) per output channel
TABLE_BYTES = 8         # (multiplier, shift) per pooling-table entry


def _matmul_weight_bytes(command, geom, rows: int, cols: int) -> int:
    k = command.cg * geom["kh"] * geom["kw"]
    return -(-command.nt // cols) * -(-k // rows) * rows * cols


def command_bytes(command, geom: dict, rows: int, cols: int) -> tuple[int, int]:
    """``(read, written)`` DRAM bytes of one command's data (its own fetch apart).

    ``geom`` holds the fields of the last ``GEOM`` before it (a ``MATMUL``'s weight tile and a
    pooling table's size depend on the window).
    """
    if command.op == Op.LOAD:
        return command.length, 0
    if command.op == Op.STORE:
        return 0, command.length
    if command.op == Op.LOADW:
        return command.length, 0
    if command.op == Op.MATMUL:
        weights = 0 if command.w_addr & WCACHE else _matmul_weight_bytes(command, geom, rows, cols)
        return weights + (0 if command.p_addr == KEEP_PARAMS else PARAM_BYTES * command.nt), 0
    if command.op == Op.POOL and command.p_addr != NO_PARAMS:
        entries = 1 if command.kind == POOL_MAX else geom["kh"] * geom["kw"] + 1
        return TABLE_BYTES * entries, 0
    return 0, 0


def firmware_bytes(commands) -> int:
    """Bytes of the encoded command stream (what the sequencer fetches)."""
    return sum(4 * (1 + len(FIELDS[c.op])) for c in commands)


def _single_image_tags(program) -> list[int | None]:
    """Layer index of each command of a one-image program: LOAD, layers, STORE SYNC END."""
    tags: list[int | None] = [None]
    for index, layer in enumerate(program.layers):
        tags += [index] * layer["commands"]
    return tags + [None] * (len(program.commands) - len(tags))


def _single_image_compulsory(program, tags, rows: int, cols: int) -> list[int]:
    """Per layer, its weights (unpadded) and parameters once: each weight tile counted at its
    first use, every pooling table."""
    geom: dict[str, int] = {}
    seen: set[int] = set()
    cache: dict[int, int] = {}            # weight-cache offset -> DRAM address loaded there
    per_layer = [0] * len(program.layers)
    for command, tag in zip(program.commands, tags):
        w_addr = 0 if command.op != Op.MATMUL else (
            cache[command.w_addr & ~WCACHE] if command.w_addr & WCACHE else command.w_addr)
        if command.op == Op.GEOM:
            geom = dict(command.fields)
        elif command.op == Op.LOADW:
            cache[command.dst] = command.dram_addr
        elif command.op == Op.MATMUL and w_addr not in seen:
            seen.add(w_addr)
            per_layer[tag] += command.nt * (command.cg * geom["kh"] * geom["kw"] + PARAM_BYTES)
        elif command.op == Op.POOL:
            per_layer[tag] += command_bytes(command, geom, rows, cols)[0]
    return per_layer


def dram_traffic(program, rows: int, cols: int) -> dict:
    """Bytes read and written per layer and in total, next to the compulsory minimum.

    ``rows``/``cols`` are the array size the program was compiled for (the weight layout
    pads to whole tiles). Fetched firmware is counted apart (``firmware_bytes``). Per layer:
    ``weight_bytes`` (weights, parameters, pooling tables), ``spill_read_bytes`` (feature
    maps it loads back from DRAM), ``read_bytes`` (their sum), ``written_bytes`` (feature
    maps it spills) and ``compulsory_bytes`` (its weights and parameters once). The graph's
    input loads and output stores are ``input_bytes`` and ``output_bytes``, for the whole
    batch; they are compulsory.
    """
    batch = getattr(program, "batch", 1)
    tags = getattr(program, "command_layers", None) or _single_image_tags(program)
    per_layer = [{"name": l["name"], "op": l["op"], "weight_bytes": 0, "spill_read_bytes": 0,
                  "written_bytes": 0} for l in program.layers]
    geom: dict[str, int] = {}
    input_bytes = output_bytes = 0
    for command, tag in zip(program.commands, tags):
        if command.op == Op.GEOM:
            geom = dict(command.fields)
        read, written = command_bytes(command, geom, rows, cols)
        if command.op == Op.LOAD:
            if tag is None:
                input_bytes += read
            else:
                per_layer[tag]["spill_read_bytes"] += read
        elif command.op == Op.STORE:
            if tag is None:
                output_bytes += written
            else:
                per_layer[tag]["written_bytes"] += written
        elif tag is not None:
            per_layer[tag]["weight_bytes"] += read
    for row in per_layer:
        row["read_bytes"] = row["weight_bytes"] + row["spill_read_bytes"]
    if hasattr(program, "command_layers"):
        compulsory_layers = [l["compulsory_bytes"] for l in program.layers]
    else:
        compulsory_layers = _single_image_compulsory(program, tags, rows, cols)
    for row, compulsory_layer in zip(per_layer, compulsory_layers):
        row["compulsory_bytes"] = compulsory_layer
    compulsory_params = sum(compulsory_layers)
    read = input_bytes + sum(l["read_bytes"] for l in per_layer)
    written = output_bytes + sum(l["written_bytes"] for l in per_layer)
    compulsory = input_bytes + compulsory_params + output_bytes
    return {
        "batch": batch,
        "layers": per_layer,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "weight_bytes": sum(l["weight_bytes"] for l in per_layer),
        "spill_bytes": sum(l["spill_read_bytes"] + l["written_bytes"] for l in per_layer),
        "read_bytes": read,
        "written_bytes": written,
        "total_bytes": read + written,
        "firmware_bytes": firmware_bytes(program.commands),
        "compulsory_bytes": compulsory,
        "ratio": (read + written) / compulsory,
    }
