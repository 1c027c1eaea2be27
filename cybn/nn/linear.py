"""The fully connected layer."""

from __future__ import annotations

import math

import numpy as np

from .. import _matmul
from ._args import as_rng, positive_int
from .module import Module, Parameter

__all__ = ["Linear"]


class Linear(Module):
    """``y = x @ weight.T + bias`` with weight of shape (out_features, in_features).

    Initialized like PyTorch: uniform in +-1/sqrt(in_features). ``rng`` is a seed or a
    numpy Generator. ``activation="relu"`` (or ``"relu6"``) applies ReLU (ReLU6) inside the
    product's epilogue (the numbers of a :class:`ReLU` or :class:`ReLU6` layer after it;
    :func:`cybn.fold_batchnorm` and :func:`cybn.fuse` produce such layers); the backward
    then reads the returned output,
    which must not be changed in place before it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, rng=None, activation: str | None = None):
        super().__init__()
        _matmul.activation_code(activation)
        self.activation = activation
        in_features = positive_int(in_features, "in_features")
        out_features = positive_int(out_features, "out_features")
        rng = as_rng(rng)
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
        extra = "" if self.activation is None else f", activation={self.activation!r}"
        return f"in_features={self.in_features}, out_features={self.out_features}{extra}"

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        act = _matmul.activation_code(self.activation)
        y = _matmul.linear(x, self.weight.data, None if self.bias is None else self.bias.data,
                           act=act)
        self._cache = (x, (y, act) if act else None)
        return y

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def backward_parameters(self, dy) -> None:
        self._backward(dy, input_grad=False)
        return None

    def _backward(self, dy, input_grad: bool):
        (x, fused), dy = self._take_saved(dy, lambda saved: (saved[0].shape[0],
                                                             self.out_features))
        if fused is not None:  # through the fused activation, into a reused buffer
            dy = _matmul.activation_grad(*fused, dy, self._workspace)
        self.weight.accumulate(_matmul.matmul_sum(dy.T, x))
        if self.bias is not None:
            self.bias.accumulate(dy.sum(axis=0))
        return _matmul.matmul(dy, self.weight.data) if input_grad else None
