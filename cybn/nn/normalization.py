"""Layer, group, instance and RMS normalization layers (PyTorch's names, arguments and
state_dict keys), on :mod:`cybn.ops.norms`."""

from __future__ import annotations

import numbers

import numpy as np

from .. import ops as F
from .._validate import check_bool, check_eps, check_momentum, describe
from ._args import (activation_grad, affine_parameters, param_dtype, positive_int,
                    running_buffers)
from .module import Module

__all__ = ["LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "RMSNorm"]


def _shape(normalized_shape) -> tuple:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    if not isinstance(normalized_shape, (tuple, list)):
        raise ValueError(f"normalized_shape must be an int or a tuple of ints, got "
                         f"{describe(normalized_shape)}")
    shape = tuple(normalized_shape)
    for d in shape:
        positive_int(d, "normalized_shape")
    if not shape:
        raise ValueError("normalized_shape must not be empty")
    return tuple(int(d) for d in shape)


def _input_shape(saved: tuple) -> tuple:
    """The output shape of a normalization layer: its input's (saved first)."""
    return saved[0].shape


def _accumulate(param, grad) -> None:
    if param is not None:
        param.accumulate(grad)


def _data(param):
    return None if param is None else param.data


class _TrailingNorm(Module):
    """Shared code of LayerNorm and RMSNorm: normalization over the trailing axes."""

    def __init__(self, normalized_shape, eps, elementwise_affine: bool, bias: bool, dtype):
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = None if eps is None else check_eps(eps)
        self.elementwise_affine = check_bool(elementwise_affine, "elementwise_affine")
        self.dtype = param_dtype(dtype)
        affine_parameters(self, self.normalized_shape, self.dtype, self.elementwise_affine,
                          self.elementwise_affine and bias)
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class LayerNorm(_TrailingNorm):
    """Layer normalization over the last ``len(normalized_shape)`` axes.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        The trailing shape normalized over (e.g. the feature size of (N, L, D) input).
    eps : float
    elementwise_affine : bool
        Learn ``weight`` (ones) of shape normalized_shape, and ``bias`` (zeros) if ``bias``.
    bias : bool
    dtype : float32 or float64
        dtype of the parameters.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=np.float32):
        super().__init__(normalized_shape, check_eps(eps), elementwise_affine,
                         check_bool(bias, "bias"), dtype)

    def forward(self, x):
        x = np.asarray(x)
        y, mean, invstd = F.layer_norm(x, self.normalized_shape, _data(self.weight),
                                       _data(self.bias), eps=self.eps)
        self._cache = (x, mean, invstd)
        return y

    def backward(self, dy):
        (x, mean, invstd), dy = self._take_saved(dy, _input_shape)
        dy = activation_grad(dy, x)
        dx, dw, db = F.layer_norm_backward(dy, x, _data(self.weight), mean, invstd,
                                           self.normalized_shape)
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx


class RMSNorm(_TrailingNorm):
    """RMS normalization over the last ``len(normalized_shape)`` axes:
    ``x / sqrt(mean(x**2) + eps) * weight``.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
    eps : float or None
        None: the machine epsilon of the input's dtype (PyTorch's default).
    elementwise_affine : bool
        Learn ``weight`` (ones) of shape normalized_shape.
    dtype : float32 or float64
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine: bool = True,
                 dtype=np.float32):
        super().__init__(normalized_shape, eps, elementwise_affine, False, dtype)
        del self._parameters["bias"]

    def forward(self, x):
        x = np.asarray(x)
        y, invrms = F.rms_norm(x, self.normalized_shape, _data(self.weight), eps=self.eps)
        self._cache = (x, invrms)
        return y

    def backward(self, dy):
        (x, invrms), dy = self._take_saved(dy, _input_shape)
        dy = activation_grad(dy, x)
        dx, dw = F.rms_norm_backward(dy, x, _data(self.weight), invrms, self.normalized_shape)
        _accumulate(self.weight, dw)
        return dx


def _channel_axis(layer, x, channels: int, ranks: tuple) -> int:
    """The channel axis of x for a layer with ``channels`` channels (1, or -1 when
    ``layer.channels_last``), with PyTorch-like errors."""
    name = type(layer).__name__
    if x.ndim not in ranks:
        dims = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} expects {dims} input, got shape {x.shape}")
    axis = -1 if layer.channels_last and x.ndim > 2 else 1
    if x.shape[axis] != channels:
        hint = ""
        if x.ndim > 2 and not layer.channels_last and x.shape[-1] == channels:
            hint = "; for channels-last input pass channels_last=True"
        raise ValueError(f"{name} has {channels} channels, but the input has "
                         f"{x.shape[axis]} along axis {axis % x.ndim} (shape {x.shape}){hint}")
    return axis


