"""The batch-norm core that the functional ops, the variants (renorm, ghost), the masked
path, the other norms' running statistics, SyncBatchNorm and the layers share: the training
arguments' checks, the degenerate-batch policy, the kernels of one training forward, the
per-channel moment and affine passes, and the running-statistics update (one function).
"""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .._validate import train_inputs
from . import _schedule, pool
from ._layout import ChannelView, Output, kernel_array, view_of

# what a training batch with one value per channel does (see batch_norm_train)
DEGENERATE_POLICIES = ("raise", "use_running", "skip_update")


def check_policy(on_degenerate) -> str:
    """on_degenerate, checked: one of DEGENERATE_POLICIES."""
    if not isinstance(on_degenerate, str) or on_degenerate not in DEGENERATE_POLICIES:
        raise ValueError(f"on_degenerate must be one of {DEGENERATE_POLICIES}, got "
                         f"{on_degenerate!r}")
    return on_degenerate


def update_running_stats(rm, rv, mean, var, count: float, momentum: float,
                         unbiased: bool) -> None:
    """The running statistics after a batch of ``count`` values per channel (biased batch
    variance ``var``): ``running = (1 - momentum) * running + momentum * batch``, the
    variance corrected by count / (count - 1) when ``unbiased``. Nothing without buffers."""
    if rm is None:
        return
    update_running(rm, mean, momentum, 1.0)
    update_running(rv, var, momentum, count / (count - 1) if unbiased else 1.0)


def update_running(buffer: np.ndarray, batch: np.ndarray, momentum: float,
                   factor: float) -> None:
    """running = (1 - momentum) * running + momentum * batch * factor, in place; a strided
    buffer is updated through a contiguous copy (the same arithmetic)."""
    if buffer.flags.c_contiguous:
        _kernels.update_running(buffer, batch, momentum, factor)
    else:
        tmp = np.ascontiguousarray(buffer)
        _kernels.update_running(tmp, batch, momentum, factor)
        buffer[...] = tmp


def channel_moments(view: ChannelView, x: np.ndarray, threads: int) -> tuple:
    """Per-channel (mean, m2) in float64 of a nonempty array x."""
    mean = np.empty(view.channels, dtype=np.float64)
    m2 = np.empty(view.channels, dtype=np.float64)
    xk = kernel_array(view, x)
    K = _kernels.for_dtype(x.dtype)
    if view.family == "plane":
        K.plane_moments(xk, mean, m2, threads)
    else:
        K.row_moments(xk, view.channels, view.inner, mean, m2, threads)
    return mean, m2


def channel_affine(view: ChannelView, x, shift, scale, offset, dest: Output, threads: int, *,
                   residual=None, ep: int = 0) -> None:
    """dest = ep((x - shift[c]) * scale[c] + offset[c]) for float64 per-channel vectors, dest
    the Output of x's dtype; ep: the kernels' fused-epilogue bits (residual: an array of x's
    shape, with EP_RESIDUAL)."""
    xk = kernel_array(view, x)
    rk = xk if residual is None else kernel_array(view, residual)
    _affine(dest.kernels, view, xk, shift, scale, offset, dest.kernel, rk, ep,
            _schedule.streaming(view, x.itemsize, "infer"), threads)


def _affine(K, view: ChannelView, xk, shift, scale, offset, yk, rk, ep: int, streaming: bool,
            threads: int) -> None:
    """The affine kernel of the kernel set K on kernel arrays (see channel_affine)."""
    if view.family == "plane":
        K.plane_infer(xk, shift, scale, offset, yk, rk, ep, streaming, threads)
    else:
        K.row_infer(xk, view.channels, view.inner, shift, scale, offset, yk, rk, ep, streaming,
                    threads)


def grad_sums(view: ChannelView, dy, x, mean) -> tuple:
    """Per-channel sum(dy) and sum(dy * (x - mean)), float64, of checked arrays (zeros when
    empty): the first half of the backward, the blocks of the full backward."""
    sum_dy = np.zeros(view.channels)
    sum_dy_xmu = np.zeros(view.channels)
    if view.size == 0:
        return sum_dy, sum_dy_xmu
    threads = _schedule.threads(view)
    dyk, xk = view.kernel_view(dy), view.kernel_view(x)
    if view.family == "plane":
        _kernels.plane_grad_sums(dyk, xk, mean, sum_dy, sum_dy_xmu, threads)
    else:
        _kernels.row_grad_sums(dyk, xk, view.channels, view.inner, mean, sum_dy, sum_dy_xmu,
                               threads)
    return sum_dy, sum_dy_xmu


def epilogue(relu: bool, residual) -> int:
    """The kernels' fused-epilogue bits."""
    return (_kernels.EP_RELU if relu else 0) | (_kernels.EP_RESIDUAL if residual is not None
                                                else 0)


# The activations a batch norm ends with besides ReLU, which the kernels' epilogue carries:
# the compiled activation kernel (ops.pool) and its parameters. Each runs as one more
# compiled pass over the op's output, in place; the backward recomputes the pre-activation
# values from x with the affine kernel and the forward's coefficients. LeakyReLU has
# PyTorch's default slope, 0.01.
POST_ACTIVATIONS = {"relu6": ("hardtanh", 0.0, 6.0), "leaky_relu": ("leaky_relu", 0.01, 0.0),
                    "silu": ("silu", 0.0, 0.0), "hardswish": ("hardswish", 0.0, 0.0)}


