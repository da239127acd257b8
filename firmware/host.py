"""The host driver: one API to the accelerator over the UART host link, on a board or in simulation.

The frame format, commands, statuses and register map are documented in
:mod:`hoarfrost.hw.host_link` (its module docstring has the byte layout); this module defines
their numbers once, and the gateware imports them from here.

Layers, each usable on its own:

* **Frames** (pure functions, no I/O): :func:`crc16`, :func:`encode_request`,
  :func:`encode_response`, :func:`decode_response` and the incremental :class:`FrameDecoder`.
* **Operations** (sans-I/O): every request, its retries and its checks are written once as a
  generator that yields I/O actions (send these bytes, receive for so long, what time is it).
  :class:`Device` runs them on a blocking :class:`Transport`, :class:`AsyncDevice` on an
  awaitable :class:`AsyncTransport`; both have the same methods, so a test and a board run the
  same code.
* **Transports**: :class:`SerialTransport` (pyserial, a board) and :class:`AmaranthTransport`
  (amaranth.sim byte streams). A cocotb transport is :class:`AsyncTransport`'s three methods.

Retries: a request whose response does not come within ``timeout`` seconds, comes back
corrupted, or is answered ``BAD_CRC`` (the request was corrupted on the way) is sent again with
the *same* sequence number, so the link can tell a retry from a new request and does not repeat
a side effect it already performed (see the link's docstring).
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "SYNC", "RESPONSE_FLAG", "PROTOCOL_VERSION", "HEADER_BYTES", "CRC_BYTES", "MAX_LENGTH",
    "Command", "Status", "Csr", "CSR_ID_VALUE", "CTRL_START", "CTRL_CLEAR_DONE", "STATUS_BUSY",
    "STATUS_DONE", "crc16", "Frame", "Response", "encode_request", "encode_response",
    "decode_response", "FrameDecoder", "FrameError", "LinkError", "DeviceError", "LinkInfo",
    "Transport", "AsyncTransport", "Device", "AsyncDevice", "SerialTransport",
    "AmaranthTransport",
]

#: First byte of every frame; the receiver hunts for it between frames.
SYNC = 0xA5
#: Set in a response's command byte (the request's command | 0x80).
RESPONSE_FLAG = 0x80
PROTOCOL_VERSION = 1
#: Sync, command, sequence number, length (16-bit little-endian).
HEADER_BYTES = 5
CRC_BYTES = 2
#: Largest payload a frame can announce.
MAX_LENGTH = 0xFFFF


class Command(enum.IntEnum):
    """Request commands (payloads in :mod:`hoarfrost.hw.host_link`)."""
    INFO = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_CSR = 0x03
    READ_CSR = 0x04
    STREAM = 0x05


class Status(enum.IntEnum):
    """First payload byte of every response."""
    OK = 0
    BAD_CRC = 1
    BAD_COMMAND = 2
    BAD_LENGTH = 3


class Csr(enum.IntEnum):
    """Indices of the 32-bit control and status registers (:class:`ControlRegisters`)."""
    ID = 0              # read-only, CSR_ID_VALUE
    CTRL = 1            # write-only: CTRL_START, CTRL_CLEAR_DONE
    STATUS = 2          # read-only: STATUS_BUSY, STATUS_DONE
    PROGRAM_ADDR = 3    # read/write: DRAM byte address of the firmware
    COUNTER_COUNT = 4   # read-only: number of counters that follow
    COUNTER_BASE = 5    # read-only: counter i at COUNTER_BASE + i


#: "HFR1": identifies the register file (and its layout version).
CSR_ID_VALUE = 0x48465231
CTRL_START = 1 << 0
CTRL_CLEAR_DONE = 1 << 1
STATUS_BUSY = 1 << 0
STATUS_DONE = 1 << 1


# --- frames ---------------------------------------------------------------------------------

def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR).

    ``crc16(b"123456789") == 0x29B1``. Appending the CRC big-endian makes the CRC of the whole
    frame 0, which is how the link checks a frame without knowing where it ends in advance.
    """
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


class FrameError(ValueError):
    """A byte string is not one well-formed frame."""


@dataclass(frozen=True)
class Frame:
    """One frame as sent on the wire: command byte, sequence number, payload."""
    command: int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Response:
    """A decoded response: the request's command and sequence number, status, data."""
    command: Command | int
    seq: int
    status: Status | int
    data: bytes


