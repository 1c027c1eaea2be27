"""Activation layers."""

from __future__ import annotations

import numpy as np

from ..ops import pool
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """max(x, 0), as PyTorch: -inf gives 0, NaN stays NaN; the gradient is exactly 0 where
    x <= 0 (also for an infinite dy) and dy elsewhere (NaN x included)."""

    def forward(self, x):
        x = np.asarray(x)
        if x.dtype in (np.float32, np.float64):  # compiled, threaded, a one-byte mask
            y, keep = pool.relu(x)
            self._cache = ("compiled", keep, x.dtype)
            return y
        self._cache = ("numpy", ~(x <= 0), x.dtype)
        return np.maximum(x, x.dtype.type(0)) if x.dtype.kind == "f" else np.maximum(x, 0)

    def backward(self, dy):
        kind, keep, dtype = self._take_saved()
        dy = np.asarray(dy)
        if kind == "compiled" and dy.dtype == dtype and dy.shape == keep.shape:
            return pool.relu_backward(dy, keep, dtype)
        return np.where(keep.astype(bool), dy, dy.dtype.type(0))
