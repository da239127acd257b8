"""``hoarfrost compile`` and the configuration it reads; ``sim``'s bookkeeping without Verilator.

The RTL runs of ``hoarfrost sim`` are in test_sim_cosim.py.
"""

import json

import numpy as np
import pytest

from hoarfrost.firmware.isa import Op, assemble, decode
from hoarfrost.gen.cli import main
from hoarfrost.gen.config import PRESETS, load_config
from hoarfrost.gen.errors import HoarfrostError
from hoarfrost.gen.onnx_import import import_onnx
from hoarfrost.gen.quantize import quantize
from hoarfrost.hw.config import ICE40_ARRAY, ICEBREAKER, ULX3S
from hoarfrost.sim.golden import run_int
from hoarfrost.sim.rtl_run import command_cycles, energy_events, layer_cycles

#: The back end of tests/test_backend_cosim.py, so the slow tests share its Verilator build.
SMALL_TOML = """\
[backend]
rows = 4
cols = 4
a_depth = 512
w_depth = 8
acc_depth = 64
scratch_bytes = 2048
param_depth = 32
"""


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def compile_quietly(*args) -> int:
    """``hoarfrost compile ARGS`` for a fixture (no capsys there)."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["compile", *map(str, args)])


def write_toml(tmp_path, text, name="hw.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line_error(capsys, args, *fragments):
    code, out, err = run(capsys, *args)
    assert code == 2, (code, out, err)
    assert out == ""
    lines = [l for l in err.strip().splitlines() if l.startswith("hoarfrost: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- configuration ---------------------------------------------------------------------------

def test_presets_by_name_and_the_default():
    assert load_config(None) is PRESETS["default"]
    assert load_config("icebreaker").backend == ICEBREAKER
    ulx3s = load_config("ulx3s-85f")
    assert ulx3s.backend == ULX3S and ulx3s.board == "ulx3s-85f" and ulx3s.clock_mhz == 25.0


def test_a_toml_file_starts_from_a_preset_and_overrides_it(tmp_path):
    path = write_toml(tmp_path, 'preset = "ulx3s-85f"\nclock_mhz = 50\n'
                                '[backend]\nacc_depth = 256\nscratch_bytes = 4096\n')
    config = load_config(str(path))
    assert config.backend.rows == 8 and config.backend.acc_depth == 256
    assert config.scratch_bytes == 4096 and config.param_depth == PRESETS["ulx3s-85f"].param_depth
    assert config.clock_mhz == 50.0 and config.board == "ulx3s-85f"
    assert config.name == str(path)
    # the weight cache: 2 KB in the presets but the iCEBreaker's; 0 builds none
    assert config.backend.weight_cache_bytes == 2048
    assert PRESETS["icebreaker"].backend.weight_cache_bytes == 0
    none = load_config(str(write_toml(tmp_path, '[backend]\nweight_cache_bytes = 0\n')))
    assert none.backend.weight_cache_bytes == 0


def test_a_toml_file_switches_the_area_savings(tmp_path):
    path = write_toml(tmp_path, '[backend]\nadd_shares_multiplier = true\n'
                                'requant_saturating_shift = true\n')
    backend = load_config(str(path)).backend
    assert backend.add_shares_multiplier and backend.requant_saturating_shift
    assert not PRESETS["ulx3s-85f"].backend.add_shares_multiplier


@pytest.mark.parametrize("text, fragments", [
    ("[backend]\nadd_shares_multiplier = 1\n",
     ["backend.add_shares_multiplier must be true or false", "1"]),
    ("rows = 4\n", ["unknown key 'rows'"]),
    ("[backend]\nsparse_pes = 4\n", ["unknown key 'backend.sparse_pes'"]),
    ('[backend]\nrows = "4"\n', ["backend.rows must be an integer", "'4'"]),
    ("[backend]\nrows = true\n", ["backend.rows must be an integer"]),
    ("[backend]\nscratch_bytes = 0\n", ["backend.scratch_bytes must be at least 4"]),
    ("[backend]\nw_depth = 6\n", ["w_depth must be a power of two"]),
    ("[backend]\nweight_cache_bytes = -1\n", ["backend.weight_cache_bytes must be at least 0"]),
    ("[backend]\nweight_bits = 3\n", ["weight_bits must be 8, 4 or 2"]),
    ("[backend]\ndram_addr_bits = 8\n", ["dram_addr_bits must be an integer from 16 to 32"]),
    ("[backend]\nindex_bits = 12\n", ["index_bits below 16 needs compact_fields"]),
    ('preset = "de10"\n', ["preset = 'de10' is not one of"]),
    ('board = "arty"\n', ["board = 'arty'"]),
    ("clock_mhz = -5\n", ["clock_mhz must be a positive number"]),
    ("backend = 3\n", ["backend must be a table"]),
    ("[backend\n", ["not valid TOML"]),
])
def test_bad_configuration_files_name_the_key_and_the_file(tmp_path, text, fragments):
    path = write_toml(tmp_path, text)
    with pytest.raises(HoarfrostError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_config_that_is_neither_a_preset_nor_a_file(tmp_path):
    with pytest.raises(HoarfrostError, match="neither a preset"):
        load_config("ulx3s")
    with pytest.raises(HoarfrostError, match="no such file"):
        load_config(str(tmp_path / "missing.toml"))


# --- compile ---------------------------------------------------------------------------------

@pytest.fixture
def cnn_args(examples, tmp_path):
    config = write_toml(tmp_path, SMALL_TOML)
    return [examples / "digits_cnn.onnx", "--calib", examples / "digits_calib.npy",
            "--config", config]


@pytest.fixture(scope="module")
def cnn_out(examples, tmp_path_factory):
    """The CNN compiled once for this module's read-only tests (elaboration takes seconds)."""
    tmp = tmp_path_factory.mktemp("cnn")
    config = write_toml(tmp, SMALL_TOML)
    assert compile_quietly(examples / "digits_cnn.onnx", "--calib",
                           examples / "digits_calib.npy", "--config", config,
                           "-o", tmp / "out") == 0
    return tmp / "out"


