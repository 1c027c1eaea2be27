"""Compiled convolution pieces the layers use: depthwise convolution (one filter per
channel) with zero padding, channels-last (N, H, W, C) or channels-first (N, C, H, W), and
the dense convolution's im2col / col2im (channels-last, padding inside). Not public API (the
layer is :class:`cybn.Conv2d`)."""

from __future__ import annotations

import numpy as np

from .. import _kernels, _matmul
from . import _schedule


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """A C-contiguous (N, H, W, C) copy of 4-D channels-first x (compiled for float32 and
    float64: NumPy's copy of the transposed view was 5x slower on small maps)."""
    if x.dtype not in (np.float32, np.float64) or x.ndim != 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), x.dtype)
    _kernels.transpose_batch(np.ascontiguousarray(x).reshape(n, c, h * w),
                             out.reshape(n, h * w, c), _schedule.threads_for(x.size))
    return out


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """A C-contiguous (N, C, H, W) copy of 4-D channels-last x (see to_channels_last)."""
    if x.dtype not in (np.float32, np.float64) or x.ndim != 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    n, h, w, c = x.shape
    out = np.empty((n, c, h, w), x.dtype)
    _kernels.transpose_batch(np.ascontiguousarray(x).reshape(n, h * w, c),
                             out.reshape(n, c, h * w), _schedule.threads_for(x.size))
    return out


def _output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (k - 1) * d - 1) // s + 1


