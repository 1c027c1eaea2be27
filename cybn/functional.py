"""Batch normalization as functions of NumPy arrays.

Conventions shared by every function here
-----------------------------------------
* ``axis`` is the channel axis: ``1`` for channels-first (NC, NCL, NCHW, NCDHW), ``-1`` for
  channels-last (NLC, NHWC, NDHWC); any rank >= 2 and any axis work. Statistics run over
  every other axis, ``count = x.size // C`` values per channel.
* ``x`` is float32 or float64 (other NumPy dtypes raise TypeError; lists are converted).
  Outputs (``y``, ``dx``, ``dweight``, ``dbias``) have x's dtype. Batch statistics
  (``mean``, ``invstd``, ``var``) are float64 whatever x's dtype: they are what
  :func:`batch_norm_backward` takes, and float64 keeps it exact on data far from zero.
* Per-channel arrays (weight, bias, running statistics) have shape ``(C,)`` and may be
  float32 or float64 independently of x.
* Training normalizes with the biased batch variance. Running statistics, when given, are
  updated in place: ``running = (1 - momentum) * running + momentum * batch``, with the
  unbiased variance ``var * n / (n - 1)`` for ``running_var`` (PyTorch's convention).
* ``out=`` may be a preallocated array of x's shape and dtype, or x itself (in place).
* Arguments are all checked before anything runs: an error leaves every array unchanged.
* Threads: OpenMP's current maximum (``OMP_NUM_THREADS``, ``threadpoolctl``,
  :func:`cybn.set_num_threads`). Results are bitwise identical for any thread count.
"""

from __future__ import annotations

import functools
import glob
import os

import numpy as np

from . import _kernels
from ._openmp import get_num_threads
from ._validate import (
    ChannelView,
    as_data,
    channel_vector,
    channel_view,
    check_bool,
    check_ddof,
    check_eps,
    check_momentum,
    check_out,
    check_same_layout,
    running_pair,
)

__all__ = [
    "batch_norm_train",
    "batch_norm_infer",
    "batch_norm_backward",
    "batch_norm",
    "moments",
]


# ---------------------------------------------------------------------------------------
# Internal: run the kernel families on a ChannelView.
# ---------------------------------------------------------------------------------------

# Arrays with fewer elements run on the calling thread: waking OpenMP's threads costs more
# than it saves there, and next to other spinning thread pools (OpenBLAS in a training loop)
# it can cost milliseconds. Results do not depend on this (bitwise the same either way).
MIN_PARALLEL_SIZE = 1 << 17

# Outputs larger than a share of the last-level cache are written with streaming
# (non-temporal) stores, which skip the read-for-ownership of every output line; smaller
# outputs stay in the cache, where the next op finds them (streaming them was up to 1.5x
# slower). The share is per op because the inputs compete for the cache too: measured on a
# 32 MB L3 (Zen 3, 2 threads), streaming won from about 16 MB of output for inference,
# 11 MB for training forward and 7 MB for backward. Never below STREAM_MIN_BYTES, and only
# where the kernel writes contiguous runs of at least STREAM_MIN_RUN bytes (short runs leave
# partly written lines, which cost more than they save). Results do not depend on this.
STREAM_MIN_BYTES = 4 << 20
STREAM_CACHE_SHARE = {"infer": 1 / 2, "train": 1 / 3, "backward": 1 / 5}
STREAM_MIN_RUN = 4096


def _threads(view: ChannelView) -> int:
    return 1 if view.size < MIN_PARALLEL_SIZE else get_num_threads()


def _streaming(view: ChannelView, itemsize: int, op: str) -> bool:
    if view.family == "plane" and view.inner * itemsize < STREAM_MIN_RUN:
        return False
    threshold = max(STREAM_MIN_BYTES, int(_cache_bytes() * STREAM_CACHE_SHARE[op]))
    return view.size * itemsize >= threshold


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _sysfs_cache_bytes() -> int:
    """The size of the largest cache level Linux reports for CPU 0, or 0."""
    best_level, best_size = 0, 0
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        unit = _SIZE_UNITS.get(text[-1:])
        size = int(text[:-1]) * unit if unit else int(text or 0)
        if level > best_level:
            best_level, best_size = level, size
    return best_size


