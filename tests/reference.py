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


# ---------------------------------------------------------------------------------------
# The other normalizations (layer, group, instance, RMS), written from their definitions.
# ---------------------------------------------------------------------------------------

def _grouped(x, groups, axis):
    """x (batch axis 0, channel axis ``axis``) as (N, G, rest): each row one group."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 1)
    return x.reshape(x.shape[0], groups, -1), x.shape


def group_norm(x, groups, weight=None, bias=None, eps=1e-5, axis=1):
    """Returns y, mean (N, G), invstd (N, G), float64."""
    g, moved = _grouped(x, groups, axis)
    mean = g.mean(axis=2)
    invstd = 1.0 / np.sqrt(g.var(axis=2) + eps)
    xhat = ((g - mean[..., None]) * invstd[..., None]).reshape(moved)
    C = moved[1]
    shape = (1, C) + (1,) * (len(moved) - 2)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    b = np.zeros(C) if bias is None else np.asarray(bias, dtype=np.float64)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    return np.moveaxis(y, 1, axis), mean, invstd


def group_norm_backward(dy, x, groups, weight, mean, invstd, axis=1):
    """Returns dx, dweight, dbias in float64 (the closed form)."""
    gx, moved = _grouped(x, groups, axis)
    dy_m = np.moveaxis(np.asarray(dy, dtype=np.float64), axis, 1)
    C = moved[1]
    shape = (1, C) + (1,) * (len(moved) - 2)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    xhat = ((gx - mean[..., None]) * invstd[..., None]).reshape(moved)
    red = (0,) + tuple(range(2, len(moved)))
    dweight = (dy_m * xhat).sum(axis=red)
    dbias = dy_m.sum(axis=red)
    g = (dy_m * w.reshape(shape)).reshape(gx.shape)
    xh = xhat.reshape(gx.shape)
    dx = invstd[..., None] * (g - g.mean(axis=2, keepdims=True)
                              - xh * (g * xh).mean(axis=2, keepdims=True))
    return np.moveaxis(dx.reshape(moved), 1, axis), dweight, dbias


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Returns y, mean, invstd (float64; statistics of shape x.shape[:-k])."""
    x = np.asarray(x, dtype=np.float64)
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    y = (x - mean) * invstd
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    lead = x.shape[:x.ndim - k]
    return y, mean.reshape(lead), invstd.reshape(lead)


def layer_norm_backward(dy, x, weight, mean, invstd, normalized_shape):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead_axes = tuple(range(x.ndim - k))
    m = np.asarray(mean).reshape(mean.shape + (1,) * k)
    s = np.asarray(invstd).reshape(invstd.shape + (1,) * k)
    xhat = (x - m) * s
    w = np.ones(normalized_shape) if weight is None else np.asarray(weight, dtype=np.float64)
    g = dy * w
    dx = s * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes,
                                                                            keepdims=True))
    return dx, (dy * xhat).sum(axis=lead_axes), dy.sum(axis=lead_axes)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """Returns y, invrms (float64)."""
    x = np.asarray(x, dtype=np.float64)
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    eps = np.finfo(np.float64).eps if eps is None else eps
    inv = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * inv
    if weight is not None:
        y = y * np.asarray(weight, dtype=np.float64)
    return y, inv.reshape(x.shape[:x.ndim - k])


def rms_norm_backward(dy, x, weight, invrms, normalized_shape):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    s = np.asarray(invrms).reshape(invrms.shape + (1,) * k)
    xhat = x * s
    w = np.ones(normalized_shape) if weight is None else np.asarray(weight, dtype=np.float64)
    g = dy * w
    dx = s * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=tuple(range(x.ndim - k)))
