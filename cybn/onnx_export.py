"""Whole models out to ONNX: :func:`to_onnx` writes a cybn model as an ONNX graph with
inference semantics (batch norm with its running statistics). ONNX graphs are
channels-first: a channels-last model is written with a transpose at its input (and at its
output, when that is an image). Needs the ``onnx`` package (``pip install cybn[onnx]``),
imported when called; :mod:`cybn.onnx_import` reads graphs back.
"""

from __future__ import annotations

import numpy as np

from . import nn
from .nn.batchnorm import _BatchNorm
from .nn.branches import _Composite

__all__ = ["to_onnx"]

_OPSET = 17
HARDSIGMOID = (1.0 / 6.0, 0.5)  # PyTorch's Hardsigmoid as ONNX's alpha * x + beta


class _Writer:
    """Emits nodes and initializers; tracks the current tensor's name and rank (the graph
    works channels-first throughout)."""

    def __init__(self, onnx, dtype: np.dtype, opset: int):
        self.onnx = onnx
        self.helper = onnx.helper
        self.dtype = dtype
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value, dtype=None) -> str:
        name = self.name(hint)
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list, hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _unsupported(path: str, layer, why: str = "") -> TypeError:
    where = path or "the model"
    return TypeError(f"to_onnx: cannot write {where} ({type(layer).__name__})"
                     + (f": {why}" if why else ": no ONNX counterpart"))


def _activation(w: _Writer, x: str, act: str | None, hint: str) -> str:
    """The fused activation of a Conv2d, Linear (None, "relu" or "relu6") or BatchNorm (also
    "leaky_relu", "silu" or "hardswish")."""
    if act is None:
        return x
    if act == "relu":
        return w.node("Relu", [x], hint + "_relu")
    if act == "relu6":
        return w.node("Clip", [x, w.const("zero", 0.0), w.const("six", 6.0)], hint + "_relu6")
    if act == "leaky_relu":
        return w.node("LeakyRelu", [x], hint + "_leaky_relu", alpha=0.01)
    if act == "silu":
        return w.node("Mul", [x, w.node("Sigmoid", [x], hint + "_sigmoid")], hint + "_silu")
    if act == "hardswish":
        return w.node("HardSwish", [x], hint + "_hardswish")
    raise ValueError(f"to_onnx: unknown fused activation {act!r} at {hint}")


