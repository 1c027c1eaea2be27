"""Layers that route channels: parallel branches concatenated along the channel axis
(Inception, SqueezeNet's Fire, DenseNet), a channel range (ShuffleNetV2's split), channel
shuffle (ShuffleNet) and squeeze-and-excitation (MobileNetV3, EfficientNet)."""

from __future__ import annotations

import numpy as np

from ..ops import channels, pool
from ._args import as_rng, positive_int
from .activation import Hardsigmoid, ReLU, Sigmoid
from .conv import Conv2d
from .module import Module, Sequential

__all__ = ["Concat", "ChannelSlice", "ChannelShuffle", "SqueezeExcitation", "Fire",
           "ShuffleUnit"]


def _channel_axis(x: np.ndarray, channels_last: bool, name: str) -> int:
    if x.ndim < 2:
        raise ValueError(f"{name} expects input with a batch and a channel axis, got shape "
                         f"{x.shape}")
    return x.ndim - 1 if channels_last else 1


class Concat(Module):
    """``concat([branch(x) for branch in branches], channel axis)``: each branch gets the
    whole input; the outputs (equal in every axis but the channels) are joined in order.
    The backward splits dy the same way and adds the branches' input gradients, in order.

    Parameters
    ----------
    *branches : Module
        state_dict keys ``0.*``, ``1.*``, ... as in a :class:`Sequential`.
    channels_last : bool
        The channel axis is the last one (else axis 1).
    """

    _interleave = False  # see _ShuffledConcat

    @property
    def interleaved(self) -> bool:
        """Whether the branches' channels are interleaved (concatenation followed by a
        channel shuffle in ``len(self)`` groups, as ShuffleNetV2's units run it) rather
        than joined in order."""
        return self._interleave

    def __init__(self, *branches: Module, channels_last: bool = False):
        super().__init__()
        if not branches:
            raise ValueError("Concat needs at least one branch")
        for i, m in enumerate(branches):
            if not isinstance(m, Module):
                raise TypeError(f"branch {i} must be a cybn Module, got {type(m).__name__}")
            setattr(self, str(i), m)
        self.channels_last = channels_last
        self._cache = None

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        x = np.asarray(x)
        outs = [np.asarray(m(x)) for m in self]
        axis = _channel_axis(outs[0], self.channels_last, "Concat")
        rest = [o.shape[:axis] + o.shape[axis + 1:] for o in outs]
        if any(r != rest[0] or o.ndim != outs[0].ndim for r, o in zip(rest, outs)):
            raise ValueError(f"Concat: the branches' outputs {[o.shape for o in outs]} "
                             f"differ in more than the channel axis {axis}")
        sizes = [o.shape[axis] for o in outs]
        if self._interleave and len(set(sizes)) > 1:
            raise ValueError(f"ShuffleUnit: its branches give {sizes} channels; the shuffle "
                             f"interleaves branches of equal width")
        dtype = np.result_type(*outs)
        y = channels.concat([o.astype(dtype, copy=False) for o in outs], axis,
                            self._interleave)
        self._cache = (y.shape, axis, sizes)
        return y

    def backward(self, dy):
        (_, axis, sizes), dy = self._take_saved(dy, lambda saved: saved[0])
        parts = channels.split(dy, sizes, axis, self._interleave)
        dx = None
        for m, g in zip(self, parts):
            d = m.backward(g)
            dx = d if dx is None else dx + d
        return dx


class _ShuffledConcat(Concat):
    """Concat followed by ChannelShuffle(len(branches)) in one pass, for branches with
    equal channel counts: branch b's channel k is output channel ``k * len(branches) + b``
    (ShuffleNetV2's units)."""

    _interleave = True


class ChannelSlice(Module):
    """The channels ``start:stop`` of the input (ShuffleNetV2's channel split: one branch
    takes the first half, another the second); the backward puts dy there and zeros
    elsewhere."""

    def __init__(self, start: int, stop: int, channels_last: bool = False):
        super().__init__()
        self.start = int(start)
        self.stop = int(stop)
        if not 0 <= self.start < self.stop:
            raise ValueError(f"ChannelSlice needs 0 <= start < stop, got {start}, {stop}")
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"

    def forward(self, x):
        x = np.asarray(x)
        axis = _channel_axis(x, self.channels_last, "ChannelSlice")
        if x.shape[axis] < self.stop:
            raise ValueError(f"ChannelSlice({self.start}, {self.stop}): the input has "
                             f"{x.shape[axis]} channels (shape {x.shape})")
        shape = list(x.shape)
        shape[axis] = self.stop - self.start
        self._cache = (x.shape, x.dtype, axis, tuple(shape))
        return channels.take_range(x, self.start, self.stop, axis)

    def backward(self, dy):
        (shape, dtype, axis, _), dy = self._take_saved(dy, lambda saved: saved[3])
        return channels.put_range(dy, shape, self.start, axis, np.result_type(dtype,
                                                                              dy.dtype))