def test_compile_writes_verilog_firmware_weights_model_and_manifest(examples, cnn_out):
    out = cnn_out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["backend.v", "firmware.bin", "firmware.asm", "weights.bin", "model_q.onnx",
         "manifest.json"])
    m = json.loads((out / "manifest.json").read_text())
    import hashlib
    assert m["source_model"]["sha256"] == hashlib.sha256(
        (examples / "digits_cnn.onnx").read_bytes()).hexdigest()
    assert m["config"]["backend"]["rows"] == 4 and m["config"]["backend"]["scratch_bytes"] == 2048
    assert m["partition"]["backend"] == [l["name"] for l in m["layers"]]
    assert m["partition"]["frontend_frozen"] == [] and m["partition"]["sparse_engine"] == []
    # layer table: the CNN's MACs, and the commands of each layer where the table says
    assert [l["op"] for l in m["layers"]] == ["conv", "conv", "maxpool", "reshape", "dense"]
    assert [l["macs"] for l in m["layers"]] == [4608, 18432, 0, 0, 640]
    assert m["macs"] == 23680
    commands = decode((out / "firmware.bin").read_bytes())
    assert commands == assemble((out / "firmware.asm").read_text())
    assert len(commands) == m["commands"] == 12
    assert commands[0].op == Op.LOAD and [c.op for c in commands[-3:]] == [Op.STORE, Op.SYNC, Op.END]
    for layer in m["layers"]:
        ops = {c.op for c in commands[layer["first_command"]:][:layer["commands"]]}
        assert ops <= {Op.GEOM, Op.MATMUL, Op.POOL, Op.ADD}
    conv2 = m["layers"][1]           # 16 channels x K = 8*3*3 = 72: 4 x 18 tiles of 4x4
    assert conv2["weight_bytes"] == 16 * 72 and conv2["param_bytes"] == 16 * 12
    # DRAM layout: weights.bin is the image, I/O inside it, firmware after it
    d = m["dram"]
    assert (out / "weights.bin").stat().st_size == d["image_bytes"]
    assert d["input_bytes"] == 64 and d["output_bytes"] == 10
    assert d["input_addr"] + 64 <= d["output_addr"] < d["image_bytes"] <= d["firmware_addr"]
    assert d["firmware_bytes"] == (out / "firmware.bin").stat().st_size
    # input/output quantization and the compiled model equal quantizing the source here
    q = quantize(import_onnx(examples / "digits_cnn.onnx"),
                 np.load(examples / "digits_calib.npy"), 8)
    assert m["input"]["zero_point"] == q.quant[q.input].zero_point
    assert m["output"]["scale"] == pytest.approx(q.quant[q.output].scale)
    x = np.load(examples / "digits_test_x.npy")[:20]
    assert np.array_equal(run_int(import_onnx(out / "model_q.onnx"), x), run_int(q, x))
    assert "module backend(" in (out / "backend.v").read_text()


