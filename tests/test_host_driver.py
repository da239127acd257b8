"""The host driver without hardware: frames, the decoder, retries, and the serial transport.

:class:`LinkModel` is the link's behaviour in a few lines of Python (the gateware's tests check
the gateware against the same expectations); a :class:`Device` runs over it through a transport
that can corrupt or lose bytes in either direction.
"""

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoarfrost.firmware.host import (CSR_ID_VALUE, CTRL_START, PROTOCOL_VERSION, STATUS_DONE,
                                     Command, Csr, Device, DeviceError, Frame, FrameDecoder,
                                     FrameError, LinkError, Response, SerialTransport, Status,
                                     crc16, decode_response, encode_request, encode_response)
from hoarfrost.gen.errors import HoarfrostError

payloads = st.binary(max_size=300)
seqs = st.integers(0, 255)


# --- frames --------------------------------------------------------------------------------

def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_request_layout_byte_by_byte():
    frame = encode_request(Command.WRITE, 0x42, b"\x10\x20")
    body = bytes([0xA5, 0x01, 0x42, 0x02, 0x00, 0x10, 0x20])
    assert frame == body + crc16(body).to_bytes(2, "big")
    assert crc16(frame) == 0        # the receiver's check


@given(command=st.sampled_from(Command), seq=seqs, status=st.sampled_from(Status),
       data=payloads)
def test_response_round_trips(command, seq, status, data):
    frame = encode_response(command, seq, status, data)
    assert len(frame) == 5 + 1 + len(data) + 2
    assert decode_response(frame) == Response(command, seq, status, data)


@given(command=st.integers(0, 127), seq=seqs, payload=payloads)
def test_request_round_trips_through_the_stream_decoder(command, seq, payload):
    assert FrameDecoder().feed(encode_request(command, seq, payload)) == \
        [Frame(command, seq, payload)]


@settings(max_examples=50)
@given(frames=st.lists(st.tuples(st.integers(0, 127), seqs, payloads), min_size=1, max_size=5),
       noise=st.binary(max_size=20).filter(lambda b: 0xA5 not in b),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_decoder_finds_frames_after_noise_however_the_bytes_are_split(frames, noise, cuts):
    stream = noise + b"".join(encode_request(*f) for f in frames)
    decoder, got, last = FrameDecoder(), [], 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts) + [len(stream)]:
        got += decoder.feed(stream[last:cut])
        last = cut
    assert got == [Frame(*f) for f in frames] and decoder.corrupt == 0


@given(command=st.sampled_from(Command), seq=seqs, data=payloads, bit=st.integers(0, 10_000))
def test_any_single_bit_error_is_detected(command, seq, data, bit):
    frame = bytearray(encode_response(command, seq, Status.OK, data))
    bit %= 8 * len(frame)
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        decode_response(bytes(frame))
    # The stream decoder never yields a corrupted frame (unless the payload itself holds a
    # frame it could resynchronize to); a flipped length or sync byte may leave it waiting for
    # bytes that never come, which the driver's timeout handles.
    if 0xA5 not in data:
        assert FrameDecoder().feed(bytes(frame)) == []


def test_decode_response_names_what_is_wrong():
    good = encode_response(Command.READ, 1, Status.OK, b"abc")
    with pytest.raises(FrameError, match="^6 bytes are shorter than a frame$"):
        decode_response(good[:6])
    with pytest.raises(FrameError, match="^Frame starts with 0x00, not sync 0xa5$"):
        decode_response(b"\x00" + good[1:])
    with pytest.raises(FrameError, match="^Frame announces 4 payload bytes but has 5$"):
        decode_response(good + b"\x00")
    with pytest.raises(FrameError, match="is not a response"):
        decode_response(encode_request(Command.READ, 1, b"abc"))
    with pytest.raises(ValueError, match="Sequence number must be 0 to 255, not 256"):
        encode_request(Command.READ, 256)
    with pytest.raises(ValueError, match="Request command must be 0 to 127, not 129"):
        encode_request(0x81, 0)


# --- the driver over a Python model of the link -------------------------------------------

