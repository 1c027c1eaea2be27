"""Compiled convolution pieces the layers use: depthwise convolution (one filter per
channel) on zero-padded channels-last arrays. Not public API (the layer is
:class:`cybn.Conv2d` with ``groups == in_channels``)."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from . import _schedule


def depthwise_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      stride: tuple, padding: tuple, dilation: tuple) -> np.ndarray:
    """y (N, Ho, Wo, C) from x (N, H, W, C), zero-padded by ``padding``, and weight
    (C, 1, kh, kw)."""
    xp = np.ascontiguousarray(x)
    C, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (xp.shape[1] + 2 * ph - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] + 2 * pw - (kw - 1) * dw - 1) // sw + 1
    w = np.ascontiguousarray(weight.reshape(C, kh, kw).transpose(1, 2, 0), dtype=xp.dtype)
    b = np.zeros(C, xp.dtype) if bias is None else np.ascontiguousarray(bias, dtype=xp.dtype)
    y = np.empty((xp.shape[0], ho, wo, C), dtype=xp.dtype)
    _kernels.depthwise_forward(xp, w, b, sh, sw, ph, pw, dh, dw, y,
                               _schedule.threads_for(y.size))
    return y


def depthwise_backward(x: np.ndarray, weight: np.ndarray, dy: np.ndarray, stride: tuple,
                       padding: tuple, dilation: tuple) -> tuple:
    """(dx, dweight): the gradient of the input (N, H, W, C) and of the weight
    (C, 1, kh, kw), float64, summed over samples in order."""
    xp = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=xp.dtype)
    C, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    w = np.ascontiguousarray(weight.reshape(C, kh, kw).transpose(1, 2, 0), dtype=xp.dtype)
    dxp = np.zeros_like(xp)
    per_sample = np.empty((xp.shape[0], kh, kw, C))
    _kernels.depthwise_backward(xp, w, dy, sh, sw, ph, pw, dh, dw, dxp, per_sample,
                                _schedule.threads_for(xp.size))
    dweight = per_sample.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, kh, kw)
    return dxp, dweight
