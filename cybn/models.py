"""Builders of well-known batch-normalized CNNs whose state_dict keys and shapes are
torchvision's, so a torchvision checkpoint's tensors (as NumPy arrays) load as they are::

    model = cybn.models.resnet18()
    model.load_state_dict({k: v.numpy() for k, v in torch.load(path).items()})

The models are cybn layers (:class:`Sequential` with named layers, :class:`Residual` blocks
with named layers), so :func:`cybn.fuse`, :func:`cybn.fold_batchnorm`, training with
:func:`cybn.fit` and the ONNX export take them like any other model. Weights are
initialized as torchvision initializes them (convolutions He-normal over the fan-out,
batch norms 1 and 0), from ``rng``. Their activations work in place, as torchvision's
(``inplace=True``): they overwrite the batch norm or convolution output before them, which
no backward reads.
"""

from __future__ import annotations

import math

import numpy as np

from . import nn
from .nn._args import as_rng, positive_int

__all__ = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "squeezenet1_0",
           "squeezenet1_1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
           "shufflenet_v2_x2_0"]


def _relu():
    return nn.ReLU(inplace=True)


def _relu6():
    return nn.ReLU6(inplace=True)


class _Builder:
    """The layers of one model: one layout, dtype and generator for all of them."""

    def __init__(self, channels_last: bool, dtype, rng):
        self.cl = bool(channels_last)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"dtype must be a floating dtype, got {self.dtype}")
        self.rng = as_rng(rng)

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        """A bias-free convolution with 'same' padding for odd k, He-normal (fan-out)."""
        layer = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False,
                          channels_last=self.cl, dtype=self.dtype, groups=groups)
        std = math.sqrt(2.0 / (cout * k * k))  # torchvision: fan-out = out channels * k * k
        layer.weight.data[...] = self.rng.normal(0.0, std, layer.weight.shape)
        return layer

    def bn(self, c: int):
        return nn.BatchNorm2d(c, channels_last=self.cl, dtype=self.dtype)

    def linear(self, cin: int, cout: int):
        return nn.Linear(cin, cout, dtype=self.dtype, rng=self.rng)


def _basic_block(b: _Builder, cin: int, planes: int, stride: int):
    body = {"conv1": b.conv(cin, planes, 3, stride), "bn1": b.bn(planes), "relu": _relu(),
            "conv2": b.conv(planes, planes, 3), "bn2": b.bn(planes)}
    return body, planes


def _bottleneck(b: _Builder, cin: int, planes: int, stride: int):
    out = planes * 4
    body = {"conv1": b.conv(cin, planes, 1), "bn1": b.bn(planes), "relu": _relu(),
            "conv2": b.conv(planes, planes, 3, stride), "bn2": b.bn(planes),
            "relu2": _relu(), "conv3": b.conv(planes, out, 1), "bn3": b.bn(out)}
    return body, out


def _resnet(block, depths: tuple, num_classes: int, channels_last: bool, dtype, rng):
    b = _Builder(channels_last, dtype, rng)
    num_classes = positive_int(num_classes, "num_classes")
    layers = {"conv1": b.conv(3, 64, 7, 2), "bn1": b.bn(64), "relu": _relu(),
              "maxpool": nn.MaxPool2d(3, 2, 1, channels_last=b.cl)}
    cin = 64
    for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        blocks = []
        for i in range(depth):
            stride = 2 if stage > 0 and i == 0 else 1
            body, out = block(b, cin, planes, stride)
            down = None
            if stride != 1 or cin != out:
                down = nn.Sequential(b.conv(cin, out, 1, stride), b.bn(out))
            blocks.append(nn.Residual(body, down, shortcut_name="downsample"))
            cin = out
        layers[f"layer{stage + 1}"] = nn.Sequential(*blocks)
    layers.update(avgpool=nn.AdaptiveAvgPool2d(1, channels_last=b.cl),
                  flatten=nn.Flatten(channels_last=b.cl), fc=b.linear(cin, num_classes))
    return nn.Sequential(layers)


