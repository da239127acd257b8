"""The accelerator top: frozen front end (optional) -> programmable back end -> sparse engines.

The frozen block (:class:`~hoarfrost.hw.frozen.FrozenFeatureExtractor`, the first convolutions
of the model with their weights in the logic) takes the input image one pixel per beat and
streams its output feature map, one pixel per beat with all channels, into the back end's
``feature_in``; the firmware's ``RECV`` writes it into the scratchpad and the remaining layers
run on the back end (:class:`~hoarfrost.hw.backend.BackEnd`). Without frozen layers the input
is loaded from DRAM.

Sparse engines (optional): one :class:`~hoarfrost.hw.sparse_matvec.SparseMatVec` per
compressed fully connected layer, its weights on chip. The back end runs each as a coprocessor:
the firmware's ``SEND`` streams the layer's input vector from the scratchpad into the engine,
``RECVS`` takes its requantized outputs back into the scratchpad, where later layers (or the
output ``STORE``) find them. The back end's ``sparse_sel`` routes its one pair of streams to
the engine the command names.

The DRAM side stays the back end's pair of byte streams per direction; the AXI bridge plugs in
there.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth import Array, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hoarfrost.hw.backend import BACKEND_COUNTERS, BackEnd
from hoarfrost.hw.serial_backend import SERIAL_COUNTERS, SerialBackEnd
from hoarfrost.hw.config import BackendConfig
from hoarfrost.hw.dram_bridge import DRAM_PORT_STREAMS, DramPortSignature
from hoarfrost.hw.frozen import FrozenFeatureExtractor
from hoarfrost.hw.line_buffer import pixel_layout
from hoarfrost.hw.sparse_matvec import SparseMatVec

__all__ = ["Accelerator", "FROZEN_COUNTERS", "SPARSE_COUNTERS", "sparse_counter_names"]

#: Counters of the frozen block, as the accelerator's ports name them (``frozen_`` + the
#: block's own name): cycles since its first input beat, cycles its output waited on the back
#: end, output pixels delivered. They run on across images (no reset between frames).
FROZEN_COUNTERS = ("frozen_cycles", "frozen_stall_cycles", "frozen_out_pixels")

#: Counters of each sparse engine (:class:`~hoarfrost.hw.sparse_matvec.SparseMatVec`'s), as
#: the accelerator's ports name them: ``sparse<i>_`` + the engine's own name. They run on
#: across images.
SPARSE_COUNTERS = ("cycles", "busy_cycles", "skipped", "macs", "entries", "stall_cycles")


def sparse_counter_names(engines: int) -> tuple[str, ...]:
    """The accelerator's port names of the counters of ``engines`` sparse engines."""
    return tuple(f"sparse{i}_{name}" for i in range(engines) for name in SPARSE_COUNTERS)


