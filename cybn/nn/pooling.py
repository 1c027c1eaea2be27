"""Pooling layers."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..ops import pool
from ._args import int_pair
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


class _Pool2d(Module):
    """Shared code of the windowed pooling layers: kernel and stride, the input check."""

    def __init__(self, kernel_size, stride=None, channels_last: bool = False):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride")
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def _checked(self, x) -> np.ndarray:
        """x as a 4-D array the window fits in."""
        x = np.asarray(x)
        name = type(self).__name__
        if x.ndim != 4:
            raise ValueError(f"{name} expects 4-D input, got shape {x.shape}")
        if x.dtype.kind not in "iuf" and not x.dtype.name == "bfloat16":
            raise TypeError(f"{name}: x must hold numbers (integer or floating), got dtype "
                            f"{x.dtype}")
        H, W = (x.shape[1], x.shape[2]) if self.channels_last else (x.shape[2], x.shape[3])
        if H < self.kernel_size[0] or W < self.kernel_size[1]:
            raise ValueError(f"{name}: the {self.kernel_size} window does not fit the "
                             f"input of shape {x.shape}")
        return x


class MaxPool2d(_Pool2d):
    """Max over kernel_size windows (no padding, floor mode); stride defaults to the kernel."""

    def forward(self, x):
        x = self._checked(x)
        if pool.supported(x, self.kernel_size):  # compiled: one pass, a byte index
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            H, W = (x.shape[1], x.shape[2]) if self.channels_last else (x.shape[2], x.shape[3])
            ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
            shape = (x.shape[0], ho, wo, x.shape[3]) if self.channels_last else \
                (x.shape[0], x.shape[1], ho, wo)
            y, arg = pool.max_pool2d(x, self.kernel_size, self.stride, self.channels_last,
                                     self._workspace("arg", shape, np.uint8))
            self._cache = ("compiled", x.shape, x.dtype, arg)
            return y
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        axes = (1, 2) if self.channels_last else (2, 3)
        win = sliding_window_view(x, (kh, kw), axis=axes)
        win = win[:, ::sh, ::sw] if self.channels_last else win[:, :, ::sh, ::sw]
        flat = win.reshape(win.shape[:4] + (kh * kw,))
        arg = flat.argmax(axis=-1)  # first maximum, as PyTorch
        self._cache = ("numpy", x.shape, x.dtype, arg)
        return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, dy):
        (kind, shape, dtype, arg), dy = self._take_saved(dy, lambda saved: saved[3].shape)
        if kind == "compiled":
            return pool.max_pool2d_backward(dy, arg, shape, self.kernel_size, self.stride,
                                            self.channels_last, dtype)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        dx = np.zeros(shape, dtype=dy.dtype)
        if self.channels_last:
            ho, wo = dy.shape[1], dy.shape[2]
        else:
            ho, wo = dy.shape[2], dy.shape[3]
        for i in range(kh):
            for j in range(kw):
                g = np.where(arg == i * kw + j, dy, 0)
                if self.channels_last:
                    dx[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += g
                else:
                    dx[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += g
        return dx


class AvgPool2d(_Pool2d):
    """Mean over kernel_size windows (no padding, floor mode); stride defaults to the kernel.
    Compiled for float32 and float64 in both layouts; the backward spreads dy / (kh * kw)
    over each window (overlapping windows add up)."""

    def forward(self, x):
        x = self._checked(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"AvgPool2d takes float32 or float64 input, got {x.dtype}")
        y = pool.avg_pool2d(x, self.kernel_size, self.stride, self.channels_last)
        self._cache = (x.shape, x.dtype, y.shape)
        return y

    def backward(self, dy):
        (shape, dtype, _), dy = self._take_saved(dy, lambda saved: saved[2])
        return pool.avg_pool2d_backward(dy, shape, self.kernel_size, self.stride,
                                        self.channels_last, dtype)


class AdaptiveAvgPool2d(Module):
    """Global average pooling (PyTorch's ``AdaptiveAvgPool2d(1)``): (N, C, H, W) ->
    (N, C, 1, 1), or (N, H, W, C) -> (N, 1, 1, C) with channels_last; means in x's dtype,
    summed in double (compiled for float32 and float64). Only output_size 1 is
    supported."""

    def __init__(self, output_size=1, channels_last: bool = False):
        super().__init__()
        if int_pair(output_size, "output_size") != (1, 1):
            raise ValueError(f"AdaptiveAvgPool2d supports output_size=1 (global average "
                             f"pooling), got {output_size!r}")
        self.output_size = 1
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return "output_size=1"

    def _output_shape(self, shape: tuple) -> tuple:
        return (shape[0], 1, 1, shape[3]) if self.channels_last else (shape[0], shape[1], 1, 1)

    def _axes(self) -> tuple:
        return (1, 2) if self.channels_last else (2, 3)

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"AdaptiveAvgPool2d expects 4-D input, got shape {x.shape}")
        self._cache = x.shape
        return pool.global_avg_pool2d(x, self.channels_last)

    def backward(self, dy):
        shape, dy = self._take_saved(dy, self._output_shape)
        count = shape[self._axes()[0]] * shape[self._axes()[1]]
        return np.broadcast_to(dy / dy.dtype.type(count), shape).copy()
