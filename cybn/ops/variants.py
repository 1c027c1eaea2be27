"""Batch-norm variants on the same kernels: batch renormalization (Ioffe 2017) and ghost
batch normalization (Hoffer et al. 2017).

Batch renormalization corrects the batch statistics towards the running ones by per-channel
factors that the backward treats as constants::

    r = clip(sigma_B / sigma_run, 1 / rmax, rmax)      sigma = sqrt(var + eps)
    d = clip((mu_B - mu_run) / sigma_run, -dmax, dmax)
    y = (x_hat * r + d) * weight + bias                 x_hat = (x - mu_B) / sigma_B

so the training output is batch norm's affine pass with ``weight * r`` and ``bias + weight *
d`` (no extra pass over memory), inference is plain batch norm, and with r = 1, d = 0 it is
plain batch norm. :class:`RenormSchedule` is the paper's warm-up of rmax and dmax.

Ghost batch normalization splits the batch along its first axis into ghost batches of
``ghost_batch_size`` samples (views, no copy), normalizes each with its own statistics
(shared weight and bias) and updates the running statistics once per ghost batch, in order,
as the paper does. A last, smaller ghost batch takes the remaining samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _kernels
from .._validate import (as_data, channel_vector, check_bn_activation, check_bool,
                         check_out, check_same_layout, describe, is_int, normalize_axis,
                         residual_array, shaped_array)
from . import _schedule
from ._bn import (POST_ACTIVATIONS, apply_post, channel_affine, channel_moments, check_policy,
                  checked_train_args, post_grad, pre_activation, train_core,
                  update_running_stats)
from ._layout import Output, channel_view
from .batchnorm import batch_norm_backward, batch_norm_train
from .conventions import resolve as resolve_convention

__all__ = ["RenormSchedule", "batch_norm_renorm", "batch_norm_renorm_backward",
           "batch_norm_ghost", "batch_norm_ghost_backward", "ghost_slices"]


@dataclass(frozen=True)
class RenormSchedule:
    """The warm-up of batch renormalization's clipping (Ioffe 2017, section 4): rmax = 1 and
    dmax = 0 (plain batch norm) for the first ``warmup`` steps, then relaxed linearly to
    ``rmax`` at step ``rmax_steps`` and to ``dmax`` at step ``dmax_steps``. Calling it with
    a step (0-based) gives ``(rmax, dmax)`` for that step."""

    rmax: float = 3.0
    dmax: float = 5.0
    warmup: int = 5000
    rmax_steps: int = 40000
    dmax_steps: int = 25000

    def __post_init__(self):
        _clip_limits(self.rmax, self.dmax)
        for name in ("warmup", "rmax_steps", "dmax_steps"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"RenormSchedule: {name} must be a non-negative integer, got "
                                 f"{describe(value)}")
        if not self.warmup <= min(self.rmax_steps, self.dmax_steps):
            raise ValueError("RenormSchedule needs 0 <= warmup <= rmax_steps and dmax_steps")

    def __call__(self, step: int) -> tuple:
        if not is_int(step) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {describe(step)}")

        def ramp(end: int) -> float:
            if step < self.warmup:
                return 0.0
            return 1.0 if end <= self.warmup else min(1.0, (step - self.warmup)
                                                      / (end - self.warmup))

        def relax(start: float, limit: float, t: float) -> float:
            # t = 0 is the start itself and t = 1 the limit itself (inf * 0 would be NaN)
            return start if t == 0.0 else limit if t == 1.0 else start + (limit - start) * t

        return (relax(1.0, float(self.rmax), ramp(self.rmax_steps)),
                relax(0.0, float(self.dmax), ramp(self.dmax_steps)))


def _clip_limits(rmax, dmax) -> tuple:
    for name, value, low in (("rmax", rmax, 1.0), ("dmax", dmax, 0.0)):
        if isinstance(value, (bool, np.bool_)) or \
                not isinstance(value, (int, float, np.integer, np.floating)) or not value >= low:
            raise ValueError(f"{name} must be a number >= {low} (inf: no clipping), got "
                             f"{describe(value)}")
    return float(rmax), float(dmax)


def batch_norm_renorm(x, weight=None, bias=None, *, running_mean, running_var,
                      rmax: float = 3.0, dmax: float = 5.0, momentum: float | None = None,
                      eps: float | None = None, axis: int = 1, convention: str | None = None,
                      running_variance: str | None = None, out=None) -> tuple:
    """Training-mode batch renormalization (Ioffe 2017); see the module docstring.

    Parameters
    ----------
    x : ndarray, float32 or float64 (float16/bfloat16 too), ndim >= 2
    weight, bias : ndarray (C,), optional
    running_mean, running_var : ndarray (C,)
        Required: r and d compare the batch with them (before this batch's update); then
        updated in place as :func:`batch_norm_train` does.
    rmax, dmax : float
        Clipping limits: rmax >= 1, dmax >= 0 (``np.inf``: unclipped). rmax = 1, dmax = 0
        is plain batch norm. :class:`RenormSchedule` gives the paper's warm-up values.
    momentum, eps, axis, convention, running_variance, out
        As in :func:`batch_norm_train`.

    Returns
    -------
    y, mean, invstd : as :func:`batch_norm_train` (batch statistics, float64)
    r, d : ndarray (C,), float64
        The correction factors, for :func:`batch_norm_renorm_backward`.
    """
    momentum, eps, unbiased = resolve_convention(convention, momentum, eps, running_variance)
    rmax, dmax = _clip_limits(rmax, dmax)
    x, view, w, b, rm, rv, momentum, eps, ep, _ = checked_train_args(
        x, weight, bias, running_mean, running_var, momentum, eps, axis, False, None, out)
    if rm is None:
        raise ValueError("batch_norm_renorm needs running_mean and running_var")
    if view.count < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of "
                         f"shape {x.shape} with channel axis {view.axis}")
    threads = _schedule.threads(view)
    mean, m2 = channel_moments(view, x, threads)
    n = view.count
    var = m2 / n
    invstd = 1.0 / np.sqrt(var + eps)
    sigma_run = np.sqrt(rv.astype(np.float64) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma_run, 1.0 / rmax, rmax)
    d = np.clip((mean - rm.astype(np.float64)) / sigma_run, -dmax, dmax)
    dest = Output(view, out, x.dtype)
    channel_affine(view, x, mean, w * r * invstd, b + w * d, dest, threads, ep=ep)
    update_running_stats(rm, rv, mean, var, n, momentum, unbiased)
    return dest.result(), mean, invstd, r, d


def batch_norm_renorm_backward(dy, x, weight, mean, invstd, r, d, *, axis: int = 1,
                               out=None) -> tuple:
    """Gradients of :func:`batch_norm_renorm` with r and d held constant, as the paper does:
    (dx, dweight, dbias). dx is batch norm's with the weight ``weight * r``; ``dweight =
    r * sum(dy * x_hat) + d * sum(dy)``; ``dbias = sum(dy)``."""
    x = as_data(x, "x", half=True)
    C = channel_view(x, axis).channels
    r, d = channel_vector(r, "r", C), channel_vector(d, "d", C)
    w = channel_vector(weight, "weight", C, default=1.0)
    dx, dw_hat, db = batch_norm_backward(dy, x, w * r, mean, invstd, training=True, axis=axis,
                                         out=out)
    dweight = r * dw_hat.astype(np.float64) + d * db.astype(np.float64)
    return dx, dweight.astype(dw_hat.dtype), db


def ghost_slices(n: int, ghost_batch_size) -> list:
    """The [start, stop) slices of the ghost batches of a batch of n samples."""
    if not is_int(ghost_batch_size) or ghost_batch_size < 1:
        raise ValueError(f"ghost_batch_size must be a positive integer, got "
                         f"{describe(ghost_batch_size)}")
    g = int(ghost_batch_size)
    return [slice(i, min(i + g, n)) for i in range(0, n, g)]


def _ghost_kernel_applies(x, y, parts, activation, residual) -> bool:
    """Whether the equal ghost batches run as one ghost kernel call: float32/float64, no
    fused activation or residual, at least two equal ghost batches, contiguous arrays. A
    choice from the shapes and arguments only (never the thread count)."""
    return (activation is None and residual is None and x.dtype in (np.float32, np.float64)
            and len(parts) >= 2 and x.shape[0] // parts[0].stop >= 2
            and x.flags.c_contiguous and y.flags.c_contiguous)


def _ghost_geometry(x, axis: int, g: int) -> tuple:
    """(plane, d0, d1, C, inner) of one ghost batch of g samples, as the cores take it."""
    view = channel_view(x[:g], axis)
    if view.family == "plane":
        return True, view.outer, 0, view.channels, view.inner, view
    return False, view.rows, view.width, view.channels, view.inner, view


def _ghost_forward(x, y, axis: int, G: int, g: int, w, b, eps: float) -> tuple:
    """The first G ghost batches of g samples through the ghost kernel: (mean, var, invstd),
    each (G, C)."""
    plane, d0, d1, C, inner, view = _ghost_geometry(x, axis, g)
    mean, var, invstd = (np.empty((G, C)) for _ in range(3))
    status = np.zeros(G, dtype=np.int32)
    _kernels.ghost_train_forward(x[:G * g].reshape(G, -1), y[:G * g].reshape(G, -1), plane, d0,
                                 d1, C, inner, w, b, eps, mean, var, invstd, status,
                                 _schedule.streaming(channel_view(x, axis), x.itemsize, "train"),
                                 _schedule.threads_for(x.size))
    return mean, var, invstd


def batch_norm_ghost(x, weight=None, bias=None, *, ghost_batch_size: int, running_mean=None,
                     running_var=None, momentum: float | None = None, eps: float | None = None,
                     axis: int = 1, activation: str | None = None, residual=None,
                     convention: str | None = None, running_variance: str | None = None,
                     on_degenerate: str = "raise", out=None) -> tuple:
    """Ghost batch normalization: :func:`batch_norm_train` on each ghost batch of
    ``ghost_batch_size`` samples along axis 0 (the last may be smaller; a last ghost batch
    with one value per channel follows ``on_degenerate``), the running statistics updated
    once per ghost batch in order. The channel axis must not be 0.

    Returns
    -------
    y : ndarray, x's shape and dtype
    mean, invstd : ndarray (G, C), float64
        Each ghost batch's statistics, for :func:`batch_norm_ghost_backward`.
    """
    if check_bn_activation(activation) in POST_ACTIVATIONS:  # one pass over y after
        y, mean, invstd = batch_norm_ghost(
            x, weight, bias, ghost_batch_size=ghost_batch_size, running_mean=running_mean,
            running_var=running_var, momentum=momentum, eps=eps, axis=axis, residual=residual,
            convention=convention, running_variance=running_variance,
            on_degenerate=on_degenerate, out=out)
        return apply_post(y, activation), mean, invstd
    check_policy(on_degenerate)
    x = as_data(x, "x", half=True)
    if normalize_axis(axis, x.ndim) == 0:
        raise ValueError(f"batch_norm_ghost splits axis 0 into ghost batches; the channel axis "
                         f"must be another one, got axis={axis} for shape {x.shape}")
    parts = ghost_slices(x.shape[0], ghost_batch_size)
    momentum, eps, unbiased = resolve_convention(convention, momentum, eps, running_variance)
    # everything checked once, before any ghost batch runs or a running statistic changes
    x, view, w, b, rm, rv, momentum, eps, ep, residual = checked_train_args(
        x, weight, bias, running_mean, running_var, momentum, eps, axis,
        activation == "relu", residual, out)
    y = out if out is not None else np.empty(x.shape, dtype=x.dtype)
    if not parts:
        nan = np.full((0, view.channels), np.nan)
        return y, nan, nan.copy()
    per_sample = x.size // (x.shape[0] * view.channels)
    # the degenerate-batch policy per ghost batch (one value per channel), decided up front
    degenerate = [(s.stop - s.start) * per_sample == 1 for s in parts]
    if any(degenerate):
        if on_degenerate == "raise":
            which = "every ghost batch has" if all(degenerate) else "the last ghost batch has"
            raise ValueError(f"{which} one value per channel (x has a batch of {x.shape[0]}, "
                             f"ghost_batch_size {ghost_batch_size}); see on_degenerate")
        if on_degenerate == "use_running" and rm is None:
            raise ValueError("on_degenerate='use_running' needs running_mean and running_var")
    means, invstds = [], []
    first = 0
    if not degenerate[0] and _ghost_kernel_applies(x, y, parts, activation, residual):
        first = x.shape[0] // parts[0].stop  # the equal ghost batches: one kernel call
        mean, var, invstd = _ghost_forward(x, y, axis, first, parts[0].stop, w, b, eps)
        if rm is not None:  # the running statistics, once per ghost batch, in order
            n = per_sample * parts[0].stop  # values per channel in a ghost batch
            for g in range(first):
                update_running_stats(rm, rv, mean[g], var[g], n, momentum, unbiased)
        means.extend(mean)
        invstds.extend(invstd)
    for k, s in enumerate(parts[first:], start=first):
        xs, ys = x[s], y[s]
        rs = None if residual is None else residual[s]
        if degenerate[k]:  # the policy, by the full op
            _, mean, invstd = batch_norm_train(
                xs, w, b, running_mean=rm, running_var=rv, momentum=momentum, eps=eps,
                axis=axis, activation=activation, residual=rs, out=ys,
                running_variance="unbiased" if unbiased else "biased",
                on_degenerate=on_degenerate)
        else:  # checked above: straight to the kernels, a view of x per ghost batch
            _, mean, invstd = train_core(xs, channel_view(xs, axis), w, b, rm, rv, momentum,
                                          eps, unbiased, ep, rs, ys)
        means.append(mean)
        invstds.append(invstd)
    return y, np.stack(means), np.stack(invstds)


def _ghost_backward_args(dy, x, weight, mean, invstd, ghost_batch_size, axis, activation,
                         bias, residual, training, out) -> tuple:
    """Every argument of batch_norm_ghost_backward checked before anything is written:
    (x, dy, the ghost slices, x's ChannelView, weight, bias (float64 (C,)), mean, invstd
    (float64 (G, C)), one training flag per ghost batch, residual)."""
    check_bn_activation(activation)
    x = as_data(x, "x", half=True)
    dy = as_data(dy, "dy", half=True)
    check_same_layout(dy, "dy", x)
    if normalize_axis(axis, x.ndim) == 0:
        raise ValueError(f"batch_norm_ghost_backward: ghost batches split axis 0; the channel "
                         f"axis must be another one, got axis={axis} for shape {x.shape}")
    parts = ghost_slices(x.shape[0], ghost_batch_size)
    if not parts:
        raise ValueError("batch_norm_ghost_backward: x has no samples")
    view = channel_view(x, axis)
    C, G = view.channels, len(parts)
    rows = (f"one row per ghost batch of x (ghost_batch_size={ghost_batch_size}), one column "
            f"per channel along axis")
    mean = shaped_array(mean, "mean", (G, C), what=rows)
    invstd = shaped_array(invstd, "invstd", (G, C), what=rows)
    w = channel_vector(weight, "weight", C, default=1.0)
    b = channel_vector(bias, "bias", C, default=0.0)
    if isinstance(training, (bool, np.bool_)):
        flags = [bool(training)] * G
    elif isinstance(training, (list, tuple)) or (isinstance(training, np.ndarray)
                                                  and training.ndim == 1):
        if len(training) != G:
            raise ValueError(f"training must be a bool or one bool per ghost batch ({G}), "
                             f"got {len(training)} values")
        flags = [check_bool(t, f"training[{i}]") for i, t in enumerate(training)]
    else:
        raise TypeError(f"training must be a bool or a sequence of {G} bools, got "
                        f"{describe(training)}")
    residual = residual_array(residual, x)
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd, "bias": bias, "residual": residual},
              in_place_ok=("x", "dy"))
    return x, dy, parts, view, w, b, mean, invstd, flags, residual


def batch_norm_ghost_backward(dy, x, weight, mean, invstd, *, ghost_batch_size: int,
                              axis: int = 1, activation: str | None = None, bias=None,
                              residual=None, training=True, out=None) -> tuple:
    """Gradients of :func:`batch_norm_ghost`: each ghost batch's batch-norm backward with its
    own statistics; (dx, dweight, dbias) (and dresidual after a residual), the parameter
    gradients summed over the ghost batches in order (in float64, returned in x's dtype).
    ``training`` may be a sequence of one bool per ghost batch (False where the running
    statistics normalized it, see on_degenerate="use_running"). ``out``: an array of x's
    shape and dtype for dx (may be dy or x itself)."""
    x, dy, parts, view, w, b, mean, invstd, flags, residual = _ghost_backward_args(
        dy, x, weight, mean, invstd, ghost_batch_size, axis, activation, bias, residual,
        training, out)
    if activation in POST_ACTIVATIONS:  # the gradient through it first, for the whole batch
        z = np.empty(x.shape, dtype=x.dtype)
        for i, s in enumerate(parts):
            z[s] = pre_activation(x[s], view.axis, mean[i], invstd[i], w, b,
                                  None if residual is None else residual[s])
        return batch_norm_ghost_backward(
            post_grad(dy, z, activation), x, weight, mean, invstd,
            ghost_batch_size=ghost_batch_size, axis=axis, bias=bias, residual=residual,
            training=training, out=out)
    dx = out if out is not None and out.flags.c_contiguous else np.empty(x.shape, x.dtype)
    dres = None if residual is None else np.empty(x.shape, dtype=x.dtype)
    dw, db = np.zeros(view.channels), np.zeros(view.channels)
    dtype = None
    first = 0
    if all(flags) and dy.dtype == x.dtype and _ghost_kernel_applies(
            x, dx, parts, activation, residual) and dy.flags.c_contiguous:
        first = x.shape[0] // parts[0].stop
        g = parts[0].stop
        plane, d0, d1, C, inner, view = _ghost_geometry(x, axis, g)
        sum_dy, sum_dy_xmu = np.empty((first, C)), np.empty((first, C))
        status = np.zeros(first, dtype=np.int32)
        _kernels.ghost_backward(dy[:first * g].reshape(first, -1), x[:first * g].reshape(
            first, -1), dx[:first * g].reshape(first, -1), plane, d0, d1, C, inner,
            mean[:first], invstd[:first], w, sum_dy,
            sum_dy_xmu, status, _schedule.streaming(channel_view(x, axis), x.itemsize, "backward"),
            _schedule.threads_for(x.size))
        for i in range(first):  # in ghost order
            dw = dw + sum_dy_xmu[i] * invstd[i]
            db = db + sum_dy[i]
        dtype = x.dtype
    for i, s in enumerate(parts[first:], start=first):
        grads = batch_norm_backward(dy[s], x[s], w, mean[i], invstd[i], training=flags[i],
                                    axis=axis, activation=activation, bias=b,
                                    residual=None if residual is None else residual[s],
                                    out=dx[s])
        dtype = grads[1].dtype
        gw, gb = grads[1].astype(np.float64), grads[2].astype(np.float64)
        dw, db = dw + gw, db + gb
        if dres is not None:
            dres[s] = grads[3]
    if out is not None and dx is not out:
        np.copyto(out, dx)
        dx = out
    result = (dx, dw.astype(dtype), db.astype(dtype))
    return result if dres is None else result + (dres,)
