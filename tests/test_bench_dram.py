"""``hoarfrost bench dram``: bad options are one-line errors; bandwidth and energy arithmetic.

The Verilator run itself is exercised in ``test_dma_cosim.py``.
"""

import argparse

import pytest

from hoarfrost.gen import bench_dram
from hoarfrost.gen.errors import HoarfrostError


def args(**overrides):
    parser = argparse.ArgumentParser()
    bench_dram.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()])


def test_defaults_are_the_briefs():
    a = args()
    assert (a.latency, a.data_width, a.outstanding) == (20, 64, 4)


@pytest.mark.parametrize("overrides, message", [
    ({"data_width": 48}, "--data-width must be one of 32, 64, 128, not 48"),
    ({"latency": 1}, "--latency must be from 2"),
    ({"beats": 0}, "--beats must be from 1"),
    ({"outstanding": 65}, "--outstanding must be from 1 to 64"),
])
def test_bad_options_name_the_option(overrides, message):
    with pytest.raises(HoarfrostError, match=message):
        bench_dram.run(args(**overrides))


def test_bandwidth_is_bytes_per_busy_cycle_against_the_bus_peak():
    d = bench_dram.direction_summary({"bytes": 1600, "busy_cycles": 200}, 64)
    assert d["bytes_per_cycle"] == 8.0 and d["peak_bytes_per_cycle"] == 8
    assert d["fraction_of_peak"] == 1.0


def test_dram_energy_is_640_pj_per_32_bits():
    energy = bench_dram.dram_energy(read_bytes=400, write_bytes=40)
    assert energy["dram_read32"] == pytest.approx(100 * 640.0)
    assert energy["dram_write32"] == pytest.approx(10 * 640.0)
    assert energy["total"] == pytest.approx(110 * 640.0)
