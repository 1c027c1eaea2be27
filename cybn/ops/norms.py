"""Layer, group, instance and RMS normalization on the batch-norm kernels.

They are batch norm's statistics over a different grouping, run by the same kernels:

* **group and instance norm** (one group per channel) normalize each sample's channels in
  groups. Channels-first data with at least MIN_GROUP_ROWS (sample, group) pairs is viewed
  as ``(N * G, Cg * S)``: each row one group, and a thread takes a group at a time
  (statistics, then the affine or gradient pass while it is in cache). Otherwise each
  sample ``x[n]`` is a ``(outer, C, inner)`` view of one of the batch-norm families (for
  channels-first data, all samples side by side as ``(1, N*C, inner)``): per-channel
  moments merged into groups exactly (Chan's formula for equal counts, float64), then the
  affine or gradient pass with per-(sample, channel) coefficients, a sample at a time.
* **layer and RMS norm** normalize each row of ``x`` viewed as ``(M, D)``, ``D`` the size
  of ``normalized_shape``: per-row moments from the plane kernels on ``(1, M, D)``, then a
  pass with per-row statistics and a per-column affine.

Conventions as for batch norm (:mod:`cybn.ops`): float32 or float64 data, outputs in x's
dtype, statistics float64, every argument checked before anything is written, ``out=`` a
separate array or x itself, bitwise identical results for any thread count. float16 and
bfloat16 data are accepted and computed on float32 copies (:func:`_half_via_float32`):
correct to the half type's rounding, not faster than float32.
"""

from __future__ import annotations

import functools
import inspect
import numbers

import numpy as np

from .. import _kernels
from .._openmp import get_num_threads
from .._validate import (
    as_data,
    channel_vector,
    check_bool,
    check_eps,
    check_out,
    check_same_layout,
    describe,
    is_half,
    normalize_axis,
    shaped_array,
    train_args,
)
from . import _schedule
from ._bn import update_running_stats
from ._layout import Output, Rows, Samples
from .batchnorm import batch_norm_backward, batch_norm_infer

__all__ = [
    "layer_norm",
    "layer_norm_backward",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "rms_norm",
    "rms_norm_backward",
]


def _half_eps(dtype) -> float:
    """Machine epsilon of a half type (bfloat16's through ml_dtypes, which made the array)."""
    if dtype == np.float16:
        return float(np.finfo(np.float16).eps)
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).eps)


def _half_via_float32(fn):
    """Let ``fn`` take float16 / bfloat16 ``x`` (and ``dy``): it runs on float32 copies, and
    its first result (y or dx) is rounded to x's dtype (to nearest even) and written into
    ``out`` when given; statistics stay float64, parameter gradients float32. RMS norm's
    default eps is then the half type's machine epsilon, as for x of that dtype."""
    signature = inspect.signature(fn)
    x_at = list(signature.parameters).index("x")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        x = args[x_at] if len(args) > x_at else kwargs.get("x")
        # float32 and float64 (every call but half precision) go straight through: binding
        # the signature cost a third of a small layer norm's call
        if not (isinstance(x, np.ndarray) and x.dtype.itemsize == 2 and is_half(x.dtype)):
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        half = x.dtype
        x = as_data(x, "x", half=True)
        inputs = {"x": x}
        if "dy" in bound.arguments:
            dy = as_data(bound.arguments["dy"], "dy", half=True)
            check_same_layout(dy, "dy", x)
            inputs["dy"] = dy
            bound.arguments["dy"] = dy.astype(np.float32)
        out = bound.arguments.get("out")
        check_out(out, x.shape, half, inputs, in_place_ok=tuple(inputs))
        bound.arguments["x"] = x.astype(np.float32)
        bound.arguments["out"] = None
        if fn.__name__ == "rms_norm" and bound.arguments.get("eps") is None:
            bound.arguments["eps"] = _half_eps(half)
        result = fn(*bound.args, **bound.kwargs)
        first = result[0] if isinstance(result, tuple) else result
        first = first.astype(half)
        if out is not None:
            np.copyto(out, first)
            first = out
        return (first, *result[1:]) if isinstance(result, tuple) else first

    return wrapper


# ---------------------------------------------------------------------------------------
# Samples: x as N samples with C channels each (group and instance norm).
# ---------------------------------------------------------------------------------------

def _streams(samples: Samples, itemsize: int, op: str) -> bool:
    """Whether the sample kernels' elementwise pass of ``op`` streams its output."""
    return _schedule.streams(samples.size * itemsize, samples.run * itemsize, op)


