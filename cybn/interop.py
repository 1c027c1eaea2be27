"""Batch-norm weights from other frameworks: a Keras BatchNormalization's weights, a Flax
BatchNorm's ``params`` / ``batch_stats``, an ONNX BatchNormalization node. Each importer
returns a cybn BatchNorm layer (1d/2d/3d by the input's rank) that reproduces that layer's
outputs in inference and in training, and keeps that framework's conventions when trained
further (``convention=``: the running-variance estimator, the meaning of momentum, eps).

The weights come in as NumPy arrays (anything ``np.asarray`` takes: JAX or TensorFlow
arrays too); only the ONNX importer needs its framework's package (``onnx``, imported when
called; ``pip install cybn[onnx]``).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from . import nn
from ._validate import describe
from .nn.batchnorm import _BatchNorm

__all__ = ["from_keras", "from_flax", "from_onnx"]

_LAYERS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _layer_class(ndim) -> type:
    if isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral) or ndim not in _LAYERS:
        raise ValueError(f"ndim (the rank of the layer's input, batch axis included) must be "
                         f"2, 3, 4 or 5, got {describe(ndim)}")
    return _LAYERS[int(ndim)]


def _channels_last(axis, ndim: int) -> bool:
    """True for the last axis, False for axis 1; anything else is not a cybn layout."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(f"axis must be one axis, got {axis!r}")
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an int, got {describe(axis)}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis {axis} is out of range for a rank-{ndim} input")
    a = int(axis) % ndim
    if a == ndim - 1:
        return ndim > 2
    if a == 1:
        return False
    raise ValueError(f"axis {axis} of a rank-{ndim} input is neither the channel axis 1 nor "
                     f"the last axis")


def _vector(v, name: str, C: int | None) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1 or (C is not None and a.shape[0] != C) or a.dtype.kind != "f":
        want = "(C,)" if C is None else f"({C},)"
        raise ValueError(f"{name} must be a float vector of shape {want}, got "
                         f"{describe(v)} of shape {a.shape}")
    return a