class LinkModel:
    """What :class:`HostLink` and :class:`ControlRegisters` do, for the driver's tests."""

    def __init__(self, *, max_payload=32, run_polls=2):
        self.max_payload = max_payload
        self.memory = bytearray(1024)
        self.regs = {Csr.PROGRAM_ADDR: 0}
        self.last = None
        self.starts = 0
        self.executed = []
        self.run_polls = run_polls      # STATUS reads that see "busy" after a start
        self.busy_polls = 0

    def answer(self, frame: Frame) -> bytes:
        status, data = self._execute(frame)
        return encode_response(frame.command, frame.seq, status, data)

    def _execute(self, f):
        p = f.payload
        fixed = {Command.INFO: 0, Command.READ: 6, Command.WRITE_CSR: 5, Command.READ_CSR: 1}
        if f.command not in Command._value2member_map_:
            return Status.BAD_COMMAND, b""
        if f.command in fixed and len(p) != fixed[f.command] or \
                f.command == Command.WRITE and not 4 <= len(p) <= self.max_payload:
            return Status.BAD_LENGTH, b""
        retry = self.last == (f.command, f.seq)
        self.last = (f.command, f.seq)
        if retry and f.command in (Command.WRITE, Command.WRITE_CSR):
            return Status.OK, b""
        self.executed.append((Command(f.command), f.seq))
        if f.command == Command.INFO:
            return Status.OK, struct.pack("<BHB", PROTOCOL_VERSION, self.max_payload, 32)
        if f.command == Command.WRITE:
            addr = struct.unpack_from("<I", p)[0]
            self.memory[addr:addr + len(p) - 4] = p[4:]
            return Status.OK, b""
        if f.command == Command.READ:
            addr, n = struct.unpack("<IH", p)
            if n > self.max_payload:
                return Status.BAD_LENGTH, b""
            return Status.OK, bytes(self.memory[addr:addr + n])
        if f.command == Command.WRITE_CSR:
            index, value = struct.unpack("<BI", p)
            if index == Csr.CTRL and value & CTRL_START:
                self.starts += 1
                self.busy_polls = self.run_polls
            elif index == Csr.PROGRAM_ADDR:
                self.regs[index] = value
            return Status.OK, b""
        index = p[0]
        if index == Csr.STATUS:
            done = self.starts and not self.busy_polls
            self.busy_polls = max(0, self.busy_polls - 1)
            value = STATUS_DONE if done else 1
        else:
            value = {Csr.ID: CSR_ID_VALUE, Csr.COUNTER_COUNT: 2,
                     Csr.COUNTER_BASE: self.starts, Csr.COUNTER_BASE + 1: 1234}.get(
                         index, self.regs.get(index, 0))
        return Status.OK, struct.pack("<I", value)


class ModelTransport:
    """A blocking transport to :class:`LinkModel` with a simulated clock and a faulty wire.

    ``corrupt_requests`` / ``corrupt_responses`` / ``lose_responses``: sets of indices (0 for
    the first request sent) whose frame gets one bit flipped, or whose answer is lost.
    """

    def __init__(self, link, *, corrupt_requests=(), corrupt_responses=(), lose_responses=()):
        self.link = link
        self.corrupt_requests = set(corrupt_requests)
        self.corrupt_responses = set(corrupt_responses)
        self.lose_responses = set(lose_responses)
        self.sent = 0
        self.time = 0.0
        self.pending = b""

    def send(self, data):
        index, self.sent = self.sent, self.sent + 1
        data = bytearray(data)
        if index in self.corrupt_requests:
            data[-3] ^= 0x04
        frames = FrameDecoder().feed(bytes(data))
        if not frames:      # the link answers a whole frame with a bad CRC with BAD_CRC
            answer = encode_response(data[1], data[2], Status.BAD_CRC)
        else:
            answer = self.link.answer(frames[0])
        if index in self.corrupt_responses:
            answer = bytearray(answer)
            answer[6] ^= 0x80
            answer = bytes(answer)
        if index not in self.lose_responses:
            self.pending += answer

    def recv(self, timeout):
        if not self.pending:
            self.time += timeout
            return b""
        self.time += 0.001
        data, self.pending = self.pending[:3], self.pending[3:]    # a few bytes at a time
        return data

    def now(self):
        return self.time


def test_device_writes_and_reads_across_frames():
    link = LinkModel(max_payload=32)
    dev = Device(ModelTransport(link), timeout=0.1)
    data = bytes(range(200)) * 2
    dev.write(100, data)
    assert link.memory[100:500] == data
    assert dev.read(100, 400) == data
    assert dev.info().max_payload == 32
    # 400 bytes: 15 WRITEs of 28 bytes (the last 8), 13 READs of up to 32, and one INFO first.
    assert [c for c, _ in link.executed].count(Command.WRITE) == 15
    assert [c for c, _ in link.executed].count(Command.READ) == 13
    assert link.executed[0] == (Command.INFO, 0)
    assert dev.resends == 0


def test_device_start_wait_and_counters():
    link = LinkModel(run_polls=3)
    dev = Device(ModelTransport(link), timeout=0.1, counter_names=("starts", "cycles"))
    assert dev.read_csr(Csr.ID) == CSR_ID_VALUE
    dev.start(program_addr=0x8000)
    dev.wait_done(timeout=1.0)
    assert link.regs[Csr.PROGRAM_ADDR] == 0x8000 and link.starts == 1
    # Three polls saw busy, the fourth done.
    assert [c for c, _ in link.executed].count(Command.READ_CSR) == 1 + 4
    assert dev.counters() == {"starts": 1, "cycles": 1234}


def test_wait_done_times_out_with_the_last_status():
    link = LinkModel(run_polls=10**6)
    transport = ModelTransport(link)
    dev = Device(transport, timeout=0.1)
    dev.start()
    with pytest.raises(TimeoutError, match=r"^Accelerator not done after 0.05 s \(status 0x1\)$"):
        dev.wait_done(timeout=0.05)


