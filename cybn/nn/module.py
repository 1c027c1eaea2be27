"""The base classes: Parameter, Module (parameters, buffers, modes, state_dict) and Sequential."""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np

from .._validate import numeric_array

__all__ = ["Parameter", "Module", "Sequential", "Identity"]

_NO_GRAD = object()  # _take_saved called without a dy to check


def layer_input(x, layer: str) -> np.ndarray:
    """x as an array of real numbers (a layer's input): TypeError naming x otherwise. The
    layer then checks its shape and dtype."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf" and type(x) is np.ndarray:
        return x  # the common case, fast
    try:
        return numeric_array(x, "x")
    except TypeError as err:
        raise TypeError(f"{layer}: {err}") from None


def grad_output(dy, shape: tuple, layer: str) -> np.ndarray:
    """dy as an array of real numbers with the forward output's ``shape``: TypeError or
    ValueError naming dy otherwise (a layer's compiled backward takes its loop bounds from
    the saved forward, so a wrong-shaped dy must never reach it)."""
    try:
        arr = numeric_array(dy, "dy")
    except TypeError as err:
        raise TypeError(f"{layer}.backward: {err} (the output's shape is "
                        f"{tuple(shape)})") from None
    if arr.shape != tuple(shape):
        raise ValueError(f"{layer}.backward: dy must have the shape of the forward's output "
                         f"{tuple(shape)}, got shape {arr.shape}")
    return arr


class Parameter:
    """A trainable array: ``data`` and the gradient ``grad`` accumulated by backward.

    ``decay`` tells the optimizers whether weight decay applies (False for BatchNorm's
    weight and bias, see :mod:`cybn.train`); with ``requires_grad`` False (a frozen layer's
    parameters) the optimizers leave the parameter unchanged.
    """

    def __init__(self, data, decay: bool = True):
        self.data = np.ascontiguousarray(data)
        self._grad = np.zeros_like(self.data)
        self._grad_stale = False  # True: _grad's values are to be read as zeros
        self.decay = decay
        self.requires_grad = True

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def grad(self) -> np.ndarray:
        """The accumulated gradient (zeros after :meth:`zero_grad`)."""
        if self._grad_stale:
            self._grad.fill(0)
            self._grad_stale = False
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        self._grad = value
        self._grad_stale = False

    def zero_grad(self) -> None:
        """Zero the gradient. The zeros are written only when the gradient is read before a
        backward adds to it: the first :meth:`accumulate` after this writes its values
        instead (a pass over the parameter fewer each way, which was 10% of a batch-1
        ResNet-18 training step)."""
        self._grad_stale = True

    def accumulate(self, g) -> None:
        """grad += g (g broadcast to grad's shape, cast to its dtype as ``+=`` casts), as
        a backward adds a parameter's gradient."""
        if self._grad_stale:
            np.copyto(self._grad, g, casting="same_kind")
            self._grad_stale = False
        else:
            np.add(self._grad, g, out=self._grad, casting="same_kind")

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if "grad" in state:  # pickled before the gradient was zeroed lazily
            state["_grad"] = state.pop("grad")
        state.setdefault("_grad_stale", False)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _checked_forward(forward):
    """A layer's forward that first checks x as layer_input does (an ndarray of real numbers
    passes at the cost of a type check): ``layer.forward(masked_array)`` is refused like
    ``layer(...)``."""
    @functools.wraps(forward)
    def checked(self, x, *args, **kwargs):
        if type(x) is not np.ndarray or x.dtype.kind not in "biuf":
            layer_input(x, type(self).__name__)  # the forward converts x as it needs
        return forward(self, x, *args, **kwargs)

    checked._checked = True
    return checked


class Module:
    """Base class: registers parameters, buffers and sub-modules in assignment order."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "forward_fused"):  # every entry that takes x first
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_checked", False):
                setattr(cls, name, _checked_forward(method))

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._parameters and value is None:
            self._parameters[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_workspaces", None)  # scratch, not state: copies and pickles leave it out
        return state

    def _workspace(self, name: str, shape: tuple, dtype) -> np.ndarray | None:
        """A scratch array this module keeps between training steps (column matrices, masks,
        index maps: never an array handed to the caller), reused while the shape and dtype
        repeat, so a training loop does not page-fault fresh temporaries every step. None in
        eval mode, where the caller allocates: concurrent inference calls on one model (from
        several Python threads) then never share a buffer."""
        if not self.training:
            return None
        spaces = self.__dict__.setdefault("_workspaces", {})
        buf = spaces.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != np.dtype(dtype):
            buf = spaces[name] = np.empty(shape, dtype)
        return buf

    def register_buffer(self, name: str, value) -> None:
        """A state array saved in state_dict but not trained (running statistics)."""
        self._buffers[name] = value

    def __call__(self, x, **kwargs):
        return self.forward(x, **kwargs)  # forward checks x (see _checked_forward)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def backward_parameters(self, dy) -> None:
        """The parameter gradients of the last forward only, for a module whose input needs
        no gradient (the first layer of a network: its input is the data). Layers that can
        skip the input gradient do (Conv2d, Linear, and a Sequential's first layer, as
        PyTorch skips it for inputs that do not require grad); others run backward. Returns
        None."""
        self.backward(dy)
        return None

    def _take_saved(self, dy=_NO_GRAD, output_shape=None):
        """What the last forward saved for backward; a backward consumes it, so that a
        second backward without a new forward (which would add the parameter gradients
        twice) is an error, as in PyTorch.

        With ``dy`` (and ``output_shape``, a function of the saved record giving the shape
        of the forward's output), returns ``(saved, dy)``: dy as an array checked against
        that shape first, so a wrong dy raises before anything is computed and leaves the
        saved record in place for a corrected call."""
        saved = self.__dict__.get("_cache")
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward first (each "
                               f"forward allows one backward)")
        if dy is not _NO_GRAD:
            dy = grad_output(dy, output_shape(saved), type(self).__name__)
        object.__setattr__(self, "_cache", None)
        return saved if dy is _NO_GRAD else (saved, dy)

    # ----- traversal ------------------------------------------------------------------
    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        """The trainable parameters, in PyTorch's order."""
        for _, p in self.named_parameters():
            yield p

    def modules(self):
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ----- state --------------------------------------------------------------------------
    def _state_items(self, prefix: str = ""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p.data
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, b
        for name, m in self._modules.items():
            yield from m._state_items(f"{prefix}{name}.")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer under PyTorch's keys."""
        return OrderedDict((k, np.array(v, copy=True)) for k, v in self._state_items())

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays from ``state`` into this model's parameters and buffers.

        Every key and shape is checked before anything is written: a missing or unexpected
        key (with ``strict``) or a wrong shape raises ValueError naming it and leaves the
        model unchanged. Values are cast to the existing arrays' dtypes. A missing
        ``num_batches_tracked`` (state dicts of older PyTorch) is not an error: the counter
        keeps its value.
        """
        targets = OrderedDict(self._state_items())
        # as PyTorch: a state dict from before num_batches_tracked existed loads in strict
        # mode too (the counters keep their values)
        missing = [k for k in targets if k not in state
                   and not k.split(".")[-1] == "num_batches_tracked"]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match the model: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        converted = {}
        for key, target in targets.items():
            if key not in state:
                continue
            try:
                value = np.asarray(state[key])
            except (TypeError, ValueError) as err:  # ragged nested lists, say
                raise ValueError(f"state_dict[{key!r}] is not an array of numbers: "
                                 f"{err}") from None
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, the model "
                                 f"expects {target.shape}")
            if value.dtype.kind not in "biuf":
                raise ValueError(f"state_dict[{key!r}] has dtype {value.dtype}, expected numbers")
            converted[key] = value
        for key, value in converted.items():
            np.copyto(targets[key], value, casting="unsafe")

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({name}): " + repr(m).replace("\n", "\n  ")
                        for name, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        return ""


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse. Indexable like a list.

    ``Sequential(a, b, c)`` names the layers ``"0"``, ``"1"``, ``"2"`` (the prefixes of
    their state_dict keys); ``Sequential({"conv1": a, "bn1": b})`` (a dict, in its order)
    names them as given, as ``torch.nn.Sequential(OrderedDict(...))`` does, and the layers
    are also attributes (``model.conv1``).
    """

    def __init__(self, *layers: Module):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], dict):
            named = list(layers[0].items())
            for name, _ in named:
                if not isinstance(name, str) or not name or "." in name:
                    raise ValueError(f"layer names must be non-empty strings without dots, "
                                     f"got {name!r}")
        else:
            named = [(str(i), layer) for i, layer in enumerate(layers)]
        for name, layer in named:
            if not isinstance(layer, Module):
                raise TypeError(f"layer {name} is not a cybn Module: {type(layer).__name__}")
            self._modules[name] = layer

    def named_layers(self) -> list:
        """``[(name, layer), ...]`` in order."""
        return list(self._modules.items())

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self._modules.values()):
            dy = layer.backward(dy)
        return dy

    def backward_parameters(self, dy) -> None:
        layers = list(self._modules.values())
        for layer in reversed(layers[1:]):
            dy = layer.backward(dy)
        if layers:
            layers[0].backward_parameters(dy)
        return None


class Identity(Module):
    """y = x (and dx = dy): a placeholder that keeps a Sequential's indices, and so its
    state_dict keys, when a layer is fused into its neighbour (see :func:`cybn.fuse`)."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
