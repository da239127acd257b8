"""The accelerator configuration a user picks: a named preset or a TOML file.

A configuration is the back end's :class:`~hoarfrost.hw.config.BackendConfig` (array size,
widths, buffer depths) plus what the back end's top level and the board add: the scratchpad
size, the parameter-buffer depth, the clock and the board. ``--config`` takes a preset name
(:data:`PRESETS`) or a ``.toml`` file, which may start from a preset and override it::

    preset = "ulx3s-85f"      # optional: start from this preset (default: "default")
    board = "ulx3s-85f"       # optional
    clock_mhz = 25.0          # optional
    freeze = 2                # optional: as `compile --freeze 2` (default 0: no frozen layers)
    sparse_pes = 8            # optional: processing elements of each sparse engine (default 8)

    [backend]                 # any BackendConfig field, plus scratch_bytes and param_depth
    rows = 8
    cols = 8
    a_depth = 1024
    scratch_bytes = 32768

Unknown keys, wrong types and bad values end in one :class:`HoarfrostError` naming the key and
the file. ``compile --freeze N`` overrides ``freeze``; which layers go to sparse engines is
``compile --sparse N``'s choice, how many PEs each engine has is ``sparse_pes``'.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.hw.config import DEFAULT, ICEBREAKER, ULX3S, BackendConfig

__all__ = ["HardwareConfig", "PRESETS", "BOARDS", "load_config"]

BOARDS = ("icebreaker", "ulx3s-85f")


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """Everything ``compile`` builds the accelerator from.

    Parameters
    ----------
    name : str
        The preset's name, or the TOML file's path.
    backend : BackendConfig
        Systolic array and GEMM-engine buffers.
    scratch_bytes : int
        Scratchpad (feature maps) size in bytes.
    param_depth : int
        Per-channel parameter entries: output channels per ``MATMUL``, pooling window + 1.
    clock_mhz : float
        Clock the energy/time figures assume (the board's oscillator by default).
    board : str or None
        Target board (one of :data:`BOARDS`), or None for simulation only.
    freeze : int
        Convolutions in the frozen front end when ``compile`` is not given ``--freeze``
        (0: none).
    sparse_pes : int
        Processing elements of each sparse engine (``compile --sparse``).
    """

    name: str
    backend: BackendConfig
    scratch_bytes: int
    param_depth: int
    clock_mhz: float
    board: str | None = None
    freeze: int = 0
    sparse_pes: int = 8

    def to_json(self) -> dict:
        return {"name": self.name, "board": self.board, "clock_mhz": self.clock_mhz,
                "freeze": self.freeze, "sparse_pes": self.sparse_pes,
                "backend": {**dataclasses.asdict(self.backend),
                            "scratch_bytes": self.scratch_bytes,
                            "param_depth": self.param_depth}}

    @classmethod
    def from_json(cls, d: dict) -> "HardwareConfig":
        """Inverse of :meth:`to_json` (the manifest's ``config``)."""
        backend = dict(d["backend"])
        scratch, params = backend.pop("scratch_bytes"), backend.pop("param_depth")
        return cls(d["name"], BackendConfig(**backend), scratch, params, d["clock_mhz"], d["board"],
                   d.get("freeze", 0), d.get("sparse_pes", 8))


PRESETS: dict[str, HardwareConfig] = {
    # Simulation: the BackEnd's default buffers.
    "default": HardwareConfig("default", DEFAULT, scratch_bytes=4096, param_depth=64,
                              clock_mhz=100.0),
    # iCE40 UP5K: the serial back end, 12 MHz oscillator, an 8 KB scratchpad in block RAM.
    "icebreaker": HardwareConfig("icebreaker", ICEBREAKER, scratch_bytes=8192, param_depth=32,
                                 clock_mhz=12.0, board="icebreaker"),
    # ECP5 85F: 8 x 8 array, 25 MHz oscillator, 32 KB scratchpad.
    "ulx3s-85f": HardwareConfig("ulx3s-85f", ULX3S, scratch_bytes=32768, param_depth=64,
                                clock_mhz=25.0, board="ulx3s-85f"),
}

_BACKEND_FIELDS = {f.name: f.type for f in dataclasses.fields(BackendConfig)}
_TOP_KEYS = {"preset", "board", "clock_mhz", "backend", "freeze", "sparse_pes"}


def _check_int(value, key: str, where: str, minimum: int = 1) -> int:
    # bool is an int in Python; `rows = true` is still a mistake
    if isinstance(value, bool) or not isinstance(value, int):
        raise HoarfrostError(f"{where}: {key} must be an integer, not {value!r}")
    if value < minimum:
        raise HoarfrostError(f"{where}: {key} must be at least {minimum}, not {value!r}")
    return value


def _from_toml(path: Path) -> HardwareConfig:
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise HoarfrostError(f"--config {where!r}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise HoarfrostError(f"--config {where!r}: not valid TOML ({exc})") from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise HoarfrostError(f"{where}: unknown key {key!r} (known: "
                                 f"{', '.join(sorted(_TOP_KEYS))})")
    preset = doc.get("preset", "default")
    if preset not in PRESETS:
        raise HoarfrostError(f"{where}: preset = {preset!r} is not one of "
                             f"{', '.join(PRESETS)}")
    base = PRESETS[preset]
    board = doc.get("board", base.board)
    if board is not None and board not in BOARDS:
        raise HoarfrostError(f"{where}: board = {board!r} is not one of {', '.join(BOARDS)}")
    clock = doc.get("clock_mhz", base.clock_mhz)
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not clock > 0:
        raise HoarfrostError(f"{where}: clock_mhz must be a positive number, not {clock!r}")
    freeze = _check_int(doc.get("freeze", base.freeze), "freeze", where, 0)
    sparse_pes = _check_int(doc.get("sparse_pes", base.sparse_pes), "sparse_pes", where, 1)
    section = doc.get("backend", {})
    if not isinstance(section, dict):
        raise HoarfrostError(f"{where}: backend must be a table ([backend]), not {section!r}")
    overrides, scratch, params = {}, base.scratch_bytes, base.param_depth
    for key, value in section.items():
        name = f"backend.{key}"
        if key == "scratch_bytes":
            scratch = _check_int(value, name, where, 4)
        elif key == "param_depth":
            params = _check_int(value, name, where, 2)
        elif _BACKEND_FIELDS.get(key) in (bool, "bool"):
            if not isinstance(value, bool):
                raise HoarfrostError(f"{where}: {name} must be true or false, not {value!r}")
            overrides[key] = value
        elif key in _BACKEND_FIELDS:
            # a weight cache of 0 bytes is none at all
            overrides[key] = _check_int(value, name, where,
                                        0 if key == "weight_cache_bytes" else 1)
        else:
            known = sorted([*_BACKEND_FIELDS, "scratch_bytes", "param_depth"])
            raise HoarfrostError(f"{where}: unknown key {name!r} (known: {', '.join(known)})")
    try:
        backend = dataclasses.replace(base.backend, **overrides)
    except ValueError as exc:            # BackendConfig names the field and the rule
        raise HoarfrostError(f"{where}: [backend] {exc}") from None
    return HardwareConfig(where, backend, scratch, params, float(clock), board, freeze,
                          sparse_pes)


def load_config(spec: str | None) -> HardwareConfig:
    """The configuration named by ``--config``: a preset name, a ``.toml`` file, or None
    (the ``default`` preset)."""
    if spec is None:
        return PRESETS["default"]
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if path.suffix != ".toml" and not path.is_file():
        raise HoarfrostError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) "
                             f"nor a .toml file")
    if not path.is_file():
        raise HoarfrostError(f"--config {spec!r}: no such file")
    return _from_toml(path)
