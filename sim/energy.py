"""Energy = counted events x per-event energy from ``energy.toml`` (one data file, with sources).

Blocks count their events in RTL; the testbench reads the counters; :func:`energy_pj` prices
them. Event names are the keys of ``[events]`` in the data file.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Mapping


@cache
def energy_table() -> dict[str, float]:
    """Picojoules per event, keyed by event name."""
    text = resources.files("hoarfrost.sim").joinpath("energy.toml").read_text()
    return {k: float(v) for k, v in tomllib.loads(text)["events"].items()}


def energy_source() -> str:
    text = resources.files("hoarfrost.sim").joinpath("energy.toml").read_text()
    return tomllib.loads(text)["source"]["name"]


def energy_pj(counts: Mapping[str, int | float]) -> dict[str, float]:
    """Per-event energy breakdown (pJ) plus ``"total"``; unknown event names are an error."""
    table = energy_table()
    unknown = sorted(set(counts) - set(table))
    if unknown:
        raise KeyError(f"no energy figure for events {unknown!r}; add them to energy.toml")
    breakdown = {name: float(n) * table[name] for name, n in counts.items()}
    breakdown["total"] = sum(breakdown.values())
    return breakdown


def buffer_words(config, counters: Mapping[str, int]) -> dict[str, float]:
    """The GEMM engine's buffer accesses as 32-bit SRAM words: ``{"sram_read32",
    "sram_write32"}`` from the counters ``a_reads`` ... ``acc_writes`` (entries of ``rows`` int8
    activations, ``cols`` weights and one accumulator, converted by their width) of a
    :class:`~hoarfrost.hw.config.BackendConfig` ``config``."""
    a_words = config.rows * config.act_bits / 32
    w_words = config.cols * config.weight_bits / 32
    acc_words = config.acc_width / 32
    return {
        "sram_read32": (counters["a_reads"] * a_words + counters["w_reads"] * w_words
                        + counters["acc_reads"] * acc_words),
        "sram_write32": (counters["a_writes"] * a_words + counters["w_writes"] * w_words
                         + counters["acc_writes"] * acc_words),
    }