def test_compile_a_qdq_model_without_calib(capsys, examples, tmp_path):
    q = tmp_path / "q.onnx"
    assert run(capsys, "quantize", examples / "digits_mlp.onnx", "--calib",
               examples / "digits_calib.npy", "--weight-bits", "4", "-o", q)[0] == 0
    code, stdout, _ = run(capsys, "compile", q, "--config", "icebreaker", "-o", tmp_path / "out")
    assert code == 0, stdout
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["source_model"]["quantized"] and m["config"]["board"] == "icebreaker"
    assert "fc1/Gemm" in stdout and "every layer on the back end" in stdout
    for option in (["--weight-bits", "4"], ["--calib", "x.npy"]):
        assert_one_line_error(capsys, ["compile", q, *option, "-o", tmp_path / "again"],
                              option[0], "already quantized")


def _left_behind(tmp_path, keep):
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)


@pytest.mark.parametrize("backend, fragments", [
    ("scratch_bytes = 256", ["scratchpad", "raise scratch_bytes", "hw.toml"]),
    ("a_depth = 8", ["raise a_depth", "hw.toml"]),
    ("weight_bits = 4", ["8-bit weights", "raise backend.weight_bits", "--weight-bits 4"]),
])
def test_a_model_that_does_not_fit_is_one_error_and_nothing_written(capsys, examples, tmp_path,
                                                                   backend, fragments):
    config = write_toml(tmp_path, f"[backend]\n{backend}\n")
    args = [examples / "digits_cnn.onnx", "--calib", examples / "digits_calib.npy",
            "--weight-bits", "8", "--config", config, "-o", tmp_path / "out"]
    assert_one_line_error(capsys, ["compile", *args], *fragments)
    assert _left_behind(tmp_path, {"hw.toml"}) == []


def test_compile_user_errors(capsys, examples, tmp_path):
    cnn = examples / "digits_cnn.onnx"
    assert_one_line_error(capsys, ["compile", cnn, "-o", tmp_path / "o"], "float model", "--calib")
    assert_one_line_error(capsys, ["compile", cnn, "--calib", examples / "digits_calib.npy",
                                   "--config", "nope", "-o", tmp_path / "o"], "neither a preset")
    assert_one_line_error(capsys, ["compile", cnn, "--calib", examples / "digits_calib.npy",
                                   "-o", tmp_path / "missing" / "o"], "does not exist")
    assert _left_behind(tmp_path, set()) == []


def test_an_existing_out_is_replaced_only_with_force(capsys, tmp_path, cnn_args):
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "compile", *cnn_args, "-o", out, "--json")
    assert code == 0
    first = (out / "manifest.json").read_text()
    assert json.loads(stdout)["manifest"] == json.loads(first)
    (out / "extra.txt").write_text("mine")
    assert_one_line_error(capsys, ["compile", *cnn_args, "-o", out], "exists", "--force")
    assert (out / "extra.txt").is_file()
    code, _, _ = run(capsys, "compile", *cnn_args, "--weight-bits", "4", "-o", out, "--force")
    assert code == 0
    assert not (out / "extra.txt").exists()                  # replaced whole
    assert (out / "manifest.json").read_text() != first
    assert json.loads((out / "manifest.json").read_text())["source_model"]["weight_bits"] == 4
    assert _left_behind(tmp_path, {"out", "hw.toml"}) == []   # no temporary directories left
    # --force never replaces something that is not a compile output
    other = tmp_path / "other"
    other.mkdir()
    assert_one_line_error(capsys, ["compile", *cnn_args, "-o", other, "--force"],
                          "not a hoarfrost compile output")


