"""Pooling layers, with PyTorch's arguments: padding, dilation (max), ceil mode,
count_include_pad and divisor_override (average), adaptive pooling to any output size."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..ops import pool
from ._args import int_pair, positive_int
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"]


def _spatial_axes(channels_last: bool) -> tuple:
    return (1, 2) if channels_last else (2, 3)


class _Pool2d(Module):
    """Shared code of the windowed pooling layers: the window's geometry and the input
    check."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 channels_last: bool = False):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding", minimum=0)
        self.dilation = int_pair(dilation, "dilation")
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(f"padding {self.padding} must be at most half of kernel_size "
                                 f"{self.kernel_size} (as PyTorch requires: a window must "
                                 f"not lie in the padding)")
        self.ceil_mode = bool(ceil_mode)
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v, default in (
            ("padding", self.padding, (0, 0)), ("dilation", self.dilation, (1, 1)),
            ("ceil_mode", self.ceil_mode, False)) if v != default)
        return f"kernel_size={self.kernel_size}, stride={self.stride}{extra}"

    def _output_hw(self, x_shape: tuple) -> tuple:
        H, W = (x_shape[i] for i in _spatial_axes(self.channels_last))
        return tuple(pool.output_size(size, k, s, p, d, self.ceil_mode) for size, k, s, p, d in
                     zip((H, W), self.kernel_size, self.stride, self.padding, self.dilation))

    def _output_shape(self, x_shape: tuple) -> tuple:
        ho, wo = self._output_hw(x_shape)
        n = x_shape[0]
        return (n, ho, wo, x_shape[3]) if self.channels_last else (n, x_shape[1], ho, wo)

    def _checked(self, x) -> np.ndarray:
        """x as a 4-D array with at least one window."""
        x = np.asarray(x)
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name} expects 4-D input, got shape {x.shape}")
        if x.dtype.kind not in "iuf" and not x.dtype.name == "bfloat16":
            raise TypeError(f"{name}: x must hold numbers (integer or floating), got dtype "
                            f"{x.dtype}")
        if min(self._output_hw(x.shape)) < 1:
            raise ValueError(f"{name}: the {self.kernel_size} window (dilation "
                             f"{self.dilation}, padding {self.padding}) does not fit the "
                             f"input of shape {x.shape}")
        return x

    def _geometry(self) -> dict:
        return {"padding": self.padding, "ceil_mode": self.ceil_mode}


