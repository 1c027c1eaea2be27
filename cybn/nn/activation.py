"""Activation layers."""

from __future__ import annotations

import numpy as np

from ..ops import pool
from .module import Module

__all__ = ["ReLU"]


class ReLU(Module):
    """max(x, 0), as PyTorch: -inf gives 0, NaN stays NaN; the gradient is exactly 0 where
    x <= 0 (also for an infinite dy) and dy elsewhere (NaN x included).

    ``inplace=True`` (PyTorch's option) writes the result into x, which must then be a
    writeable ndarray, and returns x itself: no new activation-sized array per call. The
    backward is the same (it keeps a one-byte mask, not x).
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        if self.inplace:
            if not isinstance(x, np.ndarray):
                raise TypeError(f"ReLU(inplace=True) writes into x, which must be an ndarray, "
                                f"got {type(x).__name__}")
            if not x.flags.writeable:
                raise ValueError("ReLU(inplace=True): x is read-only")
        x = np.asarray(x)
        if x.dtype in (np.float32, np.float64):  # compiled, threaded, a one-byte mask
            y, keep = pool.relu(x, inplace=self.inplace,
                                keep_out=self._workspace("keep", x.shape, np.uint8))
            self._cache = ("compiled", keep, x.dtype)
            return y
        keep = ~(x <= 0)
        self._cache = ("numpy", keep, x.dtype)
        zero = x.dtype.type(0) if x.dtype.kind == "f" else 0
        return np.maximum(x, zero, out=x if self.inplace else None)

    def backward(self, dy):
        (kind, keep, dtype), dy = self._take_saved(dy, lambda saved: saved[1].shape)
        if kind == "compiled" and dy.dtype == dtype and dy.shape == keep.shape:
            return pool.relu_backward(dy, keep, dtype)
        return np.where(keep.astype(bool), dy, dy.dtype.type(0))