def _emit(w: _Writer, layer, x: str, rank: int, c, path: str) -> tuple:
    """Writes ``layer`` applied to tensor ``x`` of ``rank`` with ``c`` channels (None where
    unknown: after a Flatten); returns (output, its rank, its channels)."""
    hint = path.replace(".", "_") or "model"
    kind = type(layer)
    if isinstance(layer, nn.Sequential):
        for name, child in layer.named_layers():
            x, rank, c = _emit(w, child, x, rank, c, f"{path}.{name}" if path else name)
        return x, rank, c
    if kind in (nn.Identity, nn.Dropout):
        return x, rank, c
    if kind is nn.Conv2d:
        ph, pw = layer.padding
        inputs = [x, w.const(hint + "_weight", layer.weight.data)]
        if layer.bias is not None:
            inputs.append(w.const(hint + "_bias", layer.bias.data))
        y = w.node("Conv", inputs, hint, kernel_shape=list(layer.kernel_size),
                   strides=list(layer.stride), pads=[ph, pw, ph, pw],
                   dilations=list(layer.dilation), group=layer.groups)
        return _activation(w, y, layer.activation, hint), 4, layer.out_channels
    if kind is nn.Linear:
        if rank != 2:
            raise _unsupported(path, layer, f"a Linear on rank-{rank} input")
        inputs = [x, w.const(hint + "_weight", layer.weight.data)]
        if layer.bias is not None:
            inputs.append(w.const(hint + "_bias", layer.bias.data))
        y = w.node("Gemm", inputs, hint, transB=1)
        return _activation(w, y, layer.activation, hint), 2, layer.out_features
    if isinstance(layer, _BatchNorm):
        if not layer.track_running_stats:
            raise _unsupported(path, layer, "no running statistics (it normalizes with batch "
                                            "statistics in eval mode too)")
        c = layer.num_features  # renorm and ghost batches act in training only
        scale = layer.weight.data if layer.scale else np.ones(c)
        shift = layer.bias.data if layer.center else np.zeros(c)
        y = w.node("BatchNormalization",
                   [x, w.const(hint + "_weight", scale), w.const(hint + "_bias", shift),
                    w.const(hint + "_running_mean", layer.running_mean),
                    w.const(hint + "_running_var", layer.running_var)],
                   hint, epsilon=float(layer.eps),
                   momentum=float(1.0 - (layer.momentum if layer.momentum is not None
                                         else 0.1)))
        return _activation(w, y, layer.activation, hint), rank, c
    if kind is nn.ReLU:
        return w.node("Relu", [x], hint), rank, c
    if isinstance(layer, nn.Hardtanh):  # ReLU6 too
        lo, hi = (np.reshape(v, ()) for v in (layer.min_val, layer.max_val))  # scalars
        return w.node("Clip", [x, w.const(hint + "_min", lo), w.const(hint + "_max", hi)],
                      hint), rank, c
    if kind is nn.Sigmoid:
        return w.node("Sigmoid", [x], hint), rank, c
    if kind is nn.Tanh:
        return w.node("Tanh", [x], hint), rank, c
    if kind is nn.Hardsigmoid:
        return w.node("HardSigmoid", [x], hint, alpha=HARDSIGMOID[0],
                      beta=HARDSIGMOID[1]), rank, c
    if kind is nn.Hardswish:
        return w.node("HardSwish", [x], hint), rank, c
    if kind is nn.SiLU:
        return w.node("Mul", [x, w.node("Sigmoid", [x], hint + "_sigmoid")], hint), rank, c
    if kind is nn.LeakyReLU:
        return w.node("LeakyRelu", [x], hint, alpha=layer.negative_slope), rank, c
    if kind is nn.GELU:
        if w.opset < 20:
            raise _unsupported(path, layer, f"GELU needs opset 20 or later (opset={w.opset})")
        return w.node("Gelu", [x], hint, approximate=layer.approximate), rank, c
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        return _emit_pool(w, layer, x, hint, path), 4, c
    if kind in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        if layer.output_size != (1, 1):
            raise _unsupported(path, layer, f"output_size {layer.output_size}: ONNX pools "
                                            f"adaptively to 1x1 only (GlobalAveragePool)")
        op = "GlobalAveragePool" if kind is nn.AdaptiveAvgPool2d else "GlobalMaxPool"
        return w.node(op, [x], hint), 4, c
    if kind is nn.Flatten:
        if rank == 4 and w.channels_last and not layer.channels_last:
            x = w.node("Transpose", [x], hint + "_nhwc", perm=[0, 2, 3, 1])  # (H, W, C) order
        return w.node("Flatten", [x], hint, axis=1), 2, None
    if kind is nn.Residual:
        return _emit_residual(w, layer, x, rank, c, path, hint)
    if isinstance(layer, nn.Concat):
        outs, total = [], 0
        for i, branch in enumerate(layer):
            y, rank_i, c_i = _emit(w, branch, x, rank, c, f"{path}.{i}")
            outs.append(y)
            total = None if total is None or c_i is None else total + c_i
        if not layer.interleaved:
            return w.node("Concat", outs, hint, axis=1), rank_i, total
        # ShuffleNetV2's concatenation and shuffle, which cybn runs as one pass
        y = w.node("Concat", outs, hint + "_concat", axis=1)
        return _shuffle_gather(w, y, hint, len(outs), total, layer, path), rank_i, total
    if kind is nn.ChannelSlice:
        return w.node("Slice", [x, w.const(hint + "_start", [layer.start], np.int64),
                                w.const(hint + "_stop", [layer.stop], np.int64),
                                w.const(hint + "_axis", [1], np.int64)], hint), rank, \
            layer.stop - layer.start
    if kind is nn.ChannelShuffle:
        return _shuffle_gather(w, x, hint, layer.groups, c, layer, path), rank, c
    if isinstance(layer, _Composite):  # Fire, ShuffleUnit: the composition they run
        return _emit(w, layer._compose(), x, rank, c, path)
    if kind is nn.SqueezeExcitation:
        s = w.node("GlobalAveragePool", [x], hint + "_squeeze")
        for name in ("fc1", "activation", "fc2", "scale_activation"):
            s = _emit(w, getattr(layer, name), s, 4, c, f"{path}.{name}")[0]
        return w.node("Mul", [x, s], hint), 4, c
    raise _unsupported(path, layer)


def _emit_pool(w: _Writer, layer, x: str, hint: str, path: str) -> str:
    ph, pw = layer.padding
    attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                 pads=[ph, pw, ph, pw], ceil_mode=int(layer.ceil_mode))
    if type(layer) is nn.MaxPool2d:
        return w.node("MaxPool", [x], hint, dilations=list(layer.dilation), **attrs)
    if layer.divisor_override is not None:
        raise _unsupported(path, layer, "divisor_override has no ONNX counterpart")
    return w.node("AveragePool", [x], hint, count_include_pad=int(layer.count_include_pad),
                  **attrs)


