"""Host side of a batch program (:func:`hoarfrost.gen.batch.compile_batch`).

A batch program's DRAM holds its B inputs one after another from ``input_addr`` (so
:func:`hoarfrost.sim.backend_host.dram_image`, given the whole batch, lays it out) and its B
outputs one after another from ``output_addr``. :func:`run_batch` executes the program on the
functional ISA simulator; co-simulation tests give the same DRAM to the RTL.
"""

from __future__ import annotations

import numpy as np

from hoarfrost.sim.backend_host import dram_image
from hoarfrost.sim.isa_sim import IsaMachine

__all__ = ["batch_dram", "read_outputs", "run_batch"]


def batch_dram(program, x_int8: np.ndarray) -> tuple[bytearray, int]:
    """DRAM holding ``program`` and its ``(B, ...)`` int8 inputs; returns (dram, firmware addr)."""
    x_int8 = np.asarray(x_int8)
    if x_int8.shape != (program.batch, *program.input_shape):
        raise ValueError(f"inputs of shape {x_int8.shape} for a program compiled for "
                         f"{(program.batch, *program.input_shape)}")
    return dram_image(program, x_int8)


def read_outputs(program, dram) -> np.ndarray:
    """The ``(B, ...)`` int8 outputs from a batch program's DRAM after it ran."""
    n = program.batch * program.output_stride
    out = np.frombuffer(bytes(dram[program.output_addr:program.output_addr + n]), dtype=np.int8)
    return out.reshape(program.batch, *program.output_shape).copy()


def run_batch(program, x_int8: np.ndarray, limits) -> np.ndarray:
    """Run a batch program on the functional ISA simulator; the ``(B, ...)`` int8 outputs.

    ``limits`` is the :class:`~hoarfrost.gen.compiler.CompileLimits` it was compiled for."""
    dram, _ = batch_dram(program, x_int8)
    machine = IsaMachine(bytes(dram), len(dram), limits.scratch_bytes, limits.rows, limits.cols,
                         weight_cache_bytes=limits.weight_cache)
    machine.run(program.commands)
    return read_outputs(program, machine.dram)