def _encode_frame(command: int, seq: int, payload: bytes) -> bytes:
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"Sequence number must be 0 to 255, not {seq!r}")
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"Payload of {len(payload)} bytes is longer than {MAX_LENGTH}")
    body = struct.pack("<BBBH", SYNC, command, seq, len(payload)) + bytes(payload)
    return body + crc16(body).to_bytes(2, "big")


def encode_request(command: int, seq: int, payload: bytes = b"") -> bytes:
    """The bytes of a request frame."""
    if not 0 <= command < RESPONSE_FLAG:
        raise ValueError(f"Request command must be 0 to 127, not {command!r}")
    return _encode_frame(command, seq, payload)


def encode_response(command: int, seq: int, status: int, data: bytes = b"") -> bytes:
    """The bytes of the response to request ``command`` (what the link sends)."""
    return _encode_frame(command | RESPONSE_FLAG, seq, bytes([status]) + bytes(data))


def _parse_response(frame: Frame) -> Response:
    if not frame.command & RESPONSE_FLAG:
        raise FrameError(f"Command byte 0x{frame.command:02x} is not a response")
    if not frame.payload:
        raise FrameError("Response has no status byte")
    command = frame.command & ~RESPONSE_FLAG
    status = frame.payload[0]
    return Response(Command(command) if command in Command._value2member_map_ else command,
                    frame.seq, Status(status) if status in Status._value2member_map_ else status,
                    frame.payload[1:])


def decode_response(data: bytes) -> Response:
    """Decode exactly one response frame; raise :class:`FrameError` naming what is wrong."""
    if len(data) < HEADER_BYTES + CRC_BYTES:
        raise FrameError(f"{len(data)} bytes are shorter than a frame")
    if data[0] != SYNC:
        raise FrameError(f"Frame starts with 0x{data[0]:02x}, not sync 0x{SYNC:02x}")
    length = int.from_bytes(data[3:5], "little")
    if len(data) != HEADER_BYTES + length + CRC_BYTES:
        raise FrameError(f"Frame announces {length} payload bytes but has "
                         f"{len(data) - HEADER_BYTES - CRC_BYTES}")
    if crc16(data) != 0:
        raise FrameError("Frame CRC does not match")
    return _parse_response(Frame(data[1], data[2], bytes(data[HEADER_BYTES:-CRC_BYTES])))


class FrameDecoder:
    """Splits a byte stream into frames, incrementally.

    :meth:`feed` returns the frames completed by the new bytes. Bytes before a sync byte are
    skipped; a frame whose CRC fails is counted in :attr:`corrupt` and decoding resumes at the
    byte after its sync byte (the sync byte may itself have been noise).
    """

    def __init__(self):
        self._buf = bytearray()
        self.corrupt = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self._buf.clear()
                return frames
            del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            end = HEADER_BYTES + int.from_bytes(self._buf[3:5], "little") + CRC_BYTES
            if len(self._buf) < end:
                return frames
            if crc16(self._buf[:end]) == 0:
                frames.append(Frame(self._buf[1], self._buf[2],
                                    bytes(self._buf[HEADER_BYTES:end - CRC_BYTES])))
                del self._buf[:end]
            else:
                self.corrupt += 1
                del self._buf[:1]


# --- errors -------------------------------------------------------------------------------

class LinkError(Exception):
    """The link did not deliver a valid response after every retry."""


class DeviceError(Exception):
    """The device answered a request with an error status."""

    def __init__(self, command: Command, status: Status | int):
        self.command, self.status = command, status
        name = status.name if isinstance(status, Status) else f"status {status}"
        super().__init__(f"{Command(command).name} request answered {name}")


@dataclass(frozen=True)
class LinkInfo:
    """What an ``INFO`` request reports about the link."""
    version: int
    max_payload: int
    addr_width: int


# --- transports ------------------------------------------------------------------------------

class Transport(Protocol):
    """A blocking byte pipe to the link."""

    def send(self, data: bytes) -> None:
        """Send ``data``."""

    def recv(self, timeout: float) -> bytes:
        """Bytes that arrived, waiting up to ``timeout`` seconds for the first; ``b""`` if none."""

    def now(self) -> float:
        """Seconds on the device's clock: wall time on a board, simulated time in a simulation."""


