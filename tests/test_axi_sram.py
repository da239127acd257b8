"""AxiSram: random AXI4 bursts with random stalls on every channel read back what was written."""

import random

import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hoarfrost.hw.axi import AxiResp
from hoarfrost.hw.axi_sram import AxiSram

from axi_manager import burst_coroutine

SIZE = 1024


def run_bursts(dut, bursts, *, seed, stall_prob):
    """Each burst: ("w", beat, data list, strobe list) or ("r", beat, beats). Returns what the
    reads returned (data and responses) and the write responses."""
    rng = random.Random(seed)
    reads, writes, cycles = [], [], []

    async def manager(ctx):
        await burst_coroutine(ctx, dut.s_axi, bursts, dut.bytes_per_beat, rng, stall_prob,
                              reads, writes)
        cycles.append(ctx.get(dut.busy_cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(manager)
    sim.run()
    return reads, writes, cycles[0]


@pytest.mark.parametrize("data_width", [32, 64])
@pytest.mark.parametrize("seed, stall_prob", [(1, 0.0), (2, 0.3), (3, 0.6)])
def test_random_bursts_read_back_what_was_written(data_width, seed, stall_prob):
    dut = AxiSram(SIZE, data_width=data_width)
    rng = random.Random(seed)
    depth, mask = SIZE * 8 // data_width, (1 << data_width) - 1
    memory = [0] * depth
    bursts, expected = [], []
    for _ in range(12):
        beat = rng.randrange(depth)
        beats = rng.randint(1, min(20, depth - beat))
        if rng.random() < 0.5:
            data = [rng.getrandbits(data_width) for _ in range(beats)]
            strobes = [rng.getrandbits(data_width // 8) for _ in range(beats)]
            bursts.append(("w", beat, data, strobes))
            for i, (d, s) in enumerate(zip(data, strobes)):
                lanes = sum(0xFF << (8 * b) for b in range(data_width // 8) if s >> b & 1)
                memory[beat + i] = (memory[beat + i] & ~lanes | d & lanes) & mask
        else:
            bursts.append(("r", beat, beats))
            expected.append(memory[beat:beat + beats])
    reads, writes, _ = run_bursts(dut, bursts, seed=seed, stall_prob=stall_prob)
    assert [[d for d, *_ in got] for got in reads] == expected
    for got in reads:
        assert [last for _, _, last, _ in got] == [0] * (len(got) - 1) + [1]
        assert {(resp, rid) for _, resp, _, rid in got} == {(AxiResp.OKAY, 5)}
    assert writes == [[AxiResp.OKAY, 3]] * sum(b[0] == "w" for b in bursts)


def test_a_read_burst_streams_one_beat_per_cycle():
    dut = AxiSram(SIZE, data_width=32)
    _, _, busy = run_bursts(dut, [("r", 0, 64)], seed=0, stall_prob=0.0)
    assert busy == 64 + 1              # one cycle to fill the memory's output register


def test_bursts_past_the_end_get_decerr_and_write_nothing():
    dut = AxiSram(SIZE, data_width=32)
    last = SIZE // 4 - 1
    reads, writes, _ = run_bursts(dut, [("w", last, [1, 2], [0xF, 0xF]), ("r", last - 1, 3),
                                        ("r", last - 1, 2)], seed=0, stall_prob=0.0)
    assert writes == [[AxiResp.DECERR, 3]]
    assert [resp for _, resp, _, _ in reads[0]] == [AxiResp.DECERR] * 3
    assert [d for d, *_ in reads[1]] == [0, 0]          # the refused write left no trace


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_sizes_are_checked():
    # (a refused size raises before the component exists)
    with pytest.raises(ValueError, match="power of two"):
        AxiSram(1000)
    with pytest.raises(ValueError, match="SPRAM storage of 32-bit beats holds exactly 65536"):
        AxiSram(32768, data_width=32, spram=True)
    sram = AxiSram(65536, data_width=32, spram=True)
    assert sram.depth == 16384
    Fragment.get(sram, None)           # two SB_SPRAM256KA side by side elaborate