class MaxPool2d(_Pool2d):
    """Max over kernel_size windows, as PyTorch's: stride defaults to the kernel; zero or
    more ``padding`` (never wins a max), ``dilation`` between taps, ``ceil_mode`` for a last
    partial window. The first maximum of a window wins (a NaN over numbers); the backward
    sends each dy to it. Compiled for float32 and float64; other dtypes through NumPy."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, *, ceil_mode=False,
                 channels_last: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, channels_last)

    def _geometry(self) -> dict:
        return {"padding": self.padding, "dilation": self.dilation, "ceil_mode": self.ceil_mode}

    def forward(self, x):
        x = self._checked(x)
        if pool.supported(x, self.kernel_size):  # compiled: one pass, a byte index
            shape = self._output_shape(x.shape)
            y, arg = pool.max_pool2d(x, self.kernel_size, self.stride, self.channels_last,
                                     self._workspace("arg", shape, np.uint8),
                                     **self._geometry())
            self._cache = ("compiled", x.shape, x.dtype, arg)
            return y
        arg, y = self._numpy_forward(x)
        self._cache = ("numpy", x.shape, x.dtype, arg)
        return y

    def _padded_extent(self, x_shape: tuple) -> tuple:
        """((top, bottom), (left, right)): the padding that holds every window's taps."""
        out = self._output_hw(x_shape)
        sizes = [x_shape[i] for i in _spatial_axes(self.channels_last)]
        pads = []
        for size, o, k, s, p, d in zip(sizes, out, self.kernel_size, self.stride,
                                       self.padding, self.dilation):
            pads.append((p, max(p, (o - 1) * s + (k - 1) * d + 1 - size - p)))
        return tuple(pads)

    def _numpy_forward(self, x) -> tuple:
        """(tap index, y) for dtypes the kernels do not take: x padded with its dtype's
        lowest value, every tap a strided view."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho, wo = self._output_hw(x.shape)
        (top, bottom), (left, right) = self._padded_extent(x.shape)
        low = -np.inf if x.dtype.kind == "f" or x.dtype.name == "bfloat16" else \
            np.iinfo(x.dtype).min
        pads = [(0, 0)] * 4
        a, b = _spatial_axes(self.channels_last)
        pads[a], pads[b] = (top, bottom), (left, right)
        xp = np.pad(x, pads, constant_values=np.array(low).astype(x.dtype))
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(a, b))
        win = win[..., ::dh, ::dw]
        win = win[:, :ho * sh:sh, :wo * sw:sw] if self.channels_last else \
            win[:, :, :ho * sh:sh, :wo * sw:sw]
        flat = win.reshape(win.shape[:4] + (kh * kw,))
        arg = flat.argmax(axis=-1)  # the first maximum
        return arg, np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, dy):
        (kind, shape, dtype, arg), dy = self._take_saved(dy, lambda saved: saved[3].shape)
        if kind == "compiled":
            return pool.max_pool2d_backward(dy, arg, shape, self.kernel_size, self.stride,
                                            self.channels_last, dtype, **self._geometry())
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        (top, bottom), (left, right) = self._padded_extent(shape)
        a, b = _spatial_axes(self.channels_last)
        padded = list(shape)
        padded[a] += top + bottom
        padded[b] += left + right
        dxp = np.zeros(padded, dtype=dy.dtype)
        ho, wo = dy.shape[a], dy.shape[b]
        for i in range(kh):
            for j in range(kw):
                g = np.where(arg == i * kw + j, dy, 0)
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                if self.channels_last:
                    dxp[:, rows, cols, :] += g
                else:
                    dxp[:, :, rows, cols] += g
        crop = [slice(None)] * 4
        crop[a] = slice(top, top + shape[a])
        crop[b] = slice(left, left + shape[b])
        return np.ascontiguousarray(dxp[tuple(crop)])


class AvgPool2d(_Pool2d):
    """Mean over kernel_size windows, as PyTorch's: stride defaults to the kernel; zero or
    more ``padding``; ``ceil_mode``; the divisor is the window's size within the padded
    input (``count_include_pad=True``), within the input (False), or ``divisor_override``.
    Compiled for float32 and float64 in both layouts; the backward spreads dy / divisor over
    each window's taps inside the input (overlapping windows add up)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, *,
                 channels_last: bool = False):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, channels_last)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = None if divisor_override is None else \
            positive_int(divisor_override, "divisor_override")

    def extra_repr(self) -> str:
        extra = "" if self.count_include_pad else ", count_include_pad=False"
        if self.divisor_override is not None:
            extra += f", divisor_override={self.divisor_override}"
        return super().extra_repr() + extra

    def _geometry(self) -> dict:
        return {"padding": self.padding, "ceil_mode": self.ceil_mode,
                "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def forward(self, x):
        x = self._checked(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"AvgPool2d takes float32 or float64 input, got {x.dtype}")
        y = pool.avg_pool2d(x, self.kernel_size, self.stride, self.channels_last,
                            **self._geometry())
        self._cache = (x.shape, x.dtype, y.shape)
        return y

    def backward(self, dy):
        (shape, dtype, _), dy = self._take_saved(dy, lambda saved: saved[2])
        return pool.avg_pool2d_backward(dy, shape, self.kernel_size, self.stride,
                                        self.channels_last, dtype, **self._geometry())


def _output_size_arg(output_size) -> tuple:
    """PyTorch's output_size: an int, or a pair whose entries are ints or None (that axis
    keeps the input's size)."""
    if output_size is None or isinstance(output_size, (int, np.integer)):
        pair = (output_size, output_size)
    else:
        pair = tuple(output_size)
        if len(pair) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
    return tuple(None if v is None else positive_int(v, "output_size") for v in pair)


class _AdaptivePool2d(Module):
    def __init__(self, output_size, channels_last: bool = False):
        super().__init__()
        self.output_size = _output_size_arg(output_size)
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        size = self.output_size
        return f"output_size={size[0] if size[0] == size[1] else size}"

    def _target(self, x) -> tuple:
        """(x as a checked 4-D array, (Ho, Wo))."""
        x = np.asarray(x)
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name} expects 4-D input, got shape {x.shape}")
        H, W = (x.shape[i] for i in _spatial_axes(self.channels_last))
        if H == 0 or W == 0:
            raise ValueError(f"{name}: the input {x.shape} has no pixels to pool")
        size = tuple(s if o is None else o for o, s in zip(self.output_size, (H, W)))
        return x, size

    def _output_shape(self, x_shape: tuple, size: tuple) -> tuple:
        if self.channels_last:
            return (x_shape[0], *size, x_shape[3])
        return (x_shape[0], x_shape[1], *size)


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Adaptive average pooling to ``output_size`` (an int, or a pair whose entries may be
    None: keep that axis), as PyTorch's: output (oh, ow) averages rows
    floor(oh * H / Ho) .. ceil((oh + 1) * H / Ho) and the same for columns. (N, C, H, W) ->
    (N, C, Ho, Wo), or channels-last. Compiled for float32 and float64 (output size 1: a
    global mean summed in double); other floating dtypes through NumPy."""

    def __init__(self, output_size=1, *, channels_last: bool = False):
        super().__init__(output_size, channels_last)

    def forward(self, x):
        x, size = self._target(x)
        if x.dtype.kind not in "f" and x.dtype.name != "bfloat16":
            raise TypeError(f"AdaptiveAvgPool2d takes floating-point input, got {x.dtype}")
        self._cache = (x.shape, x.dtype, size)
        if x.dtype in (np.float32, np.float64):
            return pool.adaptive_avg_pool2d(x, size, self.channels_last)
        a, b = _spatial_axes(self.channels_last)
        if size == (1, 1):
            return x.mean(axis=(a, b), keepdims=True)
        hs, he = pool.adaptive_bins(x.shape[a], size[0])
        ws, we = pool.adaptive_bins(x.shape[b], size[1])
        y = np.empty(self._output_shape(x.shape, size), dtype=x.dtype)
        for oh in range(size[0]):
            for ow in range(size[1]):
                win = x[:, hs[oh]:he[oh], ws[ow]:we[ow], :] if self.channels_last else \
                    x[:, :, hs[oh]:he[oh], ws[ow]:we[ow]]
                out = win.astype(np.float64).mean(axis=(a, b)).astype(x.dtype)
                if self.channels_last:
                    y[:, oh, ow, :] = out
                else:
                    y[:, :, oh, ow] = out
        return y

    def backward(self, dy):
        (shape, dtype, size), dy = self._take_saved(
            dy, lambda saved: self._output_shape(saved[0], saved[2]))
        if dtype in (np.float32, np.float64):
            if size == (1, 1):
                a, b = _spatial_axes(self.channels_last)
                count = shape[a] * shape[b]
                return np.broadcast_to(dy / dy.dtype.type(count), shape).copy()
            return pool.adaptive_avg_pool2d_backward(dy, shape, self.channels_last, dtype)
        a, b = _spatial_axes(self.channels_last)
        hs, he = pool.adaptive_bins(shape[a], size[0])
        ws, we = pool.adaptive_bins(shape[b], size[1])
        dx = np.zeros(shape, dtype=np.float64)
        for oh in range(size[0]):
            for ow in range(size[1]):
                count = (he[oh] - hs[oh]) * (we[ow] - ws[ow])
                if self.channels_last:
                    dx[:, hs[oh]:he[oh], ws[ow]:we[ow], :] += \
                        dy[:, oh:oh + 1, ow:ow + 1, :] / count
                else:
                    dx[:, :, hs[oh]:he[oh], ws[ow]:we[ow]] += \
                        dy[:, :, oh:oh + 1, ow:ow + 1] / count
        return dx.astype(dtype)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Adaptive max pooling to ``output_size`` (windows as :class:`AdaptiveAvgPool2d`'s),
    as PyTorch's: the first maximum of each window wins (a NaN over numbers), and the
    backward sends dy there. Compiled for float32 and float64 in both layouts."""

    def __init__(self, output_size, *, channels_last: bool = False):
        super().__init__(output_size, channels_last)

    def forward(self, x):
        x, size = self._target(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"AdaptiveMaxPool2d takes float32 or float64 input, got "
                            f"{x.dtype}")
        y, index = pool.adaptive_max_pool2d(x, size, self.channels_last)
        self._cache = (x.shape, x.dtype, index)
        return y

    def backward(self, dy):
        (shape, dtype, index), dy = self._take_saved(dy, lambda saved: saved[2].shape)
        return pool.adaptive_max_pool2d_backward(dy, index, shape, self.channels_last, dtype)
