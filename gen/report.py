"""``hoarfrost report OUT``: one HTML page with PNG plots of what OUT/ holds.

It reads, all from OUT/:

* ``manifest.json`` (``compile``): configuration, partition, the layer table (MACs, weight and
  parameter bytes, commands) and the firmware, from which :func:`hoarfrost.gen.traffic.dram_traffic`
  gives each layer's DRAM bytes against the compulsory minimum;
* ``sim.json`` (``sim``, optional): measured cycles per layer and per image, the energy
  breakdown, DRAM bytes counted in RTL, accuracy;
* ``build/<board>/report.json`` (``build``, optional): utilization and Fmax against the board
  clock.

and writes ``OUT/report/index.html`` with ``cycles.png``, ``energy.png``, ``dram.png`` and
``utilization.png``. What a missing input would have shown is named on the page with the
command that makes it, never invented. The directory is written whole or not at all.
"""

from __future__ import annotations

import html
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from hoarfrost.gen.errors import HoarfrostError

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "write_report", "layer_traffic"]

HELP = "an HTML page with PNG plots: per-layer cycles and energy, utilization, DRAM traffic"
DESCRIPTION = ("Write OUT/report/index.html with PNG plots of per-layer cycles (from `hoarfrost "
               "sim`), the energy breakdown, the DRAM bytes each layer moves against the "
               "compulsory minimum (from the compiled firmware) and FPGA utilization (from "
               "`hoarfrost build`). Plots whose data is missing are named with the command "
               "that produces it.")


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="a directory written by `hoarfrost compile`")


def _read_json(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HoarfrostError(f"{path}: unreadable {what} ({exc})") from None


def layer_traffic(out: Path, manifest: dict) -> dict:
    """DRAM bytes per layer of OUT's firmware (:func:`~hoarfrost.gen.traffic.dram_traffic`)."""
    from hoarfrost.firmware.isa import decode
    from hoarfrost.gen.traffic import dram_traffic

    commands = decode((out / "firmware.bin").read_bytes())
    program = SimpleNamespace(commands=commands, layers=manifest["layers"])
    b = manifest["config"]["backend"]
    return dram_traffic(program, b["rows"], b["cols"])


def _bar_chart(path: Path, title: str, labels, series: dict[str, list[float]], ylabel: str,
               log: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 3.6), dpi=100)
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))], values,
               width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    # Fixed metadata: the same inputs give byte-identical PNGs.
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _short(name: str) -> str:
    return name.strip("/").split("/")[0] or name