class ChannelShuffle(Module):
    """ShuffleNet's channel shuffle, as PyTorch's ``nn.ChannelShuffle(groups)``: the C
    channels seen as (groups, C // groups) are transposed to (C // groups, groups), so
    output channel j * groups + g is input channel g * (C // groups) + j."""

    def __init__(self, groups: int, channels_last: bool = False):
        super().__init__()
        self.groups = positive_int(groups, "groups")
        self.channels_last = channels_last
        self._cache = None

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def _permute(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        axis = _channel_axis(x, self.channels_last, "ChannelShuffle")
        C, g = x.shape[axis], self.groups
        if C % g:
            raise ValueError(f"ChannelShuffle: {C} channels do not split into {g} groups")
        return channels.shuffle(x, g, axis, inverse)

    def forward(self, x):
        x = np.asarray(x)
        y = self._permute(x, inverse=False)
        self._cache = x.shape
        return y

    def backward(self, dy):
        _, dy = self._take_saved(dy, lambda shape: shape)
        return self._permute(dy, inverse=True)


class SqueezeExcitation(Module):
    """Squeeze-and-excitation, as torchvision's ``SqueezeExcitation``: per sample and
    channel, ``scale = scale_activation(fc2(activation(fc1(mean over the pixels))))`` with
    fc1, fc2 1x1 convolutions, and ``y = x * scale``.

    Parameters
    ----------
    input_channels, squeeze_channels : int
    activation : "relu" (default) or a cybn Module
    scale_activation : "sigmoid" (default), "hardsigmoid" (MobileNetV3) or a cybn Module
    channels_last : bool
    dtype, rng : as Conv2d's

    state_dict keys ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``, as
    torchvision's.
    """

    def __init__(self, input_channels: int, squeeze_channels: int, activation="relu",
                 scale_activation="sigmoid", channels_last: bool = False, dtype=np.float32,
                 rng=None):
        super().__init__()
        cl = channels_last
        rng = as_rng(rng)
        self.fc1 = Conv2d(input_channels, squeeze_channels, 1, channels_last=cl, dtype=dtype,
                          rng=rng)
        self.fc2 = Conv2d(squeeze_channels, input_channels, 1, channels_last=cl, dtype=dtype,
                          rng=rng)
        self.activation = _as_module(activation, {"relu": ReLU}, "activation")
        self.scale_activation = _as_module(scale_activation, {"sigmoid": Sigmoid,
                                                              "hardsigmoid": Hardsigmoid},
                                           "scale_activation")
        self.channels_last = channels_last
        self._cache = None

    def _axes(self) -> tuple:
        return (1, 2) if self.channels_last else (2, 3)

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"SqueezeExcitation expects 4-D input, got shape {x.shape}")
        if x.dtype in (np.float32, np.float64):
            s = pool.global_avg_pool2d(x, self.channels_last)
        else:
            s = x.mean(axis=self._axes(), keepdims=True)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        self._cache = (x, scale)
        return x * scale

    def backward(self, dy):
        (x, scale), dy = self._take_saved(dy, lambda saved: saved[0].shape)
        dscale = (dy * x).sum(axis=self._axes(), keepdims=True)
        ds = self.fc1.backward(self.activation.backward(self.fc2.backward(
            self.scale_activation.backward(dscale.astype(scale.dtype)))))
        a, b = self._axes()
        pixels = x.shape[a] * x.shape[b]
        return dy * scale + ds / ds.dtype.type(pixels)


def _as_module(value, names: dict, what: str) -> Module:
    if isinstance(value, Module):
        return value
    if isinstance(value, str) and value in names:
        return names[value]()
    raise ValueError(f"{what} must be one of {', '.join(map(repr, names))} or a cybn Module, "
                     f"got {value!r}")


