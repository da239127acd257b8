"""AXI4 interface signatures, and Verilog port names that AXI tools recognise.

The five AXI4 channels are :class:`wiring.Signature`\\ s of their own (``AxiAddressSignature``
for AW and AR, ``AxiWriteDataSignature`` for W, ``AxiWriteResponseSignature`` for B,
``AxiReadDataSignature`` for R), each with AXI's signal names minus the channel prefix
(``addr``, ``len``, ``valid`` ...). A manager (master) port is ``Out(AxiSignature(...))``:
its AW, W and AR channels are driven, B and R are received.

Only the signals a DMA engine needs are present. The optional AXI4 signals (``*lock``,
``*cache``, ``*prot``, ``*qos``, ``*region``, ``*user``) are absent, which AXI4 defines as
their defaults (normal, non-cacheable, unprivileged, secure); cocotbext-axi's bus classes list
them as optional and accept their absence. ``wstrb`` is present only when a port asks for it
(``wstrb=True``, for partial-beat writes); without it every byte lane is written.

Port names: ``amaranth.back.verilog.convert`` joins a port's path with ``__``, so the member
``m_axi.ar.addr`` would become ``m_axi__ar__addr``. AXI tools (cocotbext-axi's
``AxiBus.from_prefix(dut, "m_axi")``, Vivado's interface inference) expect ``m_axi_araddr``.
:func:`verilog_ports` builds the ``ports=`` argument of ``convert`` with AXI names for AXI
members and Amaranth's names for everything else; :func:`convert` is ``convert`` with it.
"""

from __future__ import annotations

import enum

from amaranth.hdl import _ast, _ir
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "AxiBurst", "AxiResp", "AxiAddressSignature", "AxiWriteDataSignature",
    "AxiWriteResponseSignature", "AxiReadDataSignature", "AxiReadSignature",
    "AxiWriteSignature", "AxiSignature", "verilog_ports", "convert",
    "MAX_BURST_BEATS", "BOUNDARY_BYTES",
]

#: Longest AXI4 INCR burst, in beats (``len`` is 8 bits, beats - 1).
MAX_BURST_BEATS = 256
#: An AXI burst must not cross a 4 KB address boundary (AXI spec A3.4.1).
BOUNDARY_BYTES = 4096


class AxiBurst(enum.IntEnum):
    """Values of ``awburst`` / ``arburst``."""
    FIXED = 0
    INCR = 1
    WRAP = 2


class AxiResp(enum.IntEnum):
    """Values of ``bresp`` / ``rresp``."""
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_widths(addr_width, data_width, id_width):
    if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
        raise ValueError(f"Address width must be an integer from 12 to 64, not {addr_width!r}")
    if (not isinstance(data_width, int) or data_width < 8 or data_width > 1024
            or data_width & (data_width - 1)):
        raise ValueError(f"Data width must be a power of two from 8 to 1024, not {data_width!r}")
    if not isinstance(id_width, int) or not 1 <= id_width <= 32:
        raise ValueError(f"ID width must be an integer from 1 to 32, not {id_width!r}")