def apply_post(y: np.ndarray, activation: str) -> np.ndarray:
    """y = activation(y) in place (a POST_ACTIVATIONS name); half-precision y in float64,
    rounded once, as the activation layers compute it."""
    kind, a, b = POST_ACTIVATIONS[activation]
    if y.dtype in (np.float32, np.float64):
        return pool.activation(y, kind, a, b, inplace=True)
    y[...] = pool.activation(y.astype(np.float64), kind, a, b).astype(y.dtype)
    return y


def post_grad(dy: np.ndarray, z: np.ndarray, activation: str) -> np.ndarray:
    """The gradient reaching a batch norm's output: dy * activation'(z), z the recomputed
    pre-activation values, in z's dtype (half precision through float64)."""
    kind, a, b = POST_ACTIVATIONS[activation]
    if z.dtype in (np.float32, np.float64):
        return pool.activation_backward(z, dy, kind, a, b)
    return pool.activation_backward(z.astype(np.float64), dy.astype(np.float64), kind, a,
                                     b).astype(z.dtype)


def pre_activation(x: np.ndarray, axis: int, mean, invstd, w, b, residual) -> np.ndarray:
    """BN(x) [+ residual] as the forward computed it before its activation, for checked
    arguments (float64 per-channel vectors): the affine kernel with scale = w * invstd."""
    view = view_of(x.shape, axis)
    dest = Output(view, None, x.dtype)
    if view.size:
        channel_affine(view, x, mean, w * invstd, b, dest, _schedule.threads(view),
                       residual=residual, ep=epilogue(False, residual))
    return dest.result()


def param_dtype(x: np.ndarray) -> np.dtype:
    """dtype of the per-channel gradients: x's, float32 for half-precision x."""
    return np.dtype(np.float32) if x.dtype.itemsize == 2 else x.dtype


def infer_core(x, view, rm, rv, w, b, eps: float, ep: int, residual, out) -> np.ndarray:
    """The inference kernels on checked arguments (per-channel float64 vectors, a nonempty
    x): y = ep((x - rm) * w / sqrt(rv + eps) + b)."""
    scale = np.empty(view.channels, dtype=np.float64)
    _kernels.infer_scale(rv, w, eps, scale)
    dest = Output(view, out, x.dtype)
    channel_affine(view, x, rm, scale, b, dest, _schedule.threads(view),
                   residual=residual, ep=ep)
    return dest.result()


def degenerate_batch(on_degenerate: str, message: str, x, view, rm, rv, w, b, eps: float,
                     ep: int, residual, out):
    """A training batch with one value per channel: raises ValueError(message) for "raise";
    for "use_running" the result normalized with the running statistics, (y, mean, invstd);
    None for "skip_update" (the caller normalizes with the batch statistics and leaves the
    running statistics unchanged)."""
    if on_degenerate == "raise":
        raise ValueError(message)
    if on_degenerate == "use_running":
        if rm is None:
            raise ValueError("on_degenerate='use_running' needs running_mean and running_var")
        mean = np.ascontiguousarray(rm, dtype=np.float64)
        var = np.ascontiguousarray(rv, dtype=np.float64)
        y = infer_core(x, view, mean, var, w, b, eps, ep, residual, out)
        return y, mean.copy(), 1.0 / np.sqrt(var + eps)
    return None


def train_core(x, view, w, b, rm, rv, momentum, eps, unbiased, ep, residual, out,
               stats=None) -> tuple:
    """The training kernels on checked arguments (count >= 2): (y, mean, invstd).

    With ``stats`` = (count, mean, m2) of the whole batch that x is a shard of (checked, see
    batch_norm_train), x is normalized with those statistics, which also update the running
    ones. Their coefficients are the training kernels' (scale = weight * invstd, computed as
    train_coefficients does), applied by the affine kernel."""
    C = view.channels
    threads = _schedule.threads(view)
    xk = kernel_array(view, x)
    rk = xk if residual is None else kernel_array(view, residual)
    dest = Output(view, out, x.dtype)
    K = dest.kernels
    if stats is None:
        count = view.count
        mean = np.empty(C, dtype=np.float64)
        var = np.empty(C, dtype=np.float64)
        invstd = np.empty(C, dtype=np.float64)
        streaming = _schedule.streaming(view, x.itemsize, "train")
        if view.family == "plane":
            group = _schedule.plane_group(view, x.itemsize, 1, threads)
            K.plane_train_forward(xk, w, b, eps, dest.kernel, rk, ep, mean, var, invstd,
                                  group, streaming, threads)
        else:
            K.row_train_forward(xk, C, view.inner, w, b, eps, dest.kernel, rk, ep, mean, var,
                                invstd, streaming, threads)
    else:
        count, mean, m2 = stats
        mean = mean.copy()
        var = m2 / count
        invstd = 1.0 / np.sqrt(var + eps)
        if view.size:
            scale = np.empty(C, dtype=np.float64)
            _kernels.infer_scale(var, w, eps, scale)
            _affine(K, view, xk, mean, scale, b, dest.kernel, rk, ep,
                    _schedule.streaming(view, x.itemsize, "infer"), threads)
    update_running_stats(rm, rv, mean, var, count, momentum, unbiased)
    return dest.result(), mean, invstd


def checked_train_args(x, weight, bias, running_mean, running_var, momentum, eps, axis, relu,
                       residual, out) -> tuple:
    """The checked arguments of a training forward and x's layout: (x, its ChannelView,
    weight, bias, running_mean, running_var, momentum, eps, the epilogue bits, residual)."""
    x, axis, w, b, rm, rv, momentum, eps, residual = train_inputs(
        x, weight, bias, running_mean, running_var, momentum, eps, axis, residual, out)
    return x, view_of(x.shape, axis), w, b, rm, rv, momentum, eps, epilogue(relu, residual), \
        residual
