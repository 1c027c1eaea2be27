"""Compiled max and average pooling (padding, dilation, floor or ceil mode, as PyTorch's),
adaptive pooling to any output size, and global average pooling for the pooling layers,
channels-first (N, C, H, W) or channels-last (N, H, W, C); and the ReLU of the ReLU layer.
Not public API (the layers are :class:`cybn.MaxPool2d`, :class:`cybn.AvgPool2d`,
:class:`cybn.AdaptiveAvgPool2d`, :class:`cybn.AdaptiveMaxPool2d` and :class:`cybn.ReLU`)."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from . import _schedule

MAX_TAPS = 254  # window taps a one-byte index can name (255 marks "none yet")


def supported(x: np.ndarray, kernel: tuple) -> bool:
    """Whether the compiled kernels take this input and window."""
    return (x.dtype in (np.float32, np.float64) and kernel[0] * kernel[1] <= MAX_TAPS
            and x.size > 0)


def output_size(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's count of pooling windows over ``size`` positions padded by p on each side
    (k taps, dilation d, stride s); in ceil mode a last partial window counts unless it
    would start in the right padding."""
    span = size + 2 * p - (k - 1) * d - 1
    if span < 0:
        return 0
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _spatial(shape: tuple, channels_last: bool) -> tuple:
    """(N, C, H, W) of a 4-D shape in either layout."""
    return (shape[0], shape[3], shape[1], shape[2]) if channels_last else tuple(shape)


def _out_shape(n: int, c: int, ho: int, wo: int, channels_last: bool) -> tuple:
    return (n, ho, wo, c) if channels_last else (n, c, ho, wo)


def max_pool2d(x: np.ndarray, kernel: tuple, stride: tuple, channels_last: bool,
               arg_out=None, padding: tuple = (0, 0), dilation: tuple = (1, 1),
               ceil_mode: bool = False) -> tuple:
    """(y, arg): the window maxima (padding never wins) and the tap (i * kw + j) of each,
    arg uint8 (written into ``arg_out`` when given: a caller's scratch of y's shape)."""
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, C, H, W = _spatial(x.shape, channels_last)
    ho = output_size(H, kh, sh, ph, dh, ceil_mode)
    wo = output_size(W, kw, sw, pw, dw, ceil_mode)
    y = np.empty(_out_shape(n, C, ho, wo, channels_last), dtype=x.dtype)
    arg = np.empty(y.shape, dtype=np.uint8) if arg_out is None else arg_out
    threads = _schedule.threads_for(x.size)
    geometry = (kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    if channels_last:
        _kernels.maxpool_forward_rows(x, *geometry, y, arg, threads)
    else:
        _kernels.maxpool_forward_planes(x.reshape(n * C, H, W), *geometry,
                                        y.reshape(n * C, ho, wo), arg.reshape(n * C, ho, wo),
                                        threads)
    return y, arg


def max_pool2d_backward(dy: np.ndarray, arg: np.ndarray, x_shape: tuple, kernel: tuple,
                        stride: tuple, channels_last: bool, dtype, padding: tuple = (0, 0),
                        dilation: tuple = (1, 1), ceil_mode: bool = False) -> np.ndarray:
    """dx of x_shape: dy added at each window's maximum."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    geometry = (*kernel, *stride, *padding, *dilation, ceil_mode)
    dx = np.empty(x_shape, dtype=dtype)
    threads = _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.maxpool_backward_rows(dy, arg, *geometry, dx, threads)
        return dx
    n, C, H, W = x_shape
    ho, wo = dy.shape[2], dy.shape[3]
    _kernels.maxpool_backward_planes(dy.reshape(n * C, ho, wo), arg.reshape(n * C, ho, wo),
                                     *geometry, dx.reshape(n * C, H, W), threads)
    return dx


def avg_pool2d(x: np.ndarray, kernel: tuple, stride: tuple, channels_last: bool,
               padding: tuple = (0, 0), ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None
               ) -> np.ndarray:
    """The window means of float32/float64 x: the sum over the taps inside the input
    divided by the window's size within the padded input (count_include_pad), within the
    input, or by divisor_override."""
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, C, H, W = _spatial(x.shape, channels_last)
    ho, wo = output_size(H, kh, sh, ph, 1, ceil_mode), output_size(W, kw, sw, pw, 1, ceil_mode)
    y = np.empty(_out_shape(n, C, ho, wo, channels_last), dtype=x.dtype)
    geometry = (kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad, divisor_override or 0)
    threads = _schedule.threads_for(x.size)
    if channels_last:
        _kernels.avgpool_forward_rows(x, *geometry, y, threads)
    else:
        _kernels.avgpool_forward_planes(x.reshape(n * C, H, W), *geometry,
                                        y.reshape(n * C, ho, wo), threads)
    return y


def avg_pool2d_backward(dy: np.ndarray, x_shape: tuple, kernel: tuple, stride: tuple,
                        channels_last: bool, dtype, padding: tuple = (0, 0),
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: int | None = None) -> np.ndarray:
    """dx of x_shape: dy / divisor added to every tap of its window inside the input."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    geometry = (*kernel, *stride, *padding, ceil_mode, count_include_pad,
                divisor_override or 0)
    dx = np.empty(x_shape, dtype=dtype)
    threads = _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.avgpool_backward_rows(dy, *geometry, dx, threads)
        return dx
    n, C, H, W = x_shape
    _kernels.avgpool_backward_planes(dy.reshape(n * C, dy.shape[2], dy.shape[3]), *geometry,
                                     dx.reshape(n * C, H, W), threads)
    return dx


