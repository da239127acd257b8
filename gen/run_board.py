"""``hoarfrost run OUT --port P --inputs X.npy``: inference on the flashed board, over its UART.

The host driver (:class:`hoarfrost.firmware.host.Device`, the same code the board's co-simulation
test runs against the board top in Verilator) writes OUT's weight image and firmware into the
board's memory once, then per image writes the input (or, with a frozen front end, streams its
pixels), starts the accelerator, waits for done and reads the output and the counters. Every
output is checked against the golden model, as ``hoarfrost sim`` does for the RTL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hoarfrost.gen.errors import HoarfrostError

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "board_image"]

HELP = "run images on the flashed board over its UART, checked against the golden model"
DESCRIPTION = ("Load OUT's weights and firmware into the board flashed with OUT's bitstream "
               "(`hoarfrost build` then `hoarfrost flash`), run each image of --inputs on it "
               "through the UART host link, check every output against the golden model and "
               "print per-image cycles (the accelerator's own counter), accuracy with --labels, "
               "and the link's error counters. Needs the board attached.")


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="a directory written by `hoarfrost compile`, "
                        "whose bitstream is on the board")
    parser.add_argument("--port", required=True,
                        help="the board's serial port, e.g. /dev/ttyUSB0 or COM3 (a pyserial URL "
                             "works too)")
    parser.add_argument("--inputs", required=True, metavar="X.npy",
                        help="images, float (quantized on the way in) or int8")
    parser.add_argument("--labels", metavar="Y.npy", help="integer labels: report accuracy")
    parser.add_argument("--limit", type=int, help="run only the first N images")
    parser.add_argument("--baud", type=int, default=115200,
                        help="the link's baud rate (the bitstream's; default 115200)")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to wait for each answer of the board (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary")


def board_image(manifest: dict, x_int8: np.ndarray) -> bytes:
    """What the host sends as one image's input: CHW bytes for the memory, or with a frozen
    front end the pixels in raster order, all channels of a pixel together."""
    if manifest["dram"]["input_addr"] is None:
        from hoarfrost.sim.rtl_run import raster_pixels
        return raster_pixels(x_int8).tobytes()
    return np.ascontiguousarray(x_int8, dtype=np.int8).tobytes()


def run(args) -> int:
    from hoarfrost.firmware.host import Device, DeviceError, LinkError, SerialTransport
    from hoarfrost.gen.cli import load_images
    from hoarfrost.gen.onnx_import import import_onnx
    from hoarfrost.gen.outdir import read_manifest
    from hoarfrost.hw.board import board_counters
    from hoarfrost.hw.serial_backend import backend_counters
    from hoarfrost.sim.golden import quantize_input, run_int

    out = Path(args.out)
    manifest = read_manifest(out)
    if manifest["config"].get("board") is None:
        raise HoarfrostError(f"OUT was compiled for simulation (configuration "
                             f"{manifest['config']['name']!r}), not for a board; compile it with "
                             f"--config icebreaker|ulx3s-85f, build and flash it first")
    if args.timeout <= 0:
        raise HoarfrostError(f"--timeout must be positive, not {args.timeout!r}")
    graph = import_onnx(out / "model_q.onnx")
    x, labels = load_images(graph, args)
    x_int8 = quantize_input(graph, x)
    golden = run_int(graph, x_int8).reshape(len(x), -1)
    dram = manifest["dram"]

    transport = SerialTransport(args.port, args.baud)
    engines = len(manifest["partition"].get("sparse_engine", []))
    serial = bool(manifest["config"]["backend"].get("serial", False))
    dev = Device(transport, timeout=args.timeout,
                 counter_names=board_counters("frozen" in manifest, engines, serial=serial))
    images = []
    try:
        dev.load((out / "weights.bin").read_bytes(), (out / "firmware.bin").read_bytes(),
                 dram["firmware_addr"])
        for i, image in enumerate(x_int8):
            output, counters = dev.infer(
                board_image(manifest, image), program_addr=dram["firmware_addr"],
                input_addr=dram["input_addr"], output_addr=dram["output_addr"],
                output_len=dram["output_bytes"], timeout=10 * args.timeout)
            if serial:      # its fewer counters, as the back end's whole set
                counters = {**counters, **backend_counters(counters)}
            got = np.frombuffer(output, dtype=np.int8)
            images.append({"cycles": counters["cycles"], "equal": bool((got == golden[i]).all()),
                           "prediction": int(got.argmax()), "counters": counters})
            print(f"\rhoarfrost: run: image {i + 1}/{len(x)}", end="", file=sys.stderr,
                  flush=True)
        print(file=sys.stderr)
    except (LinkError, DeviceError, TimeoutError) as exc:
        raise HoarfrostError(f"the board on {args.port} does not answer as OUT's bitstream "
                             f"would ({exc}); is it flashed with `hoarfrost flash {args.out}` "
                             f"and is --baud right?") from None
    finally:
        transport.close()
    return _report(args, images, labels, dev.resends)


def _report(args, images: list[dict], labels, resends: int) -> int:
    equal = sum(r["equal"] for r in images)
    summary = {"images": len(images), "equal_to_golden": equal,
               "cycles_per_image": [r["cycles"] for r in images], "link_resends": resends}
    text = [f"{len(images)} images on the board: {equal} outputs equal to the golden model",
            f"cycles per image (accelerator counter): "
            f"{np.mean(summary['cycles_per_image']):.0f} mean"]
    if labels is not None:
        correct = sum(r["prediction"] == int(y) for r, y in zip(images, labels))
        summary["accuracy"] = correct / len(images)
        text.append(f"accuracy {correct}/{len(images)} = {100 * correct / len(images):.2f}%")
    last = images[-1]["counters"]
    summary["link"] = {k: last[k] for k in ("link_frames", "link_crc_errors", "link_timeouts",
                                            "uart_errors")}
    text.append("link: " + ", ".join(f"{k} {v}" for k, v in summary["link"].items())
                + f", requests resent {resends}")
    print(json.dumps(summary) if args.json else "\n".join(text))
    if equal != len(images):
        print(f"hoarfrost: run: {len(images) - equal} outputs differ from the golden model",
              file=sys.stderr)
        return 1
    return 0
