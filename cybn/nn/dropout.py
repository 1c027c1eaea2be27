"""Dropout, and stochastic depth (dropout of whole residual branches)."""

from __future__ import annotations

import numbers

import numpy as np

from ._args import as_rng
from .module import Module

__all__ = ["Dropout", "StochasticDepth"]


class _Dropping(Module):
    """Zeroes parts of x at random in training and scales the rest so that the expected
    value is x; identity in eval mode and for p = 0. Subclasses draw the scale."""

    p: float = 0.0

    def _scale(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x):
        x = np.asarray(x)
        if not self.training or self.p == 0.0:
            self._cache = (None, x.shape)
            return x
        if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
            raise TypeError(f"{type(self).__name__}: x must hold floating-point numbers, got "
                            f"dtype {x.dtype}")
        scale = self._scale(x)
        self._cache = (scale, x.shape)
        return x * scale

    def backward(self, dy):
        (scale, _), dy = self._take_saved(dy, lambda saved: saved[1])
        return dy if scale is None else dy * scale


class Dropout(_Dropping):
    """Zeroes each element with probability p in training and scales the rest by 1/(1-p);
    identity in eval mode. ``rng`` is a seed or a numpy Generator."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = as_rng(rng)
        self._cache = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _scale(self, x: np.ndarray) -> np.ndarray:
        keep = self.rng.random(x.shape) >= self.p
        return keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)


class StochasticDepth(_Dropping):
    """torchvision's ``StochasticDepth(p, mode)`` (EfficientNet's residual branches): in
    training, zeroes whole samples (``mode="row"``: each sample of the batch on its own) or
    the whole batch (``"batch"``) with probability p and scales what survives by 1/(1-p);
    identity in eval mode and for p = 0 (p = 1 zeroes everything, as torchvision).
    ``rng`` is a seed or a numpy Generator."""

    def __init__(self, p: float, mode: str = "row", rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a number in [0, 1], got {p!r}")
        if mode not in ("row", "batch"):
            raise ValueError(f"mode must be 'row' or 'batch', got {mode!r}")
        self.p = float(p)
        self.mode = mode
        self.rng = as_rng(rng)
        self._cache = None

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"

    def _scale(self, x: np.ndarray) -> np.ndarray:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        survival = 1.0 - self.p
        scale = (self.rng.random(shape) < survival).astype(x.dtype)
        if survival > 0.0:
            scale /= x.dtype.type(survival)
        return scale