# --- compile --freeze ---------------------------------------------------------------------------

def test_compile_freeze_puts_the_first_convolutions_in_front_of_the_back_end(capsys, tmp_path,
                                                                           cnn_args, examples):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "compile", *cnn_args, "--freeze", "2", "-o", out)
    assert code == 0, err
    assert "3 layer(s) frozen in logic, 2 on the back end" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["accelerator.v", "firmware.bin", "firmware.asm", "weights.bin", "model_q.onnx",
         "manifest.json"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["toplevel"] == "accelerator" and m["verilog"] == "accelerator.v"
    # the partition: both convolutions and the pooling in line frozen, the rest on the back end
    p = m["partition"]
    assert p["frontend_frozen"] == ["/conv1/Conv", "/conv2/Conv", "/pool/MaxPool"]
    assert p["backend"] == ["/flatten/Flatten", "/fc/Gemm"] == [l["name"] for l in m["layers"]]
    f = m["frozen"]
    assert (f["convolutions"], f["macs"], m["macs"]) == (2, 4608 + 18432, 640)
    assert (f["input_pixels"], f["input_channels"]) == (64, 1)          # the 8x8 image
    assert (f["output_pixels"], f["output_channels"]) == (4, 16)        # 16 x 2x2 pooled
    # the firmware receives the frozen output instead of loading an input from DRAM
    commands = decode((out / "firmware.bin").read_bytes())
    assert commands[0].op == Op.RECV and commands[0].pixels == 4
    assert Op.LOAD not in [c.op for c in commands] and len(commands) == m["commands"] == 6
    d = m["dram"]
    assert d["input_addr"] is None and d["input_bytes"] == 0 and "unused" in d["input_note"]
    assert m["input"]["shape"] == [1, 8, 8]                              # what the user sends
    verilog = (out / "accelerator.v").read_text()
    assert "module accelerator(" in verilog and "pixels__payload" in verilog
    assert "frozen_out_pixels" in verilog and "recv_cycles" in verilog
    assert f["frame_events"]["reg_write8"] > 0                          # what sim prices
    # sim's debug firmware stores the RECVed frozen output first, then each back-end layer's
    from hoarfrost.sim.isa_sim import IsaMachine
    from hoarfrost.sim.rtl_run import debug_program, dram_for
    debug, dumps = debug_program(m, (out / "firmware.bin").read_bytes())
    assert [i for i, _, _ in dumps] == [None, 1] and dumps[0][2] == 64
    graph = import_onnx(out / "model_q.onnx")
    x = graph.quant[graph.input].quantize(np.load(examples / "digits_test_x.npy")[:1])
    values = run_int(graph, x, keep_all=True)
    total = dumps[-1][1] + dumps[-1][2]
    dram = dram_for({**m, "dram": {**d, "total_bytes": total}}, (out / "weights.bin").read_bytes(),
                    debug, x[0])
    b = m["config"]["backend"]
    machine = IsaMachine(dram.tobytes(), total, b["scratch_bytes"], b["rows"], b["cols"],
                         features=values[f["output_tensor"]][0])
    machine.run(decode(debug))
    for tensor, (_, addr, size) in zip([f["output_tensor"], graph.output], dumps):
        assert machine.dram[addr:addr + size].view(np.int8).tolist() == \
            values[tensor].reshape(-1).tolist()


@pytest.mark.parametrize("freeze, fragments", [
    ("0", ["--freeze must be a positive number of convolutions, not 0"]),
    ("-1", ["--freeze must be a positive number"]),
    ("3", ["'/flatten/Flatten' (reshape) cannot be frozen", "only 2 convolution(s)",
           "--freeze asks for 3"]),
])
def test_bad_freeze_values_are_one_error_and_nothing_written(capsys, tmp_path, cnn_args,
                                                             freeze, fragments):
    assert_one_line_error(capsys, ["compile", *cnn_args, "--freeze", freeze, "-o",
                                   tmp_path / "out"], *fragments)
    assert _left_behind(tmp_path, {"hw.toml"}) == []


def test_freezing_layers_that_are_not_a_chain_is_an_error(capsys, tmp_path):
    """A residual block at the input: its skip reads the image, so the first convolution
    cannot be frozen alone."""
    from onnx_models import ModelBuilder
    b = ModelBuilder((2, 6, 6), seed=4)
    b.conv(2, 2, 3, 1, (1, 1, 1, 1))
    b.op("Add", ["input", b.last])
    b.op("Flatten", [b.last])
    b.gemm(72, 3)
    model = tmp_path / "residual.onnx"
    model.write_bytes(b.finish())
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).normal(0, 1, (8, 2, 6, 6)).astype(np.float32))
    assert_one_line_error(capsys, ["compile", model, "--calib", calib, "--freeze", "1", "-o",
                                   tmp_path / "out"], "--freeze", "chain")
    assert _left_behind(tmp_path, {"residual.onnx", "calib.npy"}) == []


