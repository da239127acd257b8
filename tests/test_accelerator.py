"""The accelerator top in amaranth.sim: frozen front end streaming into the back end.

The image goes in pixel by pixel (random gaps); the frozen first convolution (and the max
pooling in line with it) computes the back half's input; the firmware RECVs it and runs the
rest; the output in DRAM equals the golden model of the whole network. The example CNN runs
on the Verilog through ``hoarfrost sim`` (tests/test_sim_cosim.py).
"""

import gc

import numpy as np
import pytest
from amaranth.lib import stream, wiring

from hoarfrost.gen.freeze import freeze_specs
from hoarfrost.hw.accelerator import FROZEN_COUNTERS, Accelerator
from hoarfrost.hw.backend import BACKEND_COUNTERS
from hoarfrost.hw.line_buffer import pixel_layout
from hoarfrost.sim.golden import quantize_input, run_int
from test_backend import SMALL, run_backend, tiny_network


@pytest.mark.parametrize("idle_prob, stall", [(0.0, 0.0), (0.5, 0.2)])
def test_frozen_front_end_streams_into_the_back_end_bit_exact(idle_prob, stall):
    qgraph, rng = tiny_network(1, "MaxPool", False, False)
    x = quantize_input(qgraph, rng.normal(0, 1, (1, 2, 5, 5)).astype(np.float32))
    out, counters, program = run_backend(qgraph, x[0], freeze=1, idle_prob=idle_prob,
                                         stall_prob=stall, seed=5)
    assert np.array_equal(out, run_int(qgraph, x)[0])
    # the back end runs the back half only: RECV, then flatten (nothing) and the dense layer
    assert [c.op.name for c in program.commands] == ["RECV", "GEOM", "MATMUL", "STORE", "SYNC",
                                                     "END"]
    assert counters["commands"] == len(program.commands)
    assert counters["macs_useful"] == 27 * 3                  # the dense layer alone
    # the frozen block delivered its 3x3 pooled output, every pixel taken by RECV
    assert counters["frozen_out_pixels"] == 9
    assert counters["recv_cycles"] >= 3 * 9 + 2
    assert counters["frozen_cycles"] > counters["recv_cycles"] // 2
    if idle_prob == 0:
        # the frozen block is faster than RECV's 3 cycles per pixel: its output waited
        assert counters["frozen_stall_cycles"] > 0


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_ports_with_and_without_a_frozen_front_end():
    qgraph, _ = tiny_network(1, "MaxPool", False, False)
    specs = freeze_specs(qgraph, 1)
    with_frozen = Accelerator(SMALL, specs, scratch_bytes=2048, param_depth=16)
    members = dict(with_frozen.signature.members)
    assert members["pixels"] == wiring.In(stream.Signature(pixel_layout(2)))
    assert with_frozen.backend.stream_channels == 3          # the pooled conv's channels
    assert set(FROZEN_COUNTERS) | set(BACKEND_COUNTERS) <= set(members)
    alone = Accelerator(SMALL, scratch_bytes=2048, param_depth=16)
    assert "pixels" not in dict(alone.signature.members)
    assert not set(FROZEN_COUNTERS) & set(dict(alone.signature.members))
    assert alone.backend.stream_channels == 0
    del with_frozen, alone          # never elaborated: let the warnings fire under the filter
    gc.collect()
