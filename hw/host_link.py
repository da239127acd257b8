"""The host link: a framed request/response protocol over a byte stream (the UART).

Frame layout (requests and responses alike; multi-byte fields little-endian except the CRC):

=======  =======  ======================================================================
offset   bytes    field
=======  =======  ======================================================================
0        1        sync, ``0xA5``
1        1        command: a request's code (below); a response's is that code | 0x80
2        1        sequence number, chosen by the host; a response echoes its request's
3        2        payload length ``L``, 0 to 65535
5        ``L``    payload
5 + L    2        CRC-16/CCITT-FALSE of bytes ``0 .. 4 + L``, **big-endian**
=======  =======  ======================================================================

CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR
(``crc("123456789") = 0x29B1``). Sent big-endian, the CRC makes the CRC of the whole frame 0, so
the receiver runs one CRC over everything it takes and checks for 0. Sixteen bits detect every
error of up to 3 bits in a frame of up to 4 KB and every burst of up to 16 bits; CRC-32 would
cost twice the logic for protection a cable a metre long does not need.

Requests and their responses. A response's payload is a status byte, then data if it is OK:

=========  ====  ==========================================  ================================
command    code  request payload                             response data (if OK)
=========  ====  ==========================================  ================================
INFO       0x00  (none)                                      version u8, max_payload u16,
                                                             memory address width u8
WRITE      0x01  addr u32, then up to max_payload - 4 bytes  (none)
READ       0x02  addr u32, count u16 (up to max_payload)     ``count`` bytes
WRITE_CSR  0x03  index u8, value u32                         (none)
READ_CSR   0x04  index u8                                    value u32
STREAM     0x05  1 to max_payload bytes                      (none)
=========  ====  ==========================================  ================================

STREAM sends its payload, byte by byte and in order, out of the link's ``stream_out`` port (on a
board: into the frozen front end's pixel input); it is answered when the last byte has been
taken, so the host starts the accelerator first. A link built without the port answers
``BAD_COMMAND``.

Statuses: ``OK`` 0; ``BAD_CRC`` 1 (the frame's CRC failed: nothing was done, the host should
resend); ``BAD_COMMAND`` 2 (unknown code, or STREAM without a stream port); ``BAD_LENGTH`` 3
(the payload length does not suit the command, or a WRITE or READ is longer than
``max_payload``). Every frame that arrives whole
is answered, even one with a bad CRC (whose echoed command and sequence number may themselves be
wrong; the host drops a response whose sequence number it is not waiting for, and times out).
Only frames with a good CRC, a known command and a right length are executed, and a WRITE's
data reaches memory only after its CRC has been checked (the payload waits in a buffer).

Retries: the host resends a request with the *same* sequence number. A WRITE, WRITE_CSR or
STREAM whose command and sequence number equal the last one executed is answered ``OK`` without being
done again: writing ``CTRL_START`` twice would start the accelerator twice. (A driver starts a
session with INFO, which resets this memory.)

Resynchronization: between frames the link skips bytes until a sync byte. If a frame stalls
for ``timeout_cycles`` clocks (a lost byte, or a corrupted length announcing more bytes than
come), the link drops it silently and hunts for sync again; the host's timeout must be longer.
One request at a time: the link reads nothing while it executes or answers.

The register map behind the CSR port (:class:`ControlRegisters`) is
:class:`hoarfrost.firmware.host.Csr`; the numbers of this protocol are defined once, in
:mod:`hoarfrost.firmware.host`, with the host driver.
"""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hoarfrost.firmware.host import (CSR_ID_VALUE, CTRL_CLEAR_DONE, CTRL_START,
                                     PROTOCOL_VERSION, RESPONSE_FLAG, STATUS_BUSY, STATUS_DONE,
                                     SYNC, Command, Csr, Status, crc16)
from hoarfrost.hw.uart import UartRx, UartTx

__all__ = ["HostBusSignature", "crc16_step", "HostLink", "UartHostLink", "ControlRegisters"]


