"""Pooling layers."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..ops import pool
from ._args import int_pair
from .module import Module

__all__ = ["MaxPool2d"]


class MaxPool2d(Module):
    """Max over kernel_size windows (no padding, floor mode); stride defaults to the kernel."""

    def __init__(self, kernel_size, stride=None, channels_last: bool = False):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride")
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"MaxPool2d expects 4-D input, got shape {x.shape}")
        H, W = (x.shape[1], x.shape[2]) if self.channels_last else (x.shape[2], x.shape[3])
        if H < self.kernel_size[0] or W < self.kernel_size[1]:
            raise ValueError(f"MaxPool2d: the {self.kernel_size} window does not fit the "
                             f"input of shape {x.shape}")
        if pool.supported(x, self.kernel_size):  # compiled: one pass, a byte index
            y, arg = pool.max_pool2d(x, self.kernel_size, self.stride, self.channels_last)
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
        kind, shape, dtype, arg = self._take_saved()
        dy = np.asarray(dy)
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
