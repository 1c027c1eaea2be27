"""Masked batch statistics (``mask=`` of :func:`batch_norm_train` and
:func:`batch_norm_backward`): positions where the mask is False (padding) are left out of the
per-channel mean and variance, every position gets the same affine transform.

The gradient is the exact one of that forward: the outputs at masked positions depend on the
statistics too, so the reduction sums ``sum(dy)`` and ``sum(dy * (x - mean))`` run over every
position, and the correction terms that come from differentiating the statistics apply only
where the mask is True::

    dx = w * invstd * (dy - m * (sum(dy) + (x - mean) * invstd**2 * sum(dy * (x - mean))) / n)

with n the number of counted positions. When the loss ignores the padded positions (dy = 0
there, the usual case), masked positions contribute nothing to the sums. Not public API.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from .._validate import describe
from . import _schedule
from ._bn import channel_affine, update_running_stats
from ._layout import Output


def check_mask(mask, x: np.ndarray, axis: int) -> np.ndarray:
    """mask as a C-contiguous uint8 array of x's shape without the channel axis."""
    expected = x.shape[:axis] + x.shape[axis + 1:]
    try:
        m = np.asarray(mask) if not isinstance(mask, np.ndarray) else mask
    except (TypeError, ValueError) as err:
        raise TypeError(f"mask must be a boolean array: {err}") from None
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, got {describe(mask)}")
    if m.shape != expected:
        raise ValueError(f"mask must have x's shape without the channel axis {expected}, got "
                         f"{m.shape}")
    return np.ascontiguousarray(m).view(np.uint8)


def _geometry(x: np.ndarray, axis: int) -> tuple:
    return math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])


def masked_moments(x: np.ndarray, axis: int, mask8: np.ndarray, count: int) -> tuple:
    """Per-channel (mean, m2) over the counted positions (count > 0), float64."""
    outer, C, inner = _geometry(x, axis)
    xc = np.ascontiguousarray(x)
    mean, m2 = np.empty(C), np.empty(C)
    threads = _schedule.threads_for(x.size)
    if inner == 1:
        blocks = -(-outer // 512)  # MASK_ROW_BLOCK rows per block (bn_stats.pxi)
        part = np.empty((max(blocks, 1), C))
        _kernels.masked_row_moments(xc.reshape(outer, C), mask8.reshape(outer), float(count),
                                    mean, m2, part, threads)
    else:
        weights = mask8.reshape(outer, inner).astype(x.dtype)  # 1.0 / 0.0, x's precision
        _kernels.masked_plane_moments(xc.reshape(outer, C, inner), weights, float(count), mean,
                                      m2, threads)
    return mean, m2


def masked_train(x, view, axis: int, w, b, rm, rv, momentum: float, eps: float,
                 unbiased: bool, mask8: np.ndarray, count: int, out) -> tuple:
    """The training forward with masked statistics; (y, mean, invstd). count >= 2, or 0 (all
    masked: the zero-size policy, NaN statistics and output, running statistics kept)."""
    C = view.channels
    if count == 0:
        mean = np.full(C, np.nan)
        var = np.full(C, np.nan)
    else:
        mean, m2 = masked_moments(x, axis, mask8, count)
        var = m2 / count
    invstd = 1.0 / np.sqrt(var + eps)
    dest = Output(view, out, x.dtype)
    channel_affine(view, x, mean, w * invstd, b, dest, _schedule.threads(view))
    if count > 0:
        update_running_stats(rm, rv, mean, var, count, momentum, unbiased)
    return dest.result(), mean, invstd


def zero_dy_terms_dropped(dy, x, axis: int, mean, sum_dy, sum_dy_xmu) -> tuple:
    """The reduction sums with the terms where dy == 0 left out, when a sum is not finite.

    Padding may hold anything (NaN, inf) and the loss usually gives it dy = 0; such a term's
    exact contribution is 0, but 0 * NaN is NaN in the kernels' sums. Finite sums are
    returned as they are (the kernels' bits); otherwise the sums again in float64 over the
    terms with dy != 0 (NumPy's pairwise sums: the same for any thread count)."""
    if np.isfinite(sum_dy).all() and np.isfinite(sum_dy_xmu).all():
        return sum_dy, sum_dy_xmu
    d = np.moveaxis(np.asarray(dy, dtype=np.float64), axis, -1)
    xm = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1) - mean
    live = d != 0
    other = tuple(range(d.ndim - 1))
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.where(live, d, 0.0).sum(axis=other),
                np.where(live, d * xm, 0.0).sum(axis=other))


def masked_grad_apply(dy, x, axis: int, mask8, w, mean, invstd, sum_dy, sum_dy_xmu,
                      count: int, out) -> np.ndarray:
    """dx of the masked training forward from the reduction sums over all positions."""
    outer, C, inner = _geometry(x, axis)
    a = w * invstd
    d = -a * invstd * invstd * sum_dy_xmu / count
    bcoef = -a * sum_dy / count - d * mean
    dx = out if out is not None and out.flags.c_contiguous else np.empty(x.shape, x.dtype)
    dyc, xc = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    threads = _schedule.threads_for(x.size)
    if inner == 1:
        _kernels.masked_row_grad_apply(dyc.reshape(outer, C), xc.reshape(outer, C),
                                       mask8.reshape(outer), a, bcoef, d,
                                       dx.reshape(outer, C), threads)
    else:
        _kernels.masked_plane_grad_apply(dyc.reshape(outer, C, inner),
                                         xc.reshape(outer, C, inner),
                                         mask8.reshape(outer, inner), a, bcoef, d,
                                         dx.reshape(outer, C, inner), threads)
    if out is not None and dx is not out:
        np.copyto(out, dx)
        return out
    return dx
