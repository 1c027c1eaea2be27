"""Reshaping layers."""

from __future__ import annotations

import numpy as np

from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        x = np.asarray(x)
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return np.asarray(dy).reshape(self._take_saved())
