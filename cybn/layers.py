"""Layer objects that mirror PyTorch's names, shapes and state, without autograd.

Each layer has ``forward(x)`` (also ``layer(x)``), which keeps what its backward needs, and
``backward(dy) -> dx``, which adds the parameter gradients into ``param.grad`` (call
``zero_grad()`` between steps) and returns the gradient with respect to the input. Calls go
forward once, then backward once, in reverse order, as in the CS231n layer pattern.

``state_dict()`` / ``load_state_dict()`` use PyTorch's keys and shapes (``0.weight``,
``1.running_mean``, ``1.num_batches_tracked``, ...), so the state of an equivalent
``torch.nn.Sequential``, converted with ``.numpy()``, loads as-is.

A layer object keeps the activations of its last forward call, so one layer object must not
be used from several threads at once; separate objects (or ``eval()`` inference through
the functional API) may run in parallel.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import functional as F
from ._validate import check_eps, check_momentum

__all__ = [
    "Parameter",
    "Module",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Linear",
    "Conv2d",
    "ReLU",
    "Dropout",
    "MaxPool2d",
    "Flatten",
    "Sequential",
]


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(value, name: str, minimum: int = 1) -> tuple:
    """An int or a pair of ints, each at least ``minimum``, as a pair."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _size(value, name: str) -> int:
    """A positive int (a feature or channel count)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class Parameter:
    """A trainable array: ``data`` and the gradient ``grad`` accumulated by backward.

    ``decay`` tells the optimizers whether weight decay applies (False for BatchNorm's
    weight and bias, see :mod:`cybn.train`).
    """

    def __init__(self, data, decay: bool = True):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.decay = decay

    @property
    def shape(self) -> tuple:
        return self.data.shape

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: registers parameters, buffers and sub-modules in assignment order."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._parameters and value is None:
            self._parameters[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, value) -> None:
        """A state array saved in state_dict but not trained (running statistics)."""
        self._buffers[name] = value

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def _take_saved(self):
        """What the last forward saved for backward; a backward consumes it, so that a
        second backward without a new forward (which would add the parameter gradients
        twice) is an error, as in PyTorch."""
        saved = self.__dict__.get("_cache")
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward first (each "
                               f"forward allows one backward)")
        object.__setattr__(self, "_cache", None)
        return saved

    # ----- traversal ------------------------------------------------------------------
    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        """The trainable parameters, in PyTorch's order."""
        for _, p in self.named_parameters():
            yield p

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ----- state --------------------------------------------------------------------------
    def _state_items(self, prefix: str = ""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p.data
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, b
        for name, m in self._modules.items():
            yield from m._state_items(f"{prefix}{name}.")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer under PyTorch's keys."""
        return OrderedDict((k, np.array(v, copy=True)) for k, v in self._state_items())

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this model's parameters and buffers.

        Every key and shape is checked before anything is written: a missing or unexpected
        key (with ``strict``) or a wrong shape raises ValueError naming it and leaves the
        model unchanged. Values are cast to the existing arrays' dtypes.
        """
        targets = OrderedDict(self._state_items())
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        converted = {}
        for key, target in targets.items():
            if key not in state:
                continue
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, the model "
                                 f"expects {target.shape}")
            if value.dtype.kind not in "biuf":
                raise ValueError(f"state_dict[{key!r}] has dtype {value.dtype}, expected numbers")
            converted[key] = value
        for key, value in converted.items():
            np.copyto(targets[key], value, casting="unsafe")

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): " + repr(m).replace("\n", "\n  ")
                        for name, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        return ""


class _BatchNorm(Module):
    """Shared code of BatchNorm1d/2d/3d. Subclasses set the accepted ranks."""

    ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, channels_last: bool = False,
                 dtype=np.float32):
        super().__init__()
        _size(num_features, "num_features")
        if momentum is not None:
            check_momentum(momentum)
        check_eps(eps)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.channels_last = channels_last
        self.dtype = dtype
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype), decay=False)
            self.bias = Parameter(np.zeros(num_features, dtype), decay=False)
        else:
            self._parameters["weight"] = None
            self._parameters["bias"] = None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                f"{', channels_last=True' if self.channels_last else ''}")

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
        running statistics in eval mode. Training updates the running statistics."""
        x = np.asarray(x)
        axis = self._axis(x)
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
                momentum=0.0 if momentum is None else momentum, eps=self.eps, axis=axis)
            if update:
                self.num_batches_tracked[...] += 1
            self._cache = (x, mean, invstd, True, axis)
        else:
            y = F.batch_norm_infer(x, self.running_mean, self.running_var, w, b, eps=self.eps,
                                   axis=axis)
            invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
            self._cache = (x, self.running_mean.astype(np.float64), invstd, False, axis)
        return y

    def backward(self, dy):
        """dx for the last forward; adds dweight, dbias into weight.grad, bias.grad."""
        x, mean, invstd, training, axis = self._take_saved()
        w = self.weight.data if self.affine else None
        dx, dw, db = F.batch_norm_backward(dy, x, w, mean, invstd, training=training, axis=axis)
        if self.affine:
            self.weight.grad += dw
            self.bias.grad += db
        return dx


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
        dtype of the parameters and running statistics.
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