def test_counter_names_must_match_the_device():
    dev = Device(ModelTransport(LinkModel()), counter_names=("only_one",))
    with pytest.raises(LinkError, match="^Device has 2 counters, the driver expects 1$"):
        dev.counters()


def test_corrupted_request_is_resent_with_the_same_sequence_number():
    link = LinkModel()
    transport = ModelTransport(link, corrupt_requests={1})
    dev = Device(transport, timeout=0.1)
    dev.write(0, b"hello")
    assert link.memory[:5] == b"hello"
    assert dev.resends == 1
    # The corrupted attempt executed nothing; the resend executed seq 1 once.
    assert link.executed == [(Command.INFO, 0), (Command.WRITE, 1)]


@pytest.mark.parametrize("fault", ["corrupt_responses", "lose_responses"])
def test_a_start_whose_answer_is_lost_is_resent_and_runs_once(fault):
    link = LinkModel()
    transport = ModelTransport(link, **{fault: {1}})     # request 0 is the session's INFO
    dev = Device(transport, timeout=0.1)
    dev.start()
    assert dev.resends == 1 and link.starts == 1
    assert link.executed == [(Command.INFO, 0), (Command.WRITE_CSR, 1)]
    # A lost answer costs one timeout; a corrupted one is noticed as soon as it has arrived.
    assert transport.time >= 0.1 if fault == "lose_responses" else transport.time < 0.1


def test_a_new_driver_is_not_mistaken_for_a_retry_of_the_last_one():
    # Two runs of the same script: each driver's first start would carry the same sequence
    # number; the INFO that opens each session keeps the link from skipping the second start.
    link = LinkModel()
    for _ in range(2):
        Device(ModelTransport(link), timeout=0.1).start()
    assert link.starts == 2


def test_retries_run_out_with_link_error_naming_the_request():
    link = LinkModel()
    dev = Device(ModelTransport(link, corrupt_requests={1, 2, 3}), timeout=0.1, retries=2)
    with pytest.raises(LinkError, match=r"^WRITE_CSR seq 1: request arrived corrupted "
                                        r"\(BAD_CRC\) after 3 attempts$"):
        dev.write_csr(Csr.PROGRAM_ADDR, 5)
    assert link.executed == [(Command.INFO, 0)]


def test_an_error_status_raises_device_error():
    link = LinkModel(max_payload=32)
    dev = Device(ModelTransport(link), timeout=0.1)
    # Bypass the driver's chunking to send a READ longer than the link allows.
    op = dev._transact(Command.READ, struct.pack("<IH", 0, 33))
    with pytest.raises(DeviceError, match="^READ request answered BAD_LENGTH$") as e:
        dev._run(op)
    assert e.value.status == Status.BAD_LENGTH


def test_argument_errors_quote_the_value():
    dev = Device(ModelTransport(LinkModel()))
    with pytest.raises(ValueError, match="Register value must be 0 to 2\\*\\*32-1, not -1"):
        dev.write_csr(3, -1)
    with pytest.raises(ValueError, match="Register index must be 0 to 255, not 256"):
        dev.read_csr(256)
    with pytest.raises(ValueError, match="Timeout must be positive, not 0"):
        Device(None, timeout=0)
    with pytest.raises(ValueError, match="Byte count must be a non-negative integer, not -2"):
        dev.read(0, -2)
    with pytest.raises(ValueError, match=r"Bytes 4294967295 to 4294967295 \+ 2 are outside"):
        dev.write(0xFFFFFFFF, b"ab")


# --- serial transport --------------------------------------------------------------------

def test_serial_transport_without_pyserial_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)       # makes `import serial` fail
    with pytest.raises(HoarfrostError, match=r"^the serial transport needs pyserial: "
                                             r"pip install pyserial==3.5$"):
        SerialTransport("/dev/ttyUSB1")


def test_serial_transport_names_a_port_it_cannot_open(tmp_path):
    pytest.importorskip("serial")
    port = str(tmp_path / "ttyNOPE")
    with pytest.raises(HoarfrostError, match=rf"^cannot open serial port '{port}' .*check that "
                                             rf"the board is plugged in, the port name"):
        SerialTransport(port)


def test_serial_transport_moves_bytes_through_pyserial_loopback():
    pytest.importorskip("serial")
    # pyserial's loop:// port echoes what is written: the driver's requests come back as
    # frames the decoder recognises (not responses, so a Device would time out on them).
    transport = SerialTransport("loop://", 115200)
    frame = encode_request(Command.READ_CSR, 7, b"\x02")
    transport.send(frame)
    got = b""
    deadline = transport.now() + 1.0
    while len(got) < len(frame) and transport.now() < deadline:
        got += transport.recv(0.1)
    assert FrameDecoder().feed(got) == [Frame(Command.READ_CSR, 7, b"\x02")]
    assert transport.recv(0.01) == b""
    transport.close()
