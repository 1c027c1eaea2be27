"""Batch normalization layers for 2-D to 5-D input, channels-first or channels-last."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops as F
from .._validate import check_bn_activation, check_eps, check_momentum
from ..ops._bn import apply_post, check_policy
from ..ops.batchnorm import train_plain
from ..ops.conventions import check_running_variance, get_convention
from ._args import (activation_grad, affine_parameters, param_dtype, positive_int,
                    running_buffers)
from .module import Module

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


@dataclass(frozen=True)
class Saved:
    """What a BatchNorm forward keeps for its backward."""

    x: np.ndarray
    mean: np.ndarray             # (C,), or (G, C) per ghost batch; float64
    invstd: np.ndarray | None    # None: from running_var (inference needs no invstd)
    training: bool | tuple       # batch statistics (per ghost batch: a tuple of bools)
    axis: int
    residual: np.ndarray | None = None   # fused relu(BN(x) + residual)
    activation: str | None = None
    mask: np.ndarray | None = None       # masked statistics
    renorm: tuple | None = None          # batch renormalization's (r, d)
    ghost: bool = False                  # ghost batches of the layer's ghost_batch_size
    running_var: np.ndarray | None = None  # a copy, for invstd None (with the layer's eps)


class _ConventionDefault:
    """The default of BatchNorm's momentum: the convention's (PyTorch 0.1). None already
    means the cumulative average there, so the default is this marker."""

    def __repr__(self) -> str:
        return "<the convention's default>"


CONVENTION_DEFAULT = _ConventionDefault()


class _BatchNorm(Module):
    """Shared code of BatchNorm1d/2d/3d. Subclasses set the accepted ranks."""

    ranks: tuple = ()

    def __init__(self, num_features: int, eps: float | None = None,
                 momentum=CONVENTION_DEFAULT, affine: bool = True,
                 track_running_stats: bool = True, channels_last: bool = False,
                 dtype=np.float32, activation: str | None = None, *,
                 convention: str | None = None, running_variance: str | None = None,
                 center: bool | None = None, scale: bool | None = None,
                 on_degenerate: str = "raise", renorm: bool = False, renorm_clipping=None,
                 ghost_batch_size: int | None = None):
        super().__init__()
        positive_int(num_features, "num_features")
        conv = get_convention(convention)
        if momentum is CONVENTION_DEFAULT:
            momentum = conv.momentum
        elif momentum is not None:
            momentum = check_momentum(momentum)
        eps = conv.eps if eps is None else check_eps(eps)
        unbiased = check_running_variance(running_variance, conv)
        check_bn_activation(activation)
        check_policy(on_degenerate)
        dtype = param_dtype(dtype)
        if renorm:
            if activation is not None or not track_running_stats:
                raise ValueError("renorm needs track_running_stats=True and no fused activation")
            if renorm_clipping is None:
                renorm_clipping = F.RenormSchedule()
            elif not isinstance(renorm_clipping, F.RenormSchedule):
                try:
                    rmax, dmax = renorm_clipping
                except (TypeError, ValueError):
                    raise ValueError(f"renorm_clipping must be a RenormSchedule or (rmax, dmax), "
                                     f"got {renorm_clipping!r}") from None
                renorm_clipping = (float(rmax), float(dmax))
                if not (renorm_clipping[0] >= 1.0 and renorm_clipping[1] >= 0.0):
                    raise ValueError(f"renorm_clipping needs rmax >= 1 and dmax >= 0, got "
                                     f"{renorm_clipping}")
        elif renorm_clipping is not None:
            raise ValueError("renorm_clipping is given but renorm is False")
        if ghost_batch_size is not None:
            F.ghost_slices(1, ghost_batch_size)  # checks it
            if renorm or momentum is None:
                raise ValueError("ghost_batch_size works with a fixed momentum and without "
                                 "renorm")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.convention = conv.name
        self.running_variance = "unbiased" if unbiased else "biased"
        self.center = bool(affine if center is None else center)
        self.scale = bool(affine if scale is None else scale)
        self.affine = self.center and self.scale
        self.track_running_stats = track_running_stats
        self.channels_last = channels_last
        self.dtype = dtype
        self.activation = activation
        self.on_degenerate = on_degenerate
        self.renorm = bool(renorm)
        self.renorm_clipping = renorm_clipping
        self.ghost_batch_size = None if ghost_batch_size is None else int(ghost_batch_size)
        self.frozen = False
        affine_parameters(self, (num_features,), dtype, self.scale, self.center)
        running_buffers(self, num_features, dtype, track_running_stats)
        self._cache = None

    def _config(self) -> dict:
        """The constructor's keyword arguments that rebuild this layer's configuration."""
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum,
                    track_running_stats=self.track_running_stats,
                    channels_last=self.channels_last, dtype=self.dtype,
                    activation=self.activation, convention=self.convention,
                    running_variance=self.running_variance, center=self.center,
                    scale=self.scale, on_degenerate=self.on_degenerate, renorm=self.renorm,
                    renorm_clipping=self.renorm_clipping, ghost_batch_size=self.ghost_batch_size)

    def extra_repr(self) -> str:
        affine = (f"affine={self.affine}" if self.center == self.scale else
                  f"center={self.center}, scale={self.scale}")
        conv = get_convention(self.convention)
        parts = [f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                 f"{affine}, track_running_stats={self.track_running_stats}"]
        # the settings that differ from their defaults, in this order
        optional = [("channels_last", self.channels_last, False),
                    ("activation", self.activation, None),
                    ("convention", self.convention, "torch"),
                    ("running_variance", self.running_variance, conv.running_variance),
                    ("on_degenerate", self.on_degenerate, "raise"),
                    ("renorm", self.renorm, False),
                    ("ghost_batch_size", self.ghost_batch_size, None),
                    ("frozen", self.frozen, False)]
        for name, value, default in optional:
            if value != default and value:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)

    def renorm_limits(self) -> tuple:
        """(rmax, dmax) for the next training step: the schedule's at step
        ``num_batches_tracked``, or the static clipping."""
        clip = self.renorm_clipping
        if isinstance(clip, F.RenormSchedule):
            return clip(int(self.num_batches_tracked))
        return clip

    def freeze(self) -> "_BatchNorm":
        """Fine-tuning mode (Keras ``trainable = False``): the layer normalizes with its
        running statistics also in training mode (after ``model.train()`` too), leaves them
        unchanged, and its weight and bias get no gradient (``requires_grad`` False: the
        optimizers skip them); its backward still returns dx. Returns self."""
        self.frozen = True
        for p in self._parameters.values():
            if p is not None:
                p.requires_grad = False
        return self

    def unfreeze(self) -> "_BatchNorm":
        """Undo :meth:`freeze`. Returns self."""
        self.frozen = False
        for p in self._parameters.values():
            if p is not None:
                p.requires_grad = True
        return self

    def _gamma(self):
        return self._parameters["weight"].data if self.scale else None

    def _beta(self):
        return self._parameters["bias"].data if self.center else None

    def _batch_weight(self) -> float:
        """The weight of this batch in the running update, in PyTorch's terms."""
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked + 1)
        return get_convention(self.convention).batch_weight(self.momentum)

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

    def forward(self, x, mask=None):
        """Normalize x: batch statistics in training mode (or without running statistics),
        running statistics in eval mode. Training updates the running statistics. With
        ``activation="relu"``, ``relu(BN(x))`` in the same pass. ``mask`` (boolean, x's
        shape without the channel axis): in training, False positions are left out of the
        statistics (see :func:`cybn.batch_norm_train`); ignored with running statistics."""
        return self.forward_fused(x, None, self.activation, mask)

    def forward_fused(self, x, residual, activation, mask=None):
        """forward with a fused ``activation(BN(x) + residual)`` in the same pass (the
        ending of :class:`Residual`'s blocks); after a residual, :meth:`backward` returns
        ``(dx, dresidual)``."""
        x = np.asarray(x)
        axis = self._axis(x)
        fused = {"activation": activation, "residual": residual}
        w, b = self._gamma(), self._beta()
        batch_stats = not self.track_running_stats or (self.training and not self.frozen)
        if not batch_stats:
            rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
            y = F.batch_norm_infer(x, rm, rv, w, b, eps=self.eps, axis=axis, **fused)
            # copies of the statistics for a backward (invstd computed there: the inference
            # pass of a model needs none of it)
            self._cache = Saved(x, rm.astype(np.float64), None, False, axis, residual,
                                activation, running_var=rv.copy())
            return y
        update = self.training and self.track_running_stats and not self.frozen
        if (residual is None and mask is None and not self.renorm
                and self.ghost_batch_size is None):  # the common case: one compiled call
            rm, rv = ((self._buffers["running_mean"], self._buffers["running_var"]) if update
                      else (None, None))
            fast = train_plain(
                x, w, b, rm, rv, self._batch_weight() if update else 0.0, self.eps, axis,
                activation == "relu", self.running_variance == "unbiased")
            if fast is not None:
                if update:
                    self.num_batches_tracked[...] += 1
                self._cache = Saved(x, fast[1], fast[2], True, axis, None, activation)
                return fast[0] if activation in (None, "relu") else apply_post(fast[0],
                                                                               activation)
        if mask is not None and (self.renorm or self.ghost_batch_size is not None):
            raise ValueError("mask= does not work with renorm or ghost_batch_size (it would "
                             "be ignored): use a plain BatchNorm for masked statistics")
        running = {"running_mean": self.running_mean if update else None,
                   "running_var": self.running_var if update else None,
                   "momentum": self._batch_weight() if update else 0.0, "eps": self.eps,
                   "axis": axis, "running_variance": self.running_variance}
        if self.renorm and update:
            if residual is not None or activation is not None:
                raise ValueError("a renorm BatchNorm takes no fused residual or activation")
            rmax, dmax = self.renorm_limits()
            y, mean, invstd, r, d = F.batch_norm_renorm(x, w, b, rmax=rmax, dmax=dmax,
                                                        **running)
            self.num_batches_tracked[...] += 1
            self._cache = Saved(x, mean, invstd, True, axis, renorm=(r, d))
            return y
        if self.ghost_batch_size is not None:
            y, mean, invstd = F.batch_norm_ghost(
                x, w, b, ghost_batch_size=self.ghost_batch_size,
                on_degenerate=self.on_degenerate, **running, **fused)
            inner = x.size // max(x.shape[0] * self.num_features, 1)
            parts = F.ghost_slices(x.shape[0], self.ghost_batch_size)
            degenerate = [(s.stop - s.start) * inner == 1 for s in parts]
            if update:
                self.num_batches_tracked[...] += sum(not g for g in degenerate)
            flags = tuple(not (g and self.on_degenerate == "use_running") for g in degenerate)
            self._cache = Saved(x, mean, invstd, flags, axis, residual, activation, ghost=True)
            return y
        if mask is not None:
            count = int(np.count_nonzero(mask))
            degenerate, counted = count == 1, count >= 2
            running["mask"] = mask
        else:
            degenerate = x.size > 0 and x.size == x.shape[axis]  # one value per channel
            counted = not degenerate
        y, mean, invstd = F.batch_norm_train(x, w, b, on_degenerate=self.on_degenerate,
                                             **running, **fused)
        if update and counted:
            self.num_batches_tracked[...] += 1
        # with on_degenerate="use_running" the running statistics normalized x
        training = not (degenerate and self.on_degenerate == "use_running")
        self._cache = Saved(x, mean, invstd, training, axis, residual, activation, mask)
        return y

    def backward(self, dy):
        """dx for the last forward (and the residual's gradient when it had one, as
        ``(dx, dresidual)``); adds dweight, dbias into weight.grad, bias.grad (not when
        frozen)."""
        s, dy = self._take_saved(dy, lambda saved: saved.x.shape)
        dy = activation_grad(dy, s.x)  # mixed precision: rounded to a half x's dtype
        w, b = self._gamma(), self._beta()
        invstd = s.invstd
        if invstd is None:
            invstd = 1.0 / np.sqrt(s.running_var.astype(np.float64) + self.eps)
        if s.renorm is not None:
            grads = F.batch_norm_renorm_backward(dy, s.x, w, s.mean, invstd, *s.renorm,
                                                 axis=s.axis)
        elif s.ghost:
            grads = F.batch_norm_ghost_backward(dy, s.x, w, s.mean, invstd,
                                                ghost_batch_size=self.ghost_batch_size,
                                                axis=s.axis, activation=s.activation, bias=b,
                                                residual=s.residual, training=s.training)
        else:
            grads = F.batch_norm_backward(dy, s.x, w, s.mean, invstd, training=s.training,
                                          axis=s.axis, activation=s.activation, bias=b,
                                          residual=s.residual, mask=s.mask)
        if not self.frozen:
            if self.scale:
                self.weight.accumulate(grads[1])
            if self.center:
                self.bias.accumulate(grads[2])
        return grads[0] if s.residual is None else (grads[0], grads[3])


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input (channels-last: (N, L, C)).

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, optional
        Added to the variance; default the convention's (PyTorch 1e-5).
    momentum : float or None, optional
        In the convention's terms; PyTorch's (default): ``running = (1 - momentum) *
        running + momentum * batch``, default 0.1. None gives the cumulative average over
        ``num_batches_tracked`` (in any convention).
    affine : bool
        Learn ``weight`` (gamma) and ``bias`` (beta); ``center`` and ``scale`` choose each
        separately.
    track_running_stats : bool
        Keep running statistics; False uses batch statistics in eval mode too.
    channels_last : bool
        Channel axis last for 3-D input.
    dtype : float32 or float64
        dtype of the parameters and running statistics. The input may also be float16 or
        bfloat16 (mixed precision): the output and dx then have the input's dtype (a dy of
        another dtype is rounded to it), the parameters, their gradients and the running
        statistics stay in ``dtype``.
    activation : None, "relu", "relu6", "leaky_relu", "silu" or "hardswish"
        The activation that follows, inside this layer, with the outputs and gradients of
        BatchNorm followed by :class:`ReLU`, :class:`ReLU6`, :class:`LeakyReLU` (slope 0.01),
        :class:`SiLU` or :class:`Hardswish`. "relu" runs in the same pass over memory
        (forward and backward); the others as one more compiled pass over the output, and
        no saved copy of the pre-activation values (the backward recomputes them from x).
        See :func:`cybn.fuse`.
    convention : "torch" (default), "keras", "flax", "onnx" or "tensorflow"
        That framework's running-statistics rules and defaults: whether running_var keeps
        the unbiased (torch, tensorflow) or biased (keras, flax, onnx) batch variance, what
        momentum weighs (the batch in torch; the running value, ``running = momentum *
        running + (1 - momentum) * batch``, in the others), and the default momentum and
        eps (keras 0.99 / 1e-3, flax 0.99 / 1e-5, onnx 0.9 / 1e-5, tensorflow 0.99 / 1e-3).
        The normalization itself is the same. See :mod:`cybn.ops.conventions`.
    running_variance : "unbiased" or "biased", optional
        Overrides the convention's estimator for running_var.
    center, scale : bool, optional
        Keras's flags (Flax's use_bias / use_scale): learn ``bias`` (beta) and ``weight``
        (gamma) separately; default ``affine``. A missing one is None (and absent from
        state_dict).
    on_degenerate : "raise" (default), "use_running" or "skip_update"
        A training batch with one value per channel: raise ValueError (PyTorch); normalize
        with the running statistics (left unchanged; the backward is then the inference
        one); or normalize with the batch statistics as the other frameworks do (the output
        is then beta) and leave the running statistics unchanged.

    renorm : bool
        Batch renormalization (Ioffe 2017) in training: the batch statistics corrected
        towards the running ones by the clipped factors r and d (see
        :func:`cybn.batch_norm_renorm`); inference is unchanged.
    renorm_clipping : RenormSchedule or (rmax, dmax), optional
        The clipping limits: a schedule evaluated at ``num_batches_tracked`` (default: the
        paper's warm-up, ``RenormSchedule()``: plain BN for 5000 steps, then rmax up to 3 at
        40k steps and dmax up to 5 at 25k), or static limits as Keras's renorm_clipping.
    ghost_batch_size : int, optional
        Ghost batch normalization (Keras's virtual_batch_size): training normalizes each
        group of this many samples (along axis 0; the last group may be smaller) with its
        own statistics and updates the running statistics once per group, in order;
        ``num_batches_tracked`` counts the updates.

    Notes
    -----
    :meth:`freeze` / :meth:`unfreeze` switch fine-tuning mode (Keras's
    ``trainable = False``).
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


class BatchNorm(_BatchNorm):
    """Batch normalization over input of any rank from 2 to 5: (N, C, ...), or (N, ..., C)
    with channels_last (as :class:`cybn.SyncBatchNorm` takes it, and what a saved
    SyncBatchNorm loads as where MPI is absent, see :func:`cybn.load`).

    Same parameters as :class:`BatchNorm1d`.
    """

    ranks = (2, 3, 4, 5)
