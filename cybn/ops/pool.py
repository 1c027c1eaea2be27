"""Compiled max and average pooling (no padding, floor mode) and global average pooling for
the pooling layers, channels-first (N, C, H, W) or channels-last (N, H, W, C), and the ReLU of
the ReLU layer.
Not public API (the layers are :class:`cybn.MaxPool2d`, :class:`cybn.AvgPool2d` and
:class:`cybn.ReLU`)."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from . import _schedule

MAX_TAPS = 255  # window taps a one-byte index can name


def supported(x: np.ndarray, kernel: tuple) -> bool:
    """Whether the compiled kernels take this input and window."""
    return (x.dtype in (np.float32, np.float64) and kernel[0] * kernel[1] <= MAX_TAPS
            and x.size > 0)


def global_avg_pool2d(x: np.ndarray, channels_last: bool) -> np.ndarray:
    """The per-(sample, channel) means of 4-D x over its spatial axes, kept as size-1 axes
    ((N, C, 1, 1), or (N, 1, 1, C) channels-last), in x's dtype: compiled, summed in double
    in a fixed order, for float32/float64 x with pixels; NumPy's mean otherwise."""
    axes = (1, 2) if channels_last else (2, 3)
    if x.dtype not in (np.float32, np.float64) or x.shape[axes[0]] * x.shape[axes[1]] == 0:
        return x.mean(axis=axes, keepdims=True)
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[3 if channels_last else 1]
    pixels = x.shape[axes[0]] * x.shape[axes[1]]
    view = x.reshape(n, pixels, c) if channels_last else x.reshape(n * c, pixels, 1)
    y = np.empty((n, 1, 1, c) if channels_last else (n, c, 1, 1), dtype=x.dtype)
    _kernels.global_avgpool(view, y.reshape(view.shape[0], view.shape[2]),
                            _schedule.threads_for(x.size))
    return y


def max_pool2d(x: np.ndarray, kernel: tuple, stride: tuple, channels_last: bool,
               arg_out=None) -> tuple:
    """(y, arg): the window maxima and the tap (i * kw + j) of each, arg uint8 (written into
    ``arg_out`` when given: a caller's scratch of y's shape)."""
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw) = kernel, stride
    if channels_last:
        n, H, W, C = x.shape
    else:
        n, C, H, W = x.shape
    ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    threads = _schedule.threads_for(x.size)
    if channels_last:
        y = np.empty((n, ho, wo, C), dtype=x.dtype)
        arg = np.empty(y.shape, dtype=np.uint8) if arg_out is None else arg_out
        _kernels.maxpool_forward_rows(x, kh, kw, sh, sw, y, arg, threads)
        return y, arg
    y = np.empty((n, C, ho, wo), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.uint8) if arg_out is None else arg_out
    _kernels.maxpool_forward_planes(x.reshape(n * C, H, W), kh, kw, sh, sw,
                                    y.reshape(n * C, ho, wo), arg.reshape(n * C, ho, wo),
                                    threads)
    return y, arg


def max_pool2d_backward(dy: np.ndarray, arg: np.ndarray, x_shape: tuple, kernel: tuple,
                        stride: tuple, channels_last: bool, dtype) -> np.ndarray:
    """dx of x_shape: dy added at each window's maximum."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    kw, (sh, sw) = kernel[1], stride
    dx = np.empty(x_shape, dtype=dtype)
    threads = _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.maxpool_backward_rows(dy, arg, kernel[0], kw, sh, sw, dx, threads)
        return dx
    n, C, H, W = x_shape
    ho, wo = dy.shape[2], dy.shape[3]
    _kernels.maxpool_backward_planes(dy.reshape(n * C, ho, wo), arg.reshape(n * C, ho, wo),
                                     kernel[0], kw, sh, sw, dx.reshape(n * C, H, W), threads)
    return dx


def avg_pool2d(x: np.ndarray, kernel: tuple, stride: tuple, channels_last: bool) -> np.ndarray:
    """The window means of float32/float64 x (no padding, floor mode)."""
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw) = kernel, stride
    n, H, W, C = x.shape if channels_last else (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    threads = _schedule.threads_for(x.size)
    if channels_last:
        y = np.empty((n, ho, wo, C), dtype=x.dtype)
        _kernels.avgpool_forward_rows(x, kh, kw, sh, sw, y, threads)
        return y
    y = np.empty((n, C, ho, wo), dtype=x.dtype)
    _kernels.avgpool_forward_planes(x.reshape(n * C, H, W), kh, kw, sh, sw,
                                    y.reshape(n * C, ho, wo), threads)
    return y


def avg_pool2d_backward(dy: np.ndarray, x_shape: tuple, kernel: tuple, stride: tuple,
                        channels_last: bool, dtype) -> np.ndarray:
    """dx of x_shape: dy / (kh * kw) added to every tap of its window."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    (kh, kw), (sh, sw) = kernel, stride
    dx = np.empty(x_shape, dtype=dtype)
    threads = _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.avgpool_backward_rows(dy, kh, kw, sh, sw, dx, threads)
        return dx
    n, C, H, W = x_shape
    _kernels.avgpool_backward_planes(dy.reshape(n * C, dy.shape[2], dy.shape[3]), kh, kw, sh,
                                     sw, dx.reshape(n * C, H, W), threads)
    return dx


def relu(x: np.ndarray, inplace: bool = False, keep_out=None) -> tuple:
    """(y, keep) for float32/float64 x: y = 0 where x <= 0, else x; keep (uint8) marks the
    elements whose gradient passes (written into ``keep_out`` when given: a caller's scratch
    of x's shape). ``inplace``: y is x itself (a writeable array)."""
    fast = _kernels.fast_relu(x, keep_out, inplace, _schedule.threads_for(x.size))
    if fast is not None:  # a plain contiguous array: one compiled call
        return fast
    data = np.asarray(x, order="C")  # (ascontiguousarray would make a 0-d x 1-d)
    y = data if inplace else np.empty_like(data)
    keep = np.empty(data.shape, dtype=np.uint8) if keep_out is None else keep_out
    if data.size:
        _kernels.relu_forward(data.reshape(-1), y.reshape(-1), keep.reshape(-1),
                              _schedule.threads_for(data.size))
    if inplace and y is not x:  # x was not contiguous: the kernel ran on a copy
        x[...] = y
        y = x
    return y, keep


def relu_backward(dy: np.ndarray, keep: np.ndarray, dtype) -> np.ndarray:
    """dy where keep, else an exact 0."""
    fast = _kernels.fast_relu_backward(dy, keep, np.dtype(dtype).num, _schedule.threads_for(
        keep.size))
    if fast is not None:  # dy contiguous in the forward's dtype: one compiled call
        return fast
    dy = np.ascontiguousarray(dy, dtype=dtype)
    dx = np.empty_like(dy)
    if dy.size:
        _kernels.relu_backward(dy.reshape(-1), keep.reshape(-1), dx.reshape(-1),
                               _schedule.threads_for(dy.size))
    return dx