class HostBusSignature(wiring.Signature):
    """A simple memory-style bus, seen from the initiator (the host link).

    A request (``addr``, ``we``, ``wdata``) moves on a clock edge at which ``valid`` and
    ``ready`` are both high; the initiator holds it stable until then. A write is complete when
    accepted. For each accepted read the target raises ``rvalid`` for exactly one clock, one or
    more clocks after the acceptance, with ``rdata``; the initiator always takes it and issues
    nothing else meanwhile. A synchronous RAM is a target with ``ready = 1`` and ``rvalid`` the
    accepted read delayed by a register.

    Parameters
    ----------
    addr_width : int
        Address bits (byte addresses on the memory port, register indices on the CSR port).
    data_width : int
        Bits per access (8 on the memory port, 32 on the CSR port).

    Members
    -------
    addr : ``Out(addr_width)``
    we : ``Out(1)``
        Write (else read).
    wdata : ``Out(data_width)``
    valid : ``Out(1)``
    ready : ``In(1)``
    rdata : ``In(data_width)``
    rvalid : ``In(1)``
    """

    def __init__(self, *, addr_width: int, data_width: int):
        if not isinstance(addr_width, int) or not 1 <= addr_width <= 32:
            raise ValueError(f"Address width must be an integer from 1 to 32, not {addr_width!r}")
        if not isinstance(data_width, int) or data_width not in (8, 16, 32):
            raise ValueError(f"Data width must be 8, 16 or 32, not {data_width!r}")
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "addr": Out(addr_width), "we": Out(1), "wdata": Out(data_width),
            "valid": Out(1), "ready": In(1), "rdata": In(data_width), "rvalid": In(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"HostBusSignature(addr_width={self.addr_width}, data_width={self.data_width})"


def _crc16_step_masks() -> list[int]:
    """For each bit of the next CRC register, the bits of ``Cat(crc, byte)`` it is the XOR of.

    The CRC is linear over GF(2), so running the bitwise algorithm on masks instead of bits
    gives a flat XOR per output bit (unrolling the loop on expressions would nest 8 deep).
    """
    state = [1 << j for j in range(16)]          # bit j of crc is input bit j
    for i in range(8):
        feedback = state[15] ^ (1 << (16 + 7 - i))  # byte bit 7 - i, MSB first
        state = [0] + state[:15]
        for j in range(16):
            if (0x1021 >> j) & 1:
                state[j] ^= feedback
    return state


_CRC16_MASKS = _crc16_step_masks()


def crc16_step(crc, byte):
    """CRC-16/CCITT-FALSE register (16 bits) after one more byte: a combinational value."""
    inputs = Cat(crc, byte)
    return Cat(*((inputs & mask).xor() for mask in _CRC16_MASKS))


#: Request payload lengths that are fixed.
_FIXED_LENGTH = {Command.INFO: 0, Command.READ: 6, Command.WRITE_CSR: 5, Command.READ_CSR: 1}


class HostLink(wiring.Component):
    """Executes the frames of the module docstring's protocol on a memory port and a CSR port.

    Parameters
    ----------
    max_payload : int
        Bytes of the request buffer (a WRITE's address and data) and the longest READ; 6 to
        65535. The buffer is one :class:`Memory` of this many bytes.
    timeout_cycles : int
        Clocks without a byte after which a partial frame is dropped.
    addr_width : int
        Width of memory byte addresses (up to 32; the protocol carries 32).
    stream_port : bool
        Build the ``stream_out`` port and take STREAM requests.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes from the host.
    o_stream : ``Out(stream.Signature(8))``
        Bytes to the host.
    mem : ``Out(HostBusSignature(addr_width=addr_width, data_width=8))``
        Memory, one byte per access.
    csr : ``Out(HostBusSignature(addr_width=8, data_width=32))``
        Control and status registers.
    stream_out : ``Out(stream.Signature(8))``
        Only with ``stream_port``: the payload bytes of STREAM requests, in order.
    frames, crc_errors, timeouts : ``Out(16)``
        Frames answered, frames answered ``BAD_CRC``, partial frames dropped (wrapping).
    """

    def __init__(self, *, max_payload: int = 256, timeout_cycles: int = 1 << 20,
                 addr_width: int = 32, stream_port: bool = False):
        if not isinstance(max_payload, int) or not 6 <= max_payload <= 0xFFFF:
            raise ValueError(f"Largest payload must be an integer from 6 to 65535, "
                             f"not {max_payload!r}")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 1:
            raise ValueError(f"Timeout must be a positive number of cycles, "
                             f"not {timeout_cycles!r}")
        self.max_payload, self.timeout_cycles = max_payload, timeout_cycles
        self.addr_width, self.has_stream = addr_width, stream_port
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "mem": Out(HostBusSignature(addr_width=addr_width, data_width=8)),
            "csr": Out(HostBusSignature(addr_width=8, data_width=32)),
            **({"stream_out": Out(stream.Signature(8))} if stream_port else {}),
            "frames": Out(16), "crc_errors": Out(16), "timeouts": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = Memory(shape=8, depth=self.max_payload, init=[])
        buf_w = buf.write_port()
        buf_r = buf.read_port()

        i, o, mem, csr = self.i_stream, self.o_stream, self.mem, self.csr
        cmd, seq = Signal(8), Signal(8)
        length = Signal(16)
        count = Signal(16)              # payload bytes received / data bytes moved
        args = Signal(48)               # the first six payload bytes
        crc = Signal(16, init=0xFFFF)
        status = Signal(8)
        data_len = Signal(16)           # response data bytes after the status
        ptr = Signal(self.addr_width)   # memory address of the next access
        word = Signal(32)               # READ_CSR value or INFO, sent LSB first
        last_cmd, last_seq = Signal(8), Signal(8)   # the last request executed, for retries
        idle = Signal(range(self.timeout_cycles + 1))

        take = Signal()                 # a byte from the host moves this clock
        m.d.comb += take.eq(i.valid & i.ready)

        # Payload bytes go to the buffer (those that fit) and the first six to `args`.
        m.d.comb += [buf_w.addr.eq(count), buf_w.data.eq(i.payload)]
        with m.If(take & (count < 6)):
            m.d.sync += args.word_select(count[:3], 8).eq(i.payload)

        tx_byte = Signal(8)             # the byte a sending state offers
        sent = Signal()
        m.d.comb += [o.payload.eq(tx_byte), sent.eq(o.valid & o.ready)]
        # One CRC for both directions (a byte is never taken and sent in the same clock).
        with m.If(take | sent):
            m.d.sync += crc.eq(crc16_step(crc, Mux(take, i.payload, tx_byte)))

        addr_arg, count_arg = args[:32], args[32:48]
        csr_index, csr_value = args[:8], args[8:40]
        m.d.comb += [
            mem.addr.eq(ptr), mem.wdata.eq(buf_r.data), buf_r.addr.eq(count),
            csr.addr.eq(csr_index), csr.wdata.eq(csr_value),
        ]

        def receive(next_state, *actions):
            """Wait for a byte (or the timeout) in a receiving state."""
            m.d.comb += i.ready.eq(1)
            with m.If(take):
                m.d.sync += [idle.eq(0), *actions]
                m.next = next_state
            with m.Elif(idle == self.timeout_cycles):
                m.d.sync += [idle.eq(0), self.timeouts.eq(self.timeouts + 1)]
                m.next = "HUNT"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        def send(byte, next_state):
            m.d.comb += [o.valid.eq(1), tx_byte.eq(byte)]
            with m.If(o.ready):
                m.next = next_state

        known = Signal()
        length_ok = Signal()
        is_write = cmd == Command.WRITE
        is_read = cmd == Command.READ
        commands = [c for c in Command if c != Command.STREAM or self.has_stream]
        m.d.comb += known.eq(Cat(cmd == c for c in commands).any())
        with m.Switch(cmd):
            for c, n in _FIXED_LENGTH.items():
                with m.Case(c):
                    m.d.comb += length_ok.eq(length == n)
            with m.Case(Command.WRITE):
                m.d.comb += length_ok.eq((length >= 4) & (length <= self.max_payload))
            with m.Case(Command.STREAM):
                m.d.comb += length_ok.eq((length >= 1) & (length <= self.max_payload))
        read_ok = count_arg <= self.max_payload
        retry = (cmd == last_cmd) & (seq == last_seq)

        with m.FSM(name="link"):
            with m.State("HUNT"):
                m.d.comb += i.ready.eq(1)
                with m.If(take & (i.payload == SYNC)):
                    # The CRC starts over at each sync byte (it holds the last response's now).
                    m.d.sync += [idle.eq(0), crc.eq(crc16(bytes([SYNC])))]
                    m.next = "CMD"
            with m.State("CMD"):
                receive("SEQ", cmd.eq(i.payload))
            with m.State("SEQ"):
                receive("LEN_LO", seq.eq(i.payload))
            with m.State("LEN_LO"):
                receive("LEN_HI", length[:8].eq(i.payload), count.eq(0))
            with m.State("LEN_HI"):
                receive("PAYLOAD", length[8:].eq(i.payload))
                with m.If(take & (Cat(length[:8], i.payload) == 0)):
                    m.next = "CRC_HI"
            with m.State("PAYLOAD"):
                receive("PAYLOAD", count.eq(count + 1))
                m.d.comb += buf_w.en.eq(take & (count < self.max_payload))
                with m.If(take & (count + 1 == length)):
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                receive("CRC_LO")
            with m.State("CRC_LO"):
                receive("DECIDE")       # `crc` is then 0 if the frame is intact

            with m.State("DECIDE"):
                m.d.sync += [crc.eq(0xFFFF), count.eq(0), data_len.eq(0), ptr.eq(addr_arg),
                             self.frames.eq(self.frames + 1)]
                with m.If(crc != 0):
                    m.d.sync += [status.eq(Status.BAD_CRC),
                                 self.crc_errors.eq(self.crc_errors + 1)]
                    m.next = "TX_SYNC"
                with m.Elif(~known):
                    m.d.sync += status.eq(Status.BAD_COMMAND)
                    m.next = "TX_SYNC"
                with m.Elif(~length_ok | (is_read & ~read_ok)):
                    m.d.sync += status.eq(Status.BAD_LENGTH)
                    m.next = "TX_SYNC"
                with m.Else():
                    m.d.sync += [status.eq(Status.OK), last_cmd.eq(cmd), last_seq.eq(seq)]
                    with m.Switch(cmd):
                        with m.Case(Command.INFO):
                            m.d.sync += [
                                data_len.eq(4),
                                word.eq(Cat(Const(PROTOCOL_VERSION, 8),
                                            Const(self.max_payload, 16),
                                            Const(self.addr_width, 8))),
                                # INFO starts a session: no earlier write is a retry of the next.
                                last_cmd.eq(Command.INFO),
                            ]
                            m.next = "TX_SYNC"
                        with m.Case(Command.WRITE):
                            m.d.sync += count.eq(4)
                            m.next = "WR_FETCH"
                            with m.If(retry | (length == 4)):
                                m.next = "TX_SYNC"
                        with m.Case(Command.READ):
                            m.d.sync += data_len.eq(count_arg)
                            m.next = "TX_SYNC"
                        with m.Case(Command.WRITE_CSR):
                            m.next = "CSR_WRITE"
                            with m.If(retry):
                                m.next = "TX_SYNC"
                        with m.Case(Command.READ_CSR):
                            m.d.sync += data_len.eq(4)
                            m.next = "CSR_READ"
                        if self.has_stream:
                            with m.Case(Command.STREAM):
                                m.next = "ST_FETCH"
                                with m.If(retry):
                                    m.next = "TX_SYNC"

            # WRITE: buffer byte `count` is read the clock before it is offered to memory.
            with m.State("WR_FETCH"):
                m.next = "WR_ISSUE"
            with m.State("WR_ISSUE"):
                m.d.comb += [mem.valid.eq(1), mem.we.eq(1)]
                with m.If(mem.ready):
                    m.d.sync += [count.eq(count + 1), ptr.eq(ptr + 1)]
                    m.next = "WR_FETCH"
                    with m.If(count + 1 == length):
                        m.next = "TX_SYNC"

            if self.has_stream:
                # STREAM: like WRITE, from buffer byte 0, into `stream_out`.
                out = self.stream_out
                m.d.comb += out.payload.eq(buf_r.data)
                with m.State("ST_FETCH"):
                    m.next = "ST_SEND"
                with m.State("ST_SEND"):
                    m.d.comb += out.valid.eq(1)
                    with m.If(out.ready):
                        m.d.sync += count.eq(count + 1)
                        m.next = "ST_FETCH"
                        with m.If(count + 1 == length):
                            m.next = "TX_SYNC"

            with m.State("CSR_WRITE"):
                m.d.comb += [csr.valid.eq(1), csr.we.eq(1)]
                with m.If(csr.ready):
                    m.next = "TX_SYNC"
            with m.State("CSR_READ"):
                m.d.comb += csr.valid.eq(1)
                with m.If(csr.ready):
                    m.next = "CSR_WAIT"
            with m.State("CSR_WAIT"):
                with m.If(csr.rvalid):
                    m.d.sync += word.eq(csr.rdata)
                    m.next = "TX_SYNC"

            # The response; `crc` accumulates every byte sent before the CRC itself.
            with m.State("TX_SYNC"):
                send(SYNC, "TX_CMD")
            with m.State("TX_CMD"):
                send(cmd | RESPONSE_FLAG, "TX_SEQ")
            with m.State("TX_SEQ"):
                send(seq, "TX_LEN_LO")
            with m.State("TX_LEN_LO"):
                send((data_len + 1)[:8], "TX_LEN_HI")
            with m.State("TX_LEN_HI"):
                send((data_len + 1)[8:16], "TX_STATUS")
            with m.State("TX_STATUS"):
                send(status, "TX_CRC_HI")
                with m.If(o.ready & (data_len != 0)):
                    m.next = "TX_DATA"
                    with m.If(is_read):
                        m.next = "RD_ISSUE"
            with m.State("TX_DATA"):        # the four bytes of `word`
                send(word[:8], "TX_DATA")
                with m.If(o.ready):
                    m.d.sync += [word.eq(word >> 8), count.eq(count + 1)]
                    with m.If(count == 3):
                        m.next = "TX_CRC_HI"
            with m.State("RD_ISSUE"):
                m.d.comb += mem.valid.eq(1)
                with m.If(mem.ready):
                    m.d.sync += ptr.eq(ptr + 1)
                    m.next = "RD_WAIT"
            with m.State("RD_WAIT"):
                with m.If(mem.rvalid):
                    m.d.sync += word[:8].eq(mem.rdata)
                    m.next = "RD_SEND"
            with m.State("RD_SEND"):
                send(word[:8], "RD_ISSUE")
                with m.If(o.ready):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count + 1 == data_len):
                        m.next = "TX_CRC_HI"
            with m.State("TX_CRC_HI"):
                send(crc[8:], "TX_CRC_LO")
                with m.If(o.ready):      # overrides the CRC update: the low byte goes next
                    m.d.sync += crc.eq(Cat(Const(0, 8), crc[:8]))
            with m.State("TX_CRC_LO"):
                send(crc[8:], "HUNT")
        return m


