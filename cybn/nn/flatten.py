"""Reshaping layers."""

from __future__ import annotations

import math

import numpy as np

from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"Flatten expects x with a batch axis, got shape {x.shape}")
        self._cache = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails for N = 0

    def backward(self, dy):
        shape, dy = self._take_saved(dy, lambda shape: (shape[0], math.prod(shape[1:])))
        return dy.reshape(shape)
