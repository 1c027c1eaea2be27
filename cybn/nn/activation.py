"""Activation layers."""

from __future__ import annotations

import numpy as np

from .module import Module

__all__ = ["ReLU"]


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