class UartHostLink(wiring.Component):
    """:class:`HostLink` on a UART: what a board's top instantiates.

    Parameters
    ----------
    clk_freq, baud : int
        As :class:`~hoarfrost.hw.uart.UartRx`.
    max_payload, addr_width, stream_port : int, int, bool
        As :class:`HostLink`.
    timeout_cycles : int, optional
        As :class:`HostLink`; by default 50 ms, longer than the gaps a USB serial adapter
        leaves between its packets.

    Members
    -------
    rx : ``In(1)``
        Serial line from the host.
    tx : ``Out(1)``
        Serial line to the host.
    mem, csr, stream_out, frames, crc_errors, timeouts
        As :class:`HostLink` (``stream_out`` only with ``stream_port``).
    uart_errors : ``Out(16)``
        Characters with a bad stop bit or lost to overrun (wrapping).
    """

    def __init__(self, *, clk_freq: int, baud: int, max_payload: int = 256,
                 timeout_cycles: int | None = None, addr_width: int = 32,
                 stream_port: bool = False):
        self.uart_rx = UartRx(clk_freq=clk_freq, baud=baud)
        self.uart_tx = UartTx(clk_freq=clk_freq, baud=baud)
        self.link = HostLink(max_payload=max_payload, addr_width=addr_width,
                             timeout_cycles=timeout_cycles or max(1, clk_freq // 20),
                             stream_port=stream_port)
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "mem": Out(HostBusSignature(addr_width=addr_width, data_width=8)),
            "csr": Out(HostBusSignature(addr_width=8, data_width=32)),
            **({"stream_out": Out(stream.Signature(8))} if stream_port else {}),
            "frames": Out(16), "crc_errors": Out(16), "timeouts": Out(16),
            "uart_errors": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx, m.submodules.uart_tx = self.uart_rx, self.uart_tx
        m.submodules.link = link = self.link
        wiring.connect(m, self.uart_rx.o_stream, link.i_stream)
        wiring.connect(m, link.o_stream, self.uart_tx.i_stream)
        wiring.connect(m, wiring.flipped(self.mem), link.mem)
        wiring.connect(m, wiring.flipped(self.csr), link.csr)
        if self.link.has_stream:
            wiring.connect(m, link.stream_out, wiring.flipped(self.stream_out))
        m.d.comb += [
            self.uart_rx.rx.eq(self.rx), self.tx.eq(self.uart_tx.tx),
            self.frames.eq(link.frames), self.crc_errors.eq(link.crc_errors),
            self.timeouts.eq(link.timeouts),
        ]
        with m.If(self.uart_rx.framing_error | self.uart_rx.overrun):
            m.d.sync += self.uart_errors.eq(self.uart_errors + 1)
        return m


class ControlRegisters(wiring.Component):
    """The accelerator's control and status registers, a target on :class:`HostLink`'s CSR port.

    Register map (:class:`hoarfrost.firmware.host.Csr`, 32-bit registers by index):

    ===  ==============  ====  ==================================================================
    0    ID              r     ``CSR_ID_VALUE`` ("HFR1")
    1    CTRL            w     bit 0: pulse ``start`` (ignored while busy); bit 1: clear done
    2    STATUS          r     bit 0: ``busy``; bit 1: done (set by the ``done`` pulse, cleared by
                               a start or by CTRL bit 1)
    3    PROGRAM_ADDR    r/w   drives ``program_addr``
    4    COUNTER_COUNT   r     number of counters
    5+i  counter *i*     r     the live value of ``counters[i]``
    ===  ==============  ====  ==================================================================

    Other indices read 0 and ignore writes.

    Parameters
    ----------
    counters : int
        Number of counters.
    program_addr_bits : int
        Bits of ``PROGRAM_ADDR`` kept (the rest read 0): the accelerator's memory needs no
        more.
    bank_counters : int
        How many of them (the first) are read from a counter bank
        (:class:`~hoarfrost.hw.counter_bank.CounterBank`) through ``bank_index`` and
        ``bank_value``; the others are inputs of ``counters``.

    Members
    -------
    csr : ``In(HostBusSignature(addr_width=8, data_width=32))``
    start : ``Out(1)``
        One-clock pulse.
    program_addr : ``Out(32)``
    busy, done : ``In(1)``
        The accelerator's state; ``done`` is a one-clock pulse.
    counters : ``In(32)`` array of ``counters - bank_counters`` elements
        Counters ``bank_counters`` on.
    bank_index : ``Out(range(bank_counters))``, bank_value : ``In(32)``
        Only with ``bank_counters``: the counter the bank is asked for, and its value the
        cycle after (the bank's read latency, which the register read has anyway).
    """

    def __init__(self, *, counters: int, bank_counters: int = 0, program_addr_bits: int = 32):
        if not isinstance(counters, int) or not 0 <= counters <= 256 - Csr.COUNTER_BASE:
            raise ValueError(f"Counter count must be an integer from 0 to "
                             f"{256 - Csr.COUNTER_BASE}, not {counters!r}")
        if not isinstance(bank_counters, int) or not 0 <= bank_counters <= counters:
            raise ValueError(f"bank_counters must be an integer from 0 to {counters}, not "
                             f"{bank_counters!r}")
        if not isinstance(program_addr_bits, int) or not 1 <= program_addr_bits <= 32:
            raise ValueError(f"program_addr_bits must be an integer from 1 to 32, not "
                             f"{program_addr_bits!r}")
        self.n_counters, self.bank_counters = counters, bank_counters
        self.program_addr_bits = program_addr_bits
        bank = ({"bank_index": Out(range(bank_counters)), "bank_value": In(32)}
                if bank_counters else {})
        super().__init__({
            "csr": In(HostBusSignature(addr_width=8, data_width=32)),
            "start": Out(1), "program_addr": Out(32), "busy": In(1), "done": In(1),
            "counters": In(32).array(counters - bank_counters),
            **bank,
        })

    def elaborate(self, platform):
        m = Module()
        csr = self.csr
        done = Signal()
        m.d.comb += csr.ready.eq(1)
        with m.If(self.done):
            m.d.sync += done.eq(1)

        write = csr.valid & csr.we
        with m.If(write):
            with m.Switch(csr.addr):
                with m.Case(Csr.CTRL):
                    with m.If((csr.wdata & CTRL_START).any() & ~self.busy):
                        m.d.comb += self.start.eq(1)
                        m.d.sync += done.eq(0)
                    with m.If((csr.wdata & CTRL_CLEAR_DONE).any()):
                        m.d.sync += done.eq(0)
                with m.Case(Csr.PROGRAM_ADDR):
                    m.d.sync += self.program_addr.eq(csr.wdata[:self.program_addr_bits])

        m.d.sync += csr.rvalid.eq(csr.valid & ~csr.we)
        rdata = Signal(32)              # the value of a register not in the bank
        from_bank = Signal()
        m.d.comb += csr.rdata.eq(Mux(from_bank, self.bank_value, rdata) if self.bank_counters
                                 else rdata)
        if self.bank_counters:
            index = csr.addr - Csr.COUNTER_BASE
            m.d.comb += self.bank_index.eq(index)
            m.d.sync += from_bank.eq((csr.addr >= Csr.COUNTER_BASE)
                                     & (index < self.bank_counters))
        with m.Switch(csr.addr):
            with m.Case(Csr.ID):
                m.d.sync += rdata.eq(CSR_ID_VALUE)
            with m.Case(Csr.STATUS):
                m.d.sync += rdata.eq(Mux(self.busy, STATUS_BUSY, 0) | Mux(done, STATUS_DONE, 0))
            with m.Case(Csr.PROGRAM_ADDR):
                m.d.sync += rdata.eq(self.program_addr)
            with m.Case(Csr.COUNTER_COUNT):
                m.d.sync += rdata.eq(self.n_counters)
            for k in range(self.bank_counters, self.n_counters):
                with m.Case(Csr.COUNTER_BASE + k):
                    m.d.sync += rdata.eq(self.counters[k - self.bank_counters])
            with m.Default():
                m.d.sync += rdata.eq(0)
        return m
