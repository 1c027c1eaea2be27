"""From a PyTorch module to a cybn model with the same weights and buffers.

:func:`from_torch` walks a ``torch.nn.Module`` tree and builds the cybn layers that compute
the same function: the standard ``torch.nn`` layers, ``Sequential`` (and its subclasses,
such as torchvision's ``Conv2dNormActivation``), and the blocks of torchvision's ResNet,
MobileNetV2, SqueezeNet, ShuffleNetV2, EfficientNet and DenseNet families, whose
``forward`` adds a shortcut, concatenates branches or shuffles channels. PyTorch is needed
for the conversion only (imported here, lazily); the result runs on cybn alone.
"""

from __future__ import annotations

import numpy as np

from . import nn

__all__ = ["from_torch"]


class _Converter:
    def __init__(self, channels_last: bool, dtype):
        import torch  # the caller's module is a torch one: torch is installed

        self.torch = torch
        self.cl = bool(channels_last)
        self.dtype = dtype

    # ----- helpers --------------------------------------------------------------------
    def array(self, t) -> np.ndarray:
        a = t.detach().cpu().numpy()
        return a.astype(self.dtype if self.dtype is not None else a.dtype, copy=True)

    def params(self, layer, module, names=("weight", "bias")) -> None:
        for name in names:
            t = getattr(module, name, None)
            if t is None or getattr(layer, name, None) is None:
                continue
            getattr(layer, name).data = self.array(t)

    def float_dtype(self, module) -> np.dtype:
        if self.dtype is not None:
            return np.dtype(self.dtype)
        for p in module.parameters():
            return np.dtype(p.detach().cpu().numpy().dtype)
        return np.dtype(np.float32)

    # ----- the walk -------------------------------------------------------------------
    def convert(self, m, path: str):
        tnn = self.torch.nn
        kind = type(m).__name__
        origin = type(m).__module__
        if origin.startswith("torchvision"):
            block = getattr(self, f"tv_{kind}", None)
            if block is not None:
                return block(m, path)
        if isinstance(m, tnn.Sequential):
            return nn.Sequential(*[self.convert(c, f"{path}{i}.") for i, c in self._named(m)])
        layer = getattr(self, f"torch_{kind}", None)
        if layer is not None and type(m).__module__.startswith("torch.nn"):
            return layer(m, path)
        raise TypeError(f"from_torch: cannot convert {path.rstrip('.') or 'the model'} "
                        f"({origin}.{kind}): no cybn counterpart")

    def _named(self, seq):
        return [(name, child) for name, child in seq.named_children()]

    def child(self, m, name: str, path: str):
        return self.convert(getattr(m, name), f"{path}{name}.")

    # ----- torch.nn layers ------------------------------------------------------------
    def torch_Conv2d(self, m, path):
        if m.padding_mode != "zeros":
            raise TypeError(f"from_torch: {path.rstrip('.')} pads with {m.padding_mode!r}; "
                            f"cybn's Conv2d pads with zeros")
        padding = m.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            else:  # "same" (stride 1): symmetric where the dilated kernel's extent is odd
                extents = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
                if any(e % 2 for e in extents):
                    raise TypeError(f"from_torch: {path.rstrip('.')} uses padding='same' "
                                    f"with an even kernel extent (asymmetric padding)")
                padding = tuple(e // 2 for e in extents)
        layer = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, padding,
                          bias=m.bias is not None, channels_last=self.cl,
                          dtype=self.float_dtype(m), groups=m.groups, dilation=m.dilation)
        self.params(layer, m)
        return layer

    def torch_Linear(self, m, path):
        layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          dtype=self.float_dtype(m))
        self.params(layer, m)
        return layer

    def _batchnorm(self, cls, m, path):
        layer = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                    track_running_stats=m.track_running_stats, dtype=self.float_dtype(m),
                    **({"channels_last": self.cl} if cls is nn.BatchNorm2d else {}))
        if m.affine:
            self.params(layer, m)
        if m.track_running_stats:
            layer.running_mean[...] = m.running_mean.detach().cpu().numpy()
            layer.running_var[...] = m.running_var.detach().cpu().numpy()
            layer.num_batches_tracked[...] = int(m.num_batches_tracked)
        layer.train(m.training)
        return layer

    def torch_BatchNorm2d(self, m, path):
        return self._batchnorm(nn.BatchNorm2d, m, path)

    def torch_BatchNorm1d(self, m, path):
        return self._batchnorm(nn.BatchNorm1d, m, path)

    def torch_ReLU(self, m, path):
        return nn.ReLU(inplace=m.inplace)

    def torch_ReLU6(self, m, path):
        return nn.ReLU6(inplace=m.inplace)

    def torch_Hardtanh(self, m, path):
        return nn.Hardtanh(m.min_val, m.max_val, inplace=m.inplace)

    def torch_Hardswish(self, m, path):
        return nn.Hardswish(inplace=m.inplace)

    def torch_Hardsigmoid(self, m, path):
        return nn.Hardsigmoid(inplace=m.inplace)

    def torch_SiLU(self, m, path):
        return nn.SiLU(inplace=m.inplace)

    def torch_Sigmoid(self, m, path):
        return nn.Sigmoid()

    def torch_Tanh(self, m, path):
        return nn.Tanh()

    def torch_GELU(self, m, path):
        return nn.GELU(m.approximate)

    def torch_LeakyReLU(self, m, path):
        return nn.LeakyReLU(m.negative_slope, inplace=m.inplace)

    def torch_MaxPool2d(self, m, path):
        if m.return_indices:
            raise TypeError(f"from_torch: {path.rstrip('.')} returns indices; cybn's MaxPool2d "
                            f"does not")
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation,
                            ceil_mode=m.ceil_mode, channels_last=self.cl)

    def torch_AvgPool2d(self, m, path):
        return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                            m.count_include_pad, m.divisor_override, channels_last=self.cl)

    def torch_AdaptiveAvgPool2d(self, m, path):
        return nn.AdaptiveAvgPool2d(m.output_size, channels_last=self.cl)

    def torch_AdaptiveMaxPool2d(self, m, path):
        if m.return_indices:
            raise TypeError(f"from_torch: {path.rstrip('.')} returns indices; cybn's "
                            f"AdaptiveMaxPool2d does not")
        return nn.AdaptiveMaxPool2d(m.output_size, channels_last=self.cl)

    def torch_Flatten(self, m, path):
        if m.start_dim != 1 or m.end_dim != -1:
            raise TypeError(f"from_torch: {path.rstrip('.')} flattens dimensions "
                            f"{m.start_dim}..{m.end_dim}; cybn's Flatten keeps the batch axis "
                            f"and flattens the rest")
        return nn.Flatten(channels_last=self.cl)

    def torch_Dropout(self, m, path):
        return nn.Dropout(m.p)

    def torch_Identity(self, m, path):
        return nn.Identity()

    def torch_ChannelShuffle(self, m, path):
        return nn.ChannelShuffle(m.groups, channels_last=self.cl)

    # ----- torchvision blocks (matched by class name) --------------------------------
    def tv_BasicBlock(self, m, path):
        return self._resnet_block(m, path, ["conv1", "bn1", "relu", "conv2", "bn2"])

    def tv_Bottleneck(self, m, path):
        return self._resnet_block(m, path, ["conv1", "bn1", "relu", "conv2", "bn2", "relu",
                                            "conv3", "bn3"])

    def _resnet_block(self, m, path, names):
        """A Residual with torchvision's names (keys ``conv1.weight``, ``downsample.0.*``;
        the ReLU used twice in a Bottleneck's body is ``relu`` and ``relu2``)."""
        body = {}
        for n in names:
            body["relu2" if n in body else n] = self.child(m, n, path)
        down = None if m.downsample is None else self.child(m, "downsample", path)
        return nn.Residual(body, down, shortcut_name="downsample")

    def tv_ResNet(self, m, path):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                 "avgpool"]
        layers = {n: self.child(m, n, path) for n in names}
        layers.update(flatten=nn.Flatten(channels_last=self.cl), fc=self.child(m, "fc", path))
        return nn.Sequential(layers)

    def tv_InvertedResidual(self, m, path):
        if hasattr(m, "use_res_connect"):  # MobileNetV2's
            conv = {"conv": self.child(m, "conv", path)}  # torchvision's keys: conv.*
            return nn.Residual(conv, activation=None) if m.use_res_connect else \
                nn.Sequential(conv)
        # ShuffleNetV2's: split (stride 1) or two branches (stride 2), concatenated, shuffled
        branch1 = self.child(m, "branch1", path) if m.stride > 1 else None
        return nn.ShuffleUnit(self.child(m, "branch2", path), branch1, channels_last=self.cl)

    def tv_MobileNetV2(self, m, path):
        return nn.Sequential({"features": self.child(m, "features", path),
                              "avgpool": nn.AdaptiveAvgPool2d(1, channels_last=self.cl),
                              "flatten": nn.Flatten(channels_last=self.cl),
                              "classifier": self.child(m, "classifier", path)})

    def tv_SqueezeNet(self, m, path):
        return nn.Sequential({"features": self.child(m, "features", path),
                              "classifier": self.child(m, "classifier", path),
                              "flatten": nn.Flatten(channels_last=self.cl)})

    def tv_Fire(self, m, path):
        names = ["squeeze", "expand1x1", "expand3x3"]
        convs = {n: self.child(m, n, path) for n in names}
        layer = nn.Fire(convs["squeeze"].in_channels, *[convs[n].out_channels for n in names],
                        channels_last=self.cl, dtype=convs["squeeze"].weight.data.dtype)
        for n in names:
            setattr(layer, n, convs[n])
        for n in ("squeeze_activation", "expand1x1_activation", "expand3x3_activation"):
            if type(getattr(m, n)).__name__ != "ReLU":
                raise TypeError(f"from_torch: {path}{n} is not a ReLU")
        return layer

    def tv_ShuffleNetV2(self, m, path):
        names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
        layers = {n: self.child(m, n, path) for n in names}
        layers.update(avgpool=nn.AdaptiveAvgPool2d(1, channels_last=self.cl),
                      flatten=nn.Flatten(channels_last=self.cl), fc=self.child(m, "fc", path))
        return nn.Sequential(layers)

    def tv_SqueezeExcitation(self, m, path):
        fc1, fc2 = self.child(m, "fc1", path), self.child(m, "fc2", path)
        layer = nn.SqueezeExcitation(fc1.in_channels, fc1.out_channels,
                                     activation=self.child(m, "activation", path),
                                     scale_activation=self.child(m, "scale_activation", path),
                                     channels_last=self.cl, dtype=fc1.weight.data.dtype)
        layer.fc1, layer.fc2 = fc1, fc2
        return layer

    def tv__DenseLayer(self, m, path):
        if m.drop_rate > 0:
            raise TypeError(f"from_torch: {path.rstrip('.')} drops features (drop_rate "
                            f"{m.drop_rate}); convert a DenseNet built with drop_rate=0")
        names = ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]
        layer = nn.Sequential(*[self.child(m, n, path) for n in names])
        # the block's running concatenation: each layer's input is all features so far
        return nn.Concat(nn.Identity(), layer, channels_last=self.cl)

    def tv__DenseBlock(self, m, path):  # a ModuleDict run in order (Sequentials convert as such)
        return nn.Sequential(*[self.convert(c, f"{path}{n}.") for n, c in self._named(m)])

    def tv_StochasticDepth(self, m, path):
        return nn.StochasticDepth(m.p, m.mode)

    def tv_MBConv(self, m, path):
        """EfficientNet's block: block, then (same shape) stochastic depth and the add."""
        block = self.child(m, "block", path)
        if not m.use_res_connect:
            return nn.Sequential({"block": block})
        body = {"block": block, "stochastic_depth": self.child(m, "stochastic_depth", path)}
        return nn.Residual(body, activation=None)

    tv_FusedMBConv = tv_MBConv  # EfficientNetV2's

    def tv_EfficientNet(self, m, path):
        return nn.Sequential({"features": self.child(m, "features", path),
                              "avgpool": nn.AdaptiveAvgPool2d(1, channels_last=self.cl),
                              "flatten": nn.Flatten(channels_last=self.cl),
                              "classifier": self.child(m, "classifier", path)})

    def tv_DenseNet(self, m, path):
        return nn.Sequential(self.child(m, "features", path), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1, channels_last=self.cl),
                             nn.Flatten(channels_last=self.cl), self.child(m, "classifier", path))