class AsyncTransport(Protocol):
    """The same pipe for simulators whose testbenches are coroutines (amaranth.sim, cocotb)."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, timeout: float) -> bytes: ...

    def now(self) -> float: ...


# --- operations (sans-I/O) --------------------------------------------------------------------

@dataclass(frozen=True)
class _Send:
    data: bytes


@dataclass(frozen=True)
class _Recv:
    timeout: float


class _Now:
    pass


class _DeviceBase:
    """The operations, each a generator of I/O actions; subclasses only run them (``_run``)."""

    def __init__(self, transport, *, timeout: float = 1.0, retries: int = 3,
                 counter_names: tuple[str, ...] | None = None, seq: int = 0):
        if timeout <= 0:
            raise ValueError(f"Timeout must be positive, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retries must be a non-negative integer, not {retries!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.counter_names = None if counter_names is None else tuple(counter_names)
        self._seq = seq & 0xFF
        self._info: LinkInfo | None = None
        #: Requests sent again after a timeout, a corrupted response or ``BAD_CRC``.
        self.resends = 0

    # Public API: the same in Device (returns values) and AsyncDevice (returns awaitables).

    def info(self):
        """The link's protocol version, largest payload and address width (:class:`LinkInfo`)."""
        return self._call(self._op_info())

    def write(self, addr: int, data: bytes):
        """Write ``data`` to memory from byte address ``addr`` (split into frames as needed)."""
        return self._call(self._op_write(addr, bytes(data)))

    def read(self, addr: int, n: int):
        """Read ``n`` bytes of memory from byte address ``addr``."""
        return self._call(self._op_read(addr, n))

    def write_csr(self, index: int, value: int):
        """Write 32-bit register ``index``."""
        return self._call(self._transact(Command.WRITE_CSR, _csr_write_payload(index, value)))

    def read_csr(self, index: int):
        """Read 32-bit register ``index``."""
        return self._call(self._op_read_csr(index))

    def start(self, program_addr: int | None = None):
        """Start the accelerator (first setting its program address, if given)."""
        return self._call(self._op_start(program_addr))

    def wait_done(self, timeout: float):
        """Poll until the accelerator is done; :class:`TimeoutError` after ``timeout`` seconds."""
        return self._call(self._op_wait_done(timeout))

    def counters(self):
        """The accelerator's counters, ``{name: value}`` (names from ``counter_names``)."""
        return self._call(self._op_counters())

    def load(self, weights: bytes, firmware: bytes, firmware_addr: int):
        """Write a compiled model: the weight image from address 0, the firmware at
        ``firmware_addr`` (``OUT/manifest.json``'s ``dram``)."""
        return self._call(self._op_load(bytes(weights), bytes(firmware), firmware_addr))

    def infer(self, image: bytes, *, program_addr: int, input_addr: int | None,
              output_addr: int, output_len: int, timeout: float):
        """Run one image through a loaded model; return ``(output bytes, counters)``.

        ``input_addr`` None: the input streams into a frozen front end (``image`` is then its
        pixels, all channels of a pixel together), sent after the start; else ``image`` is
        written to memory at ``input_addr`` first. ``timeout``: seconds the run may take."""
        return self._call(self._op_infer(bytes(image), program_addr, input_addr, output_addr,
                                         output_len, timeout))

    def stream(self, data: bytes):
        """Send ``data`` into the accelerator's input stream (a frozen front end's pixels, all
        channels of a pixel together, raster order), split into frames as needed. Each frame
        is answered once the device has taken its last byte, so start the accelerator first:
        the frozen block's output waits for the firmware's ``RECV``."""
        return self._call(self._op_stream(bytes(data)))

    # Operations.

    def _call(self, op):
        return self._run(self._in_session(op))

    def _in_session(self, op):
        """``op``, after this driver's first request, INFO, if it has not been made yet.

        INFO opens the session: the link then no longer takes the next request for a retry of
        the last one an earlier driver sent (both may carry the same sequence number).
        """
        yield from self._op_info()
        return (yield from op)

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) & 0xFF
        return seq

    def _transact(self, command: Command, payload: bytes):
        """Send one request until a valid response to it arrives; return its data."""
        seq = self._next_seq()
        frame = encode_request(command, seq, payload)
        why = "no response"
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            yield _Send(frame)
            decoder = FrameDecoder()
            deadline = (yield _Now()) + self.timeout
            response = None
            while response is None:
                now = yield _Now()
                if now >= deadline:
                    why = f"no response within {self.timeout} s"
                    break
                for f in decoder.feed((yield _Recv(deadline - now))):
                    if f.seq == seq and f.command == command | RESPONSE_FLAG:
                        response = _parse_response(f)
                if decoder.corrupt:
                    why = "corrupted response"
                    break
            if response is None:
                continue
            if response.status == Status.BAD_CRC:
                why = "request arrived corrupted (BAD_CRC)"
                continue
            if response.status != Status.OK:
                raise DeviceError(command, response.status)
            return response.data
        raise LinkError(f"{command.name} seq {seq}: {why} after {self.retries + 1} attempts")

    def _op_info(self):
        if self._info is None:
            data = yield from self._transact(Command.INFO, b"")
            if len(data) != 4:
                raise LinkError(f"INFO returned {len(data)} bytes, not 4")
            version, max_payload, addr_width = struct.unpack("<BHB", data)
            if version != PROTOCOL_VERSION:
                raise LinkError(f"Link speaks protocol version {version}, this driver "
                                f"{PROTOCOL_VERSION}")
            self._info = LinkInfo(version, max_payload, addr_width)
        return self._info

    def _op_write(self, addr: int, data: bytes):
        _check_span(addr, len(data))
        info = yield from self._op_info()
        step = info.max_payload - 4
        for offset in range(0, len(data), step):
            chunk = data[offset:offset + step]
            yield from self._transact(Command.WRITE, struct.pack("<I", addr + offset) + chunk)

    def _op_load(self, weights: bytes, firmware: bytes, firmware_addr: int):
        yield from self._op_write(0, weights)
        yield from self._op_write(firmware_addr, firmware)

    def _op_infer(self, image, program_addr, input_addr, output_addr, output_len, timeout):
        if input_addr is not None:
            yield from self._op_write(input_addr, image)
        yield from self._op_start(program_addr)
        if input_addr is None:
            yield from self._op_stream(image)
        yield from self._op_wait_done(timeout)
        output = yield from self._op_read(output_addr, output_len)
        return output, (yield from self._op_counters())

    def _op_stream(self, data: bytes):
        info = yield from self._op_info()
        for offset in range(0, len(data), info.max_payload):
            yield from self._transact(Command.STREAM, data[offset:offset + info.max_payload])

    def _op_read(self, addr: int, n: int):
        _check_span(addr, n)
        info = yield from self._op_info()
        out = bytearray()
        while len(out) < n:
            count = min(n - len(out), info.max_payload)
            got = yield from self._transact(Command.READ,
                                            struct.pack("<IH", addr + len(out), count))
            if len(got) != count:
                raise LinkError(f"READ of {count} bytes returned {len(got)}")
            out += got
        return bytes(out)

    def _op_read_csr(self, index: int):
        data = yield from self._transact(Command.READ_CSR, _csr_index(index))
        if len(data) != 4:
            raise LinkError(f"READ_CSR returned {len(data)} bytes, not 4")
        return int.from_bytes(data, "little")

    def _op_start(self, program_addr):
        if program_addr is not None:
            yield from self._transact(Command.WRITE_CSR,
                                      _csr_write_payload(Csr.PROGRAM_ADDR, program_addr))
        yield from self._transact(Command.WRITE_CSR, _csr_write_payload(Csr.CTRL, CTRL_START))

    def _op_wait_done(self, timeout: float):
        deadline = (yield _Now()) + timeout
        while True:
            status = yield from self._op_read_csr(Csr.STATUS)
            if status & STATUS_DONE:
                return
            if (yield _Now()) >= deadline:
                raise TimeoutError(f"Accelerator not done after {timeout} s "
                                   f"(status 0x{status:x})")

    def _op_counters(self):
        count = yield from self._op_read_csr(Csr.COUNTER_COUNT)
        names = self.counter_names or tuple(f"counter{i}" for i in range(count))
        if len(names) != count:
            raise LinkError(f"Device has {count} counters, the driver expects {len(names)}")
        values = {}
        for i, name in enumerate(names):
            values[name] = yield from self._op_read_csr(Csr.COUNTER_BASE + i)
        return values