def _samples_forward(samples: Samples, x, groups: int, w, b, eps: float, out,
                     threads: int) -> tuple:
    """Group norm (groups of C // groups channels per sample): y and the (N, groups)
    mean, invstd and biased variance."""
    # folded (one row of every sample side by side): each sample's groups in turn
    row_groups = groups * samples.N if samples.rows == 1 else groups
    mean, var, invstd = (np.empty((samples.N, groups)) for _ in range(3))
    dest = Output(samples, out, x.dtype)
    _kernels.sample_group_forward(
        samples.kernel_view(x), *samples.geometry, row_groups, w, b,
        eps, dest.kernel, samples.vector(mean), samples.vector(var), samples.vector(invstd),
        _streams(samples, x.itemsize, "train"), threads)
    return dest.result(), mean, invstd, var

def _samples_backward(samples: Samples, dy, x, groups: int, w, mean, invstd, out,
                      threads: int) -> tuple:
    """dx and the per-(sample, channel) sums of dy and dy * (x - mean), (N, C)."""
    row_groups = groups * samples.N if samples.rows == 1 else groups
    sum_dy, sum_dy_xmu = np.empty((samples.N, samples.C)), np.empty((samples.N, samples.C))
    dest = Output(samples, out, x.dtype)
    _kernels.sample_group_backward(
        samples.kernel_view(dy), samples.kernel_view(x), *samples.geometry,
        row_groups, samples.vector(mean), samples.vector(invstd), w,
        dest.kernel, samples.vector(sum_dy), samples.vector(sum_dy_xmu),
        _streams(samples, x.itemsize, "backward"), threads)
    return dest.result(), sum_dy, sum_dy_xmu


def _channel_axis(axis, x: np.ndarray) -> int:
    ax = normalize_axis(axis, x.ndim)
    if ax == 0:
        raise ValueError("axis is the channel axis and must not be 0 (the batch axis): "
                         "use 1 for channels-first or -1 for channels-last")
    return ax


def _num_groups(num_groups, channels: int) -> int:
    if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {describe(num_groups)}")
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"num_groups must be a positive divisor of the number of channels "
                         f"of x along axis ({channels}), got {num_groups}")
    return int(num_groups)


def _per_channel(v: np.ndarray, channels: int) -> np.ndarray:
    """(N, G) -> (N, C), each group's value repeated over its channels."""
    return np.repeat(v, channels // v.shape[1], axis=1)


# Channels-first data with at least this many (sample, group) rows runs a group per thread
# item. The choice depends on the shape only, never on the thread count (the two paths
# merge their sums in different orders).
MIN_GROUP_ROWS = 64


def _group_rows(samples: Samples, groups: int) -> int:
    """Elements per channel when the groups are contiguous rows (channels-first data) and
    numerous enough to share among threads: then one kernel does a group at a time, one
    pass over memory. 0 otherwise."""
    outer, _, inner, _, plane = samples.geometry
    if outer != 1 or not plane or samples.N * groups < MIN_GROUP_ROWS:
        return 0
    return inner


def _grouped_forward(x, groups, w, b, eps, out, threads, samples):
    """Group statistics, then the affine pass; returns y and the (N, G) mean, invstd and
    biased variance."""
    S = _group_rows(samples, groups)
    if S:
        shape = (samples.N, groups)
        mean, var, invstd = (np.empty(shape) for _ in range(3))
        dest = Output(samples, out, x.dtype)
        rows = samples.N * groups
        _kernels.group_train_forward(
            np.ascontiguousarray(x).reshape(rows, -1), S, w, b, eps,
            dest.buffer.reshape(rows, -1), mean.reshape(-1), var.reshape(-1),
            invstd.reshape(-1), _streams(samples, x.itemsize, "train"), threads)
        return dest.result(), mean, invstd, var
    return _samples_forward(samples, x, groups, w, b, eps, out, threads)


def _grouped_backward(dy, x, groups, w, mean, invstd, out, threads, samples):
    """Backward of group normalization with (N, G) statistics; returns dx, dw, db."""
    C = samples.C
    S = _group_rows(samples, groups)
    if S:
        rows = samples.N * groups
        sum_dy, sum_dy_xmu = np.empty((samples.N, C)), np.empty((samples.N, C))
        dest = Output(samples, out, x.dtype)
        _kernels.group_backward(
            np.ascontiguousarray(dy).reshape(rows, -1), np.ascontiguousarray(x).reshape(rows, -1),
            S, mean.reshape(-1), invstd.reshape(-1), w, dest.buffer.reshape(rows, -1), sum_dy,
            sum_dy_xmu, _streams(samples, x.itemsize, "backward"), threads)
        dx = dest.result()
    else:
        dx, sum_dy, sum_dy_xmu = _samples_backward(samples, dy, x, groups, w, mean, invstd,
                                                   out, threads)
    dweight = (sum_dy_xmu * _per_channel(invstd, C)).sum(axis=0)
    return dx, dweight.astype(x.dtype), sum_dy.sum(axis=0).astype(x.dtype)


def _grouped_backward_checked(dy, x, num_groups, weight, mean, invstd, axis, out):
    """Group norm backward (instance norm: ``num_groups`` None, one group per channel) with
    every argument checked first."""
    fast = _kernels.fast_group_backward(dy, x, num_groups, weight, mean, invstd, axis, out,
                                        _schedule.FAST_MAX_SIZE["backward"],
                                        MIN_GROUP_ROWS, _schedule.MIN_PARALLEL_SIZE,
                                        get_num_threads())
    if fast is not None:
        return fast
    x = as_data(x, "x")
    dy = as_data(dy, "dy")
    check_same_layout(dy, "dy", x)
    ax = _channel_axis(axis, x)
    N, C = x.shape[0], x.shape[ax]
    groups = C if num_groups is None else _num_groups(num_groups, C)
    what = "per sample and channel" if num_groups is None else "per sample and group"
    w = channel_vector(weight, "weight", C, default=1.0)
    mu = shaped_array(mean, "mean", (N, groups), what=what)
    inv = shaped_array(invstd, "invstd", (N, groups), what=what)
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd}, in_place_ok=("x", "dy"))
    if x.size == 0:
        zeros = np.zeros(C, dtype=x.dtype)
        return _empty(x, out), zeros, zeros.copy()
    samples = Samples.of(x.shape, ax)
    return _grouped_backward(dy, x, groups, w, mu, inv, out, _schedule.threads_for(x.size),
                             samples)