class Linear(Module):
    """``y = x @ weight.T + bias`` with weight of shape (out_features, in_features).

    Initialized like PyTorch: uniform in +-1/sqrt(in_features). ``rng`` is a seed or a
    numpy Generator.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, rng=None):
        super().__init__()
        in_features = _size(in_features, "in_features")
        out_features = _size(out_features, "out_features")
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features))
                                .astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dtype))
        else:
            self._parameters["bias"] = None
        self._cache = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        self._cache = x
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, dy):
        x = self._take_saved()
        self.weight.grad += dy.T @ x
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return dy @ self.weight.data


class Conv2d(Module):
    """2-D convolution (cross-correlation, as PyTorch) by im2col and one matrix product.

    weight has shape (out_channels, in_channels, kh, kw) in both layouts; input is
    (N, C, H, W), or (N, H, W, C) with ``channels_last``. Zero padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, channels_last: bool = False, dtype=np.float32, rng=None):
        super().__init__()
        rng = _rng(rng)
        self.in_channels = _size(in_channels, "in_channels")
        self.out_channels = _size(out_channels, "out_channels")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding", minimum=0)
        self.channels_last = channels_last
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(in_channels * kh * kw)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_channels, in_channels, kh, kw))
                                .astype(dtype))
        if bias:
            self.bias = Parameter(rng.uniform(-bound, bound, out_channels).astype(dtype))
        else:
            self._parameters["bias"] = None
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def _to_nhwc(self, x):
        return x if self.channels_last else x.transpose(0, 2, 3, 1)

    def forward(self, x):
        x = np.asarray(x)
        c_axis = 3 if self.channels_last else 1
        if x.ndim != 4 or x.shape[c_axis] != self.in_channels:
            layout = "(N, H, W, C)" if self.channels_last else "(N, C, H, W)"
            raise ValueError(f"Conv2d expects 4-D input {layout} with C={self.in_channels}, "
                             f"got {x.shape}")
        xh = self._to_nhwc(x)
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        if ph or pw:
            xh = np.pad(xh, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        n, hp, wp, c = xh.shape
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2d: input {x.shape} is smaller than the kernel")
        win = sliding_window_view(xh, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # N,Ho,Wo,C,kh,kw
        cols = win.reshape(n * ho * wo, c * kh * kw)
        wmat = self.weight.data.reshape(self.out_channels, -1)
        y = cols @ wmat.T
        if self.bias is not None:
            y += self.bias.data
        y = y.reshape(n, ho, wo, self.out_channels)
        self._cache = (cols, xh.shape, x.shape)
        return y if self.channels_last else np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, dy):
        cols, padded_shape, in_shape = self._take_saved()
        n, hp, wp, c = padded_shape
        (ph, pw), (sh, sw), (kh, kw) = self.padding, self.stride, self.kernel_size
        dyh = self._to_nhwc(dy)
        ho, wo = dyh.shape[1], dyh.shape[2]
        dy2 = dyh.reshape(n * ho * wo, self.out_channels)
        wmat = self.weight.data.reshape(self.out_channels, -1)
        self.weight.grad += (dy2.T @ cols).reshape(self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        dcols = (dy2 @ wmat).reshape(n, ho, wo, c, kh, kw)
        dxp = np.zeros(padded_shape, dtype=dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                dxp[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += dcols[:, :, :, :, i, j]
        dx = dxp[:, ph:hp - ph, pw:wp - pw, :]
        return np.ascontiguousarray(dx if self.channels_last else dx.transpose(0, 3, 1, 2))


class ReLU(Module):
    """max(x, 0), as PyTorch: -inf gives 0, NaN stays NaN; the gradient is exactly 0 where
    x <= 0 (also for an infinite dy) and dy elsewhere (NaN x included)."""

    def forward(self, x):
        x = np.asarray(x)
        self._cache = ~(x <= 0)
        return np.maximum(x, x.dtype.type(0)) if x.dtype.kind == "f" else np.maximum(x, 0)

    def backward(self, dy):
        dy = np.asarray(dy)
        return np.where(self._take_saved(), dy, dy.dtype.type(0))


class Dropout(Module):
    """Zeroes each element with probability p in training and scales the rest by 1/(1-p);
    identity in eval mode. ``rng`` is a seed or a numpy Generator."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a number in [0, 1), got {p!r}")
        self.p: float = float(p)
        self.rng = _rng(rng)
        self._cache = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._cache = (None,)
            return x
        keep = self.rng.random(x.shape) >= self.p
        scale = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        self._cache = (scale,)
        return x * scale

    def backward(self, dy):
        (scale,) = self._take_saved()
        return dy if scale is None else dy * scale


class MaxPool2d(Module):
    """Max over kernel_size windows (no padding, floor mode); stride defaults to the kernel."""

    def __init__(self, kernel_size, stride=None, channels_last: bool = False):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"MaxPool2d expects 4-D input, got shape {x.shape}")
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        axes = (1, 2) if self.channels_last else (2, 3)
        win = sliding_window_view(x, (kh, kw), axis=axes)
        win = win[:, ::sh, ::sw] if self.channels_last else win[:, :, ::sh, ::sw]
        flat = win.reshape(win.shape[:4] + (kh * kw,))
        arg = flat.argmax(axis=-1)  # first maximum, as PyTorch
        self._cache = (x.shape, arg)
        return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, dy):
        shape, arg = self._take_saved()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        dx = np.zeros(shape, dtype=dy.dtype)
        if self.channels_last:
            ho, wo = dy.shape[1], dy.shape[2]
        else:
            ho, wo = dy.shape[2], dy.shape[3]
        for i in range(kh):
            for j in range(kw):
                g = np.where(arg == i * kw + j, dy, 0)
                if self.channels_last:
                    dx[:, i:i + sh * ho:sh, j:j + sw * wo:sw, :] += g
                else:
                    dx[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += g
        return dx


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        x = np.asarray(x)
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return np.asarray(dy).reshape(self._take_saved())


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse. Indexable like a list."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} is not a cybn Module: {type(layer).__name__}")
            self._modules[str(i)] = layer

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self._modules.values()):
            dy = layer.backward(dy)
        return dy