def adaptive_bins(size: int, out: int) -> tuple:
    """(start, end), np.intp: PyTorch's adaptive pooling windows, output o over input
    positions floor(o * size / out) .. ceil((o + 1) * size / out)."""
    o = np.arange(out, dtype=np.intp)
    return (o * size) // out, -((-(o + 1) * size) // out)


def _bins(shape: tuple, output_size: tuple, channels_last: bool) -> tuple:
    _, _, H, W = _spatial(shape, channels_last)
    return (*adaptive_bins(H, output_size[0]), *adaptive_bins(W, output_size[1]))


def adaptive_avg_pool2d(x: np.ndarray, output_size: tuple, channels_last: bool) -> np.ndarray:
    """Adaptive average pooling of float32/float64 x to output_size (Ho, Wo)."""
    if tuple(output_size) == (1, 1):
        return global_avg_pool2d(x, channels_last)
    x = np.ascontiguousarray(x)
    n, C, H, W = _spatial(x.shape, channels_last)
    ho, wo = output_size
    y = np.empty(_out_shape(n, C, ho, wo, channels_last), dtype=x.dtype)
    bins, threads = _bins(x.shape, output_size, channels_last), _schedule.threads_for(x.size)
    if channels_last:
        _kernels.adaptive_avgpool_rows(x, *bins, y, threads)
    else:
        _kernels.adaptive_avgpool_planes(x.reshape(n * C, H, W), *bins,
                                         y.reshape(n * C, ho, wo), threads)
    return y


def adaptive_avg_pool2d_backward(dy: np.ndarray, x_shape: tuple, channels_last: bool,
                                 dtype) -> np.ndarray:
    """dx of x_shape: dy / (window size) added over each output's window."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    n, C, H, W = _spatial(x_shape, channels_last)
    _, _, ho, wo = _spatial(dy.shape, channels_last)
    dx = np.empty(x_shape, dtype=dtype)
    bins, threads = _bins(x_shape, (ho, wo), channels_last), _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.adaptive_avgpool_backward_rows(dy, *bins, dx, threads)
    else:
        _kernels.adaptive_avgpool_backward_planes(dy.reshape(n * C, ho, wo), *bins,
                                                  dx.reshape(n * C, H, W), threads)
    return dx


def adaptive_max_pool2d(x: np.ndarray, output_size: tuple, channels_last: bool) -> tuple:
    """(y, index): adaptive max pooling of float32/float64 x to output_size, and the
    position r * W + q of each maximum within its plane (int32)."""
    x = np.ascontiguousarray(x)
    n, C, H, W = _spatial(x.shape, channels_last)
    ho, wo = output_size
    y = np.empty(_out_shape(n, C, ho, wo, channels_last), dtype=x.dtype)
    index = np.empty(y.shape, dtype=np.int32)
    bins, threads = _bins(x.shape, output_size, channels_last), _schedule.threads_for(x.size)
    if channels_last:
        _kernels.adaptive_maxpool_rows(x, *bins, y, index, threads)
    else:
        _kernels.adaptive_maxpool_planes(x.reshape(n * C, H, W), *bins,
                                         y.reshape(n * C, ho, wo),
                                         index.reshape(n * C, ho, wo), threads)
    return y, index


def adaptive_max_pool2d_backward(dy: np.ndarray, index: np.ndarray, x_shape: tuple,
                                 channels_last: bool, dtype) -> np.ndarray:
    """dx of x_shape: dy added at each output's maximum."""
    dy = np.ascontiguousarray(dy, dtype=dtype)
    n, C, H, W = _spatial(x_shape, channels_last)
    dx = np.empty(x_shape, dtype=dtype)
    threads = _schedule.threads_for(dx.size)
    if channels_last:
        _kernels.adaptive_maxpool_backward_rows(dy, index, dx, threads)
    else:
        _, _, ho, wo = dy.shape
        _kernels.adaptive_maxpool_backward_planes(dy.reshape(n * C, ho, wo),
                                                  index.reshape(n * C, ho, wo),
                                                  dx.reshape(n * C, H, W), threads)
    return dx


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


# the compiled activations' kinds (activation.pxi's ACT_*)
ACTIVATIONS = {"hardtanh": 0, "hardswish": 1, "hardsigmoid": 2, "silu": 3, "sigmoid": 4,
               "tanh": 5, "gelu": 6, "gelu_tanh": 7, "leaky_relu": 8}


def activation(x: np.ndarray, kind: str, a: float = 0.0, b: float = 0.0,
               inplace: bool = False) -> np.ndarray:
    """f(x) for float32/float64 x (the activation ``kind`` with parameters a, b), computed
    in double and rounded once; into x itself with ``inplace`` (a writeable array)."""
    data = np.asarray(x, order="C")
    y = data if inplace else np.empty_like(data)
    if data.size:
        _kernels.activation_forward(data.reshape(-1), y.reshape(-1), ACTIVATIONS[kind], a, b,
                                    _schedule.threads_for(data.size))
    if inplace and y is not x:  # x was not contiguous: the kernel ran on a copy
        x[...] = y
        y = x
    return y


def activation_backward(saved: np.ndarray, dy: np.ndarray, kind: str, a: float = 0.0,
                        b: float = 0.0) -> np.ndarray:
    """dy * f'(saved), saved the forward's input (or, for hardtanh and leaky_relu with
    a >= 0, its output), in saved's dtype."""
    saved = np.ascontiguousarray(saved)
    dy = np.ascontiguousarray(dy, dtype=saved.dtype)
    dx = np.empty_like(dy)
    if dy.size:
        _kernels.activation_backward(saved.reshape(-1), dy.reshape(-1), dx.reshape(-1),
                                     ACTIVATIONS[kind], a, b,
                                     _schedule.threads_for(dy.size))
    return dx