def depthwise_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      stride: tuple, padding: tuple, dilation: tuple,
                      channels_last: bool) -> np.ndarray:
    """y from x, zero-padded by ``padding``, and weight (C, 1, kh, kw), in x's layout."""
    x = np.ascontiguousarray(x)
    C, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H, W = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    ho, wo = _output_size(H, kh, sh, ph, dh), _output_size(W, kw, sw, pw, dw)
    b = np.zeros(C, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    n = x.shape[0]
    if channels_last:
        w = np.ascontiguousarray(weight.reshape(C, kh, kw).transpose(1, 2, 0), dtype=x.dtype)
        y = np.empty((n, ho, wo, C), dtype=x.dtype)
        _kernels.depthwise_forward(x, w, b, sh, sw, ph, pw, dh, dw, y,
                                   _schedule.threads_for(y.size))
        return y
    w = np.ascontiguousarray(weight.reshape(C, kh, kw), dtype=x.dtype)
    y = np.empty((n, C, ho, wo), dtype=x.dtype)
    _kernels.depthwise_forward_planes(x.reshape(n * C, H, W), w, b, sh, sw, ph, pw, dh, dw,
                                      y.reshape(n * C, ho, wo), _schedule.threads_for(y.size))
    return y


def depthwise_backward(x: np.ndarray, weight: np.ndarray, dy: np.ndarray, stride: tuple,
                       padding: tuple, dilation: tuple, channels_last: bool) -> tuple:
    """(dx, dweight): the gradient of the input (x's layout) and of the weight
    (C, 1, kh, kw), float64, summed over samples in order."""
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    C, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dx = np.zeros_like(x)
    n = x.shape[0]
    threads = _schedule.threads_for(x.size)
    if channels_last:
        w = np.ascontiguousarray(weight.reshape(C, kh, kw).transpose(1, 2, 0), dtype=x.dtype)
        per_sample = np.empty((n, kh, kw, C))
        _kernels.depthwise_backward(x, w, dy, sh, sw, ph, pw, dh, dw, dx, per_sample, threads)
        return dx, per_sample.sum(axis=0).transpose(2, 0, 1).reshape(C, 1, kh, kw)
    w = np.ascontiguousarray(weight.reshape(C, kh, kw), dtype=x.dtype)
    per_plane = np.empty((n * C, kh, kw))
    H, W = x.shape[2], x.shape[3]
    _kernels.depthwise_backward_planes(x.reshape(n * C, H, W), w,
                                       dy.reshape(n * C, dy.shape[2], dy.shape[3]), sh, sw,
                                       ph, pw, dh, dw, dx.reshape(n * C, H, W), per_plane,
                                       threads)
    return dx, per_plane.reshape(n, C, kh, kw).sum(axis=0).reshape(C, 1, kh, kw)


def im2col_planes(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple,
                  dilation: tuple, ho: int, wo: int, out: np.ndarray | None = None) -> np.ndarray:
    """The per-sample column matrices (N, C * kh * kw, Ho * Wo) of channels-first x, rows in
    (C, kh, kw) order, zeros where a tap falls in the padding; into ``out`` when given."""
    x = np.ascontiguousarray(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    if out is None:
        out = np.empty((n, c * kh * kw, ho * wo), dtype=x.dtype)
    _kernels.im2col_planes(x.reshape(n * c, h, w), kh, kw, sh, sw, ph, pw, dh, dw,
                           out.reshape(n * c, kh * kw, ho * wo), ho, wo,
                           _schedule.threads_for(out.size))
    return out


def col2im_planes(dcols: np.ndarray, x_shape: tuple, kernel: tuple, stride: tuple,
                  padding: tuple, dilation: tuple, ho: int, wo: int) -> np.ndarray:
    """The channels-first gradient (x_shape, (N, C, H, W)) of im2col_planes' input from that
    of its columns (N, C * kh * kw, Ho * Wo), added per plane in a fixed order."""
    dcols = np.ascontiguousarray(dcols)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x_shape
    dx = np.empty(x_shape, dtype=dcols.dtype)
    _kernels.col2im_planes(dcols.reshape(n * c, kh * kw, ho * wo), kh, kw, sh, sw, ph, pw,
                           dh, dw, ho, wo, dx.reshape(n * c, h, w),
                           _schedule.threads_for(dcols.size))
    return dx


def im2col(xh: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
           ho: int, wo: int, out: np.ndarray | None = None) -> np.ndarray:
    """The column matrix (N * Ho * Wo, kh * kw * C) of channels-last xh, columns in
    (kh, kw, C) order, zeros where a tap falls in the padding; into ``out`` when given."""
    xh = np.ascontiguousarray(xh)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c = xh.shape[0], xh.shape[3]
    cols = np.empty((n * ho * wo, kh * kw * c), dtype=xh.dtype) if out is None else out
    _kernels.im2col_rows(xh, kh, kw, sh, sw, ph, pw, dh, dw, cols, ho, wo,
                         _schedule.threads_for(cols.size))
    return cols


def col2im(dcols: np.ndarray, x_shape: tuple, kernel: tuple, stride: tuple, padding: tuple,
           dilation: tuple, ho: int, wo: int) -> np.ndarray:
    """The channels-last gradient (x_shape, (N, H, W, C)) of im2col's input from that of its
    columns, added per sample in a fixed order."""
    dcols = np.ascontiguousarray(dcols)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    dx = np.empty(x_shape, dtype=dcols.dtype)
    _kernels.col2im_rows(dcols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, dx,
                         _schedule.threads_for(dcols.size))
    return dx


MAX_CHUNKS = 16  # a weight gradient's sum over samples in at most this many chunks (fixed)


def _sample_chunk(n: int, pixels: int, rows: int, cols: int) -> int:
    """Samples per chunk of a weight gradient (rows x cols) summed over n samples of
    ``pixels`` outputs each: all n (one chunk, the threads sharing the product's tiles)
    unless the sum is long against the output's sides, as _matmul splits a product; then at
    most MAX_CHUNKS chunks of at least MIN_CHUNK outputs each, one thread per chunk (a chunk
    per sample of 8x8 maps wrote sixteen 2.4 MB partial sums for 256 -> 256 channels, 2.4x
    PyTorch's time). Fixed by the shapes: it sets the bits."""
    total = n * pixels
    if total < _matmul.SPLIT_RATIO * (rows + cols) or total < 2 * _matmul.MIN_CHUNK:
        return max(n, 1)
    return max(-(-n // MAX_CHUNKS), -(-_matmul.MIN_CHUNK // max(pixels, 1)))


def _strided_pointwise(weight_shape: tuple, stride: tuple, padding: tuple) -> bool:
    """A 1x1 convolution with a stride and no padding: it reads only every stride-th pixel."""
    return tuple(weight_shape[2:]) == (1, 1) and tuple(padding) == (0, 0) and \
        tuple(stride) != (1, 1)


def conv_planes(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: tuple,
                padding: tuple, dilation: tuple, residual: np.ndarray | None = None,
                act: int = 0) -> np.ndarray:
    """The dense convolution of channels-first x (N, C, H, W) with weight (out, C, kh, kw)
    (+ bias), by products with the columns packed straight from x (no column matrix); then
    + residual (the output's shape and dtype, C-contiguous) and the activation act
    (_matmul.ACTIVATIONS) on each sample while it is in the cache. A strided 1x1
    convolution without padding is the stride-1 one of x's sampled pixels."""
    if _strided_pointwise(weight.shape, stride, padding):
        return conv_planes(x[:, :, ::stride[0], ::stride[1]], weight, bias, (1, 1), (0, 0),
                           (1, 1), residual, act)
    x = np.ascontiguousarray(x)
    out, c, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, _, h, w = x.shape
    ho, wo = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    y = np.empty((n, out, ho, wo), dtype=x.dtype)
    b = np.empty(0, x.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x.dtype)
    w2 = np.ascontiguousarray(weight, dtype=x.dtype).reshape(out, c * kh * kw)
    _kernels.conv_forward_planes(x, w2, b, kh, kw, sh, sw, ph, pw, dh, dw, y,
                                 _schedule.threads_for_product(y.size * c * kh * kw),
                                 residual, act)
    return y


def conv_planes_weight_grad(dy: np.ndarray, x: np.ndarray, kernel: tuple, stride: tuple,
                            padding: tuple, dilation: tuple) -> np.ndarray:
    """The weight gradient (out, C, kh, kw) of conv_planes: the sum over samples of
    dy[n] @ columns(x[n])^T, in chunks of samples fixed by the batch size."""
    if _strided_pointwise((0, 0) + tuple(kernel), stride, padding):
        return conv_planes_weight_grad(dy, x[:, :, ::stride[0], ::stride[1]], kernel, (1, 1),
                                       (0, 0), (1, 1))
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c = x.shape[:2]
    out = dy.shape[1]
    dweight = np.empty((out, c * kh * kw), dtype=x.dtype)
    chunk = _sample_chunk(n, dy.shape[2] * dy.shape[3], out, c * kh * kw)
    _kernels.conv_weight_grad_planes(dy, x, kh, kw, sh, sw, ph, pw, dh, dw, dweight, chunk,
                                     _schedule.threads_for_product(dy.size * dweight.shape[1]))
    return dweight.reshape(out, c, kh, kw)


def conv_planes_input_grad(dy: np.ndarray, weight: np.ndarray, x_shape: tuple,
                           stride: tuple, padding: tuple, dilation: tuple) -> np.ndarray:
    """The input gradient (x_shape) of conv_planes. With stride 1 and padding at most the
    dilated kernel's reach, it is the convolution of dy with the flipped, transposed weight
    (padding d * (k - 1) - p), run by conv_planes; otherwise the columns' gradient
    weight^T @ dy[n], folded back by col2im_planes (a strided 1x1 convolution's: written
    to the sampled pixels, zeros elsewhere)."""
    dy = np.ascontiguousarray(dy)
    if _strided_pointwise(weight.shape, stride, padding):
        dx = np.zeros(x_shape, dtype=dy.dtype)
        dx[:, :, ::stride[0], ::stride[1]] = conv_planes(dy, weight.transpose(1, 0, 2, 3), None,
                                                         (1, 1), (0, 0), (1, 1))
        return dx
    out, c, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if (sh, sw) == (1, 1) and ph <= dh * (kh - 1) and pw <= dw * (kw - 1):
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)   # (C, out, kh, kw)
        return conv_planes(dy, flipped, None, (1, 1),
                           (dh * (kh - 1) - ph, dw * (kw - 1) - pw), dilation)
    n, _, ho, wo = dy.shape
    w2 = np.ascontiguousarray(weight, dtype=dy.dtype).reshape(out, c * kh * kw)
    dcols = np.empty((n, c * kh * kw, ho * wo), dtype=dy.dtype)
    _kernels.matmul_batch(np.broadcast_to(w2.T, (n, c * kh * kw, out)),
                          dy.reshape(n, out, ho * wo), dcols, False,
                          _schedule.threads_for_product(dcols.size * out))
    return col2im_planes(dcols, x_shape, (kh, kw), stride, padding, dilation, ho, wo)


# A rows-route product with fewer rows (output pixels) than this many times its columns
# (output channels) reads the weight as it is, columns in (C, kh, kw) order, instead of a
# reordered copy in (kh, kw, C) order: the copy cost 1.1 ms of ResNet-18's 5.3 ms for a
# 512-channel 7x7 layer at batch 1, while the (C, kh, kw) reads, a cache line per tap,
# made the 64 x 32x32 maps of the bench CNN's layers 30-90% slower (2026-12-06).
WEIGHT_AS_IS_BELOW = 8


def weight_as_is(n: int, ho: int, wo: int, out: int) -> bool:
    """Whether conv_rows reads the weight in (C, kh, kw) order as it is (few output rows)
    rather than a (kh, kw, C)-ordered copy."""
    return n * ho * wo < WEIGHT_AS_IS_BELOW * out


def transposed_flipped_rows(weight: np.ndarray, as_is: bool) -> np.ndarray:
    """The rows conv_rows reads for the input gradient of a stride-1 convolution: weight
    (out, C, kh, kw) with in and out swapped and the taps flipped, as (C, out * kh * kw)
    in (out, kh, kw) order when as_is, else (C, kh * kw * out) in (kh, kw, out) order; one
    compiled pass for float32 and float64 (a transpose and NumPy's copy of the flipped view
    took 2-4x a copy of the weight for 512 x 512 x 3 x 3)."""
    out, cin, kh, kw = weight.shape
    if weight.dtype not in (np.float32, np.float64):
        swapped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        if not as_is:
            swapped = swapped.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(swapped).reshape(cin, -1)
    rows = np.empty((cin, kh * kw, out) if not as_is else (cin, out, kh * kw), weight.dtype)
    _kernels.flipped_weight_rows(np.ascontiguousarray(weight).reshape(out, cin, kh * kw),
                                 rows, not as_is, _schedule.threads_for(rows.size))
    return rows.reshape(cin, -1)


def conv_rows(xh: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, kernel: tuple,
              padding: tuple, dilation: tuple, stride: tuple = (1, 1),
              residual: np.ndarray | None = None, act: int = 0,
              rows: np.ndarray | None = None) -> np.ndarray:
    """The dense convolution of channels-last xh (N, H, W, C) with weight (out, C, kh, kw)
    (+ bias): products whose rows read their windows where they lie (in a zero-padded copy
    of xh with padding), no column matrix; + residual (the output's shape and dtype,
    C-contiguous) and the activation act (_matmul.ACTIVATIONS) in the products' registers.
    ``rows``: the weight already as the C-contiguous matrix conv_rows reads (see
    weight_as_is; transposed_flipped_rows for an input gradient)."""
    xh = np.ascontiguousarray(xh)
    (kh, kw), (ph, pw), (dh, dw), (sh, sw) = kernel, padding, dilation, stride
    n, h, w, _ = xh.shape
    out = weight.shape[0]
    ho, wo = _output_size(h, kh, sh, ph, dh), _output_size(w, kw, sw, pw, dw)
    y = np.empty((n, ho, wo, out), dtype=xh.dtype)
    b = np.empty(0, xh.dtype) if bias is None else np.ascontiguousarray(bias, dtype=xh.dtype)
    as_is = weight_as_is(n, ho, wo, out)
    if rows is None:
        rows = weight if as_is else weight.transpose(0, 2, 3, 1)
        rows = np.ascontiguousarray(rows, dtype=xh.dtype).reshape(out, -1)
    _kernels.conv_forward_rows(xh, rows, b, kh, kw, sh, sw, ph, pw, dh, dw, y,
                               _schedule.threads_for_product(y.size * rows.shape[1]),
                               residual, act, as_is)
    return y


def conv_rows_weight_grad(dyh: np.ndarray, xh: np.ndarray, kernel: tuple, stride: tuple,
                          padding: tuple, dilation: tuple) -> np.ndarray:
    """The weight gradient (out, kh * kw * C, taps in (kh, kw, C) order) of conv_rows:
    dyh^T @ columns(xh), the columns' panels packed from the windows where they lie, in
    chunks of samples fixed by the batch size."""
    xh = np.ascontiguousarray(xh)
    dyh = np.ascontiguousarray(dyh, dtype=xh.dtype)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c = xh.shape[0], xh.shape[3]
    dweight = np.empty((dyh.shape[3], kh * kw * c), dtype=xh.dtype)
    _kernels.conv_weight_grad_rows(dyh, xh, kh, kw, sh, sw, ph, pw, dh, dw, dweight,
                                   _sample_chunk(n, dyh.shape[1] * dyh.shape[2], dyh.shape[3],
                                                 kh * kw * c),
                                   _schedule.threads_for_product(dyh.size * kh * kw * c))
    return dweight