def _emit_residual(w: _Writer, layer, x: str, rank: int, c, path: str, hint: str) -> tuple:
    y, rank_y, c_y = x, rank, c
    for name, child in layer.body_items():
        y, rank_y, c_y = _emit(w, child, y, rank_y, c_y, f"{path}.{name}")
    sc = layer._shortcut()
    s = x if sc is None else _emit(w, sc, x, rank, c, f"{path}.{layer.shortcut_name}")[0]
    out = w.node("Add", [y, s], hint + "_add")
    if layer.activation == "relu":
        out = w.node("Relu", [out], hint + "_relu")
    return out, rank_y, c_y


def _shuffle_gather(w, x, hint: str, g: int, c, layer, path: str):
    """Channel shuffle in g groups, (g, C / g) -> (C / g, g): a gather of the channels."""
    if c is None or c % g:
        raise _unsupported(path, layer, f"{c} channels in {g} groups")
    perm = np.arange(c).reshape(g, c // g).T.reshape(-1)
    return w.node("Gather", [x, w.const(hint + "_perm", perm, np.int64)], hint, axis=1)


def _input_spec(model) -> tuple:
    """(rank, channels, channels_last) of the model's input, from its first layer."""
    layers = [m for m in model.modules() if not isinstance(m, (nn.Sequential, nn.Residual,
                                                              nn.Concat))]
    first = layers[0] if layers else None
    cl = any(getattr(m, "channels_last", False) for m in layers
             if not isinstance(m, nn.Flatten))
    if isinstance(first, nn.Conv2d):
        return 4, first.in_channels, cl
    if isinstance(first, nn.Linear):
        return 2, first.in_features, cl
    if isinstance(first, nn.BatchNorm2d):
        return 4, first.num_features, cl
    if isinstance(first, _BatchNorm):
        return 2, first.num_features, cl
    raise TypeError(f"to_onnx: the model's first layer ({type(first).__name__}) does not "
                    f"give the input's channels; pass input_shape")


def _model_dtype(model) -> np.dtype:
    for p in model.parameters():
        return p.data.dtype
    return np.dtype(np.float32)


def to_onnx(model, path=None, *, input_shape=None, opset: int = _OPSET):
    """Writes a cybn model as an ONNX graph with inference semantics.

    Parameters
    ----------
    model : Module
        cybn layers: Conv2d (any groups, dilation, fused ReLU/ReLU6), Linear, BatchNorm
        with running statistics (written as ``BatchNormalization``), the activations,
        pooling (adaptive to 1x1 only), Flatten, Dropout, Identity, and the compositions
        Sequential, Residual, Concat, ChannelSlice, ChannelShuffle, SqueezeExcitation.
        Not modified.
    path : str or path-like, optional
        Where to save the file; without it only the ``onnx.ModelProto`` is returned.
    input_shape : tuple, optional
        The input's shape in the model's layout, written into the graph; without it the
        batch size and (for images) the height and width are symbolic (``N``, ``H``,
        ``W``).
    opset : int
        The ONNX operator set (17; GELU needs 20).

    Returns
    -------
    onnx.ModelProto
        Checked with ``onnx.checker``. Inputs ``input`` and output ``output``, of the
        model's dtype; a channels-last model's graph starts with a transpose to
        channels-first and ends with one back when its output is an image.
    """
    import onnx  # the optional extra: pip install cybn[onnx]

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a cybn Module, got {type(model).__name__}")
    if not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int of at least 14 (HardSwish), got {opset!r}")
    rank, channels, cl = _input_spec(model)
    dtype = _model_dtype(model)
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if len(input_shape) != rank:
            raise ValueError(f"input_shape must have {rank} entries for this model, got "
                             f"{input_shape}")
    w = _Writer(onnx, dtype, opset)
    w.channels_last = cl
    if input_shape is not None:
        dims = list(input_shape)
    elif rank == 4:
        dims = ["N", "H", "W", channels] if cl else ["N", channels, "H", "W"]
    else:
        dims = ["N", channels]
    x = "input"
    if rank == 4 and cl:
        x = w.node("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
    y, out_rank, _ = _emit(w, model, x, rank, channels, "")
    if out_rank == 4 and cl:
        y = w.node("Transpose", [y], "to_nhwc", perm=[0, 2, 3, 1])
    w.nodes.append(onnx.helper.make_node("Identity", [y], ["output"], name="output"))
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    graph = onnx.helper.make_graph(
        w.nodes, "cybn_model", [onnx.helper.make_tensor_value_info("input", elem, dims)],
        [onnx.helper.make_tensor_value_info("output", elem, ["N"] + [None] * (out_rank - 1))],
        w.inits)
    proto = onnx.helper.make_model(graph, producer_name="cybn",
                                   opset_imports=[onnx.helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto
