"""Float64 NumPy reference of every op: the gold standard the compiled kernels are tested against.

Plain, readable NumPy; no attempt at speed. Inputs of any float dtype are computed in float64.
"""

import numpy as np


def _axes(x, axis):
    axis = axis % x.ndim
    return axis, tuple(i for i in range(x.ndim) if i != axis)


def _bcast(v, x, axis):
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def moments(x, axis=1, ddof=0):
    x = np.asarray(x, dtype=np.float64)
    _, red = _axes(x, axis)
    return x.mean(axis=red), x.var(axis=red, ddof=ddof)


def train(x, weight=None, bias=None, eps=1e-5, axis=1):
    """Returns y, mean, invstd, var (biased), all float64."""
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[axis]
    weight = np.ones(C) if weight is None else weight
    bias = np.zeros(C) if bias is None else bias
    mean, var = moments(x, axis)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _bcast(mean, x, axis)) * _bcast(invstd * weight, x, axis) + _bcast(bias, x, axis)
    return y, mean, invstd, var


def infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, axis=1):
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[axis]
    weight = np.ones(C) if weight is None else weight
    bias = np.zeros(C) if bias is None else bias
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    return ((x - _bcast(running_mean, x, axis)) * _bcast(invstd * weight, x, axis)
            + _bcast(bias, x, axis))


def backward(dy, x, weight, mean, invstd, training=True, axis=1):
    """Returns dx, dweight, dbias in float64."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    _, red = _axes(x, axis)
    C = x.shape[axis]
    weight = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = (x - _bcast(mean, x, axis)) * _bcast(invstd, x, axis)
    dbias = dy.sum(axis=red)
    dweight = (dy * xhat).sum(axis=red)
    if training:
        n = x.size // C
        dxhat = dy - _bcast(dbias / n, x, axis) - xhat * _bcast(dweight / n, x, axis)
    else:
        dxhat = dy
    dx = dxhat * _bcast(weight * invstd, x, axis)
    return dx, dweight, dbias


def running_update(running_mean, running_var, x, momentum, axis=1):
    """New running statistics (float64) after one training step on x."""
    mean, var_unbiased = moments(x, axis, ddof=1)
    return ((1 - momentum) * np.asarray(running_mean, dtype=np.float64) + momentum * mean,
            (1 - momentum) * np.asarray(running_var, dtype=np.float64) + momentum * var_unbiased)
