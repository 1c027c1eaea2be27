"""Argument checks and construction helpers (random numbers, dtypes, affine parameters,
running statistics) shared by the layers."""

from __future__ import annotations

import numpy as np

from .._validate import is_int


def as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def int_pair(value, name: str, minimum: int = 1) -> tuple:
    """An int or a pair of ints, each at least ``minimum``, as a pair."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(is_int(v) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(pair[0]), int(pair[1])


def positive_int(value, name: str) -> int:
    """A positive int (a feature or channel count)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def param_dtype(dtype) -> np.dtype:
    """The dtype of a layer's parameters and buffers: float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def affine_parameters(layer, shape: tuple, dtype, weight: bool, bias: bool) -> None:
    """A normalization layer's ``weight`` (ones) and ``bias`` (zeros) of ``shape``, or None
    entries; not weight-decayed (see :mod:`cybn.train`)."""
    from .module import Parameter

    if weight:
        layer.weight = Parameter(np.ones(shape, dtype), decay=False)
    else:
        layer._parameters["weight"] = None
    if bias:
        layer.bias = Parameter(np.zeros(shape, dtype), decay=False)
    else:
        layer._parameters["bias"] = None


def running_buffers(layer, channels: int, dtype, track: bool) -> None:
    """``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
    buffers, or None entries."""
    for name, value in (("running_mean", np.zeros(channels, dtype)),
                        ("running_var", np.ones(channels, dtype)),
                        ("num_batches_tracked", np.zeros((), np.int64))):
        layer.register_buffer(name, value if track else None)


def activation_grad(dy, x: np.ndarray) -> np.ndarray:
    """dy for a layer whose input x is float16 or bfloat16 (mixed precision): rounded to x's
    dtype when it comes in another one (a float32 gradient from a layer with float32
    weights); anything else unchanged (the op checks it)."""
    dy = np.asarray(dy)
    if x.dtype.itemsize == 2 and x.dtype.kind in "fV" and dy.dtype != x.dtype:
        return dy.astype(x.dtype)
    return dy