def resnet18(num_classes: int = 1000, *, channels_last: bool = False, dtype=np.float32,
             rng=None) -> nn.Sequential:
    """ResNet-18 (torchvision's ``resnet18``): keys ``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight``, ..., ``layer2.0.downsample.0.weight``, ``fc.weight``.

    Parameters
    ----------
    num_classes : int
        The classifier's outputs.
    channels_last : bool
        For (N, H, W, C) input (the weights keep PyTorch's layout either way).
    dtype : float dtype
        Of the parameters and buffers (float32 or float64; cast a loaded checkpoint by
        ``load_state_dict``).
    rng : seed or numpy Generator, optional
        For the initial weights.

    Returns
    -------
    Sequential
        In training mode, like a new PyTorch module; ``model.layer1[0].conv1`` and the
        other torchvision names are attributes.
    """
    return _resnet(_basic_block, (2, 2, 2, 2), num_classes, channels_last, dtype, rng)


def resnet34(num_classes: int = 1000, *, channels_last: bool = False, dtype=np.float32,
             rng=None) -> nn.Sequential:
    """ResNet-34 (torchvision's ``resnet34``), as :func:`resnet18` with (3, 4, 6, 3) blocks."""
    return _resnet(_basic_block, (3, 4, 6, 3), num_classes, channels_last, dtype, rng)


def resnet50(num_classes: int = 1000, *, channels_last: bool = False, dtype=np.float32,
             rng=None) -> nn.Sequential:
    """ResNet-50 (torchvision's ``resnet50``, stride on the 3x3 convolution, "v1.5"), as
    :func:`resnet18` with (3, 4, 6, 3) bottleneck blocks (their second ReLU is named
    ``relu2``: it has no state, so the keys are torchvision's)."""
    return _resnet(_bottleneck, (3, 4, 6, 3), num_classes, channels_last, dtype, rng)


