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
    numpy Generator.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, rng=None):
        super().__init__()
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
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input of shape (N, {self.in_features}), "
                             f"got {x.shape}")
        self._cache = x
        return _matmul.linear(x, self.weight.data,
                              None if self.bias is None else self.bias.data)

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def backward_parameters(self, dy) -> None:
        self._backward(dy, input_grad=False)
        return None

    def _backward(self, dy, input_grad: bool):
        x, dy = self._take_saved(dy, lambda x: (x.shape[0], self.out_features))
        self.weight.grad += _matmul.matmul_sum(dy.T, x)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
        return _matmul.matmul(dy, self.weight.data) if input_grad else None
