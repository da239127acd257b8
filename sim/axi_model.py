"""A Python AXI4 memory (subordinate) for amaranth.sim testbenches, with latency and stalls.

:class:`AxiMemoryModel` serves whichever channels its port has (AR/R, AW/W/B or all five) from
one background testbench process. It checks what an AXI4 memory must be able to rely on
(INCR bursts of full-width beats, aligned addresses, no 4 KB crossing, at most 256 beats,
WLAST on exactly the last beat, VALID held until READY) and fails the simulation otherwise.
A W channel with byte strobes (``strb``) writes only the lanes whose strobe bit is set.

Latency: a read burst accepted on AR at clock edge ``k`` returns its first beat no earlier than
edge ``k + read_latency``; a write response leaves no earlier than ``write_latency`` edges after
the burst's last W beat. Bursts in flight age in parallel, as in a DRAM controller's command
queue, so a manager that issues requests early sees the latency only once. Random stalls: each
cycle, each READY (AR, AW, W) is withheld and each new VALID (R, B) delayed with probability
``stall_prob``.

The cocotb testbench (``sim/tb/dma_tb.py``) puts the same latency on cocotbext-axi's AxiRam.
"""

from __future__ import annotations

import random
from collections import deque

from hoarfrost.hw.axi import BOUNDARY_BYTES, MAX_BURST_BEATS, AxiBurst, AxiResp

__all__ = ["AxiMemoryModel", "AxiProtocolError"]


class AxiProtocolError(AssertionError):
    """The manager broke an AXI4 rule the model checks."""


