"""A streaming line buffer: raster-order pixels in, padded convolution windows out.

Every output window is emitted at the *step* that delivers its bottom-right pixel, so the
buffer holds only ``kh - 1`` image rows plus ``kw`` pixels and a frame streams through at one
pixel per clock. Windows reaching past the bottom/right edge (padding) have no such pixel in
their own frame. They are emitted at the first steps of the next frame, whose pixels sit in
the padding positions and are masked away; if the next frame has not begun (or there is none)
the buffer takes *pad steps* of its own instead, so the last frame always drains. Pad steps shift
the buffer exactly as pixels do: the frame that follows sees the same window geometry, because
its own windows only ever look at its own pixels and padding.
"""

from __future__ import annotations



from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["LineBuffer", "pixel_layout", "window_layout", "output_size"]

#: Bits of an activation (int8, see DESIGN.md "Arithmetic").
ACTIVATION_BITS = 8


def pixel_layout(channels: int) -> data.ArrayLayout:
    """One pixel: ``channels`` int8 values, channel 0 first."""
    return data.ArrayLayout(signed(ACTIVATION_BITS), channels)


def window_layout(channels: int, kernel: tuple[int, int]) -> data.ArrayLayout:
    """A ``kh x kw`` window of pixels, row-major: element ``i * kw + j`` is row ``i``, column ``j``."""
    return data.ArrayLayout(pixel_layout(channels), kernel[0] * kernel[1])