def _check_span(addr: int, n: int) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"Byte count must be a non-negative integer, not {n!r}")
    if not isinstance(addr, int) or not 0 <= addr <= addr + n <= 1 << 32:
        raise ValueError(f"Bytes {addr!r} to {addr!r} + {n} are outside the 32-bit address "
                         f"space")


def _csr_index(index: int) -> bytes:
    if not 0 <= index <= 0xFF:
        raise ValueError(f"Register index must be 0 to 255, not {index!r}")
    return bytes([index])


def _csr_write_payload(index: int, value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"Register value must be 0 to 2**32-1, not {value!r}")
    return _csr_index(index) + struct.pack("<I", value)


class Device(_DeviceBase):
    """The accelerator over a blocking :class:`Transport` (a board's serial port).

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for each response before sending the request again. Must exceed the
        link's idle timeout, so that a request the link dropped half-way is not half-joined to
        its retry.
    retries : int
        Resends of one request before :class:`LinkError`.
    counter_names : tuple of str, optional
        Names of the counters in register order (e.g. ``BACKEND_COUNTERS``).
    seq : int
        First sequence number.
    """

    def _run(self, op):
        result = None
        try:
            while True:
                action = op.send(result)
                if isinstance(action, _Send):
                    result = self.transport.send(action.data)
                elif isinstance(action, _Recv):
                    result = self.transport.recv(action.timeout)
                else:
                    result = self.transport.now()
        except StopIteration as stop:
            return stop.value


