"""Argument checks and the dtype policy (the layouts the kernels take are in
:mod:`cybn.ops._layout`).

Everything here runs before any kernel, so a rejected call leaves every argument as it was.
Error messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
TooHardError = getattr(np, "exceptions", np).TooHardError  # np.exceptions from NumPy 1.25
SUPPORTED = "float32 or float64"
HALF_SUPPORTED = "float32, float64, float16 or bfloat16"

def describe(value) -> str:
    """Short description of a value for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if np.isscalar(value) else type(value).__name__


def reject_masked(v, name: str) -> None:
    if isinstance(v, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array: cybn does not honour masks; pass "
                        f"{name}.filled(value) or {name}.compressed() explicitly")


def is_half(dtype) -> bool:
    """float16 or bfloat16 (ml_dtypes' type, recognized by name without importing it)."""
    dtype = np.dtype(dtype)
    return dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2)


def resolve_dtype(spec) -> np.dtype:
    """A dtype from a name or type; "bfloat16" imports ml_dtypes (an optional dependency)."""
    if isinstance(spec, str) and spec == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes "
                              "(or cybn[half])") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(spec)


def check_float_dtype(v: np.ndarray, name: str, half: bool = False) -> None:
    """TypeError unless v is float32 or float64 (or, with ``half``, float16 or bfloat16),
    with a conversion hint for numbers."""
    if v.dtype in FLOAT_DTYPES or (half and is_half(v.dtype)):
        return
    supported = HALF_SUPPORTED if half else SUPPORTED
    if is_half(v.dtype):
        hint = (" (half-precision storage is accepted by the batch norm ops; convert it with "
                ".astype(np.float32) here)")
    elif v.dtype.kind in "biuf":
        hint = " (convert it with .astype(np.float32) or .astype(np.float64))"
    else:
        hint = ""
    raise TypeError(f"{name} must have dtype {supported}, got {v.dtype}{hint}")


def is_int(v) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_bool(value, name: str) -> bool:
    """A Python or NumPy bool, as bool; TypeError for anything else ("False" is truthy)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {describe(value)}")


def numeric_array(v, name: str) -> np.ndarray:
    """v as an array of real numbers (bool, integer or floating, float16 and bfloat16
    included); TypeError naming ``name`` for anything else (None, strings, objects, ragged
    lists, complex numbers, masked arrays)."""
    reject_masked(v, name)
    if v is None:
        raise TypeError(f"{name} must be an array of numbers, got None")
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers: {err}") from None
    if not (arr.dtype.kind in "biuf" or is_half(arr.dtype)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def as_data(x, name: str, min_ndim: int = 2, half: bool = False) -> np.ndarray:
    """Return ``x`` as a float32 or float64 array of at least ``min_ndim`` dimensions.

    NumPy arrays must already be float32 or float64, or with ``half`` also float16 or
    bfloat16 (TypeError otherwise). Other array-likes (lists, tuples) are converted, numbers
    becoming float64.
    """
    reject_masked(x, name)
    if not isinstance(x, np.ndarray):  # a list, a tuple, a number: numbers become float64
        arr = numeric_array(x, name)
        x = arr.astype(np.float64) if arr.dtype.kind in "biu" else arr
    check_float_dtype(x, name, half)
    if x.ndim < min_ndim:
        what = " (batch and channel)" if min_ndim == 2 else ""
        raise ValueError(f"{name} must have at least {min_ndim} dimensions{what}, "
                         f"got shape {x.shape}")
    return x


def normalize_axis(axis, ndim: int) -> int:
    """The channel axis as a non-negative int; TypeError for non-integers."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, fast
        return axis % ndim
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {describe(axis)}")
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def check_eps(eps) -> float:
    if type(eps) is float and 0.0 < eps < math.inf:  # the common case, fast
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a positive real number, got {describe(eps)}")
    eps = float(eps)
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    return eps


def check_momentum(momentum) -> float:
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common case, fast
        return momentum
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1], got {describe(momentum)}")
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return momentum


def check_ddof(ddof) -> float:
    if isinstance(ddof, bool) or not isinstance(ddof, numbers.Real) or not float(ddof) >= 0:
        raise ValueError(f"ddof must be a non-negative number, got {ddof!r}")
    return float(ddof)


def channel_vector(v, name: str, channels: int, default: float | None = None) -> np.ndarray:
    """A per-channel array as a C-contiguous float64 array of shape (C,) (the caller's own
    array when it already is one: kernels only read it).

    ``None`` gives ``default`` everywhere, or is an error when there is no default.
    """
    return shaped_array(v, name, (channels,), default,
                        what="one value per channel of x along axis")