def write_report(out: Path, target: Path) -> list[str]:
    """Write the page and plots into ``target`` (a new directory); the plots made."""
    manifest = _read_json(out / "manifest.json", "manifest")
    sim = _read_json(out / "sim.json", "simulation summary")
    builds = {p.parent.name: _read_json(p, "build report")
              for p in sorted((out / "build").glob("*/report.json"))}
    layers = manifest["layers"]
    names = [_short(layer["name"]) for layer in layers]
    traffic = layer_traffic(out, manifest)
    made, missing, sections = [], [], []

    if sim:
        # the simulation's rows: the layers, plus the input load and output store around them
        _bar_chart(target / "cycles.png", f"cycles per layer (mean of {sim['images']} images, "
                   "RTL in Verilator)", [_short(row["name"]) for row in sim["layers"]],
                   {"measured": [row["cycles"] for row in sim["layers"]],
                    **({"model": [row["predicted_cycles"] for row in sim["layers"]]}
                       if all("predicted_cycles" in row for row in sim["layers"]) else {})},
                   "cycles")
        energy = {k: v / 1000 for k, v in sim["energy_pj"].items() if k != "total"}
        _bar_chart(target / "energy.png", f"energy per inference by event: "
                   f"{sim['energy_pj']['total'] / 1000:.2f} nJ ({sim['energy_source']})",
                   list(energy), {"nJ": list(energy.values())}, "nJ")
        made += ["cycles.png", "energy.png"]
    else:
        missing.append(("cycles.png, energy.png", f"hoarfrost sim {out} --inputs X.npy"))

    _bar_chart(target / "dram.png", f"DRAM bytes per layer: {traffic['read_bytes']} read, "
               f"{traffic['written_bytes']} written, {traffic['ratio']:.3f}x compulsory",
               names, {"read": [row["read_bytes"] for row in traffic["layers"]],
                       "compulsory (weights + parameters once)":
                           [layer["weight_bytes"] + layer["param_bytes"] for layer in layers]},
               "bytes")
    made.append("dram.png")

    if builds:
        labels, used = [], []
        for board, rep in builds.items():
            for resource, (n, avail) in rep["utilization"].items():
                labels.append(f"{board}\n{resource}")
                used.append(100 * n / avail if avail else 0)
        _bar_chart(target / "utilization.png", "FPGA utilization (yosys + nextpnr)", labels,
                   {"% used": used}, "% of the device")
        made.append("utilization.png")
        for board, rep in builds.items():
            verdict = "met" if rep["fmax_mhz"] >= rep["clock_mhz"] else "NOT met"
            sections.append(f"<p>{html.escape(board)}: Fmax {rep['fmax_mhz']:.1f} MHz against "
                            f"the {rep['clock_mhz']:g} MHz board clock (timing {verdict}).</p>")
    else:
        missing.append(("utilization.png", f"hoarfrost build {out} --board ulx3s-85f"))

    rows = []
    sim_rows = {row["name"]: row for row in sim["layers"]} if sim else {}
    pes = manifest["config"]["backend"]["rows"] * manifest["config"]["backend"]["cols"]
    for layer, t in zip(layers, traffic["layers"]):
        cycles = sim_rows.get(layer["name"], {}).get("cycles")
        util = (f"{100 * layer['macs'] / (cycles * pes):.1f}%" if cycles and layer["macs"]
                else "")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            layer["name"], layer["op"], layer.get("engine", ""), layer["macs"],
            f"{cycles:.0f}" if cycles else "", util, t["read_bytes"])) + "</tr>")
    cfg = manifest["config"]
    summary = []
    if sim:
        summary.append(f"{sim['images']} images simulated: mean {sim['mean_cycles']:.0f} cycles "
                       f"per inference, {sim['energy_pj']['total'] / 1000:.2f} nJ; outputs "
                       + ("equal the golden model" if sim["matches_golden"]
                          else "DIFFER from the golden model"))
        if "accuracy" in sim:
            summary.append(f"accuracy {100 * sim['accuracy']:.2f}% ({sim['correct']}/"
                           f"{sim['images']})")
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hoarfrost report: {html.escape(out.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}</style>",
        "</head><body>",
        f"<h1>{html.escape(out.name)}</h1>",
        f"<p>Model {html.escape(manifest['source_model']['path'])} (sha256 "
        f"{manifest['source_model']['sha256'][:12]}), configuration {html.escape(cfg['name'])}: "
        f"{cfg['backend']['rows']}x{cfg['backend']['cols']} array, "
        f"{cfg['backend']['scratch_bytes']} B scratchpad, {cfg['clock_mhz']:g} MHz.</p>",
        *(f"<p>{html.escape(s)}</p>" for s in summary),
        *sections,
        "<table><tr><th>layer</th><th>op</th><th>engine</th><th>MACs</th><th>cycles</th>"
        "<th>PE utilization</th><th>DRAM bytes read</th></tr>", *rows, "</table>",
        *(f"<p><img src='{name}' alt='{name}'></p>" for name in made),
        *(f"<p>{html.escape(what)}: no data; run <code>{html.escape(cmd)}</code> first.</p>"
          for what, cmd in missing),
        "</body></html>",
    ]
    (target / "index.html").write_text("\n".join(page) + "\n")
    return made


def run(args) -> int:
    out = Path(args.out)
    if not (out / "manifest.json").is_file():
        raise HoarfrostError(f"{args.out!r} is not an output directory of `hoarfrost compile` "
                             f"(no manifest.json)")
    final = out / "report"
    with tempfile.TemporaryDirectory(prefix=".report-", dir=out) as tmp:
        made = write_report(out, Path(tmp))
        if final.exists():
            shutil.rmtree(final)
        Path(tmp).rename(final)
        Path(tmp).mkdir()          # so the context manager's cleanup finds its directory
    print(f"wrote {final / 'index.html'} ({', '.join(made)})", file=sys.stderr)
    return 0
