"""Batch normalization layers for 2-D to 5-D input, channels-first or channels-last."""

from __future__ import annotations

import numpy as np

from .. import ops as F
from .._validate import check_activation, check_eps, check_momentum
from ._args import (activation_grad, affine_parameters, param_dtype, positive_int,
                    running_buffers)
from .module import Module

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(Module):
    """Shared code of BatchNorm1d/2d/3d. Subclasses set the accepted ranks."""

    ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, channels_last: bool = False,
                 dtype=np.float32, activation: str | None = None):
        super().__init__()
        positive_int(num_features, "num_features")
        if momentum is not None:
            check_momentum(momentum)
        check_eps(eps)
        check_activation(activation)
        dtype = param_dtype(dtype)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.channels_last = channels_last
        self.dtype = dtype
        self.activation = activation
        affine_parameters(self, (num_features,), dtype, affine, affine)
        running_buffers(self, num_features, dtype, track_running_stats)
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                f"{', channels_last=True' if self.channels_last else ''}"
                f"{', activation=' + repr(self.activation) if self.activation else ''}")

    def _axis(self, x) -> int:
        if x.ndim not in self.ranks:
            dims = " or ".join(f"{r}-D" for r in self.ranks)
            raise ValueError(f"{type(self).__name__} expects {dims} input, got shape {x.shape}")
        axis = -1 if self.channels_last and x.ndim > 2 else 1
        if x.shape[axis] != self.num_features:
            name = type(self).__name__
            hint = ""
            if x.ndim > 2 and not self.channels_last and x.shape[-1] == self.num_features:
                hint = "; for channels-last input pass channels_last=True"
            elif self.channels_last and x.shape[1] == self.num_features:
                hint = "; for channels-first input leave channels_last=False"
            raise ValueError(f"{name} has {self.num_features} channels, but the input has "
                             f"{x.shape[axis]} along axis {axis % x.ndim} (shape {x.shape})"
                             f"{hint}")
        return axis

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def forward(self, x):
        """Normalize x: batch statistics in training mode (or without running statistics),
        running statistics in eval mode. Training updates the running statistics. With
        ``activation="relu"``, ``relu(BN(x))`` in the same pass."""
        return self._run(x, None, self.activation)

    def _run(self, x, residual, activation):
        """forward with a fused ``activation(BN(x) + residual)`` (for :class:`Residual`);
        after a residual, :meth:`backward` returns ``(dx, dresidual)``."""
        x = np.asarray(x)
        axis = self._axis(x)
        fused = {"activation": activation, "residual": residual}
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        if self.training or not self.track_running_stats:
            update = self.training and self.track_running_stats
            momentum = self.momentum
            if update and momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked + 1)
            y, mean, invstd = F.batch_norm_train(
                x, w, b, running_mean=self.running_mean if update else None,
                running_var=self.running_var if update else None,
                momentum=0.0 if momentum is None else momentum, eps=self.eps, axis=axis,
                **fused)
            if update:
                self.num_batches_tracked[...] += 1
            self._cache = (x, mean, invstd, True, axis, residual, activation)
        else:
            y = F.batch_norm_infer(x, self.running_mean, self.running_var, w, b, eps=self.eps,
                                   axis=axis, **fused)
            invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            self._cache = (x, self.running_mean.astype(np.float64), invstd, False, axis,
                           residual, activation)
        return y

    def backward(self, dy):
        """dx for the last forward (and the residual's gradient when it had one, as
        ``(dx, dresidual)``); adds dweight, dbias into weight.grad, bias.grad."""
        x, mean, invstd, training, axis, residual, activation = self._take_saved()
        dy = activation_grad(dy, x)  # mixed precision: rounded to a half x's dtype
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        grads = F.batch_norm_backward(dy, x, w, mean, invstd, training=training, axis=axis,
                                      activation=activation, bias=b, residual=residual)
        if self.affine:
            self.weight.grad += grads[1]
            self.bias.grad += grads[2]
        return grads[0] if residual is None else (grads[0], grads[3])


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input (channels-last: (N, L, C)).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance.
    momentum : float or None
        ``running = (1 - momentum) * running + momentum * batch``; None gives the cumulative
        average over ``num_batches_tracked``.
    affine : bool
        Learn ``weight`` (gamma) and ``bias`` (beta).
    track_running_stats : bool
        Keep running statistics; False uses batch statistics in eval mode too.
    channels_last : bool
        Channel axis last for 3-D input.
    dtype : float32 or float64
        dtype of the parameters and running statistics. The input may also be float16 or
        bfloat16 (mixed precision): the output and dx then have the input's dtype (a dy of
        another dtype is rounded to it), the parameters, their gradients and the running
        statistics stay in ``dtype``.
    activation : None or "relu"
        "relu" fuses the ReLU that follows into the same pass (forward and backward), with
        the outputs and gradients of BatchNorm followed by :class:`ReLU`; see
        :func:`cybn.fuse`.
    """

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, or (N, H, W, C) with channels_last.

    Same parameters as :class:`BatchNorm1d`.
    """

    ranks = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W), or (N, D, H, W, C) with channels_last.

    Same parameters as :class:`BatchNorm1d`.
    """

    ranks = (5,)