def shaped_array(v, name: str, shape: tuple, default: float | None = None,
                 what: str = "") -> np.ndarray:
    """An array of a given shape (per channel, per group, per sample, per normalized
    element) as a C-contiguous float64 array (the caller's own when it already is one);
    ``None`` gives ``default``, or is an error without one; ``what`` explains the shape."""
    if v is None:
        if default is None:
            raise ValueError(f"{name} is required, got None")
        return np.full(shape, default, dtype=np.float64)
    reject_masked(v, name)
    if not isinstance(v, np.ndarray):
        try:
            v = np.asarray(v, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError(f"{name} must be a float32 or float64 array of shape {shape}, "
                             f"got {describe(v)}") from None
    check_float_dtype(v, name)
    if v.shape != tuple(shape):
        explain = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{explain}, got shape {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float64)


def train_args(channels: int, weight, bias, running_mean, running_var, momentum,
               eps) -> tuple:
    """The per-channel arguments of a training forward, checked: (weight, bias) as float64
    vectors (1 and 0 by default), the running buffers (or None), momentum and eps."""
    w = channel_vector(weight, "weight", channels, default=1.0)
    b = channel_vector(bias, "bias", channels, default=0.0)
    rm, rv = running_pair(running_mean, running_var, channels)
    return w, b, rm, rv, check_momentum(momentum), check_eps(eps)


def residual_array(residual, x: np.ndarray):
    """The checked residual of a fused ``relu(BN(x) + residual)`` (x's shape and dtype), or
    None."""
    if residual is None:
        return None
    residual = as_data(residual, "residual", half=True)
    check_same_layout(residual, "residual", x)
    return residual


def train_inputs(x, weight, bias, running_mean, running_var, momentum, eps, axis, residual,
                 out) -> tuple:
    """Every argument of a batch-norm training forward checked at once, before anything
    runs: (x, the channel axis as a non-negative int, weight, bias (float64 (C,)), the
    running buffers (or None), momentum, eps, residual (or None))."""
    x = as_data(x, "x", half=True)
    axis = normalize_axis(axis, x.ndim)
    w, b, rm, rv, momentum, eps = train_args(x.shape[axis], weight, bias, running_mean,
                                             running_var, momentum, eps)
    residual = residual_array(residual, x)
    check_out(out, x.shape, x.dtype, {"x": x, "weight": weight, "bias": bias,
                                      "running_mean": running_mean,
                                      "running_var": running_var, "residual": residual},
              in_place_ok=("x", "residual"))
    return x, axis, w, b, rm, rv, momentum, eps, residual


def backward_inputs(dy, x, weight, mean, invstd, bias, training, axis, residual,
                    out) -> tuple:
    """Every argument of a batch-norm backward checked at once: (dy, x, the channel axis as
    a non-negative int, weight, mean, invstd, bias (float64 (C,)), training, residual)."""
    x = as_data(x, "x", half=True)
    dy = as_data(dy, "dy", half=True)
    check_same_layout(dy, "dy", x)
    axis = normalize_axis(axis, x.ndim)
    C = x.shape[axis]
    w = channel_vector(weight, "weight", C, default=1.0)
    mu = channel_vector(mean, "mean", C)
    inv = channel_vector(invstd, "invstd", C)
    b = channel_vector(bias, "bias", C, default=0.0)
    training = check_bool(training, "training")
    residual = residual_array(residual, x)
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd, "bias": bias, "residual": residual},
              in_place_ok=("x", "dy", "residual"))
    return dy, x, axis, w, mu, inv, b, training, residual


def running_buffer(v, name: str, channels: int) -> np.ndarray:
    """A running-statistics array that will be updated in place: checked, not copied."""
    if not isinstance(v, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array (it is updated in place), "
                         f"got {describe(v)}")
    reject_masked(v, name)
    check_float_dtype(v, name)
    if v.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) (one value per channel of x "
                         f"along axis), got shape {v.shape}")
    if not v.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writeable to be updated in place")
    return v


def running_pair(running_mean, running_var, channels: int):
    """Both running buffers or neither."""
    if (running_mean is None) != (running_var is None):
        given, missing = (("running_mean", "running_var") if running_var is None
                          else ("running_var", "running_mean"))
        raise ValueError(f"{given} was given without {missing}: pass both or neither")
    if running_mean is None:
        return None, None
    rm = running_buffer(running_mean, "running_mean", channels)
    rv = running_buffer(running_var, "running_var", channels)
    if np.shares_memory(rm, rv):
        raise ValueError("running_mean and running_var must not share memory")
    return rm, rv


def same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are the very same elements in the same order."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.may_share_memory(a, b):
        return False
    try:
        # the stub accepts only -1 and 0 for max_work
        return bool(np.shares_memory(a, b, max_work=100_000))  # type: ignore[arg-type]
    except TooHardError:  # too costly to decide exactly: treat as overlapping
        return True


def check_out(out, shape, dtype, inputs: dict, in_place_ok: tuple = ()) -> None:
    """``out`` must be a writeable array of the result's shape and dtype.

    It may be exactly one of the inputs named in ``in_place_ok``; any other overlap with an
    input is rejected.
    """
    if out is None:
        return
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a NumPy array, got {describe(out)}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got shape {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype} (the input's), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for name, arr in inputs.items():
        if not isinstance(arr, np.ndarray) or not overlaps(out, arr):
            continue
        if name in in_place_ok and same_view(out, arr):
            continue
        raise ValueError(f"out overlaps {name} without being exactly {name}: "
                         f"pass out={name} for in-place, or a separate array")


ACTIVATIONS = (None, "relu")
# what a batch norm can end with (ops._bn.POST_ACTIVATIONS: how each but ReLU runs)
BN_ACTIVATIONS = (None, "relu", "relu6", "leaky_relu", "silu", "hardswish")


def check_activation(activation) -> bool:
    """True for "relu", False for None; anything else is an error naming ``activation``."""
    if activation is None:
        return False
    if isinstance(activation, str) and activation == "relu":
        return True
    raise ValueError(f"activation must be None or 'relu', got {describe(activation)}")


def check_bn_activation(activation) -> str | None:
    """A batch norm's fused activation, checked: one of BN_ACTIVATIONS; anything else is an
    error naming ``activation``."""
    if activation is None or (isinstance(activation, str) and activation in BN_ACTIVATIONS):
        return activation
    names = ", ".join(repr(a) for a in BN_ACTIVATIONS[1:])
    raise ValueError(f"activation must be None or one of {names}, got {describe(activation)}")


def check_same_layout(arr: np.ndarray, name: str, x: np.ndarray) -> None:
    if arr.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got shape {arr.shape}")
    if arr.dtype != x.dtype:
        raise ValueError(f"{name} must have the dtype of x ({x.dtype}), got {arr.dtype}")