def _empty(x, out):
    return out if out is not None else np.empty(x.shape, dtype=x.dtype)


# ---------------------------------------------------------------------------------------
# Group norm.
# ---------------------------------------------------------------------------------------

@_half_via_float32
def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *,
               axis: int = 1, out=None):
    """Group normalization: each sample's channels are split into ``num_groups`` groups of
    consecutive channels, each group normalized over its channels and all other axes but
    the batch axis (0), then a per-channel affine (PyTorch's ``group_norm``).

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
        Batch axis 0, channel axis ``axis``.
    num_groups : int
        A divisor of the number of channels C.
    weight, bias : ndarray of shape (C,), optional
        None means 1 and 0.
    eps : float > 0
    axis : int
        Channel axis: 1 (channels-first, NCHW), -1 (channels-last, NHWC) or any other
        axis but 0.
    out : ndarray, optional
        Array of x's shape and dtype for y; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    mean, invstd : ndarray (N, num_groups), float64
        Each group's mean and ``1 / sqrt(var + eps)`` (biased variance).
    """
    fast = _kernels.fast_group_forward(x, num_groups, weight, bias, eps, axis, out,
                                       _schedule.FAST_MAX_SIZE["train"], MIN_GROUP_ROWS,
                                       _schedule.MIN_PARALLEL_SIZE,
                                       get_num_threads())
    if fast is not None:  # the common case in one compiled call (None: anything else)
        return fast[:3]
    x = as_data(x, "x")
    ax = _channel_axis(axis, x)
    N, C = x.shape[0], x.shape[ax]
    groups = _num_groups(num_groups, C)
    w = channel_vector(weight, "weight", C, default=1.0)
    b = channel_vector(bias, "bias", C, default=0.0)
    eps = check_eps(eps)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias},
              in_place_ok=("x",))
    if x.size == 0:
        nan = np.full((N, groups), np.nan)
        return _empty(x, out), nan, nan.copy()
    samples = Samples.of(x.shape, ax)
    y, mean, invstd, _ = _grouped_forward(x, groups, w, b, eps, out,
                                          _schedule.threads_for(x.size), samples)
    return y, mean, invstd