def output_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Windows along one axis (floor rounding, as ONNX Conv)."""
    return (size + pad_lo + pad_hi - kernel) // stride + 1


class _Mode(enum.Enum, shape=2):
    NORMAL = 0   # emitting the frame whose pixels are arriving
    TAIL = 1     # emitting the previous frame's padded bottom/right windows
    AHEAD = 2    # this frame's windows are all out; waiting for the next frame to start


class LineBuffer(wiring.Component):
    """Turns a raster stream of ``height x width`` frames into a stream of padded windows.

    Windows are emitted in raster order of their position, ``out_height x out_width`` per frame
    (``output_size`` along each axis). Elements outside the frame hold ``pad_value`` (the
    input's zero point for a convolution, -128 for max pooling).

    The input is accepted in every cycle in which the output register is free or no window
    is due, so the buffer never stalls the input on its own: one pixel per clock, sustained
    over back-to-back frames. Only output backpressure stalls it.

    Parameters
    ----------
    height, width : int
        Frame size. ``kernel`` must fit: ``kh <= height``, ``kw <= width``.
    channels : int
        int8 values per pixel.
    kernel : (int, int)
        ``(kh, kw)``.
    stride : (int, int)
        ``(sy, sx)``.
    pads : (int, int, int, int)
        ``(top, left, bottom, right)``; ``top + bottom < kh`` and ``left + right < kw``.
    pad_value : int
        The int8 value of padding elements.

    Members
    -------
    i_stream : ``In(stream.Signature(pixel_layout(channels)))``
        Pixels in raster order, frame after frame.
    o_stream : ``Out(stream.Signature(window_layout(channels, kernel)))``
        Windows in raster order of their output position.
    """

    def __init__(self, *, height: int, width: int, channels: int, kernel, stride=(1, 1),
                 pads=(0, 0, 0, 0), pad_value: int = 0):
        kh, kw = (int(k) for k in kernel)
        sy, sx = (int(s) for s in stride)
        top, left, bottom, right = (int(p) for p in pads)
        if min(height, width, channels, kh, kw, sy, sx) < 1:
            raise ValueError(f"Sizes must be positive: {height!r}x{width!r}x{channels!r}, "
                             f"kernel {kernel!r}, stride {stride!r}")
        if min(pads) < 0 or top + bottom >= kh or left + right >= kw:
            raise ValueError(f"Padding {pads!r} must leave each window a pixel of the frame "
                             f"(top + bottom < {kh}, left + right < {kw})")
        if kh > height or kw > width:
            raise ValueError(f"Kernel {kernel!r} larger than the {height}x{width} frame")
        if not -128 <= pad_value <= 127:
            raise ValueError(f"Pad value must be int8, not {pad_value!r}")
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.stride, self.pads = (kh, kw), (sy, sx), (top, left, bottom, right)
        self.pad_value = pad_value
        self.out_height = output_size(height, kh, sy, top, bottom)
        self.out_width = output_size(width, kw, sx, left, right)
        super().__init__({
            "i_stream": In(stream.Signature(pixel_layout(channels))),
            "o_stream": Out(stream.Signature(window_layout(channels, (kh, kw)))),
        })

    def elaborate(self, platform):
        m = Module()
        H, W = self.height, self.width
        kh, kw = self.kernel
        sy, sx = self.stride
        top, left, bottom, right = self.pads
        OH, OW = self.out_height, self.out_width
        pixel = pixel_layout(self.channels)
        pad_pixel = pixel.const([self.pad_value] * self.channels)

        mode = Signal(_Mode)
        iy = Signal(range(H))                   # position of the next input pixel
        ix = Signal(range(W))
        ty = Signal(range(H, H + bottom + 1), init=H)   # step position during TAIL
        tx = Signal(range(W))
        oy = Signal(range(OH))                  # next window to emit ...
        ox = Signal(range(OW))
        vy = Signal(range(H + bottom + 1), init=kh - 1 - top)    # ... and its bottom-right
        vx = Signal(range(W + right + 1), init=kw - 1 - left)    # pixel (may be padding)

        # The step at which the next window is due: its bottom-right position in raster order,
        # which lies in the next row when the window hangs over the right edge.
        gy = Signal(range(H + bottom + 1))
        gx = Signal(range(W))
        with m.If(vx >= W):
            m.d.comb += [gy.eq(vy + 1), gx.eq(vx - W)]
        with m.Else():
            m.d.comb += [gy.eq(vy), gx.eq(vx)]
        emit_here = Signal()
        with m.Switch(mode):
            with m.Case(_Mode.NORMAL):
                m.d.comb += emit_here.eq((iy == gy) & (ix == gx))
            with m.Case(_Mode.TAIL):
                m.d.comb += emit_here.eq((ty == gy) & (tx == gx))

        out_free = ~self.o_stream.valid | self.o_stream.ready
        can_step = ~emit_here | out_free
        real_step = self.i_stream.valid & can_step
        # Pad steps only before the next frame's first pixel: once it has begun, a pad step
        # would land between its pixels and shift its rows apart.
        next_started = (iy != 0) | (ix != 0)
        pad_step = (mode == _Mode.TAIL) & ~next_started & ~self.i_stream.valid & can_step
        step = real_step | pad_step
        m.d.comb += self.i_stream.ready.eq(can_step)

        # --- the shift structure: taps[r][j] holds the pixel r*W + j steps back ----------------
        current = Signal(pixel)
        with m.If(self.i_stream.valid):
            m.d.comb += current.eq(self.i_stream.payload)
        with m.Else():
            m.d.comb += current.eq(pad_pixel)
        taps = []
        head = current
        delay = W - kw + 1          # steps from the last tap of a row to the head of the next
        for r in range(kh):
            row = [head]
            for j in range(1, kw):
                reg = Signal(pixel, name=f"tap_{r}_{j}")
                with m.If(step):
                    m.d.sync += reg.eq(row[-1])
                row.append(reg)
            taps.append(row)
            if r == kh - 1:
                break
            if delay == 1:
                head = Signal(pixel, name=f"head_{r + 1}")
                with m.If(step):
                    m.d.sync += head.eq(row[-1])
            else:
                # A circular memory of delay-1 words read before it is written; its read
                # register is the last stage of the delay.
                mem = Memory(shape=pixel, depth=delay - 1, init=[])
                m.submodules[f"row_{r + 1}"] = mem
                wp, rp = mem.write_port(), mem.read_port()
                ptr = Signal(range(delay - 1), name=f"ptr_{r + 1}")
                m.d.comb += [wp.addr.eq(ptr), rp.addr.eq(ptr), wp.data.eq(row[-1]),
                             wp.en.eq(step), rp.en.eq(step)]
                with m.If(step):
                    m.d.sync += ptr.eq(ptr + 1 if delay - 1 > 1 else 0)
                    if delay - 1 > 1:
                        with m.If(ptr == delay - 2):
                            m.d.sync += ptr.eq(0)
                head = rp.data

        # --- emission: the masked window, then the next window's position -----------------------
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        last_out = (oy == OH - 1) & (ox == OW - 1)
        frame_end = real_step & (iy == H - 1) & (ix == W - 1)
        emit = step & emit_here
        with m.If(emit):
            m.d.sync += self.o_stream.valid.eq(1)
            for i in range(kh):
                row_ok = (vy >= kh - 1 - i) & (vy <= H - 1 + kh - 1 - i)
                for j in range(kw):
                    col_ok = (vx >= kw - 1 - j) & (vx <= W - 1 + kw - 1 - j)
                    element = self.o_stream.payload[i * kw + j]
                    with m.If(row_ok & col_ok):
                        m.d.sync += element.eq(taps[kh - 1 - i][kw - 1 - j])
                    with m.Else():
                        m.d.sync += element.eq(pad_pixel)
            with m.If(ox == OW - 1):
                m.d.sync += [ox.eq(0), vx.eq(kw - 1 - left)]
                with m.If(oy == OH - 1):
                    m.d.sync += [oy.eq(0), vy.eq(kh - 1 - top)]
                with m.Else():
                    m.d.sync += [oy.eq(oy + 1), vy.eq(vy + sy)]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), vx.eq(vx + sx)]

        # --- positions and mode -------------------------------------------------------------------
        with m.If(real_step):
            with m.If(ix == W - 1):
                m.d.sync += [ix.eq(0), iy.eq(Mux(iy == H - 1, 0, iy + 1))]
            with m.Else():
                m.d.sync += ix.eq(ix + 1)
        with m.If(step & (mode == _Mode.TAIL)):
            with m.If(tx == W - 1):
                m.d.sync += [tx.eq(0), ty.eq(ty + 1)]
            with m.Else():
                m.d.sync += tx.eq(tx + 1)
        with m.If(emit & last_out):
            with m.If((mode == _Mode.NORMAL) & ~frame_end):
                m.d.sync += mode.eq(_Mode.AHEAD)
            with m.Else():
                m.d.sync += mode.eq(_Mode.NORMAL)
        with m.Elif(frame_end):
            with m.If(mode == _Mode.NORMAL):
                m.d.sync += [mode.eq(_Mode.TAIL), ty.eq(H), tx.eq(0)]
            with m.Elif(mode == _Mode.AHEAD):
                m.d.sync += mode.eq(_Mode.NORMAL)
        return m

