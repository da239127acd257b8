"""DRAM traffic of a compiled program, per layer, against the compulsory minimum.

Off-chip bytes cost ~100x an on-chip SRAM access (640 pJ against 5 pJ per 32 bits at 45 nm),
so the compiler reports what each layer moves: the weights and parameters its ``MATMUL``/
``POOL`` commands read (a weight tile is read again for every output-pixel tile), the input it
loads and the output it stores, and the firmware the sequencer fetches. The compulsory minimum
reads every weight (unpadded) and parameter byte once, the input once, and writes the output
once.
"""

from __future__ import annotations

from hoarfrost.firmware.isa import FIELDS, NO_PARAMS, POOL_MAX, Op


def _matmul_weight_bytes(command, geom, rows: int, cols: int) -> int:
    k = command.cg * geom["kh"] * geom["kw"]
    return -(-command.nt // cols) * -(-k // rows) * rows * cols


def dram_traffic(program, rows: int, cols: int) -> dict:
    """Bytes read and written per layer and in total, next to the compulsory minimum.

    ``rows``/``cols`` are the array size the program was compiled for (the weight layout
    pads to whole tiles). Fetched firmware is counted apart (``firmware_bytes``).
    """
    per_layer = []
    commands = iter(program.commands)
    first = next(commands)                            # the LOAD of the input
    geom: dict[str, int] = {}
    seen_params: set[int] = set()
    compulsory_params = 0
    for layer in program.layers:
        read = 0
        for _ in range(layer["commands"]):
            command = next(commands)
            if command.op == Op.GEOM:
                geom = dict(command.fields)
            elif command.op == Op.MATMUL:
                weights = _matmul_weight_bytes(command, geom, rows, cols)
                read += weights + 12 * command.nt
                if command.w_addr not in seen_params:      # unpadded weights, once
                    seen_params.add(command.w_addr)
                    compulsory_params += command.nt * command.cg * geom["kh"] * geom["kw"]
                    compulsory_params += 12 * command.nt
            elif command.op == Op.POOL and command.p_addr != NO_PARAMS:
                entries = 1 if command.kind == POOL_MAX else geom["kh"] * geom["kw"] + 1
                read += 8 * entries
                compulsory_params += 8 * entries
        per_layer.append({"name": layer["name"], "op": layer["op"], "read_bytes": read})
    input_bytes, output_bytes = first.length, program.commands[-3].length
    firmware_bytes = sum(4 * (1 + len(FIELDS[c.op])) for c in program.commands)
    read = input_bytes + sum(l["read_bytes"] for l in per_layer)
    compulsory = input_bytes + compulsory_params + output_bytes
    return {
        "layers": per_layer,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "read_bytes": read,
        "written_bytes": output_bytes,
        "firmware_bytes": firmware_bytes,
        "compulsory_bytes": compulsory,
        "ratio": (read + output_bytes) / compulsory,
    }