@_half_via_float32
def group_norm_backward(dy, x, num_groups: int, weight, mean, invstd, *, axis: int = 1,
                        out=None):
    """Gradients of :func:`group_norm` with respect to x, weight and bias.

    Parameters
    ----------
    dy, x : ndarray
        Gradient with respect to y, and the forward input (same shape and dtype).
    num_groups : int
    weight : ndarray (C,) or None
        The forward weight (None means 1).
    mean, invstd : ndarray (N, num_groups)
        What :func:`group_norm` returned.
    axis : int
        Channel axis.
    out : ndarray, optional
        For dx; may be dy or x itself.

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight, dbias : ndarray (C,), x's dtype
    """
    return _grouped_backward_checked(dy, x, num_groups, weight, mean, invstd, axis, out)


# ---------------------------------------------------------------------------------------
# Instance norm.
# ---------------------------------------------------------------------------------------

@_half_via_float32
def instance_norm(x, weight=None, bias=None, *, running_mean=None, running_var=None,
                  use_input_stats: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                  axis: int = 1, out=None):
    """Instance normalization: each channel of each sample normalized over its spatial axes
    (every axis but the batch axis 0 and the channel axis), then a per-channel affine
    (PyTorch's ``instance_norm``).

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
    weight, bias : ndarray (C,), optional
    running_mean, running_var : ndarray (C,), optional
        With ``use_input_stats=True`` they are updated in place when given (both or
        neither) with the batch average of the instances' statistics:
        ``(1 - momentum) * running + momentum * mean_n(stat)``, the variance unbiased.
        With ``use_input_stats=False`` they are what x is normalized with (required).
    use_input_stats : bool
    momentum : float in [0, 1]
    eps : float > 0
    axis : int
        Channel axis (1 or -1, or any other but 0).
    out : ndarray, optional
        For y; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    mean, invstd : ndarray, float64
        ``(N, C)`` per-instance statistics with ``use_input_stats=True``; ``(C,)``, from the
        running statistics, otherwise. Hand them to :func:`instance_norm_backward`.

    Raises
    ------
    ValueError
        With ``use_input_stats=True`` and one spatial element per instance.
    """
    use_input_stats = check_bool(use_input_stats, "use_input_stats")
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when "
                             "use_input_stats=False")
        x = as_data(x, "x")
        ax = _channel_axis(axis, x)
        C = x.shape[ax]
        rm = channel_vector(running_mean, "running_mean", C)
        rv = channel_vector(running_var, "running_var", C)
        y = batch_norm_infer(x, running_mean, running_var, weight, bias, eps=eps, axis=ax,
                             out=out)
        return y, rm.copy(), 1.0 / np.sqrt(rv + eps)
    if (running_mean is None and running_var is None and type(momentum) is float
            and 0.0 <= momentum <= 1.0):
        fast = _kernels.fast_group_forward(x, None, weight, bias, eps, axis, out,
                                           _schedule.FAST_MAX_SIZE["train"],
                                           MIN_GROUP_ROWS, _schedule.MIN_PARALLEL_SIZE,
                                           get_num_threads())
        if fast is not None:
            return fast[:3]
    x = as_data(x, "x")
    ax = _channel_axis(axis, x)
    N, C = x.shape[0], x.shape[ax]
    w, b, rm, rv, momentum, eps = train_args(C, weight, bias, running_mean, running_var,
                                             momentum, eps)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias,
                                      "running_mean": running_mean,
                                      "running_var": running_var}, in_place_ok=("x",))
    if x.size == 0:
        nan = np.full((N, C), np.nan)
        return _empty(x, out), nan, nan.copy()
    count = x.size // (N * C)
    if count == 1:
        raise ValueError(f"Expected more than 1 spatial element per instance when using "
                         f"input statistics, got input of shape {x.shape} with channel "
                         f"axis {ax}")
    samples = Samples.of(x.shape, ax)
    y, mean, invstd, var = _grouped_forward(x, C, w, b, eps, out,
                                            _schedule.threads_for(x.size), samples)
    update_running_stats(rm, rv, mean.mean(axis=0), var.mean(axis=0), count, momentum,
                         unbiased=True)
    return y, mean, invstd