class AxiAddressSignature(wiring.Signature):
    """An AW or AR channel, seen from the manager.

    Members
    -------
    id : ``Out(id_width)``
        Transaction ID; responses to one ID return in order.
    addr : ``Out(addr_width)``
        Byte address of the first beat.
    len : ``Out(8)``
        Beats in the burst minus one.
    size : ``Out(3)``
        log2 of the bytes per beat.
    burst : ``Out(2)``
        Burst type, :class:`AxiBurst`.
    valid : ``Out(1)``
    ready : ``In(1)``
    """

    def __init__(self, *, addr_width: int, id_width: int):
        _check_widths(addr_width, 32, id_width)
        self.addr_width, self.id_width = addr_width, id_width
        super().__init__({
            "id": Out(id_width), "addr": Out(addr_width), "len": Out(8), "size": Out(3),
            "burst": Out(2), "valid": Out(1), "ready": In(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.id_width == self.id_width)

    def __repr__(self):
        return f"AxiAddressSignature(addr_width={self.addr_width}, id_width={self.id_width})"


class AxiWriteDataSignature(wiring.Signature):
    """The W channel, seen from the manager.

    Members
    -------
    data : ``Out(data_width)``
    strb : ``Out(data_width // 8)``
        Only with ``wstrb=True``: bit ``i`` set writes byte lane ``i`` of ``data``.
    last : ``Out(1)``
        Set on the last beat of a burst.
    valid : ``Out(1)``
    ready : ``In(1)``
    """

    def __init__(self, *, data_width: int, wstrb: bool = False):
        _check_widths(32, data_width, 1)
        self.data_width, self.wstrb = data_width, bool(wstrb)
        strobes = {"strb": Out(data_width // 8)} if wstrb else {}
        super().__init__({
            "data": Out(data_width), **strobes, "last": Out(1), "valid": Out(1), "ready": In(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.data_width == self.data_width
                and other.wstrb == self.wstrb)

    def __repr__(self):
        strobes = ", wstrb=True" if self.wstrb else ""
        return f"AxiWriteDataSignature(data_width={self.data_width}{strobes})"


class AxiWriteResponseSignature(wiring.Signature):
    """The B channel, seen from the manager (so its members are inputs except ``ready``).

    Members
    -------
    id : ``In(id_width)``
    resp : ``In(2)``
        :class:`AxiResp` of the whole burst.
    valid : ``In(1)``
    ready : ``Out(1)``
    """

    def __init__(self, *, id_width: int):
        _check_widths(32, 32, id_width)
        self.id_width = id_width
        super().__init__({
            "id": In(id_width), "resp": In(2), "valid": In(1), "ready": Out(1),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.id_width == self.id_width

    def __repr__(self):
        return f"AxiWriteResponseSignature(id_width={self.id_width})"


class AxiReadDataSignature(wiring.Signature):
    """The R channel, seen from the manager.

    Members
    -------
    id : ``In(id_width)``
    data : ``In(data_width)``
    resp : ``In(2)``
        :class:`AxiResp` of this beat.
    last : ``In(1)``
        Set on the last beat of a burst.
    valid : ``In(1)``
    ready : ``Out(1)``
    """

    def __init__(self, *, data_width: int, id_width: int):
        _check_widths(32, data_width, id_width)
        self.data_width, self.id_width = data_width, id_width
        super().__init__({
            "id": In(id_width), "data": In(data_width), "resp": In(2), "last": In(1),
            "valid": In(1), "ready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.data_width == self.data_width
                and other.id_width == self.id_width)

    def __repr__(self):
        return f"AxiReadDataSignature(data_width={self.data_width}, id_width={self.id_width})"


class _AxiPortSignature(wiring.Signature):
    """Common base of the manager port signatures; :func:`verilog_ports` looks for it."""

    _channels: tuple[str, ...] = ()

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 4,
                 wstrb: bool = False):
        _check_widths(addr_width, data_width, id_width)
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        self.wstrb = bool(wstrb)
        address = AxiAddressSignature(addr_width=addr_width, id_width=id_width)
        every = {
            "aw": Out(address),
            "w":  Out(AxiWriteDataSignature(data_width=data_width, wstrb=wstrb)),
            "b":  Out(AxiWriteResponseSignature(id_width=id_width)),
            "ar": Out(address),
            "r":  Out(AxiReadDataSignature(data_width=data_width, id_width=id_width)),
        }
        super().__init__({name: every[name] for name in self._channels})

    @property
    def bytes_per_beat(self) -> int:
        return self.data_width // 8

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width
                and other.data_width == self.data_width and other.id_width == self.id_width
                and other.wstrb == self.wstrb)

    def __repr__(self):
        strobes = ", wstrb=True" if self.wstrb else ""
        return (f"{type(self).__name__}(addr_width={self.addr_width}, "
                f"data_width={self.data_width}, id_width={self.id_width}{strobes})")


class AxiReadSignature(_AxiPortSignature):
    """The read half of an AXI4 manager port: channels ``ar`` and ``r``.

    Parameters
    ----------
    addr_width : int
        Width of byte addresses, 12 to 64.
    data_width : int
        Bits per beat, a power of two from 8 to 1024 (32, 64 and 128 are the tested ones).
    id_width : int
        Width of transaction IDs.
    wstrb : bool
        Give the W channel byte strobes (``strb``); unused by a read port.
    """
    _channels = ("ar", "r")


class AxiWriteSignature(_AxiPortSignature):
    """The write half of an AXI4 manager port: channels ``aw``, ``w`` and ``b``.

    Parameters as for :class:`AxiReadSignature`.
    """
    _channels = ("aw", "w", "b")


class AxiSignature(_AxiPortSignature):
    """A whole AXI4 manager port: ``aw``, ``w``, ``b``, ``ar``, ``r``.

    Read and write halves are independent in AXI: connect ``ar``/``r`` to a reader and
    ``aw``/``w``/``b`` to a writer. Parameters as for :class:`AxiReadSignature`.
    """
    _channels = ("aw", "w", "b", "ar", "r")


def verilog_ports(component: wiring.Component) -> dict:
    """The ``ports=`` of ``amaranth.back.verilog.convert`` for ``component``, with AXI names.

    A member ``m_axi`` whose signature is an AXI port signature above gives ports
    ``m_axi_awaddr``, ``m_axi_rvalid`` ... (``<member>_<channel><signal>``, as AXI tools
    expect); every other member is named as ``convert`` would (path joined with ``__``).
    """
    ports = {}
    members = component.signature.members
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, _ast.ValueCastable):
            value = value.as_value()
        top = members[path[0]]
        if top.is_signature and isinstance(top.signature, _AxiPortSignature) and len(path) == 3:
            name = f"{path[0]}_{path[1]}{path[2]}"
        else:
            name = "__".join(map(str, path))
        direction = _ir.PortDirection.Input if member.flow == In else _ir.PortDirection.Output
        ports[name] = (value, direction)
    return ports


def convert(component: wiring.Component, *, name: str, **kwargs) -> str:
    """``amaranth.back.verilog.convert`` with :func:`verilog_ports`' AXI port names."""
    from amaranth.back import verilog

    return verilog.convert(component, name=name, ports=verilog_ports(component), **kwargs)