# --- sim, before any RTL runs ----------------------------------------------------------------

def test_sim_rejects_a_bad_out_directory_and_bad_inputs(capsys, examples, tmp_path, cnn_out):
    import shutil
    x = examples / "digits_test_x.npy"
    assert_one_line_error(capsys, ["sim", tmp_path, "--inputs", x], "no manifest.json")
    out = tmp_path / "out"
    shutil.copytree(cnn_out, out)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 8, 8), np.float32))
    assert_one_line_error(capsys, ["sim", out, "--inputs", bad], "--inputs", "(N, 1, 8, 8)")
    assert_one_line_error(capsys, ["sim", out, "--inputs", x, "--limit", "0"], "--limit")
    weights = bytearray((out / "weights.bin").read_bytes())
    weights[0] ^= 1
    (out / "weights.bin").write_bytes(bytes(weights))
    assert_one_line_error(capsys, ["sim", out, "--inputs", x], "weights.bin", "changed")


def test_per_command_cycles_map_to_layers():
    manifest = {"commands": 8, "layers": [
        {"name": "a", "op": "conv", "first_command": 1, "commands": 2},
        {"name": "flat", "op": "reshape", "first_command": 3, "commands": 0},
        {"name": "b", "op": "dense", "first_command": 3, "commands": 2}]}
    # command i's header was in when `cycles` read starts[i]
    starts = [5, 20, 30, 100, 110, 150, 160, 170]
    per_command = command_cycles(starts, total=175)
    assert per_command == [20, 10, 70, 10, 40, 10, 10, 5] and sum(per_command) == 175
    rows = layer_cycles(manifest, per_command)
    assert [(r["name"], r["cycles"]) for r in rows] == [
        ("(load input)", 20), ("a", 80), ("flat", 0), ("b", 50), ("(store output)", 25)]
    # behind a frozen front end command 0 is the RECV of the frozen layers' output: one entry
    frozen = {**manifest, "frozen": {"layers": [{"name": "c1"}, {"name": "p1"}]}}
    rows = layer_cycles(frozen, per_command)
    assert (rows[0]["name"], rows[0]["op"], rows[0]["cycles"]) == ("(frozen: c1, p1)", "frozen", 20)
    assert [r["cycles"] for r in rows[1:]] == [80, 0, 50, 25]


def test_energy_events_from_counters():
    counters = {"macs_issued": 100, "scratch_reads": 40, "scratch_writes": 8,
                "dram_read_bytes": 400, "dram_write_bytes": 12, "param_writes": 6,
                "a_reads": 10, "a_writes": 5, "w_reads": 8, "w_writes": 4,
                "acc_reads": 3, "acc_writes": 7}
    # ICE40_ARRAY: a entries 2 x int8 (1/2 word), w entries 2 x int8 (1/2), acc words int32
    assert energy_events(counters, ICE40_ARRAY) == {
        "mul8": 100, "add32": 100, "sram_read32": 10 + 5 + 4 + 3,
        "sram_write32": 2 + 2.5 + 2 + 7 + 6, "dram_read32": 100, "dram_write32": 3}


