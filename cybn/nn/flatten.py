"""Reshaping layers."""

from __future__ import annotations

import math

import numpy as np

from .module import Module

__all__ = ["Flatten"]


class Flatten(Module):
    """(N, ...) -> (N, prod(...)).

    ``channels_last=True`` flattens a channels-last (N, H, W, C) input in PyTorch's
    (C, H, W) order (a transposed copy), so that a Linear layer after it takes the weight
    of the same PyTorch model unchanged (what :func:`cybn.from_torch` builds); by default the
    input's own order (H, W, C) is kept, with no copy.
    """

    def __init__(self, channels_last: bool = False):
        super().__init__()
        self.channels_last = bool(channels_last)
        self._cache = None

    def extra_repr(self) -> str:
        return "channels_last=True" if self.channels_last else ""

    def _reorders(self, shape: tuple) -> bool:
        return self.channels_last and len(shape) == 4 and shape[1] * shape[2] > 1

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"Flatten expects x with a batch axis, got shape {x.shape}")
        self._cache = x.shape
        if self._reorders(x.shape):
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # -1 fails for N = 0

    def backward(self, dy):
        shape, dy = self._take_saved(dy, lambda shape: (shape[0], math.prod(shape[1:])))
        if self._reorders(shape):
            n, h, w, c = shape
            return np.ascontiguousarray(dy.reshape(n, c, h, w).transpose(0, 2, 3, 1))
        return dy.reshape(shape)
