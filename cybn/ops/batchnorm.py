"""Batch normalization: training forward, inference, backward, and PyTorch's
``batch_norm`` with its ``training`` switch (conventions: :mod:`cybn.ops`)."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .._openmp import get_num_threads
from .._validate import (
    as_data,
    describe,
    is_int,
    channel_vector,
    check_bn_activation,
    check_bool,
    check_eps,
    check_out,
    check_same_layout,
    residual_array,
    backward_inputs,
)
from . import _schedule
from ._bn import (POST_ACTIVATIONS, apply_post, check_policy, checked_train_args,
                  degenerate_batch, epilogue, grad_sums, infer_core, param_dtype, post_grad,
                  pre_activation, train_core)
from ._layout import Output, channel_view, empty_result, kernel_array, view_of
from .conventions import get_convention
from .masked import check_mask, masked_grad_apply, masked_train, zero_dy_terms_dropped
from .conventions import resolve as resolve_convention

__all__ = ["batch_norm_train", "batch_norm_infer", "batch_norm_backward", "batch_norm",
           "batch_norm_backward_reduce", "batch_norm_backward_elemt"]


def batch_norm_train(x, weight=None, bias=None, *, running_mean=None, running_var=None,
                     momentum: float | None = None, eps: float | None = None, axis: int = 1,
                     activation: str | None = None, residual=None, stats=None, out=None,
                     convention: str | None = None, running_variance: str | None = None,
                     on_degenerate: str = "raise", mask=None):
    """Training-mode batch normalization with batch statistics.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the per-channel mean and
    biased variance of this batch; with ``residual`` and ``activation="relu"`` the ResNet
    block ending ``y = relu(BN(x) + residual)``, in the same pass over memory.

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
        Input; channel axis ``axis``, statistics over all other axes.
    weight, bias : ndarray of shape (C,), optional
        Scale (gamma) and shift (beta); None means 1 and 0.
    running_mean, running_var : ndarray of shape (C,), optional
        Updated in place when given (both or neither). With the default (PyTorch's)
        convention: ``(1 - momentum) * running + momentum * batch``, running_var receiving
        the unbiased variance ``var * n/(n-1)``.
    momentum : float in [0, 1], optional
        In the convention's own terms (PyTorch: the weight of the batch; Keras, Flax, ONNX,
        TensorFlow: the weight of the running value). None: the convention's default
        (PyTorch 0.1).
    eps : float > 0, optional
        Added to the variance. None: the convention's default (PyTorch 1e-5, Keras and
        TensorFlow 1e-3).
    axis : int
        Channel axis (1 for channels-first, -1 for channels-last).
    activation : None, "relu", "relu6", "leaky_relu", "silu" or "hardswish"
        The activation applied to ``BN(x) [+ residual]``, as PyTorch's ``relu``, ``relu6``,
        ``leaky_relu`` (slope 0.01), ``silu`` and ``hardswish``. "relu":
        ``y = max(BN(x) [+ residual], 0)`` fused into the elementwise pass (``-inf`` gives
        0, NaN stays NaN). The others run as one more compiled pass over y, in place. Nothing
        else is stored: :func:`batch_norm_backward` recomputes the pre-activation values
        from x (and the residual) with the forward's coefficients.
    residual : ndarray, optional
        Array of x's shape and dtype added to BN(x) before the activation (in x's dtype, as a
        separate add would).
    stats : tuple (count, mean, m2), optional
        The batch's statistics when x is one shard of it (from :func:`merge_stats` of every
        shard's :func:`batch_norm_stats`): x is normalized with them, and the running
        statistics are updated with them and ``count`` (the unbiased variance
        ``m2 / (count - 1)``). x may then be empty.
    out : ndarray, optional
        Array of x's shape and dtype to write y into; may be x or residual itself.
    convention : "torch" (default), "keras", "flax", "onnx" or "tensorflow"
        The framework whose running-statistics rules and defaults apply: the variance
        estimator stored in running_var, the meaning of momentum and the default momentum
        and eps (table in :mod:`cybn.ops.conventions`). The normalization itself is the same
        in all of them.
    running_variance : "unbiased" or "biased", optional
        Overrides the convention's estimator for running_var: ``var * n / (n - 1)`` or
        ``var`` (n values per channel).
    on_degenerate : "raise" (default), "use_running" or "skip_update"
        What a batch with one value per channel (``count == 1``, where the batch variance is
        undefined) does: raise ValueError (PyTorch); normalize with the running statistics,
        left unchanged, and return them as mean and invstd (the gradient is then the
        inference one: call :func:`batch_norm_backward` with ``training=False``); or
        normalize with the batch statistics as the other frameworks do (the output is then
        ``bias``) and leave the running statistics unchanged.
    mask : boolean ndarray, optional
        x's shape without the channel axis (e.g. (N, L) for padded sequences in NCL or NLC):
        False positions are left out of the statistics (and of the running statistics'
        count) and get the same affine transform. No stats=, residual or activation with
        it; float32/float64 x. An all-False mask gives NaN statistics and output and leaves
        the running statistics unchanged (as an empty batch); one True position per channel
        follows on_degenerate. Pass the same mask to :func:`batch_norm_backward`.

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
        With one value per channel (``count == 1``) and ``on_degenerate="raise"``: batch
        statistics are undefined.
    """
    if check_bn_activation(activation) in POST_ACTIVATIONS:
        if mask is not None:
            raise ValueError("mask= works without stats=, residual= and activation=")
        y, mean, invstd = batch_norm_train(
            x, weight, bias, running_mean=running_mean, running_var=running_var,
            momentum=momentum, eps=eps, axis=axis, residual=residual, stats=stats, out=out,
            convention=convention, running_variance=running_variance,
            on_degenerate=on_degenerate)
        return apply_post(y, activation), mean, invstd
    relu = activation == "relu"
    momentum, eps, unbiased = resolve_convention(convention, momentum, eps, running_variance)
    check_policy(on_degenerate)
    if mask is not None:
        return _masked_train_checked(x, weight, bias, running_mean, running_var, momentum, eps,
                                     axis, relu, residual, stats, out, unbiased, on_degenerate,
                                     mask)
    if residual is None and stats is None:
        # plain arrays up to mid size: one compiled call (None when it does not apply)
        fast = _kernels.fast_train(x, weight, bias, running_mean, running_var, momentum, eps,
                                   axis, out, _schedule.FAST_MAX_SIZE["train"], relu,
                                   unbiased, _schedule.MIN_PARALLEL_SIZE, get_num_threads())
        if fast is not None:
            return fast
    x, view, w, b, rm, rv, momentum, eps, ep, residual = checked_train_args(
        x, weight, bias, running_mean, running_var, momentum, eps, axis, relu, residual, out)
    C = view.channels
    if stats is not None:  # a shard of a batch: the whole batch's statistics
        stats = _global_stats(stats, C)
    elif view.size == 0:
        nan = np.full(C, np.nan)
        return empty_result(view, out, x.dtype), nan, nan.copy()
    elif view.count == 1:
        handled = degenerate_batch(
            on_degenerate, f"Expected more than 1 value per channel when training, got input "
            f"of shape {x.shape} with channel axis {view.axis} (see on_degenerate)",
            x, view, rm, rv, w, b, eps, ep, residual, out)
        if handled is not None:
            return handled
        rm = rv = None  # "skip_update": batch statistics, running statistics unchanged
    return train_core(x, view, w, b, rm, rv, momentum, eps, unbiased, ep, residual, out, stats)


def _masked_train_checked(x, weight, bias, running_mean, running_var, momentum, eps, axis,
                          relu, residual, stats, out, unbiased, on_degenerate, mask):
    """batch_norm_train with mask=: everything checked, then the masked kernels."""
    if stats is not None or residual is not None or relu:
        raise ValueError("mask= works without stats=, residual= and activation=")
    x, view, w, b, rm, rv, momentum, eps, _, _ = checked_train_args(
        x, weight, bias, running_mean, running_var, momentum, eps, axis, False, None, out)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"mask= takes float32 or float64 x, got {x.dtype}")
    mask8 = check_mask(mask, x, view.axis)
    count = int(np.count_nonzero(mask8))
    if count == 1:
        handled = degenerate_batch(
            on_degenerate, f"Expected more than 1 unmasked value per channel when training, "
            f"got 1 (input of shape {x.shape}; see on_degenerate)", x, view, rm, rv, w, b, eps,
            0, None, out)
        if handled is not None:
            return handled
        rm = rv = None
    return masked_train(x, view, view.axis, w, b, rm, rv, momentum, eps, unbiased, mask8,
                        count, out)


def train_plain(x, weight, bias, running_mean, running_var, momentum: float, eps: float,
                axis: int, relu: bool, unbiased: bool):
    """batch_norm_train in one compiled call for a BatchNorm layer's checked configuration
    (momentum: the batch's weight; no residual, mask or out): (y, mean, invstd), or None
    where that call does not apply (then the layer calls batch_norm_train). The same bits."""
    return _kernels.fast_train(x, weight, bias, running_mean, running_var, momentum, eps,
                               axis, None, _schedule.FAST_MAX_SIZE["train"], relu, unbiased,
                               _schedule.MIN_PARALLEL_SIZE, get_num_threads())


def _global_stats(stats, C: int) -> tuple:
    """The checked (count, mean, m2) of stats=."""
    if not (isinstance(stats, tuple) and len(stats) == 3):
        raise TypeError(f"stats must be a tuple (count, mean, m2), got {describe(stats)}")
    count, mean, m2 = stats
    if not (is_int(count) and count > 1):
        raise ValueError(f"stats: count must be an integer > 1 (values per channel over the "
                         f"whole batch), got {count!r}")
    return int(count), channel_vector(mean, "stats mean", C), channel_vector(m2, "stats m2", C)


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, *,
                     eps: float | None = None, axis: int = 1, activation: str | None = None,
                     residual=None, out=None, convention: str | None = None):
    """Inference-mode batch normalization with given (running) statistics.

    ``y = (x - running_mean) * scale + bias`` with ``scale = weight * invstd`` and
    ``invstd = 1 / sqrt(running_var + eps)``, one pass over x with per-channel coefficients
    computed once in float64; optionally ``relu(... + residual)`` in the same pass.

    Parameters
    ----------
    x : ndarray, float32 or float64, ndim >= 2
    running_mean, running_var : ndarray of shape (C,)
        Statistics to normalize with (not modified).
    weight, bias : ndarray of shape (C,), optional
        None means 1 and 0.
    eps : float > 0, optional
        None: the convention's default (PyTorch 1e-5, Keras and TensorFlow 1e-3).
    axis : int
        Channel axis.
    activation : None, "relu", "relu6", "leaky_relu", "silu" or "hardswish"
        As in :func:`batch_norm_train`.
    residual : ndarray, optional
        As in :func:`batch_norm_train`.
    out : ndarray, optional
        Array of x's shape and dtype; may be x or residual itself.
    convention : str, optional
        Only sets eps's default (see :func:`batch_norm_train`).

    Returns
    -------
    y : ndarray, x's shape and dtype
    """
    if check_bn_activation(activation) in POST_ACTIVATIONS:
        y = batch_norm_infer(x, running_mean, running_var, weight, bias, eps=eps, axis=axis,
                             residual=residual, out=out, convention=convention)
        return apply_post(y, activation)
    relu = activation == "relu"
    if eps is None:
        eps = get_convention(convention).eps
    elif convention is not None:
        get_convention(convention)  # a bad name is an error even when eps is given
    if residual is None:
        # plain arrays up to mid size: one compiled call (None when it does not apply)
        y = _kernels.fast_infer(x, running_mean, running_var, weight, bias, eps, axis, out,
                                _schedule.FAST_MAX_SIZE["infer"], relu,
                                _schedule.MIN_PARALLEL_SIZE, get_num_threads())
        if y is not None:
            return y
    x = as_data(x, "x", half=True)
    view = channel_view(x, axis)
    C = view.channels
    rm = channel_vector(running_mean, "running_mean", C)
    rv = channel_vector(running_var, "running_var", C)
    w = channel_vector(weight, "weight", C, default=1.0)
    b = channel_vector(bias, "bias", C, default=0.0)
    eps = check_eps(eps)
    ep = epilogue(relu, residual)
    residual = residual_array(residual, x)
    check_out(out, x.shape, x.dtype, {"x": x, "running_mean": running_mean,
                                      "running_var": running_var, "weight": weight,
                                      "bias": bias, "residual": residual},
              in_place_ok=("x", "residual"))
    if view.size == 0:
        return empty_result(view, out, x.dtype)
    return infer_core(x, view, rm, rv, w, b, eps, ep, residual, out)


def batch_norm_backward(dy, x, weight, mean, invstd, *, training: bool = True, axis: int = 1,
                        activation: str | None = None, bias=None, residual=None, out=None,
                        mask=None):
    """Gradients of batch normalization with respect to x, weight and bias (and, after a
    fused ``relu(BN(x) + residual)``, the residual).

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
    activation : None, "relu", "relu6", "leaky_relu", "silu" or "hardswish"
        The forward's activation; the gradient flows through
        ``activation(BN(x) [+ residual])``, the pre-activation values being recomputed from
        x, mean, invstd, weight, bias (and residual). With "relu" dy is replaced by 0 where
        that value was <= 0 (so the gradient at exactly 0 is 0, as PyTorch's), recomputed
        with the forward's arithmetic, bit for bit, in the same pass; the others take one
        pass that recomputes the values and one through the activation's gradient (at the
        kinks as PyTorch's: relu6 passes dy where 0 < value < 6).
    bias : ndarray of shape (C,), optional
        The forward's bias (None means 0); used with an activation only.
    residual : ndarray, optional
        The forward's residual (x's shape and dtype); its gradient is returned as well.
    out : ndarray, optional
        Array of x's shape and dtype for dx; may be dy, x or residual itself.
    mask : boolean ndarray, optional
        The forward's mask (see :func:`batch_norm_train`); with ``training=True`` the
        gradient through the masked statistics (the sums run over every position; the
        statistics' terms apply where the mask is True). Ignored with ``training=False``.

    Returns
    -------
    dx : ndarray, x's shape and dtype
    dweight : ndarray (C,), x's dtype
        ``sum(g * (x - mean) * invstd)`` over all axes but the channel axis, with g the
        gradient reaching BN's output (dy, masked by the ReLU when there is one).
    dbias : ndarray (C,), x's dtype
        ``sum(g)``.
    dresidual : ndarray, x's shape and dtype
        Only when ``residual`` is given: g, the gradient of the residual.
    """
    if check_bn_activation(activation) in POST_ACTIVATIONS:
        dy, x, axis_, w, mu, inv, b, training_, residual_ = backward_inputs(
            dy, x, weight, mean, invstd, bias, training, axis, residual, out)
        if mask is not None and training_:
            raise ValueError("mask= works without residual= and activation=")
        g = post_grad(dy, pre_activation(x, axis_, mu, inv, w, b, residual_), activation)
        return batch_norm_backward(g, x, weight, mean, invstd, training=training, axis=axis,
                                   residual=residual, out=out, mask=mask)
    relu = activation == "relu"
    if not relu and residual is None and mask is None:
        # plain arrays up to mid size: one compiled call (None when it does not apply)
        fast = _kernels.fast_backward(dy, x, weight, mean, invstd, training, axis, out,
                                      _schedule.FAST_MAX_SIZE["backward"],
                                      _schedule.MIN_PARALLEL_SIZE, get_num_threads())
        if fast is not None:
            return fast
    dy, x, axis, w, mu, inv, b, training, residual = backward_inputs(
        dy, x, weight, mean, invstd, bias, training, axis, residual, out)
    view = view_of(x.shape, axis)
    C = view.channels
    if mask is not None and training:
        if relu or residual is not None:
            raise ValueError("mask= works without residual= and activation=")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"mask= takes float32 or float64 x, got {x.dtype}")
        mask8 = check_mask(mask, x, view.axis)
        count = max(int(np.count_nonzero(mask8)), 1)
        sum_dy, sum_dy_xmu = zero_dy_terms_dropped(
            dy, x, view.axis, mu, *grad_sums(view, dy, x, mu))
        dx = masked_grad_apply(dy, x, view.axis, mask8, w, mu, inv, sum_dy, sum_dy_xmu, count,
                               out)
        return dx, (sum_dy_xmu * inv).astype(x.dtype), sum_dy.astype(x.dtype)
    if not relu and residual is not None:  # y = BN(x) + residual: the residual gets dy
        dres = dy.copy()
        return (*batch_norm_backward(dy, x, weight, mean, invstd, training=training,
                                     axis=axis, out=out), dres)
    if view.size == 0:
        zeros = np.zeros(C, dtype=param_dtype(x))
        result = (empty_result(view, out, x.dtype), zeros, zeros.copy())
        return result if residual is None else (*result, np.empty_like(x))

    ep = epilogue(relu, residual)
    threads = _schedule.threads(view)
    dyk, xk = kernel_array(view, dy), kernel_array(view, x)
    dest = Output(view, out, x.dtype)
    rk = xk if residual is None else kernel_array(view, residual)
    dres = None if residual is None else np.empty(x.shape, dtype=x.dtype)
    gk = dest.kernel if dres is None else kernel_array(view, dres)
    fscale = w * inv  # the forward's scale, as the kernels compute it
    sum_dy = np.empty(C, dtype=np.float64)
    sum_dy_xmu = np.empty(C, dtype=np.float64)
    streaming = _schedule.streaming(view, x.itemsize, "backward")
    group = _schedule.plane_group(view, x.itemsize, 2, threads) if view.family == "plane" else 0
    K = dest.kernels
    if view.family == "plane":
        K.plane_backward(dyk, xk, mu, inv, w, training, dest.kernel, ep, rk, gk, fscale, b,
                         sum_dy, sum_dy_xmu, group, streaming, threads)
    else:
        K.row_backward(dyk, xk, C, view.inner, mu, inv, w, training, dest.kernel, ep, rk, gk,
                       fscale, b, sum_dy, sum_dy_xmu, streaming, threads)
    dweight = (sum_dy_xmu * inv).astype(param_dtype(x))
    result = (dest.result(), dweight, sum_dy.astype(param_dtype(x)))
    return result if dres is None else (*result, dres)


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


def _backward_views(dy, x, axis):
    x = as_data(x, "x")
    dy = as_data(dy, "dy")
    check_same_layout(dy, "dy", x)
    return dy, x, channel_view(x, axis)


def batch_norm_backward_reduce(dy, x, mean, *, axis: int = 1) -> tuple:
    """The first half of the training backward of a shard: per-channel ``sum(dy)`` and
    ``sum(dy * (x - mean))``, float64, nothing else written.

    Summed over the shards (an all-reduce), they give the batch's ``dbias`` and
    ``dweight = sum_dy_xmu * invstd``, and the coefficients of
    :func:`batch_norm_backward_elemt`. Same blocks and bits as :func:`batch_norm_backward`'s
    own sums. float32 and float64 data.

    Returns
    -------
    sum_dy, sum_dy_xmu : ndarray (C,), float64 (zeros for an empty shard)
    """
    dy, x, view = _backward_views(dy, x, axis)
    return grad_sums(view, dy, x, channel_vector(mean, "mean", view.channels))


def batch_norm_backward_elemt(dy, x, weight, mean, invstd, sum_dy, sum_dy_xmu, count, *,
                              axis: int = 1, out=None):
    """The second half of the training backward of a shard: ``dx = weight * invstd * (dy -
    sum_dy / count - (x - mean) * invstd**2 * sum_dy_xmu / count)`` with the batch's sums and
    count (values per channel over every shard).

    With a single shard's own sums and count it gives :func:`batch_norm_backward`'s dx, bit
    for bit. float32 and float64 data.

    Parameters
    ----------
    sum_dy, sum_dy_xmu : ndarray (C,)
        From :func:`batch_norm_backward_reduce`, summed over the shards.
    count : int > 0
        Values per channel in the whole batch.
    out : ndarray, optional
        For dx; may be dy or x itself.
    """
    dy, x, view = _backward_views(dy, x, axis)
    C = view.channels
    w = channel_vector(weight, "weight", C, default=1.0)
    mu = channel_vector(mean, "mean", C)
    inv = channel_vector(invstd, "invstd", C)
    sdy = channel_vector(sum_dy, "sum_dy", C)
    sdx = channel_vector(sum_dy_xmu, "sum_dy_xmu", C)
    if not (is_int(count) and count > 0):
        raise ValueError(f"count must be a positive integer (values per channel over the "
                         f"whole batch), got {count!r}")
    check_out(out, x.shape, x.dtype, {"x": x, "dy": dy, "weight": weight, "mean": mean,
                                      "invstd": invstd, "sum_dy": sum_dy,
                                      "sum_dy_xmu": sum_dy_xmu}, in_place_ok=("x", "dy"))
    if view.size == 0:
        return empty_result(view, out, x.dtype)
    k1, k2, k3 = np.empty(C), np.empty(C), np.empty(C)
    _kernels.grad_coefficients_array(float(count), sdy, sdx, inv, w, True, k1, k2, k3)
    threads = _schedule.threads(view)
    dyk, xk = view.kernel_view(dy), view.kernel_view(x)
    dest = Output(view, out, x.dtype)
    streaming = _schedule.streaming(view, x.itemsize, "backward")
    if view.family == "plane":
        _kernels.plane_grad_apply(dyk, xk, mu, k1, k2, k3, dest.kernel, streaming, threads)
    else:
        _kernels.row_grad_apply(dyk, xk, C, view.inner, mu, k1, k2, k3, dest.kernel, streaming,
                                threads)
    return dest.result()
