"""Activation layers."""

from __future__ import annotations

import numpy as np

from ..ops import pool
from .module import Module

__all__ = ["ReLU", "ReLU6", "Hardtanh", "Hardswish", "Hardsigmoid", "SiLU", "Sigmoid", "Tanh",
           "GELU", "LeakyReLU"]


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


class _Elementwise(Module):
    """An elementwise activation on the compiled kernels (ops.pool.activation): float32 and
    float64 as they are, other floating dtypes computed in float64 and rounded back.
    ``inplace=True`` writes the result into x (a writeable ndarray) and returns it."""

    kind = ""
    # the backward can read the output instead of the input (clamps, leaky with slope >= 0)
    from_output = False

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)
        self._cache = None

    def _params(self) -> tuple:
        return 0.0, 0.0

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        name = type(self).__name__
        if self.inplace:
            if not isinstance(x, np.ndarray):
                raise TypeError(f"{name}(inplace=True) writes into x, which must be an "
                                f"ndarray, got {type(x).__name__}")
            if not x.flags.writeable:
                raise ValueError(f"{name}(inplace=True): x is read-only")
        x = np.asarray(x)
        if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
            raise TypeError(f"{name}: x must hold floating-point numbers, got dtype {x.dtype}")
        a, b = self._params()
        if x.dtype in (np.float32, np.float64):
            if self.inplace and not self.from_output:
                saved = x.copy()
            y = pool.activation(x, self.kind, a, b, inplace=self.inplace)
            if not self.inplace:
                saved = x
            elif self.from_output:
                saved = y
            self._cache = (saved, x.dtype, x.shape)
            return y
        wide = x.astype(np.float64)  # float16, bfloat16: in double, rounded once
        y = pool.activation(wide, self.kind, a, b).astype(x.dtype)
        self._cache = (wide, x.dtype, x.shape)
        if self.inplace:
            x[...] = y
            return x
        return y

    def backward(self, dy):
        (saved, dtype, shape), dy = self._take_saved(dy, lambda saved: saved[2])
        a, b = self._params()
        dx = pool.activation_backward(saved, np.asarray(dy, dtype=saved.dtype), self.kind,
                                      a, b)
        return dx if dx.dtype == dtype else dx.astype(dtype)


class Hardtanh(_Elementwise):
    """clamp(x, min_val, max_val), as PyTorch (NaN stays NaN); the gradient passes where
    min_val < x < max_val and is an exact 0 elsewhere."""

    kind = "hardtanh"
    from_output = True

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__(inplace)
        self.min_val, self.max_val = float(min_val), float(max_val)
        if not self.min_val <= self.max_val:
            raise ValueError(f"Hardtanh: min_val ({min_val}) must not exceed max_val "
                             f"({max_val})")

    def _params(self) -> tuple:
        return self.min_val, self.max_val

    def extra_repr(self) -> str:
        extra = ", inplace=True" if self.inplace else ""
        return f"min_val={self.min_val}, max_val={self.max_val}{extra}"


class ReLU6(Hardtanh):
    """min(max(x, 0), 6) (MobileNet's activation): :class:`Hardtanh` from 0 to 6."""

    def __init__(self, inplace: bool = False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Hardswish(_Elementwise):
    """x * relu6(x + 3) / 6 (MobileNetV3), as PyTorch, gradient included."""

    kind = "hardswish"


class Hardsigmoid(_Elementwise):
    """relu6(x + 3) / 6, as PyTorch (gradient 1/6 strictly inside (-3, 3), else 0)."""

    kind = "hardsigmoid"


class SiLU(_Elementwise):
    """x * sigmoid(x) (swish; EfficientNet's activation)."""

    kind = "silu"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), evaluated without overflow for either sign."""

    kind = "sigmoid"

    def __init__(self):
        super().__init__(False)


class Tanh(_Elementwise):
    """tanh(x)."""

    kind = "tanh"

    def __init__(self):
        super().__init__(False)


class GELU(_Elementwise):
    """x * Phi(x) with Phi the standard normal CDF (``approximate="none"``, by erf) or its
    tanh approximation (``approximate="tanh"``), as PyTorch."""

    def __init__(self, approximate: str = "none"):
        super().__init__(False)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got "
                             f"{approximate!r}")
        self.approximate = approximate

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class LeakyReLU(_Elementwise):
    """x where x > 0, else negative_slope * x, as PyTorch (gradient 1 or negative_slope;
    negative_slope at 0)."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__(inplace)
        self.negative_slope = float(negative_slope)
        # the output tells the side of 0 only for a slope >= 0
        self.from_output = self.negative_slope >= 0

    def _params(self) -> tuple:
        return self.negative_slope, 0.0

    def extra_repr(self) -> str:
        extra = ", inplace=True" if self.inplace else ""
        return f"negative_slope={self.negative_slope}{extra}"