def _divisible(v: float, divisor: int = 8) -> int:
    """v rounded to a multiple of divisor, never below 90% of v (MobileNet's channel rule)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def mobilenet_v2(num_classes: int = 1000, *, width_mult: float = 1.0, dropout: float = 0.2,
                 channels_last: bool = False, dtype=np.float32, rng=None) -> nn.Sequential:
    """MobileNetV2 (torchvision's ``mobilenet_v2``): keys ``features.0.0.weight``,
    ``features.1.conv.0.0.weight``, ..., ``classifier.1.weight``.

    Each inverted residual block is a :class:`Residual` (no activation after the add) named
    ``conv`` inside, or, where it changes the shape, a :class:`Sequential` with the one
    layer ``conv``. Arguments as :func:`resnet18`, plus ``width_mult`` (channel multiplier)
    and ``dropout`` (the classifier's).
    """
    b = _Builder(channels_last, dtype, rng)
    num_classes = positive_int(num_classes, "num_classes")
    if not (isinstance(width_mult, (int, float)) and width_mult > 0):
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")

    def cna(cin, cout, k, stride=1, groups=1):  # torchvision's Conv2dNormActivation
        return nn.Sequential(b.conv(cin, cout, k, stride, groups), b.bn(cout), _relu6())

    cin = _divisible(32 * width_mult)
    features = [cna(3, cin, 3, 2)]
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        cout = _divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(cin * t))
            layers = [cna(cin, hidden, 1)] if t != 1 else []
            layers += [cna(hidden, hidden, 3, stride, groups=hidden),
                       b.conv(hidden, cout, 1), b.bn(cout)]
            conv = nn.Sequential(*layers)
            if stride == 1 and cin == cout:
                features.append(nn.Residual({"conv": conv}, activation=None))
            else:
                features.append(nn.Sequential({"conv": conv}))
            cin = cout
    last = _divisible(1280 * max(1.0, width_mult))
    features.append(cna(cin, last, 1))
    fc = b.linear(last, num_classes)
    fc.weight.data[...] = b.rng.normal(0.0, 0.01, fc.weight.shape)  # torchvision's init
    fc.bias.data[...] = 0
    return nn.Sequential({"features": nn.Sequential(*features),
                          "avgpool": nn.AdaptiveAvgPool2d(1, channels_last=b.cl),
                          "flatten": nn.Flatten(channels_last=b.cl),
                          "classifier": nn.Sequential(nn.Dropout(dropout), fc)})


def _squeezenet(version: str, num_classes: int, dropout: float, channels_last: bool, dtype,
                rng) -> nn.Sequential:
    b = _Builder(channels_last, dtype, rng)
    num_classes = positive_int(num_classes, "num_classes")
    cl = b.cl

    def fire(*planes):
        return nn.Fire(*planes, channels_last=cl, dtype=b.dtype, rng=b.rng)

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True, channels_last=cl)

    if version == "1_0":
        stem = nn.Conv2d(3, 96, 7, 2, channels_last=cl, dtype=b.dtype, rng=b.rng)
        features = [stem, _relu(), pool(), fire(96, 16, 64, 64), fire(128, 16, 64, 64),
                    fire(128, 32, 128, 128), pool(), fire(256, 32, 128, 128),
                    fire(256, 48, 192, 192), fire(384, 48, 192, 192), fire(384, 64, 256, 256),
                    pool(), fire(512, 64, 256, 256)]
    else:
        stem = nn.Conv2d(3, 64, 3, 2, channels_last=cl, dtype=b.dtype, rng=b.rng)
        features = [stem, _relu(), pool(), fire(64, 16, 64, 64), fire(128, 16, 64, 64),
                    pool(), fire(128, 32, 128, 128), fire(256, 32, 128, 128), pool(),
                    fire(256, 48, 192, 192), fire(384, 48, 192, 192), fire(384, 64, 256, 256),
                    fire(512, 64, 256, 256)]
    final = nn.Conv2d(512, num_classes, 1, channels_last=cl, dtype=b.dtype, rng=b.rng)
    for m in features + [final]:  # torchvision's init: He-uniform, the classifier N(0, 0.01)
        for conv in (c for c in m.modules() if isinstance(c, nn.Conv2d)):
            fan_in = conv.weight.data[0].size
            bound = math.sqrt(6.0 / fan_in)
            conv.weight.data[...] = b.rng.uniform(-bound, bound, conv.weight.shape)
            conv.bias.data[...] = 0
    final.weight.data[...] = b.rng.normal(0.0, 0.01, final.weight.shape)
    return nn.Sequential({"features": nn.Sequential(*features),
                          "classifier": nn.Sequential(nn.Dropout(dropout), final, _relu(),
                                                      nn.AdaptiveAvgPool2d(1,
                                                                           channels_last=cl)),
                          "flatten": nn.Flatten(channels_last=cl)})


def squeezenet1_0(num_classes: int = 1000, *, dropout: float = 0.5,
                  channels_last: bool = False, dtype=np.float32, rng=None) -> nn.Sequential:
    """SqueezeNet 1.0 (torchvision's ``squeezenet1_0``): keys ``features.0.weight``,
    ``features.3.squeeze.weight``, ``features.3.expand1x1.weight``, ...,
    ``classifier.1.weight``; the Fire modules are :class:`cybn.Fire`. Arguments as
    :func:`resnet18`, plus the classifier's ``dropout``."""
    return _squeezenet("1_0", num_classes, dropout, channels_last, dtype, rng)


def squeezenet1_1(num_classes: int = 1000, *, dropout: float = 0.5,
                  channels_last: bool = False, dtype=np.float32, rng=None) -> nn.Sequential:
    """SqueezeNet 1.1 (torchvision's ``squeezenet1_1``), as :func:`squeezenet1_0`."""
    return _squeezenet("1_1", num_classes, dropout, channels_last, dtype, rng)


def _shufflenet(widths: tuple, num_classes: int, channels_last: bool, dtype,
                rng) -> nn.Sequential:
    b = _Builder(channels_last, dtype, rng)
    num_classes = positive_int(num_classes, "num_classes")
    cl = b.cl

    def conv(cin, cout, k, stride=1, groups=1):  # PyTorch's default init, no bias
        return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, channels_last=cl,
                         dtype=b.dtype, rng=b.rng, groups=groups)

    def unit(cin, cout, stride):
        f = cout // 2
        branch1 = None
        if stride > 1:
            branch1 = nn.Sequential(conv(cin, cin, 3, stride, cin), b.bn(cin), conv(cin, f, 1),
                                    b.bn(f), _relu())
        branch2 = nn.Sequential(conv(cin if stride > 1 else f, f, 1), b.bn(f), _relu(),
                                conv(f, f, 3, stride, f), b.bn(f), conv(f, f, 1), b.bn(f),
                                _relu())
        return nn.ShuffleUnit(branch2, branch1, channels_last=cl)

    layers = {"conv1": nn.Sequential(conv(3, widths[0], 3, 2), b.bn(widths[0]), _relu()),
              "maxpool": nn.MaxPool2d(3, 2, 1, channels_last=cl)}
    cin = widths[0]
    for stage, (repeats, cout) in enumerate(zip((4, 8, 4), widths[1:4])):
        layers[f"stage{stage + 2}"] = nn.Sequential(
            unit(cin, cout, 2), *[unit(cout, cout, 1) for _ in range(repeats - 1)])
        cin = cout
    layers.update(conv5=nn.Sequential(conv(cin, widths[4], 1), b.bn(widths[4]), _relu()),
                  avgpool=nn.AdaptiveAvgPool2d(1, channels_last=cl),
                  flatten=nn.Flatten(channels_last=cl), fc=b.linear(widths[4], num_classes))
    return nn.Sequential(layers)


def shufflenet_v2_x0_5(num_classes: int = 1000, *, channels_last: bool = False,
                       dtype=np.float32, rng=None) -> nn.Sequential:
    """ShuffleNetV2 x0.5 (torchvision's ``shufflenet_v2_x0_5``): keys ``conv1.0.weight``,
    ``stage2.0.branch1.0.weight``, ``stage2.1.branch2.0.weight``, ..., ``conv5.0.weight``,
    ``fc.weight``; the units are :class:`cybn.ShuffleUnit`. Arguments as :func:`resnet18`."""
    return _shufflenet((24, 48, 96, 192, 1024), num_classes, channels_last, dtype, rng)


def shufflenet_v2_x1_0(num_classes: int = 1000, *, channels_last: bool = False,
                       dtype=np.float32, rng=None) -> nn.Sequential:
    """ShuffleNetV2 x1.0, as :func:`shufflenet_v2_x0_5`."""
    return _shufflenet((24, 116, 232, 464, 1024), num_classes, channels_last, dtype, rng)


def shufflenet_v2_x1_5(num_classes: int = 1000, *, channels_last: bool = False,
                       dtype=np.float32, rng=None) -> nn.Sequential:
    """ShuffleNetV2 x1.5, as :func:`shufflenet_v2_x0_5`."""
    return _shufflenet((24, 176, 352, 704, 1024), num_classes, channels_last, dtype, rng)


def shufflenet_v2_x2_0(num_classes: int = 1000, *, channels_last: bool = False,
                       dtype=np.float32, rng=None) -> nn.Sequential:
    """ShuffleNetV2 x2.0, as :func:`shufflenet_v2_x0_5`."""
    return _shufflenet((24, 244, 488, 976, 2048), num_classes, channels_last, dtype, rng)