@functools.lru_cache(maxsize=1)
def _cache_bytes() -> int:
    """The last-level cache one core sees (Linux sysfs; else sysconf), or 8 MiB when the
    system does not say. sysfs is preferred: it gives the cache of one core complex, where
    some C libraries report the whole socket's."""
    try:
        size = _sysfs_cache_bytes()
    except (OSError, ValueError):
        size = 0
    if size <= 0:
        try:
            size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        except (ValueError, OSError, AttributeError):
            size = 0
    return size if size and size > 0 else 8 << 20


def _plane_group(view: ChannelView, itemsize: int, arrays: int, threads: int) -> int:
    """The plane family's schedule: 0 when each thread owns whole channels (reduce, then
    write each channel while its data is in cache), else the number of channels all threads
    work on together. ``arrays`` is how many full-size arrays the op reads (1 or 2). The
    bits do not depend on the schedule.

    Owning channels pays only when the arrays do not fit the cache: on arrays that do, the
    whole array done cooperatively was 1.1-1.5x faster (both at 1 and 2 threads)."""
    slab = view.count * itemsize * arrays  # bytes of one channel
    half_cache = _cache_bytes() // 2
    if slab * view.channels <= half_cache:
        return view.channels
    if view.channels >= 4 * threads and slab * threads <= half_cache:
        return 0
    return max(1, min(view.channels, half_cache // max(1, slab)))


def _channel_moments(view: ChannelView, xk: np.ndarray, threads: int) -> tuple:
    """Per-channel (mean, m2) in float64 of a nonempty kernel view."""
    mean = np.empty(view.channels, dtype=np.float64)
    m2 = np.empty(view.channels, dtype=np.float64)
    if view.family == "plane":
        _kernels.plane_moments(xk, mean, m2, threads)
    else:
        _kernels.row_moments(xk, view.channels, view.inner, mean, m2, threads)
    return mean, m2


def _affine(view: ChannelView, xk, shift, scale, offset, yk, threads: int) -> None:
    """yk = (xk - shift[c]) * scale[c] + offset[c] for float64 per-channel vectors."""
    streaming = _streaming(view, xk.itemsize, "infer")
    if view.family == "plane":
        _kernels.plane_infer(xk, shift, scale, offset, yk, streaming, threads)
    else:
        _kernels.row_infer(xk, view.channels, view.inner, shift, scale, offset, yk, streaming,
                           threads)


class _Output:
    """Where a kernel writes: ``out`` itself when it is C-contiguous, else a buffer that
    :meth:`result` copies into ``out``."""

    def __init__(self, view: ChannelView, out, dtype):
        self.view, self.out = view, out
        if out is not None and out.flags.c_contiguous:
            self.buffer = out
        else:
            self.buffer = np.empty(view.shape, dtype=dtype)
        self.kernel = view.kernel_view(self.buffer)

    def result(self) -> np.ndarray:
        if self.out is None:
            return self.buffer
        if self.buffer is not self.out:
            np.copyto(self.out, self.buffer)
        return self.out


def _empty_result(view: ChannelView, out, dtype) -> np.ndarray:
    return out if out is not None else np.empty(view.shape, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------

def _update_running(buffer: np.ndarray, batch: np.ndarray, momentum: float,
                    factor: float) -> None:
    """running = (1 - momentum) * running + momentum * batch * factor, in place; a strided
    buffer is updated through a contiguous copy (the same arithmetic)."""
    if buffer.flags.c_contiguous:
        _kernels.update_running(buffer, batch, momentum, factor)
    else:
        tmp = np.ascontiguousarray(buffer)
        _kernels.update_running(tmp, batch, momentum, factor)
        buffer[...] = tmp


def batch_norm_train(x, weight=None, bias=None, *, running_mean=None, running_var=None,
                     momentum: float = 0.1, eps: float = 1e-5, axis: int = 1, out=None):
    """Training-mode batch normalization with batch statistics.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the per-channel mean and
    biased variance of this batch.

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
        Input; channel axis ``axis``, statistics over all other axes.
    weight, bias : ndarray of shape (C,), optional
        Scale (gamma) and shift (beta); None means 1 and 0.
    running_mean, running_var : ndarray of shape (C,), optional
        Updated in place when given (both or neither): ``(1 - momentum) * running +
        momentum * batch``, running_var receiving the unbiased variance ``var * n/(n-1)``.
    momentum : float in [0, 1]
    eps : float > 0
        Added to the variance.
    axis : int
        Channel axis (1 for channels-first, -1 for channels-last).
    out : ndarray, optional
        Array of x's shape and dtype to write y into; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    mean : ndarray (C,), float64
        Batch mean.
    invstd : ndarray (C,), float64
        ``1 / sqrt(var + eps)`` with the biased batch variance.

    Raises
    ------
    ValueError
        With one value per channel (``count == 1``): batch statistics are undefined.
    """
    # small plain arrays: one compiled call (None when it does not apply)
    fast = _kernels.fast_train(x, weight, bias, running_mean, running_var, momentum, eps,
                               axis, out, MIN_PARALLEL_SIZE)
    if fast is not None:
        return fast
    x = as_data(x, "x")
    view = channel_view(x, axis)
    C = view.channels
    w = channel_vector(weight, "weight", C, default=1.0)
    b = channel_vector(bias, "bias", C, default=0.0)
    rm, rv = running_pair(running_mean, running_var, C)
    momentum = check_momentum(momentum)
    eps = check_eps(eps)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias,
                                      "running_mean": running_mean,
                                      "running_var": running_var}, in_place_ok=("x",))
    if view.size == 0:
        nan = np.full(C, np.nan)
        return _empty_result(view, out, x.dtype), nan, nan.copy()
    if view.count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"of shape {x.shape} with channel axis {view.axis}")

    threads = _threads(view)
    xk = view.kernel_view(x)
    dest = _Output(view, out, x.dtype)
    mean = np.empty(C, dtype=np.float64)
    var = np.empty(C, dtype=np.float64)
    invstd = np.empty(C, dtype=np.float64)
    streaming = _streaming(view, x.itemsize, "train")
    if view.family == "plane":
        group = _plane_group(view, x.itemsize, 1, threads)
        _kernels.plane_train_forward(xk, w, b, eps, dest.kernel, mean, var, invstd, group,
                                     streaming, threads)
    else:
        _kernels.row_train_forward(xk, C, view.inner, w, b, eps, dest.kernel, mean, var, invstd,
                                   streaming, threads)
    if rm is not None:
        n = view.count
        _update_running(rm, mean, momentum, 1.0)
        _update_running(rv, var, momentum, n / (n - 1))  # unbiased variance
    return dest.result(), mean, invstd


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, *,
                     eps: float = 1e-5, axis: int = 1, out=None):
    """Inference-mode batch normalization with given (running) statistics.

    ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``, one pass over x
    with per-channel coefficients computed once in float64.

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
    running_mean, running_var : ndarray of shape (C,)
        Statistics to normalize with (not modified).
    weight, bias : ndarray of shape (C,), optional
        None means 1 and 0.
    eps : float > 0
    axis : int
        Channel axis.
    out : ndarray, optional
        Array of x's shape and dtype; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    # small plain arrays: one compiled call (None when it does not apply)
    y = _kernels.fast_infer(x, running_mean, running_var, weight, bias, eps, axis, out,
                            MIN_PARALLEL_SIZE)
    if y is not None:
        return y
    x = as_data(x, "x")
    view = channel_view(x, axis)
    C = view.channels
    rm = channel_vector(running_mean, "running_mean", C)
    rv = channel_vector(running_var, "running_var", C)
    w = channel_vector(weight, "weight", C, default=1.0)
    b = channel_vector(bias, "bias", C, default=0.0)
    eps = check_eps(eps)
    check_out(out, x.shape, x.dtype, {"x": x, "running_mean": running_mean,
                                      "running_var": running_var, "weight": weight,
                                      "bias": bias}, in_place_ok=("x",))
    if view.size == 0:
        return _empty_result(view, out, x.dtype)
    scale = np.empty(C, dtype=np.float64)
    _kernels.infer_scale(rv, w, eps, scale)
    dest = _Output(view, out, x.dtype)
    _affine(view, view.kernel_view(x), rm, scale, b, dest.kernel, _threads(view))
    return dest.result()


def batch_norm_backward(dy, x, weight, mean, invstd, *, training: bool = True, axis: int = 1,
                        out=None):
    """Gradients of batch normalization with respect to x, weight and bias.

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to y; x's shape and dtype.
    x : ndarray, float32 or float64, ndim >= 2
        The forward input.
    weight : ndarray of shape (C,) or None
        The forward weight (None means 1).
    mean, invstd : ndarray of shape (C,)
        What the forward used: with ``training=True`` the batch statistics returned by
        :func:`batch_norm_train`; with ``training=False`` the running statistics
        (``invstd = 1 / sqrt(running_var + eps)``).
    training : bool
        True: gradient through batch statistics,
        ``dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))``.
        False: statistics are constants (frozen BN), ``dx = dy * weight * invstd``.
    axis : int
        Channel axis.
    out : ndarray, optional
        Array of x's shape and dtype for dx; may be dy or x itself.

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight : ndarray (C,), x's dtype
        ``sum(dy * (x - mean) * invstd)`` over all axes but the channel axis.
    dbias : ndarray (C,), x's dtype
        ``sum(dy)``.
    """
    # small plain arrays: one compiled call (None when it does not apply)
    fast = _kernels.fast_backward(dy, x, weight, mean, invstd, training, axis, out,
                                  MIN_PARALLEL_SIZE)
    if fast is not None:
        return fast
    x = as_data(x, "x")
    dy = as_data(dy, "dy")
    check_same_layout(dy, "dy", x)
    view = channel_view(x, axis)
    C = view.channels
    w = channel_vector(weight, "weight", C, default=1.0)
    mu = channel_vector(mean, "mean", C)
    inv = channel_vector(invstd, "invstd", C)
    training = check_bool(training, "training")
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd}, in_place_ok=("x", "dy"))
    if view.size == 0:
        zeros = np.zeros(C, dtype=x.dtype)
        return _empty_result(view, out, x.dtype), zeros, zeros.copy()

    threads = _threads(view)
    dyk, xk = view.kernel_view(dy), view.kernel_view(x)
    dest = _Output(view, out, x.dtype)
    sum_dy = np.empty(C, dtype=np.float64)
    sum_dy_xmu = np.empty(C, dtype=np.float64)
    streaming = _streaming(view, x.itemsize, "backward")
    if view.family == "plane":
        group = _plane_group(view, x.itemsize, 2, threads)
        _kernels.plane_backward(dyk, xk, mu, inv, w, training, dest.kernel, sum_dy, sum_dy_xmu,
                                group, streaming, threads)
    else:
        _kernels.row_backward(dyk, xk, C, view.inner, mu, inv, w, training, dest.kernel, sum_dy,
                              sum_dy_xmu, streaming, threads)
    dweight = (sum_dy_xmu * inv).astype(x.dtype)
    return dest.result(), dweight, sum_dy.astype(x.dtype)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, axis: int = 1, out=None):
    """Batch normalization with ``torch.nn.functional.batch_norm``'s semantics.

    ``training=True`` normalizes with batch statistics and, when ``running_mean`` and
    ``running_var`` are arrays, updates them in place (see :func:`batch_norm_train`).
    ``training=False`` normalizes with ``running_mean`` and ``running_var``, which are then
    required (see :func:`batch_norm_infer`).

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    training = check_bool(training, "training")
    if training:
        y, _, _ = batch_norm_train(x, weight, bias, running_mean=running_mean,
                                   running_var=running_var, momentum=momentum, eps=eps,
                                   axis=axis, out=out)
        return y
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required when training=False")
    return batch_norm_infer(x, running_mean, running_var, weight, bias, eps=eps, axis=axis,
                            out=out)


def moments(x, *, axis: int = 1, ddof=0):
    """Per-channel mean and variance over every axis but ``axis``.

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
    axis : int
        Channel axis.
    ddof : non-negative number
        The variance divides by ``count - ddof`` (0: biased, 1: unbiased).

    Returns
    -------
    mean, var : ndarray (C,), float64
        NaN for channels with no values (and var NaN where ``count <= ddof``).
    """
    x = as_data(x, "x")
    view = channel_view(x, axis)
    ddof = check_ddof(ddof)
    C = view.channels
    if view.size == 0:
        return np.full(C, np.nan), np.full(C, np.nan)
    mean, m2 = _channel_moments(view, view.kernel_view(x), _threads(view))
    denom = view.count - ddof
    var = m2 / denom if denom > 0 else np.full(C, np.nan)
    return mean, var
