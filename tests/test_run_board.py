"""``hoarfrost run``: inference on a board over its serial port. No board is attached here, so
the tests reach the point where the board must answer; the driver code it runs is the one
tests/test_board_cosim.py runs against the board top in Verilator."""

import numpy as np
import pytest

from hoarfrost.gen.cli import main
from hoarfrost.gen.run_board import board_image


@pytest.fixture(scope="module")
def out_ulx3s(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "cnn"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "--config", "ulx3s-85f",
                 "-o", str(out)]) == 0
    return out


def _run(out, examples, *extra):
    return main(["run", str(out), "--inputs", str(examples / "digits_test_x.npy"), "--limit", "1",
                 *extra])


def test_a_board_that_does_not_answer_is_one_line_naming_the_flash(capsys, out_ulx3s, examples):
    # pyserial's loop:// echoes the requests back: nothing answers like the link would
    assert _run(out_ulx3s, examples, "--port", "loop://", "--timeout", "0.02") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hoarfrost: error: the board on loop:// does not answer as OUT's "
                          "bitstream would (INFO seq 0: no response within 0.02 s after 4 "
                          "attempts); is it flashed with `hoarfrost flash ")


def test_a_missing_port_is_named(capsys, out_ulx3s, examples):
    assert _run(out_ulx3s, examples, "--port", "/dev/hoarfrost-no-such-port") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("hoarfrost: error: cannot open serial port "
                             "'/dev/hoarfrost-no-such-port'")


def test_an_out_for_simulation_is_refused(capsys, examples, tmp_path):
    out = tmp_path / "sim"
    assert main(["compile", str(examples / "digits_cnn.onnx"), "--calib",
                 str(examples / "digits_calib.npy"), "-o", str(out)]) == 0
    capsys.readouterr()
    assert _run(out, examples, "--port", "loop://") == 2
    assert "compiled for simulation" in capsys.readouterr().err


def test_the_image_goes_as_chw_bytes_or_as_pixels_for_a_frozen_front_end():
    x = np.arange(2 * 2 * 3, dtype=np.int8).reshape(3, 2, 2)      # C, H, W
    assert board_image({"dram": {"input_addr": 100}}, x) == x.tobytes()
    pixels = board_image({"dram": {"input_addr": None}}, x)
    assert pixels == bytes([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
