"""cocotb testbench for the Verilog of :class:`hoarfrost.hw.frozen.FrozenFeatureExtractor`.

The ``.npz`` in ``$HOARFROST_VECTORS`` holds ``inputs`` (frames, H*W, C_in) and ``expected``
(frames, OH*OW, C_out): raster-order pixel streams from the golden model, and the
``idle_prob`` / ``stall_prob`` of the random input gaps and output backpressure. If
``$HOARFROST_REPORT`` names a file, the timing test writes its measurements there as JSON
(the bench reads cycles per frame and latency from it).
"""

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from hoarfrost.sim.tb.common import clock_and_reset, load_vectors
from hoarfrost.sim.streams import StreamDriver, StreamSink, to_signed



def pack_pixel(values) -> int:
    """One beat of a ``pixel_layout``: channel k in bits 8k..8k+7, two's complement."""
    return sum((int(v) & 0xFF) << (8 * k) for k, v in enumerate(values))


def unpack_pixel(raw: int, channels: int) -> list[int]:
    return [to_signed(raw >> (8 * k), 8) for k in range(channels)]


async def reset(dut) -> None:
    await clock_and_reset(dut)


async def beat_edges(dut, prefix: str, edges: list) -> None:
    """Record the index of every clock edge that moves a beat on stream ``prefix``."""
    valid, ready = getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready")
    edge = 0
    while True:
        await ReadOnly()
        if valid.value and ready.value:
            edges.append(edge + 1)      # it moves at the coming edge
        await RisingEdge(dut.clk)
        edge += 1


async def stream_frames(dut, vectors, rng, idle_prob, stall_prob):
    """Reset, send every frame, collect every output pixel; return (pixels, in/out edges)."""
    await reset(dut)
    inputs, expected = vectors["inputs"], vectors["expected"]
    in_edges, out_edges = [], []
    cocotb.start_soon(beat_edges(dut, "i_stream", in_edges))
    cocotb.start_soon(beat_edges(dut, "o_stream", out_edges))
    driver = StreamDriver(dut, "i_stream", dut.clk, rng, idle_prob)
    sink = StreamSink(dut, "o_stream", dut.clk, rng, stall_prob)
    sink.start()
    beats = [pack_pixel(p) for frame in inputs for p in frame]
    count = expected.shape[0] * expected.shape[1]
    await driver.send(beats)
    await sink.wait_for(count, timeout_cycles=20 * len(beats) + 200)
    # Let the counters take in the last edge before they are read.
    await ClockCycles(dut.clk, 2)
    channels = expected.shape[2]
    pixels = np.array([unpack_pixel(raw, channels) for raw in sink.items[:count]])
    return pixels, sink, in_edges, out_edges


@cocotb.test()
async def pixels_under_gaps_and_backpressure(dut):
    """Every output pixel equals the golden model's; counters agree with what was seen."""
    vectors = load_vectors()
    rng = random.Random(cocotb.RANDOM_SEED)
    expected = vectors["expected"]
    pixels, sink, _, _ = await stream_frames(dut, vectors, rng, float(vectors["idle_prob"]),
                                             float(vectors["stall_prob"]))
    np.testing.assert_array_equal(pixels, expected.reshape(-1, expected.shape[2]))
    assert dut.out_pixels.value.to_unsigned() == expected.shape[0] * expected.shape[1]
    assert dut.stall_cycles.value.to_unsigned() == sink.stall_cycles


@cocotb.test()
async def one_pixel_per_clock(dut):
    """Without gaps or stalls every input pixel is taken on consecutive edges; report timing."""
    vectors = load_vectors()
    expected = vectors["expected"]
    pixels, _, in_edges, out_edges = await stream_frames(dut, vectors, random.Random(0), 0.0, 0.0)
    np.testing.assert_array_equal(pixels, expected.reshape(-1, expected.shape[2]))
    frames, in_per_frame = vectors["inputs"].shape[:2]
    out_per_frame = expected.shape[1]
    assert in_edges == list(range(in_edges[0], in_edges[0] + frames * in_per_frame))
    assert dut.stall_cycles.value.to_unsigned() == 0
    last_out = [out_edges[(f + 1) * out_per_frame - 1] for f in range(frames)]
    last_in = [in_edges[(f + 1) * in_per_frame - 1] for f in range(frames)]
    report = {
        "frames": int(frames),
        "input_pixels_per_frame": int(in_per_frame),
        "output_pixels_per_frame": int(out_per_frame),
        # Steady state: edges between the last outputs of consecutive frames.
        "cycles_per_frame": [b - a for a, b in zip(last_out, last_out[1:])],
        # From the last input pixel of a frame to its last output pixel.
        "latency_cycles": last_out[0] - last_in[0],
        # From the first input pixel to the first frame's last output pixel.
        "first_frame_cycles": last_out[0] - in_edges[0] + 1,
        "cycles_counter": dut.cycles.value.to_unsigned(),
    }
    if frames > 1:
        assert all(c == in_per_frame for c in report["cycles_per_frame"]), report
    if path := os.environ.get("HOARFROST_REPORT"):
        with open(path, "w") as f:
            json.dump(report, f)