def _real(value, name: str) -> float:
    """A real number (not a bool) as float: the framework's epsilon or momentum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {describe(value)}")
    return float(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def _build(cls, convention: str, C: int, channels_last: bool, eps: float, momentum: float,
           center: bool, scale: bool, gamma, beta, mean, var, dtype) -> _BatchNorm:
    layer = cls(C, eps=eps, momentum=momentum, channels_last=channels_last,
                dtype=np.dtype(mean.dtype if dtype is None else dtype).type,
                convention=convention, center=center, scale=scale)
    if scale:
        layer.weight.data[...] = gamma
    if center:
        layer.bias.data[...] = beta
    layer.running_mean[...] = mean
    layer.running_var[...] = var
    layer.eval()
    return layer


def from_keras(weights, *, ndim: int, config: dict | None = None, axis=-1,
               epsilon: float = 1e-3, momentum: float = 0.99, center: bool = True,
               scale: bool = True, dtype=None) -> _BatchNorm:
    """A cybn BatchNorm equal to a Keras ``BatchNormalization`` layer (Keras 3 or tf.keras).

    Parameters
    ----------
    weights : list or dict
        ``layer.get_weights()``: ``[gamma, beta, moving_mean, moving_variance]``, gamma
        absent with ``scale=False`` and beta with ``center=False``; or a dict with those
        names.
    ndim : int
        The rank of the layer's input (2 for (N, C), 4 for images, ...).
    config : dict, optional
        ``layer.get_config()``: its axis, momentum, epsilon, center and scale replace the
        keyword arguments.
    axis, epsilon, momentum, center, scale
        As in Keras (its defaults). ``axis`` -1 gives a channels-last layer, 1 a
        channels-first one.
    dtype : optional
        The layer's parameter dtype; default the weights'.

    Returns
    -------
    BatchNorm1d, BatchNorm2d or BatchNorm3d in eval mode, with ``convention="keras"`` (the
    biased variance in running_var;
    ``running = momentum * running + (1 - momentum) * batch``).
    """
    if config is not None:
        axis = config.get("axis", axis)
        epsilon = config.get("epsilon", epsilon)
        momentum = config.get("momentum", momentum)
        center = config.get("center", center)
        scale = config.get("scale", scale)
    cls = _layer_class(ndim)
    cl = _channels_last(axis, int(ndim))
    epsilon, momentum = _real(epsilon, "epsilon"), _real(momentum, "momentum")
    center, scale = _flag(center, "center"), _flag(scale, "scale")
    names = (["gamma"] if scale else []) + (["beta"] if center else []) + \
        ["moving_mean", "moving_variance"]
    if isinstance(weights, dict):
        missing = [n for n in names if n not in weights]
        if missing:
            raise ValueError(f"weights lacks {missing} (center={center}, scale={scale})")
        values = {n: weights[n] for n in names}
    else:
        if not isinstance(weights, (list, tuple)):
            raise ValueError(f"weights must be a list (layer.get_weights()) or a dict of "
                             f"{names}, got {describe(weights)}")
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights must hold {names} (center={center}, scale={scale}), got "
                             f"{len(weights)} arrays")
        values = dict(zip(names, weights))
    mean = _vector(values["moving_mean"], "moving_mean", None)
    C = mean.shape[0]
    var = _vector(values["moving_variance"], "moving_variance", C)
    gamma = _vector(values["gamma"], "gamma", C) if scale else None
    beta = _vector(values["beta"], "beta", C) if center else None
    return _build(cls, "keras", C, cl, epsilon, momentum, bool(center), bool(scale), gamma,
                  beta, mean, var, dtype)


def from_flax(params: dict, batch_stats: dict, *, ndim: int, axis=-1, epsilon: float = 1e-5,
              momentum: float = 0.99, dtype=None) -> _BatchNorm:
    """A cybn BatchNorm equal to a ``flax.linen.BatchNorm`` with these variables.

    Parameters
    ----------
    params : dict
        The module's ``params``: ``scale`` and ``bias`` (either absent with
        ``use_scale=False`` / ``use_bias=False``).
    batch_stats : dict
        Its ``batch_stats``: ``mean`` and ``var``.
    ndim : int
        The rank of the input.
    axis, epsilon, momentum
        As given to the Flax module (its defaults: -1, 1e-5, 0.99).

    Returns
    -------
    A layer in eval mode with ``convention="flax"``.
    """
    for name, d, keys in (("params", params, ()), ("batch_stats", batch_stats,
                                                    ("mean", "var"))):
        if not hasattr(d, "keys"):
            raise ValueError(f"{name} must be a dict, got {describe(d)}")
        missing = [k for k in keys if k not in d]
        allowed = ("scale", "bias") if name == "params" else keys
        unknown = [k for k in d.keys() if k not in allowed]
        if missing or unknown:
            what = f"lacks {missing}" if missing else f"holds {unknown}, not {list(allowed)}"
            raise ValueError(f"{name} {what}; pass the BatchNorm module's own sub-dict "
                             f"(e.g. variables['{name}']['BatchNorm_0'])")
    cls = _layer_class(ndim)
    cl = _channels_last(axis, int(ndim))
    epsilon, momentum = _real(epsilon, "epsilon"), _real(momentum, "momentum")
    mean = _vector(batch_stats["mean"], "batch_stats['mean']", None)
    C = mean.shape[0]
    var = _vector(batch_stats["var"], "batch_stats['var']", C)
    scale, center = "scale" in params, "bias" in params
    gamma = _vector(params["scale"], "params['scale']", C) if scale else None
    beta = _vector(params["bias"], "params['bias']", C) if center else None
    return _build(cls, "flax", C, cl, epsilon, momentum, center, scale, gamma, beta, mean, var,
                  dtype)


def _onnx_model(model):
    import onnx  # the optional extra: pip install cybn[onnx]

    if isinstance(model, onnx.ModelProto):
        return onnx, model
    if isinstance(model, (bytes, bytearray)):
        return onnx, onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)) or hasattr(model, "read"):
        return onnx, onnx.load(model)
    raise TypeError(f"model must be an onnx.ModelProto, a path, bytes or a binary file, got "
                    f"{describe(model)}")


def from_onnx(model, node: str | None = None, *, ndim: int | None = None,
              dtype=None) -> _BatchNorm:
    """A cybn BatchNorm equal to an ONNX ``BatchNormalization`` node (opset 9 to 15).

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        Read with the ``onnx`` package (``pip install cybn[onnx]``).
    node : str, optional
        The node's name; may be omitted when the graph has one BatchNormalization node.
    ndim : int, optional
        The rank of the node's input; read from the graph when its input X has a known
        shape there.

    Returns
    -------
    A channels-first layer in eval mode with ``convention="onnx"``: the node's epsilon
    (default 1e-5) and momentum (default 0.9, the weight of the running value; the running
    variance is the population variance). Its scale, B, input_mean and input_var must be
    initializers of the graph.
    """
    onnx, proto = _onnx_model(model)
    graph = proto.graph
    nodes = [n for n in graph.node if n.op_type == "BatchNormalization"]
    if node is not None:
        nodes = [n for n in nodes if n.name == node]
    if len(nodes) != 1:
        names = [n.name for n in graph.node if n.op_type == "BatchNormalization"]
        raise ValueError(f"node must name one BatchNormalization node of the graph "
                         f"(found {names}), got {node!r}")
    bn = nodes[0]
    if len(bn.input) < 5 or not all(bn.input[1:5]):
        raise ValueError(f"the BatchNormalization node {bn.name!r} has {len(bn.input)} inputs; "
                         f"it needs 5 (X, scale, B, input_mean, input_var)")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    arrays = []
    for role, name in zip(("scale", "B", "input_mean", "input_var"), bn.input[1:5]):
        if name not in inits:
            raise ValueError(f"the node's {role} ({name!r}) is not an initializer of the graph")
        arrays.append(inits[name])
    if ndim is None:
        shapes = {v.name: v.type.tensor_type.shape for v in
                  list(graph.input) + list(graph.value_info)}
        shape = shapes.get(bn.input[0])
        if shape is None or not shape.dim:
            raise ValueError("the rank of the node's input is not in the graph: pass ndim")
        ndim = len(shape.dim)
    gamma, beta, mean, var = arrays
    C = _vector(mean, "input_mean", None).shape[0]
    return _build(_layer_class(ndim), "onnx", C, False,
                  _real(attrs.get("epsilon", 1e-5), "epsilon"),
                  _real(attrs.get("momentum", 0.9), "momentum"), True, True,
                  _vector(gamma, "scale", C),
                  _vector(beta, "B", C), mean, _vector(var, "input_var", C), dtype)