class _Composite(Module):
    """A block whose children carry the names of the PyTorch module it mirrors (so its
    state_dict keys are torchvision's) and whose computation is a composition of those
    same children in cybn's containers, built by ``_compose`` (again whenever a child was
    replaced, so a child replaced by :func:`cybn.fold_batchnorm` or :func:`cybn.fuse` is
    the one used)."""

    def _compose(self) -> Module:
        raise NotImplementedError

    def _chains(self) -> list:
        """Lists of child names that run one after another (where :func:`cybn.fuse` may
        move an activation into the layer before it)."""
        return []

    def _composition(self) -> Module:
        """The composition of the current children: built again only when a child was
        replaced (the children's identities are the key; the composition holds them, so an
        identity cannot be reused while it is kept)."""
        key = tuple(map(id, self._modules.values()))
        kept = self.__dict__.get("_composed")
        if kept is None or kept[0] != key:
            kept = (key, self._compose())
            object.__setattr__(self, "_composed", kept)
        return kept[1]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_composed", None)  # rebuilt from the children when needed
        return state

    def forward(self, x):
        net = self._composition()
        y = net(x)
        self._cache = (net, np.shape(y))  # the composition that ran, for its backward
        return y

    def backward(self, dy):
        (net, _), dy = self._take_saved(dy, lambda saved: saved[1])
        return net.backward(dy)


class Fire(_Composite):
    """SqueezeNet's Fire module, as torchvision's: ``squeeze`` (1x1 conv) and ReLU, then
    the concatenation of ``expand1x1`` (1x1) and ``expand3x3`` (3x3, padding 1), each with
    its ReLU. state_dict keys ``squeeze.*``, ``expand1x1.*``, ``expand3x3.*``.

    Parameters
    ----------
    inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes : int
    channels_last : bool
    dtype, rng : as Conv2d's
    """

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int,
                 expand3x3_planes: int, channels_last: bool = False, dtype=np.float32,
                 rng=None):
        super().__init__()
        cl = channels_last
        rng = as_rng(rng)
        self.squeeze = Conv2d(inplanes, squeeze_planes, 1, channels_last=cl, dtype=dtype,
                              rng=rng)
        self.squeeze_activation = ReLU(inplace=True)
        self.expand1x1 = Conv2d(squeeze_planes, expand1x1_planes, 1, channels_last=cl,
                                dtype=dtype, rng=rng)
        self.expand1x1_activation = ReLU(inplace=True)
        self.expand3x3 = Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1,
                                channels_last=cl, dtype=dtype, rng=rng)
        self.expand3x3_activation = ReLU(inplace=True)
        self.channels_last = channels_last

    def _chains(self) -> list:
        return [[f"{n}", f"{n}_activation"] for n in ("squeeze", "expand1x1", "expand3x3")]

    def _compose(self) -> Module:
        return Sequential(self.squeeze, self.squeeze_activation, Concat(
            Sequential(self.expand1x1, self.expand1x1_activation),
            Sequential(self.expand3x3, self.expand3x3_activation),
            channels_last=self.channels_last))


class ShuffleUnit(_Composite):
    """ShuffleNetV2's unit (torchvision's ``shufflenetv2.InvertedResidual``): with
    ``branch1`` (stride 2), both branches see the whole input; without it (stride 1), the
    first half of the channels passes as it is and ``branch2`` takes the second half. The
    two results are concatenated along the channels and shuffled in 2 groups. state_dict keys
    ``branch1.*``, ``branch2.*``.

    Parameters
    ----------
    branch2 : Module
    branch1 : Module or None
    channels_last : bool
    """

    def __init__(self, branch2: Module, branch1: Module | None = None,
                 channels_last: bool = False):
        super().__init__()
        for name, m in (("branch1", branch1), ("branch2", branch2)):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"{name} must be a cybn Module, got {type(m).__name__}")
        if branch1 is not None:
            self.branch1 = branch1
        self.branch2 = branch2
        self.channels_last = channels_last

    def _compose(self) -> Module:
        cl = self.channels_last
        branch1 = self._modules.get("branch1")
        # torchvision's concatenation then channel shuffle in 2 groups, as one interleaving
        # pass (its two branches have the same channel count)
        if branch1 is not None:
            return _ShuffledConcat(branch1, self.branch2, channels_last=cl)
        half = _in_channels(self.branch2)
        return _ShuffledConcat(ChannelSlice(0, half, channels_last=cl),
                               Sequential(ChannelSlice(half, 2 * half, channels_last=cl),
                                          self.branch2), channels_last=cl)


def _in_channels(m: Module) -> int:
    """The input channels of a branch (its first convolution's)."""
    for layer in m.modules():
        if isinstance(layer, Conv2d):
            return layer.in_channels
    raise ValueError("a ShuffleUnit's branch2 must contain a Conv2d (its input channels "
                     "give the split)")