@_half_via_float32
def instance_norm_backward(dy, x, weight, mean, invstd, *, use_input_stats: bool = True,
                           axis: int = 1, out=None):
    """Gradients of :func:`instance_norm` with respect to x, weight and bias.

    ``mean`` and ``invstd`` are what the forward returned: ``(N, C)`` with
    ``use_input_stats=True`` (gradient through the instance statistics), ``(C,)`` otherwise
    (statistics are constants, as :func:`batch_norm_backward` with ``training=False``).

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight, dbias : ndarray (C,), x's dtype
    """
    use_input_stats = check_bool(use_input_stats, "use_input_stats")
    if not use_input_stats:
        return batch_norm_backward(dy, x, weight, mean, invstd, training=False, axis=axis,
                                   out=out)
    return _grouped_backward_checked(dy, x, None, weight, mean, invstd, axis, out)


# ---------------------------------------------------------------------------------------
# Layer norm and RMS norm: rows of x.
# ---------------------------------------------------------------------------------------

def _normalized_shape(normalized_shape) -> tuple:
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape,
                                                                         (bool, np.bool_)):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got "
                        f"{describe(normalized_shape)}") from None
    if (not shape or any(isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral)
                         or d < 0 for d in shape)):
        raise ValueError(f"normalized_shape must be a non-empty sequence of non-negative "
                         f"ints, got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


def _rows_input(x, name: str, normalized_shape) -> tuple:
    shape = _normalized_shape(normalized_shape)
    x = as_data(x, name, min_ndim=len(shape))
    if x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"normalized_shape {shape} must equal the last {len(shape)} axes of "
                         f"{name}, got {name} of shape {x.shape}")
    return x, shape


@_half_via_float32
def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, out=None):
    """Layer normalization over the trailing axes ``normalized_shape`` (PyTorch's
    ``layer_norm``): each row (one index of the leading axes) normalized with its own mean
    and biased variance, then an elementwise affine of shape ``normalized_shape``.

    Parameters
    ----------
    x : ndarray, float32 or float64
        Its last ``len(normalized_shape)`` axes must equal ``normalized_shape``.
    normalized_shape : int or sequence of ints
    weight, bias : ndarray of shape normalized_shape, optional
        None means 1 and 0.
    eps : float > 0
    out : ndarray, optional
        For y; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    mean, invstd : ndarray, float64, shape ``x.shape[:-len(normalized_shape)]``
    """
    fast = _kernels.fast_rows_forward(x, normalized_shape, weight, bias, eps, out, True,
                                      _schedule.MIN_PARALLEL_SIZE, get_num_threads())
    if fast is not None:  # the common case in one compiled call (None: anything else)
        return fast
    x, shape = _rows_input(x, "x", normalized_shape)
    rows = Rows.of(x.shape, shape)
    w = shaped_array(weight, "weight", shape, default=1.0, what="normalized_shape").ravel()
    b = shaped_array(bias, "bias", shape, default=0.0, what="normalized_shape").ravel()
    eps = check_eps(eps)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias},
              in_place_ok=("x",))
    if x.size == 0:
        nan = np.full(rows.lead, np.nan)
        return _empty(x, out), nan, nan.copy()
    mean = np.empty(rows.M)
    invstd = np.empty(rows.M)
    dest = Output(rows, out, x.dtype)
    _kernels.rows_forward(rows.kernel_view(x), w, b, eps, True, dest.kernel, mean, invstd,
                          _schedule.threads_for(x.size))
    return dest.result(), mean.reshape(rows.lead), invstd.reshape(rows.lead)


def _rows_backward(dy, x, shape, weight, mean, invstd, out, centered: bool):
    rows = Rows.of(x.shape, shape)
    w = shaped_array(weight, "weight", shape, default=1.0, what="normalized_shape").ravel()
    dest = Output(rows, out, x.dtype)
    dweight = np.empty(rows.D)
    dbias = np.empty(rows.D)
    _kernels.rows_backward(rows.kernel_view(dy), rows.kernel_view(x), mean.ravel(),
                           invstd.ravel(), w, centered, dest.kernel, dweight, dbias,
                           _schedule.threads_for(x.size))
    return (dest.result(), dweight.reshape(shape).astype(x.dtype),
            dbias.reshape(shape).astype(x.dtype))