def from_torch(module, *, channels_last: bool = False, dtype=None):
    """A cybn model that computes what a PyTorch module computes, with its weights and
    buffers copied.

    Parameters
    ----------
    module : torch.nn.Module
        Standard ``torch.nn`` layers (Conv2d with zero padding, Linear, BatchNorm1d/2d, the
        activations, pooling, Flatten, Dropout, Identity, ChannelShuffle) in Sequentials at
        any depth, and torchvision's ResNet, MobileNetV2, SqueezeNet, ShuffleNetV2 and
        EfficientNet and DenseNet (``drop_rate=0``) models and blocks.
    channels_last : bool
        Build the cybn model for (N, H, W, C) inputs (weights in PyTorch's layout either
        way; Flatten keeps PyTorch's (C, H, W) order, so a following Linear's weight is
        used as it is).
    dtype : numpy dtype, optional
        Cast the parameters and buffers to it (default: the module's own).

    Returns
    -------
    Module
        In the module's mode (``training`` of every BatchNorm as in PyTorch). Residual
        blocks become :class:`cybn.Residual`, branches :class:`cybn.Concat`, SqueezeNet's
        and ShuffleNetV2's blocks :class:`cybn.Fire` and :class:`cybn.ShuffleUnit`. The
        state_dict keys are the module's for plain Sequentials and for torchvision's ResNet,
        MobileNetV2, SqueezeNet and ShuffleNetV2 (as :mod:`cybn.models` builds them);
        DenseNet's follow cybn's structure.

    Raises
    ------
    TypeError
        The first module that has no cybn counterpart, named by its path (``layer1.0.conv1``)
        and class; or a layer option cybn does not have (reflection padding, indices).
    """
    try:
        import torch
    except ImportError:
        raise ImportError("from_torch needs PyTorch (pip install torch): it reads a "
                          "torch.nn.Module") from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    model = _Converter(channels_last, dtype).convert(module, "")
    model.train(module.training)
    return model
