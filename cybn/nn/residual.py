"""The residual connection of a ResNet block, with the add and the ReLU fused into the
block's last batch norm (or, in a folded inference model, its last convolution)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_activation
from .batchnorm import _BatchNorm
from .conv import Conv2d
from .module import Module, Sequential

__all__ = ["Residual"]


@dataclass(frozen=True)
class ResidualSaved:
    """What a Residual forward keeps for its backward."""

    shape: tuple                     # the output's
    head: tuple = ()                 # the body's layers before its last layer (fused)
    bn: Module | None = None         # that batch norm or conv, when the add and ReLU ran in it
    cut: np.ndarray | None = None    # where the unfused ReLU cut the sum (pre <= 0)


class Residual(Module):
    """``y = relu(body(x) + shortcut(x))``, the ending of a ResNet block.

    Parameters
    ----------
    body : Module
        Usually a :class:`Sequential` ending in a BatchNorm layer (conv, BN, ReLU, conv, BN).
    shortcut : Module or None
        None for the identity; a projection (1x1 Conv2d and BatchNorm2d) when the body
        changes the shape.
    activation : "relu" or None
        Applied to the sum.

    Notes
    -----
    When the body ends in a BatchNorm layer without its own activation, the add and the
    ReLU run inside that layer's elementwise pass
    (``batch_norm_train(..., residual=s, activation="relu")``) and its backward returns the
    shortcut's gradient too; when it ends in a Conv2d without one (a folded model), they run
    in the convolution's epilogue (:meth:`Conv2d.forward_fused`); otherwise they
    run as NumPy operations. The outputs and gradients are the same either way, bit for bit.
    state_dict keys are ``body.*`` and ``shortcut.*``, as in a PyTorch module with those
    attribute names.
    """

    def __init__(self, body: Module, shortcut: Module | None = None,
                 activation: str | None = "relu"):
        super().__init__()
        for name, m in (("body", body), ("shortcut", shortcut)):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"{name} must be a cybn Module, got {type(m).__name__}")
        check_activation(activation)
        self.body = body
        if shortcut is not None:
            self.shortcut = shortcut
        self.activation = activation
        self._cache = None

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def _shortcut(self) -> Module | None:
        return self._modules.get("shortcut")

    def _split_body(self) -> tuple:
        """(the layers before the last one, that layer) when the body ends in a BatchNorm
        or a Conv2d without an activation, whose forward_fused takes the add and the ReLU;
        else (None, None)."""
        body = self.body
        layers = list(body) if isinstance(body, Sequential) else [body]
        last = layers[-1] if layers else None
        if (isinstance(last, _BatchNorm) and last.activation is None and not last.renorm) \
                or (type(last) is Conv2d and last.activation is None):
            return layers[:-1], last
        return None, None

    def forward(self, x):
        x = np.asarray(x)
        shortcut = self._shortcut()
        s = x if shortcut is None else np.asarray(shortcut(x))
        head, bn = self._split_body()
        if bn is not None:
            h = x
            for layer in head:
                h = layer(h)
            y = bn.forward_fused(h, s, self.activation)
            self._cache = ResidualSaved(y.shape, head=tuple(head), bn=bn)
            return y
        pre = np.asarray(self.body(x)) + s
        if self.activation is None:
            self._cache = ResidualSaved(pre.shape)
            return pre
        cut = pre <= 0
        self._cache = ResidualSaved(pre.shape, cut=cut)
        return np.where(cut, pre.dtype.type(0), pre)

    def backward(self, dy):
        saved, dy = self._take_saved(dy, lambda saved: saved.shape)
        if saved.bn is not None:  # the add and the ReLU ran inside the last batch norm
            dh, dsum = saved.bn.backward(dy)
            for layer in reversed(saved.head):
                dh = layer.backward(dh)
        else:
            dsum = dy if saved.cut is None else np.where(saved.cut, dy.dtype.type(0), dy)
            dh = self.body.backward(dsum)
        shortcut = self._shortcut()
        ds = dsum if shortcut is None else shortcut.backward(dsum)
        return dh + ds
