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
    body : Module or dict
        Usually a :class:`Sequential` ending in a BatchNorm layer (conv, BN, ReLU, conv, BN),
        kept as the child ``body``. A dict of named layers (in order) makes them this
        block's own children instead, so their state_dict keys are ``conv1.weight``,
        ``bn1.running_mean``, ... as in torchvision's ``BasicBlock``.
    shortcut : Module or None
        None for the identity; a projection (1x1 Conv2d and BatchNorm2d) when the body
        changes the shape.
    activation : "relu" or None
        Applied to the sum.
    shortcut_name : str
        The shortcut's child name, the prefix of its keys (torchvision: ``"downsample"``).

    Notes
    -----
    When the body ends in a BatchNorm layer without its own activation, the add and the
    ReLU run inside that layer's elementwise pass
    (``batch_norm_train(..., residual=s, activation="relu")``) and its backward returns the
    shortcut's gradient too; when it ends in a Conv2d without one (a folded model), they run
    in the convolution's epilogue (:meth:`Conv2d.forward_fused`); otherwise they
    run as NumPy operations. Nested Sequentials in the body count as their layers. The
    outputs and gradients are the same either way, bit for bit. state_dict keys are
    ``body.*`` (or the named layers') and ``shortcut.*`` (or ``shortcut_name``'s), as in a
    PyTorch module with those attribute names.
    """

    def __init__(self, body, shortcut: Module | None = None,
                 activation: str | None = "relu", *, shortcut_name: str = "shortcut"):
        super().__init__()
        named = isinstance(body, dict)
        parts = list(body.items()) if named else [("body", body)]
        if not isinstance(shortcut_name, str) or not shortcut_name or "." in shortcut_name:
            raise ValueError(f"shortcut_name must be a non-empty name without dots, got "
                             f"{shortcut_name!r}")
        for name, m in parts + [("shortcut", shortcut)]:
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"{name} must be a cybn Module, got {type(m).__name__}")
        if named and (not parts or shortcut_name in body):
            raise ValueError(f"body must name at least one layer, none of them "
                             f"{shortcut_name!r} (the shortcut's name)")
        check_activation(activation)
        for name, m in parts:
            self._modules[name] = m
        if shortcut is not None:
            self._modules[shortcut_name] = shortcut
        self.activation = activation
        self.shortcut_name = shortcut_name
        self._named_body = named
        self._cache = None

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def body_items(self) -> list:
        """The body's ``(name, layer)`` children: ``[("body", body)]``, or the named
        layers given as a dict."""
        return [(k, m) for k, m in self._modules.items() if k != self.shortcut_name]

    @property
    def body(self) -> Module:
        """The body: the module given, or a Sequential of the named layers (sharing them)."""
        if not self._named_body:
            return self._modules["body"]
        return Sequential(dict(self.body_items()))

    def _shortcut(self) -> Module | None:
        return self._modules.get(self.shortcut_name)

    def _body_layers(self) -> list:
        """The body's layers in order, nested Sequentials opened."""
        def opened(m):
            return [x for layer in m for x in opened(layer)] if isinstance(m, Sequential) \
                else [m]

        return [x for _, m in self.body_items() for x in opened(m)]

    def _split_body(self) -> tuple:
        """(the layers before the last one, that layer) when the body ends in a BatchNorm
        or a Conv2d without an activation, whose forward_fused takes the add and the ReLU;
        else (None, None)."""
        layers = self._body_layers()
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
        h = x
        for layer in self._body_layers():
            h = layer(h)
        pre = np.asarray(h) + s
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
            dh = dsum
            for layer in reversed(self._body_layers()):
                dh = layer.backward(dh)
        shortcut = self._shortcut()
        ds = dsum if shortcut is None else shortcut.backward(dsum)
        return dh + ds
