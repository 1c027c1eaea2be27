"""2-D convolution (im2col with NumPy's matrix product)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._args import as_rng, int_pair, positive_int
from .module import Module, Parameter

__all__ = ["Conv2d"]


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch) by im2col and one matrix product.

    weight has shape (out_channels, in_channels, kh, kw) in both layouts; input is
    (N, C, H, W), or (N, H, W, C) with ``channels_last``. Zero padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, channels_last: bool = False, dtype=np.float32, rng=None):
        super().__init__()
        rng = as_rng(rng)
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding", minimum=0)
        self.channels_last = channels_last
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_channels, in_channels, kh, kw))
                                .astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype))
        else:
            self._parameters["bias"] = None
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def _to_nhwc(self, x):
        return x if self.channels_last else x.transpose(0, 2, 3, 1)

    def forward(self, x):
        x = np.asarray(x)
        c_axis = 3 if self.channels_last else 1
        if x.ndim != 4 or x.shape[c_axis] != self.in_channels:
            layout = "(N, H, W, C)" if self.channels_last else "(N, C, H, W)"
            raise ValueError(f"Conv2d expects 4-D input {layout} with C={self.in_channels}, "
                             f"got {x.shape}")
        xh = self._to_nhwc(x)
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        if ph or pw:
            xh = np.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        n, hp, wp, c = xh.shape
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d: input {x.shape} is smaller than the kernel")
        win = sliding_window_view(xh, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # N,Ho,Wo,C,kh,kw
        cols = win.reshape(n * ho * wo, c * kh * kw)
        wmat = self.weight.data.reshape(self.out_channels, -1)
        y = cols @ wmat.T
        if self.bias is not None:
            y += self.bias.data
        y = y.reshape(n, ho, wo, self.out_channels)
        self._cache = (cols, xh.shape, x.shape)
        return y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, dy):
        cols, padded_shape, in_shape = self._take_saved()
        n, hp, wp, c = padded_shape
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        dyh = self._to_nhwc(dy)
        ho, wo = dyh.shape[1], dyh.shape[2]
        dy2 = dyh.reshape(n * ho * wo, self.out_channels)
        wmat = self.weight.data.reshape(self.out_channels, -1)
        self.weight.grad += (dy2.T @ cols).reshape(self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        dcols = (dy2 @ wmat).reshape(n, ho, wo, c, kh, kw)
        dxp = np.zeros(padded_shape, dtype=dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += dcols[:, :, :, :, i, j]
        dx = dxp[:, ph:hp - ph, pw:wp - pw, :]
        return np.ascontiguousarray(dx if self.channels_last else dx.transpose(0, 3, 1, 2))