class AsyncDevice(_DeviceBase):
    """:class:`Device` over an :class:`AsyncTransport`: the same methods, each awaited."""

    async def _run(self, op):
        result = None
        try:
            while True:
                action = op.send(result)
                if isinstance(action, _Send):
                    result = await self.transport.send(action.data)
                elif isinstance(action, _Recv):
                    result = await self.transport.recv(action.timeout)
                else:
                    result = self.transport.now()
        except StopIteration as stop:
            return stop.value


class SerialTransport:
    """A serial port (the board's USB UART) through pyserial, 8N1.

    Parameters
    ----------
    port : str
        Device name, e.g. ``/dev/ttyUSB1`` or ``COM3``, or a pyserial URL (``loop://``).
    baud : int
        Must match the link's baud rate.

    Raises
    ------
    HoarfrostError
        pyserial is not installed, or the port cannot be opened.
    """

    def __init__(self, port: str, baud: int = 115200):
        from hoarfrost.gen.errors import HoarfrostError

        try:
            import serial
        except ImportError:
            raise HoarfrostError("the serial transport needs pyserial: "
                                 "pip install pyserial==3.5") from None
        try:
            # serial_for_url opens device names and pyserial's URLs (loop://, socket://...).
            self._serial = serial.serial_for_url(port, baudrate=baud, bytesize=8, parity="N",
                                                 stopbits=1, timeout=0)
        except (serial.SerialException, ValueError) as e:
            raise HoarfrostError(f"cannot open serial port {port!r} ({e}); check that the board "
                                 f"is plugged in, the port name, and your permission to use it "
                                 f"(on Linux, membership of the dialout group)") from None

    def send(self, data: bytes) -> None:
        self._serial.write(data)
        self._serial.flush()

    def recv(self, timeout: float) -> bytes:
        self._serial.timeout = timeout
        data = self._serial.read(1)
        if data and self._serial.in_waiting:
            data += self._serial.read(self._serial.in_waiting)
        return data

    def now(self) -> float:
        import time

        return time.monotonic()

    def close(self) -> None:
        self._serial.close()


class AmaranthTransport:
    """Byte streams of a design in an amaranth.sim testbench (use with :class:`AsyncDevice`).

    Parameters
    ----------
    ctx : SimulatorContext
        The testbench's context.
    to_device : stream.Interface
        A byte stream the design takes (``HostLink.i_stream``, or a host-side ``UartTx``'s).
    from_device : stream.Interface
        A byte stream the design produces.
    clk_freq : int
        Clock frequency in Hz: timeouts in seconds become clock cycles.

    Attributes
    ----------
    cycles : int
        Clock cycles this transport has waited (the testbench's simulated time).
    """

    def __init__(self, ctx, to_device, from_device, *, clk_freq: int):
        self._ctx, self._to, self._from = ctx, to_device, from_device
        self._clk_freq = clk_freq
        self.cycles = 0

    async def send(self, data: bytes) -> None:
        for byte in data:
            self._ctx.set(self._to.payload, byte)
            self._ctx.set(self._to.valid, 1)
            await self._tick_until(self._to.ready)
        self._ctx.set(self._to.valid, 0)

    async def _tick_until(self, ready):
        while True:
            *_, taken = await self._ctx.tick().sample(ready)
            self.cycles += 1
            if taken:
                return

    async def recv(self, timeout: float) -> bytes:
        """Collect bytes until the stream goes quiet after the first, or ``timeout`` passes."""
        got = bytearray()
        self._ctx.set(self._from.ready, 1)
        for _ in range(max(1, math.ceil(timeout * self._clk_freq))):
            *_, valid, payload = await self._ctx.tick().sample(self._from.valid,
                                                               self._from.payload)
            self.cycles += 1
            if valid:
                got.append(payload)
            elif got:
                break
        self._ctx.set(self._from.ready, 0)
        return bytes(got)

    def now(self) -> float:
        return self.cycles / self._clk_freq