class GroupNorm(Module):
    """Group normalization: each sample's channels in ``num_groups`` groups, each group
    normalized over its channels and spatial axes, then a per-channel affine.

    Parameters
    ----------
    num_groups : int
        Divides num_channels.
    num_channels : int
    eps : float
    affine : bool
        Learn per-channel ``weight`` (ones) and ``bias`` (zeros).
    channels_last : bool
        Channel axis last ((N, ..., C) input) instead of 1.
    dtype : float32 or float64
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, channels_last: bool = False, dtype=np.float32):
        super().__init__()
        self.num_groups = positive_int(num_groups, "num_groups")
        self.num_channels = positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        self.eps = check_eps(eps)
        self.affine = check_bool(affine, "affine")
        self.channels_last = check_bool(channels_last, "channels_last")
        self.dtype = param_dtype(dtype)
        affine_parameters(self, (self.num_channels,), self.dtype, self.affine, self.affine)
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
                f"{', channels_last=True' if self.channels_last else ''}")

    def forward(self, x):
        x = np.asarray(x)
        axis = _channel_axis(self, x, self.num_channels, tuple(range(2, 33)))
        y, mean, invstd = F.group_norm(x, self.num_groups, _data(self.weight),
                                       _data(self.bias), eps=self.eps, axis=axis)
        self._cache = (x, mean, invstd, axis)
        return y

    def backward(self, dy):
        (x, mean, invstd, axis), dy = self._take_saved(dy, _input_shape)
        dy = activation_grad(dy, x)
        dx, dw, db = F.group_norm_backward(dy, x, self.num_groups, _data(self.weight), mean,
                                           invstd, axis=axis)
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx


class _InstanceNorm(Module):
    """Shared code of InstanceNorm1d/2d/3d. Subclasses set the accepted rank."""

    ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1,
                 affine: bool = False, track_running_stats: bool = False,
                 channels_last: bool = False, dtype=np.float32):
        super().__init__()
        self.num_features = positive_int(num_features, "num_features")
        self.eps = check_eps(eps)
        self.momentum = None if momentum is None else check_momentum(momentum)
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        self.channels_last = check_bool(channels_last, "channels_last")
        self.dtype = param_dtype(dtype)
        affine_parameters(self, (self.num_features,), self.dtype, self.affine, self.affine)
        running_buffers(self, self.num_features, self.dtype, self.track_running_stats)
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                f"{', channels_last=True' if self.channels_last else ''}")

    def forward(self, x):
        """Per-instance statistics in training mode or without running statistics (training
        mode updates them); the running statistics in eval mode."""
        x = np.asarray(x)
        axis = _channel_axis(self, x, self.num_features, self.ranks)
        use_input_stats = self.training or not self.track_running_stats
        y, mean, invstd = F.instance_norm(
            x, _data(self.weight), _data(self.bias), running_mean=self.running_mean,
            running_var=self.running_var, use_input_stats=use_input_stats,
            momentum=0.0 if self.momentum is None else self.momentum, eps=self.eps,
            axis=axis)
        self._cache = (x, mean, invstd, use_input_stats, axis)
        return y

    def backward(self, dy):
        (x, mean, invstd, use_input_stats, axis), dy = self._take_saved(dy, _input_shape)
        dy = activation_grad(dy, x)
        dx, dw, db = F.instance_norm_backward(dy, x, _data(self.weight), mean, invstd,
                                              use_input_stats=use_input_stats, axis=axis)
        _accumulate(self.weight, dw)
        _accumulate(self.bias, db)
        return dx


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of (N, C, L) input (channels-last: (N, L, C)).

    Parameters
    ----------
    num_features : int
        C.
    eps : float
    momentum : float or None
        For the running statistics; None leaves them unchanged. As in PyTorch,
        ``num_batches_tracked`` is kept in the state but not counted.
    affine : bool
        Learn per-channel ``weight`` and ``bias`` (default False, as PyTorch).
    track_running_stats : bool
        Keep running statistics (default False); eval mode then normalizes with them.
    channels_last : bool
    dtype : float32 or float64
    """

    ranks = (3,)


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of (N, C, H, W) input (channels-last: (N, H, W, C)); the
    arguments of :class:`InstanceNorm1d`."""

    ranks = (4,)


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of (N, C, D, H, W) input (channels-last: (N, D, H, W, C)); the
    arguments of :class:`InstanceNorm1d`."""

    ranks = (5,)