class Accelerator(wiring.Component):
    """Frozen front end (optional) -> programmable back end.

    Parameters
    ----------
    config : BackendConfig
        The back end's array and buffers; with ``serial`` the back end is a
        :class:`~hoarfrost.hw.serial_backend.SerialBackEnd` (no frozen layers or sparse engines).
    frozen_specs : sequence of ConvSpec / PoolSpec / AvgPoolSpec, optional
        The frozen layers (:func:`hoarfrost.gen.freeze.freeze_specs`); empty: no front end.
    scratch_bytes, param_depth : int
        As :class:`~hoarfrost.hw.backend.BackEnd`.
    stages : int
        Pipeline stages of each frozen convolution.
    sparse_layers : sequence of (SparseEncoding, Dense, QParams)
        Per sparse engine: the compressed layer, the weight-shared layer (bias, requantization)
        and its input's quantization, as :class:`~hoarfrost.hw.sparse_matvec.SparseMatVec`
        takes them; engine ``i`` is the firmware's ``engine = i``. Empty: no sparse engine.
    sparse_fifo_depth : int
        Work items each sparse PE's queue holds.
    counter_events : bool
        With a serial back end: its ``events`` and ``events_clear`` instead of its counters
        (see :class:`~hoarfrost.hw.serial_backend.SerialBackEnd`), for a counter bank.

    Members
    -------
    pixels : ``In(stream.Signature(pixel_layout(in_channels)))``
        Only with frozen layers: the input image, one pixel per beat in raster order, all
        channels in the beat (lane ``c`` = channel ``c``, signed int8).
    start : ``In(1)``, program_addr : ``In(32)``, busy : ``Out(1)``, done : ``Out(1)``
        The back end's control: ``start`` runs the firmware at ``program_addr``; ``done``
        pulses at its ``END``. With frozen layers the firmware's ``RECV`` takes the frozen
        block's output; pixels may be sent before or after ``start``.
    rd_cmd, rd_data, wr_cmd, wr_data : byte streams
        The back end's DRAM ports (see :class:`~hoarfrost.hw.backend.BackEnd`).
    cycles, fetch_cycles, ... : ``Out(counter_width)``
        The back end's counters, :data:`~hoarfrost.hw.backend.BACKEND_COUNTERS`.
    frozen_cycles, frozen_stall_cycles, frozen_out_pixels : ``Out(32)``
        Only with frozen layers: the frozen block's counters, :data:`FROZEN_COUNTERS`.
    sparse0_cycles, sparse0_macs, ... : ``Out(32)``
        Only with sparse engines: each engine's counters, :func:`sparse_counter_names`.
    """

    def __init__(self, config: BackendConfig, frozen_specs: Sequence = (), *,
                 scratch_bytes: int = 4096, param_depth: int = 64, stages: int = 4,
                 sparse_layers: Sequence = (), sparse_fifo_depth: int = 8,
                 counter_events: bool = False):
        self.frozen = FrozenFeatureExtractor(frozen_specs, stages=stages) if frozen_specs else None
        channels = frozen_specs[-1].out_channels if frozen_specs else 0
        self.sparse = [SparseMatVec(enc, layer, q_in, fifo_depth=sparse_fifo_depth)
                       for enc, layer, q_in in sparse_layers]
        if config.serial:
            if frozen_specs or sparse_layers:
                raise ValueError("the serial back end takes no frozen front end and no sparse "
                                 "engines")
            self.backend = SerialBackEnd(config, scratch_bytes=scratch_bytes,
                                         counter_events=counter_events)
        elif counter_events:
            raise ValueError("counter_events is for the serial back end")
        else:
            self.backend = BackEnd(config, scratch_bytes=scratch_bytes, param_depth=param_depth,
                                   stream_channels=channels, sparse_engines=len(self.sparse))
        cw = config.counter_width
        ports = {
            "start": In(1),
            "program_addr": In(32),
            "busy": Out(1),
            "done": Out(1),
            **DramPortSignature().members,
            **({"events": Out(len(SERIAL_COUNTERS)), "events_clear": Out(1)} if counter_events
               else {name: Out(cw) for name in BACKEND_COUNTERS}),
        }
        if self.frozen is not None:
            ports["pixels"] = In(stream.Signature(pixel_layout(frozen_specs[0].in_channels)))
            ports.update({name: Out(32) for name in FROZEN_COUNTERS})
        ports.update({name: Out(32) for name in sparse_counter_names(len(self.sparse))})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.backend = backend = self.backend
        m.d.comb += [backend.start.eq(self.start), backend.program_addr.eq(self.program_addr),
                     self.busy.eq(backend.busy), self.done.eq(backend.done)]
        counter_ports = (("events", "events_clear") if isinstance(backend, SerialBackEnd)
                         and backend.counter_events else BACKEND_COUNTERS)
        m.d.comb += [getattr(self, name).eq(getattr(backend, name)) for name in counter_ports]
        for name in DRAM_PORT_STREAMS:
            wiring.connect(m, getattr(backend, name), wiring.flipped(getattr(self, name)))
        if self.frozen is not None:
            m.submodules.frozen = frozen = self.frozen
            wiring.connect(m, wiring.flipped(self.pixels), frozen.i_stream)
            wiring.connect(m, frozen.o_stream, backend.feature_in)
            m.d.comb += [getattr(self, f"frozen_{name}").eq(getattr(frozen, name))
                         for name in ("cycles", "stall_cycles", "out_pixels")]
        if self.sparse:
            self._sparse_engines(m, backend)
        return m

    def _sparse_engines(self, m, backend):
        """The back end's ``sparse_out``/``sparse_in`` to the engine ``sparse_sel`` names.
        An engine not selected sees no input and its results wait (``SEND`` and ``RECVS``
        of one layer name the same engine)."""
        send, results, sel = backend.sparse_out, backend.sparse_in, backend.sparse_sel
        for i, engine in enumerate(self.sparse):
            m.submodules[f"sparse{i}"] = engine
            chosen = sel == i
            m.d.comb += [engine.i_stream.payload.eq(send.payload),
                         engine.i_stream.valid.eq(send.valid & chosen),
                         engine.o_stream.ready.eq(results.ready & chosen)]
            m.d.comb += [getattr(self, f"sparse{i}_{name}").eq(getattr(engine, name))
                         for name in SPARSE_COUNTERS]
        # (an engine index past the last reads as engine 0's: the compiler never emits one)
        pick = sel if len(self.sparse) > 1 else 0
        m.d.comb += [
            send.ready.eq(Array(e.i_stream.ready for e in self.sparse)[pick]),
            results.valid.eq(Array(e.o_stream.valid for e in self.sparse)[pick]),
            results.payload.eq(Array(e.o_stream.payload for e in self.sparse)[pick]),
        ]