class AxiMemoryModel:
    """Beat-addressed memory behind an AXI4 port in an amaranth.sim simulation.

    Parameters
    ----------
    port : interface
        The manager's port (``dut.m_axi``): any of the ``aw``, ``w``, ``b``, ``ar``, ``r``
        channels it has are served.
    data_width : int
        Bits per beat.
    rng : random.Random
        Source of the stalls.
    read_latency, write_latency : int
        Edges from AR acceptance to the first R beat, and from the last W beat to B (>= 1).
    stall_prob : float
        Probability of a stall per channel per cycle.
    queue_depth : int
        Bursts the memory accepts ahead on AR (and on AW) before it withholds READY.
    fill : callable, optional
        ``fill(beat_index) -> int``, the contents of a beat never written.

    Attributes
    ----------
    memory : dict of int to int
        Beats written, by beat index (byte address / bytes per beat).
    read_bursts, write_bursts : list of (int, int)
        ``(byte address, beats)`` of each burst accepted, in order.
    max_reads_in_flight : int
        Most read bursts accepted on AR and not fully returned on R at one time.
    max_writes_in_flight : int
        Most write bursts accepted on AW and not yet answered on B at one time.
    """

    def __init__(self, port, *, data_width: int, rng: random.Random, read_latency: int = 1,
                 write_latency: int = 1, stall_prob: float = 0.0, queue_depth: int = 8,
                 fill=None):
        if read_latency < 1 or write_latency < 1:
            raise ValueError(f"Latencies must be at least 1, not {read_latency!r} / "
                             f"{write_latency!r}")
        self.port = port
        self.bytes_per_beat = data_width // 8
        self.rng = rng
        self.read_latency, self.write_latency = read_latency, write_latency
        self.stall_prob = stall_prob
        self.queue_depth = queue_depth
        self.fill = fill or (lambda index: (index * 0x9E3779B97F4A7C15) % (1 << data_width))
        self.memory: dict[int, int] = {}
        self.read_bursts: list[tuple[int, int]] = []
        self.write_bursts: list[tuple[int, int]] = []
        self.max_reads_in_flight = 0
        self.max_writes_in_flight = 0
        self.channels = {name for name in ("aw", "w", "b", "ar", "r")
                         if name in port.signature.members}

    def read_beat(self, index: int) -> int:
        return self.memory.get(index, self.fill(index))

    def _stall(self) -> bool:
        return self.stall_prob > 0 and self.rng.random() < self.stall_prob

    def _check_request(self, kind, addr, length, size, burst):
        beats = length + 1
        if burst != AxiBurst.INCR:
            raise AxiProtocolError(f"{kind} burst type {burst} is not INCR")
        if 1 << size != self.bytes_per_beat:
            raise AxiProtocolError(f"{kind} size {size} is not the bus width")
        if addr % self.bytes_per_beat:
            raise AxiProtocolError(f"{kind} address {addr:#x} is not beat-aligned")
        if beats > MAX_BURST_BEATS:
            raise AxiProtocolError(f"{kind} burst of {beats} beats")
        if addr // BOUNDARY_BYTES != (addr + beats * self.bytes_per_beat - 1) // BOUNDARY_BYTES:
            raise AxiProtocolError(f"{kind} burst at {addr:#x} of {beats} beats crosses 4 KB")

    async def run(self, ctx) -> None:
        """The background testbench process: ``sim.add_testbench(model.run, background=True)``."""
        p = self.port
        has_read = {"ar", "r"} <= self.channels
        has_write = {"aw", "w", "b"} <= self.channels
        edge = 0
        reads = deque()        # [accept edge, beat index, beats left, id] of accepted reads
        writes = deque()       # [beat index, beats left, id] of bursts accepted on AW
        responses = deque()    # (earliest edge, id) of write responses due
        r_beat = b_resp = None  # what R / B present this cycle (held until taken)
        ar_pending = aw_pending = None  # a request seen VALID and not yet READY
        writes_in_flight = 0
        sampled = []
        if has_read:
            sampled += [p.ar.valid, p.ar.ready, p.ar.addr, p.ar.len, p.ar.size, p.ar.burst,
                        p.ar.id, p.r.valid, p.r.ready]
        if has_write:
            sampled += [p.aw.valid, p.aw.ready, p.aw.addr, p.aw.len, p.aw.size, p.aw.burst,
                        p.aw.id, p.w.valid, p.w.ready, p.w.data, p.w.last, p.b.valid, p.b.ready]
        strobes = has_write and "strb" in p.w.signature.members
        if strobes:
            sampled.append(p.w.strb)

        while True:
            # Drive this cycle's outputs; a beat or response once offered stays until taken.
            if has_read:
                ctx.set(p.ar.ready, len(reads) < self.queue_depth and not self._stall())
                if r_beat is None and reads and edge + 1 >= reads[0][0] + self.read_latency \
                        and not self._stall():
                    _, index, left, rid = reads[0]
                    r_beat = (self.read_beat(index), left == 1, rid)
                if r_beat is not None:
                    ctx.set(p.r.data, r_beat[0])
                    ctx.set(p.r.last, r_beat[1])
                    ctx.set(p.r.id, r_beat[2])
                    ctx.set(p.r.resp, AxiResp.OKAY)
                ctx.set(p.r.valid, r_beat is not None)
            if has_write:
                ctx.set(p.aw.ready, len(writes) < self.queue_depth and not self._stall())
                # This memory takes write data only for a burst whose address it has.
                ctx.set(p.w.ready, bool(writes) and not self._stall())
                if b_resp is None and responses and edge + 1 >= responses[0][0] \
                        and not self._stall():
                    b_resp = responses.popleft()[1]
                if b_resp is not None:
                    ctx.set(p.b.id, b_resp)
                    ctx.set(p.b.resp, AxiResp.OKAY)
                ctx.set(p.b.valid, b_resp is not None)

            _, _, *values = await ctx.tick().sample(*sampled)
            edge += 1
            v = dict(zip(map(id, sampled), values))

            def get(signal):
                return v[id(signal)]

            if has_read:
                if ar_pending is not None and not get(p.ar.valid):
                    raise AxiProtocolError("ARVALID dropped before ARREADY")
                request = (get(p.ar.addr), get(p.ar.len), get(p.ar.size), get(p.ar.burst),
                           get(p.ar.id))
                if ar_pending is not None and request != ar_pending:
                    raise AxiProtocolError("AR request changed while waiting for ARREADY")
                ar_pending = request if get(p.ar.valid) and not get(p.ar.ready) else None
                if get(p.r.valid) and get(p.r.ready):
                    r_beat = None
                    reads[0][1] += 1
                    reads[0][2] -= 1
                    if reads[0][2] == 0:
                        reads.popleft()
                if get(p.ar.valid) and get(p.ar.ready):
                    addr, length, size, burst, rid = request
                    self._check_request("read", addr, length, size, burst)
                    self.read_bursts.append((addr, length + 1))
                    reads.append([edge, addr // self.bytes_per_beat, length + 1, rid])
                    self.max_reads_in_flight = max(self.max_reads_in_flight, len(reads))

            if has_write:
                if aw_pending is not None and not get(p.aw.valid):
                    raise AxiProtocolError("AWVALID dropped before AWREADY")
                request = (get(p.aw.addr), get(p.aw.len), get(p.aw.size), get(p.aw.burst),
                           get(p.aw.id))
                if aw_pending is not None and request != aw_pending:
                    raise AxiProtocolError("AW request changed while waiting for AWREADY")
                aw_pending = request if get(p.aw.valid) and not get(p.aw.ready) else None
                if get(p.b.valid) and get(p.b.ready):
                    b_resp = None
                    writes_in_flight -= 1
                if get(p.w.valid) and get(p.w.ready):
                    burst = writes[0]
                    beat = get(p.w.data)
                    if strobes:
                        mask = sum(0xFF << 8 * lane for lane in range(self.bytes_per_beat)
                                   if get(p.w.strb) >> lane & 1)
                        beat = self.read_beat(burst[0]) & ~mask | beat & mask
                    self.memory[burst[0]] = beat
                    burst[0] += 1
                    burst[1] -= 1
                    if bool(get(p.w.last)) != (burst[1] == 0):
                        raise AxiProtocolError(f"WLAST {get(p.w.last)} with {burst[1]} beats "
                                               f"of the burst left")
                    if burst[1] == 0:
                        writes.popleft()
                        responses.append((edge + self.write_latency, burst[2]))
                if get(p.aw.valid) and get(p.aw.ready):
                    addr, length, size, burst, wid = request
                    self._check_request("write", addr, length, size, burst)
                    self.write_bursts.append((addr, length + 1))
                    writes.append([addr // self.bytes_per_beat, length + 1, wid])
                    writes_in_flight += 1
                    self.max_writes_in_flight = max(self.max_writes_in_flight, writes_in_flight)