def test_debug_firmware_stores_every_layer_output(examples, cnn_out):
    """The firmware ``sim`` reruns a differing image with dumps each layer's output where it
    says; run on the functional ISA simulator, every dump equals the golden model's layer."""
    from hoarfrost.sim.isa_sim import IsaMachine
    from hoarfrost.sim.rtl_run import debug_program, dram_for
    out = cnn_out
    m = json.loads((out / "manifest.json").read_text())
    firmware = (out / "firmware.bin").read_bytes()
    debug, dumps = debug_program(m, firmware)
    assert [m["layers"][i]["name"] for i, _, _ in dumps] == [
        "/conv1/Conv", "/conv2/Conv", "/pool/MaxPool", "/fc/Gemm"]
    graph = import_onnx(out / "model_q.onnx")
    x = graph.quant[graph.input].quantize(np.load(examples / "digits_test_x.npy")[:1])
    total = dumps[-1][1] + dumps[-1][2]
    dram = dram_for({**m, "dram": {**m["dram"], "total_bytes": total}},
                    (out / "weights.bin").read_bytes(), debug, x[0])
    b = m["config"]["backend"]
    machine = IsaMachine(dram.tobytes(), total, b["scratch_bytes"], b["rows"], b["cols"])
    machine.run(decode(debug))
    values = run_int(graph, x, keep_all=True)
    for index, addr, size in dumps:
        want = values[graph.layers[index].output].reshape(-1)
        assert machine.dram[addr:addr + size].view(np.int8).tolist() == want.tolist()


def test_a_firmware_past_the_back_ends_address_bits_or_compact_fields_is_an_error():
    """The iCEBreaker's back end keeps 16 address bits and compact fields: the compiler checks
    the DRAM image and every field before anything is written."""
    import dataclasses
    import types

    from hoarfrost.gen.outdir import check_fields
    board = PRESETS["icebreaker"]
    assert board.backend.dram_addr_bits == 16 and board.backend.compact_fields
    program = types.SimpleNamespace(dram_bytes=1000, commands=assemble("end"))
    check_fields(program, board)
    with pytest.raises(HoarfrostError, match="needs 65540 bytes, more than the back end's 16 "
                                             "address bits reach"):
        check_fields(types.SimpleNamespace(dram_bytes=65536, commands=assemble("end")), board)
    far = assemble("load dram_addr=200000 dst=0 length=4")
    with pytest.raises(HoarfrostError, match="compact fields: command 0 .LOAD.: dram_addr = "
                                             "200000 does not fit the back end's 16-bit field"):
        check_fields(types.SimpleNamespace(dram_bytes=0, commands=far), board)
    wide = dataclasses.replace(board, backend=dataclasses.replace(
        board.backend, dram_addr_bits=32, index_bits=16, compact_fields=False))
    check_fields(types.SimpleNamespace(dram_bytes=0, commands=far), wide)


@pytest.mark.parametrize("text, message", [
    ("add src_a=0 src_b=8 dst=16 length=8 zp_a=0 zp_b=0 mult_a=70000 mult_b=1 shift=16 "
     "zp_out=0 lo=-128 hi=127", "command 0 .ADD.: mult_a = 70000 does not fit the serial back "
                                "end's 16 bits"),
    ("pool src=0 dst=8 kind=0 zp_in=300 lo_in=-128 hi_in=127 p_addr=4294967295 zp_out=0",
     "command 0 .POOL.: zp_in = 300 does not fit the serial back end's 9 bits"),
    ("recv dst=0 pixels=4", "command 0 .RECV. is not built in the serial back end"),
])
def test_a_firmware_the_serial_back_end_cannot_run_is_an_error(text, message):
    import types

    from hoarfrost.gen.outdir import check_fields
    with pytest.raises(HoarfrostError, match="does not suit the serial back end: " + message):
        check_fields(types.SimpleNamespace(dram_bytes=0, commands=assemble(text)),
                     PRESETS["icebreaker"])


@pytest.mark.parametrize("option", [["--freeze", "1"], ["--sparse", "1"]])
def test_freeze_and_sparse_need_the_systolic_back_end(examples, tmp_path, capsys, option):
    out = tmp_path / "out"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--config", "icebreaker", *option,
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hoarfrost: error: {option[0]} needs the systolic back end; --config "
                   f"icebreaker builds the serial one (backend.serial = true)"]
    assert not out.exists()