@_half_via_float32
def layer_norm_backward(dy, x, weight, mean, invstd, normalized_shape, *, out=None):
    """Gradients of :func:`layer_norm` with respect to x, weight and bias.

    Parameters
    ----------
    dy, x : ndarray
        Gradient with respect to y, and the forward input (same shape and dtype).
    weight : ndarray of shape normalized_shape, or None (1)
    mean, invstd : ndarray
        What :func:`layer_norm` returned (shape ``x.shape[:-len(normalized_shape)]``).
    normalized_shape : int or sequence of ints
    out : ndarray, optional
        For dx; may be dy or x itself.

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight, dbias : ndarray of shape normalized_shape, x's dtype
    """
    fast = _kernels.fast_rows_backward(dy, x, weight, mean, invstd, normalized_shape, out,
                                       True, _schedule.MIN_PARALLEL_SIZE, get_num_threads())
    if fast is not None:
        return fast
    x, shape = _rows_input(x, "x", normalized_shape)
    dy = as_data(dy, "dy", min_ndim=len(shape))
    check_same_layout(dy, "dy", x)
    lead = x.shape[:x.ndim - len(shape)]
    shaped_array(weight, "weight", shape, default=1.0, what="normalized_shape")
    mu = shaped_array(mean, "mean", lead, what="one value per row")
    inv = shaped_array(invstd, "invstd", lead, what="one value per row")
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd}, in_place_ok=("x", "dy"))
    if x.size == 0:
        zeros = np.zeros(shape, dtype=x.dtype)
        return _empty(x, out), zeros, zeros.copy()
    return _rows_backward(dy, x, shape, weight, mu, inv, out, centered=True)


def _rms_eps(eps, dtype) -> float:
    return float(np.finfo(dtype).eps) if eps is None else check_eps(eps)


@_half_via_float32
def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """RMS normalization over the trailing axes ``normalized_shape`` (PyTorch's
    ``rms_norm``): ``y = x / sqrt(mean(x**2) + eps) * weight``, no centering, no bias.

    Parameters
    ----------
    x : ndarray, float32 or float64
    normalized_shape : int or sequence of ints
    weight : ndarray of shape normalized_shape, optional
    eps : float > 0 or None
        None means the machine epsilon of x's dtype (as PyTorch).
    out : ndarray, optional
        For y; may be x itself.

    Returns
    -------
    y : ndarray, x's shape and dtype
    invrms : ndarray, float64, shape ``x.shape[:-len(normalized_shape)]``
        ``1 / sqrt(mean(x**2) + eps)`` per row.
    """
    fast = _kernels.fast_rows_forward(x, normalized_shape, weight, None, eps, out, False,
                                      _schedule.MIN_PARALLEL_SIZE, get_num_threads())
    if fast is not None:
        return fast
    x, shape = _rows_input(x, "x", normalized_shape)
    rows = Rows.of(x.shape, shape)
    w = shaped_array(weight, "weight", shape, default=1.0, what="normalized_shape").ravel()
    eps = _rms_eps(eps, x.dtype)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight}, in_place_ok=("x",))
    if x.size == 0:
        return _empty(x, out), np.full(rows.lead, np.nan)
    invrms = np.empty(rows.M)
    dest = Output(rows, out, x.dtype)
    _kernels.rows_forward(rows.kernel_view(x), w, np.zeros(rows.D), eps, False, dest.kernel,
                          np.empty(rows.M), invrms, _schedule.threads_for(x.size))
    return dest.result(), invrms.reshape(rows.lead)


@_half_via_float32
def rms_norm_backward(dy, x, weight, invrms, normalized_shape, *, out=None):
    """Gradients of :func:`rms_norm` with respect to x and weight.

    Parameters
    ----------
    dy, x : ndarray
    weight : ndarray of shape normalized_shape, or None (1)
    invrms : ndarray
        What :func:`rms_norm` returned.
    normalized_shape : int or sequence of ints
    out : ndarray, optional
        For dx; may be dy or x itself.

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight : ndarray of shape normalized_shape, x's dtype
    """
    fast = _kernels.fast_rows_backward(dy, x, weight, None, invrms, normalized_shape, out,
                                       False, _schedule.MIN_PARALLEL_SIZE, get_num_threads())
    if fast is not None:
        return fast
    x, shape = _rows_input(x, "x", normalized_shape)
    dy = as_data(dy, "dy", min_ndim=len(shape))
    check_same_layout(dy, "dy", x)
    lead = x.shape[:x.ndim - len(shape)]
    shaped_array(weight, "weight", shape, default=1.0, what="normalized_shape")
    inv = shaped_array(invrms, "invrms", lead, what="one value per row")
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "invrms": invrms},
              in_place_ok=("x", "dy"))
    if x.size == 0:
        return _empty(x, out), np.zeros(shape, dtype=x.dtype)
    dx, dweight, _ = _rows_backward(dy, x, shape, weight, np.zeros(inv.shape), inv, out,
                                    centered=False)
    return dx, dweight
