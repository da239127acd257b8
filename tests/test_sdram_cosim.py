"""AxiSdram's Verilog in Verilator on the checking SDRAM chip model (cocotb): cocotbext-axi's
AxiMaster writes and reads random byte ranges (partial beats: WSTRB) across row ends with
random pauses on every AXI channel, while refreshes come every 2 us; every read equals the
reference and the chip model saw no illegal command or timing. One Verilator build."""

import json

import pytest

from hoarfrost.hw.axi import convert
from hoarfrost.hw.sdram import ULX3S_32MB, AxiSdram, SdramTiming
from hoarfrost.sim.verilator import cocotb_run

pytestmark = pytest.mark.cosim


def test_random_traffic_on_the_chip_model(tmp_path):
    timing = {"t_powerup": 2000.0, "t_refi": 2000.0}
    design = convert(AxiSdram(ULX3S_32MB, SdramTiming(**timing)), name="axi_sdram")
    results = tmp_path / "results.json"
    config = {"geometry": {"col_bits": ULX3S_32MB.col_bits}, "timing": timing,
              "operations": 40, "pause_prob": 0.3, "seed": 4}
    result = cocotb_run(design, "axi_sdram", "hoarfrost.sim.tb.sdram_tb", seed=4,
                        env={"HOARFROST_SDRAM_CONFIG": json.dumps(config),
                             "HOARFROST_RESULTS": str(results)})
    assert result.failed == 0 and result.tests == 1, result.log_tail()
    got = json.loads(results.read_text())["random_traffic_reads_back_the_reference"]
    counts = got["chip_counts"]
    assert got["refreshes"] == counts["REFRESH"]
    # refresh kept its 2 us pace through the traffic (the model checks every gap)
    assert counts["REFRESH"] >= got["chip_cycles"] // SdramTiming(**timing).refresh_period
    assert got["read_beats"] > 2048 and got["write_beats"] > 1000
