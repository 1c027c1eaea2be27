"""From a trained network to inference, and back: fold batch norm into the neighbouring
Linear or Conv2d layer, or insert batch norm into a trained network without changing what it
computes.

In eval mode batch norm is a per-channel affine map ``y = z * s + t`` with
``s = weight / sqrt(running_var + eps)`` and ``t = bias - running_mean * s``, so it folds
into the layer before it (scale that layer's output channels) or, where the map commutes
with the layer after it, into that one. Both functions work on a :class:`cybn.Sequential`,
compute in float64, and return a new model: the one given is never modified.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np

from . import nn
from .nn._args import positive_int
from .nn.batchnorm import _BatchNorm
from .nn.branches import _Composite

__all__ = ["fold_batchnorm", "insert_batchnorm", "fuse", "recalibrate"]

_INTO = ("previous", "next", "any")


def _check_sequential(model, name: str = "model") -> None:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"{name} must be a cybn Sequential, got {type(model).__name__}")
    known = tuple(getattr(nn, n) for n in nn.__all__ if isinstance(getattr(nn, n), type))
    for i, layer in enumerate(model):
        if type(layer) not in known and not isinstance(layer, _BatchNorm):  # SyncBatchNorm
            raise TypeError(f"layer {i} of {name} is a {type(layer).__name__}, not one of "
                            f"cybn's layers")


def _bn_affine(bn: _BatchNorm) -> tuple:
    """(s, t) of the eval-mode map y = z * s + t, float64."""
    s = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    t = -bn.running_mean.astype(np.float64) * s
    if bn.scale:
        w = bn.weight.data.astype(np.float64)
        s, t = s * w, t * w
    if bn.center:
        t = t + bn.bias.data.astype(np.float64)
    return s, t


def _layer_channels_last(layer) -> bool:
    return bool(getattr(layer, "channels_last", False))


def _foldable_previous(layer, bn: _BatchNorm) -> str | None:
    """Why ``bn`` cannot fold into the layer before it, or None when it can."""
    if isinstance(layer, nn.Linear):
        if 2 not in bn.ranks:  # BatchNorm1d (or a SyncBatchNorm)
            return "a Linear layer is followed by BatchNorm1d only"
        channels = layer.out_features
    elif isinstance(layer, nn.Conv2d):
        if 4 not in bn.ranks:  # BatchNorm2d (or a SyncBatchNorm)
            return "a Conv2d layer is followed by BatchNorm2d only"
        if _layer_channels_last(layer) != bn.channels_last:
            return "the Conv2d and the BatchNorm2d disagree on channels_last"
        channels = layer.out_channels
    else:
        return f"the layer before it is a {type(layer).__name__}"
    if layer.activation is not None:
        return f"the {type(layer).__name__} before it applies {layer.activation} first"
    if channels != bn.num_features:
        raise ValueError(f"a {type(bn).__name__} with {bn.num_features} channels follows a "
                         f"{type(layer).__name__} with {channels} output channels")
    return None


def _fold_into_previous(layer, bn: _BatchNorm) -> None:
    s, t = _bn_affine(bn)
    w = layer.weight.data.astype(np.float64)
    b = np.zeros(len(s)) if layer.bias is None else layer.bias.data.astype(np.float64)
    shape = (-1,) + (1,) * (w.ndim - 1)
    dtype = layer.weight.data.dtype
    layer.weight = nn.Parameter((w * s.reshape(shape)).astype(dtype))
    layer.bias = nn.Parameter((b * s + t).astype(dtype))


def _foldable_next(bn: _BatchNorm, layer) -> str | None:
    """Why ``bn`` cannot fold into the layer after it, or None when it can."""
    if isinstance(layer, nn.Linear):
        if not isinstance(bn, nn.BatchNorm1d):
            return "folding into a following Linear needs BatchNorm1d on (N, C) input"
        channels = layer.in_features
    elif isinstance(layer, nn.Conv2d):
        if not isinstance(bn, nn.BatchNorm2d):
            return "a Conv2d layer follows BatchNorm2d only"
        if _layer_channels_last(layer) != bn.channels_last:
            return "the BatchNorm2d and the Conv2d disagree on channels_last"
        if any(layer.padding):
            return ("the following Conv2d pads with zeros, which are not normalized values: "
                    "folding would not be exact at the borders")
        channels = layer.in_channels
    else:
        return f"the layer after it is a {type(layer).__name__}"
    if channels != bn.num_features:
        raise ValueError(f"a {type(bn).__name__} with {bn.num_features} channels is followed "
                         f"by a {type(layer).__name__} with {channels} input channels")
    return None


def _fold_into_next(bn: _BatchNorm, layer) -> None:
    s, t = _bn_affine(bn)
    w = layer.weight.data.astype(np.float64)  # (out, in) or (out, in // groups, kh, kw)
    b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.data.astype(np.float64)
    groups = getattr(layer, "groups", 1)
    # output o reads the input channels of its group: (out, in // groups) per-input factors
    s_in = np.repeat(s.reshape(groups, -1), w.shape[0] // groups, axis=0)
    t_in = np.repeat(t.reshape(groups, -1), w.shape[0] // groups, axis=0)
    shape = s_in.shape + (1,) * (w.ndim - 2)
    dtype = layer.weight.data.dtype
    layer.weight = nn.Parameter((w * s_in.reshape(shape)).astype(dtype))
    layer.bias = nn.Parameter((b + (w * t_in.reshape(shape)).reshape(w.shape[0], -1)
                               .sum(axis=1)).astype(dtype))


def fold_batchnorm(model, *, into: str = "previous"):
    """An inference model with batch norm folded into the neighbouring layers.

    Parameters
    ----------
    model : Sequential, in eval mode
        cybn layers; every BatchNorm in it must track running statistics to be folded.
        Nested Sequentials, :class:`Residual` blocks (body and shortcut) and
        :class:`Concat` branches are folded too.
    into : "previous", "next" or "any"
        ``"previous"``: a BatchNorm right after a Linear (BatchNorm1d) or Conv2d
        (BatchNorm2d, same layout, any stride, padding, bias or none) is folded into that
        layer's weight and bias. ``"next"``: into a Linear right after a BatchNorm1d, or a
        Conv2d without padding right after a BatchNorm2d (zero padding would meet
        unnormalized zeros at the borders, so padded convs are never folded into).
        ``"any"``: the previous layer where possible, else the next.

    Returns
    -------
    Sequential
        A new model in eval mode without the folded BatchNorm layers. A ReLU or ReLU6
        right after a Conv2d or Linear, or after a BatchNorm folded into one (its own
        layer, or the BatchNorm's fused one), becomes that layer's ``activation``, applied
        in the product's epilogue, so Conv2d + BatchNorm2d + ReLU is one layer and one pass
        (inside blocks such as :class:`Fire` the ReLU's place holds an :class:`Identity`,
        as :func:`fuse` leaves it; a BatchNorm left in place takes its ReLU the same way);
        a :class:`Residual` block whose body
        then ends in a convolution adds its shortcut and applies its ReLU in that
        convolution's epilogue too. The ``not_folded`` attribute lists ``(where, reason)``
        of the BatchNorm layers left in place (``where``: the index in the given model, or
        for a nested layer its dotted path as in state_dict keys, e.g. ``"3.body.4"``);
        they are also reported with a warning.

    Raises
    ------
    ValueError
        A model in training mode, or a BatchNorm whose channel count does not match its
        neighbour's. TypeError: not a Sequential of cybn layers.
    """
    _check_sequential(model)
    if into not in _INTO:
        raise ValueError(f"into must be one of {', '.join(_INTO)}, got {into!r}")
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call model.eval()): "
                         "folding uses the running statistics, which training mode ignores")
    not_folded: list = []
    result = _sequential_like(model, _fold_layers(model.named_layers(), into, "",
                                                  not_folded)).eval()
    _fuse_in_place(result)  # the pairs inside Fire-like blocks, and BatchNorms left in place
    result.not_folded = not_folded
    if not_folded:
        warnings.warn("fold_batchnorm left in place: " + ", ".join(
            f"layer {i} ({why})" for i, why in not_folded), stacklevel=2)
    return result


def _takes_relu(layer) -> bool:
    """A Conv2d or Linear that can take a following ReLU or ReLU6 into its epilogue."""
    return type(layer) in (nn.Conv2d, nn.Linear) and layer.activation is None


def _epilogue_name(layer) -> str | None:
    """The epilogue activation a ReLU or ReLU6 layer is, or None for other layers."""
    return {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(layer))


def _activation_layer(name: str):
    """The activation layer of a BatchNorm's fused ``activation`` (name not None)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU,
            "hardswish": nn.Hardswish}[name]()


def _index_named(seq) -> bool:
    """Whether a Sequential's layers are named by their indices (Sequential(a, b, ...))."""
    return all(name == str(i) for i, (name, _) in enumerate(seq.named_layers()))


def _sequential_like(seq, pairs: list):
    """A Sequential of the (name, layer) pairs: renumbered where ``seq`` named its layers by
    index, under their names where it named them (so torchvision-style keys stay)."""
    if _index_named(seq):
        return nn.Sequential(*[layer for _, layer in pairs])
    return nn.Sequential(dict(pairs))


def _fold_nested(layer, into: str, path: str, not_folded: list):
    """A copy of a layer with the insides of a Sequential, a Residual (body, shortcut), a
    Concat (its branches) or a Fire or ShuffleUnit (its children) folded."""
    if isinstance(layer, nn.Sequential):
        return _sequential_like(layer, _fold_layers(layer.named_layers(), into, path + ".",
                                                    not_folded))
    if isinstance(layer, nn.Concat):
        return nn.Concat(*[_fold_nested(b, into, f"{path}.{i}", not_folded)
                           for i, b in enumerate(layer)], channels_last=layer.channels_last)
    if isinstance(layer, nn.Residual):
        sc, sc_name = layer._shortcut(), layer.shortcut_name
        folded_sc = None if sc is None else _fold_nested(sc, into, f"{path}.{sc_name}",
                                                         not_folded)
        if layer._named_body:  # named layers, folded as a Sequential's
            body = dict(_fold_layers(layer.body_items(), into, path + ".", not_folded))
        else:
            body = _fold_nested(layer.body, into, path + ".body", not_folded)
        return nn.Residual(body, folded_sc, layer.activation, shortcut_name=sc_name)
    if isinstance(layer, _Composite):  # Fire, ShuffleUnit: their children folded
        clone = copy.copy(layer)
        object.__setattr__(clone, "_modules", type(layer._modules)(
            (name, _fold_nested(child, into, f"{path}.{name}", not_folded))
            for name, child in layer._modules.items()))
        object.__setattr__(clone, "_cache", None)
        return clone
    return copy.deepcopy(layer)


def _fold_layers(named: list, into: str, prefix: str, not_folded: list) -> list:
    """The folded copies of one Sequential's ``(name, layer)`` pairs, as such pairs (where
    in not_folded: prefix + name; at the top level, prefix "", the plain index, or the name
    of a named layer)."""
    names = [name for name, _ in named]

    def where(i: int):
        if prefix:
            return f"{prefix}{names[i]}"
        return i if names[i] == str(i) else names[i]

    layers = [_fold_nested(layer, into, f"{prefix}{name}", not_folded)
              for name, layer in named]
    keep: list = []  # (name, layer) pairs
    joins = None  # the layer a BatchNorm was just folded into: a ReLU next joins it
    i = 0
    while i < len(layers):
        layer = layers[i]
        prev = keep[-1][1] if keep else None
        if not isinstance(layer, _BatchNorm):
            # a ReLU or ReLU6 right after a Conv2d or Linear (or after a BatchNorm folded
            # into one) moves into that layer's epilogue
            follows = prev is not None and (prev is joins or prev is layers[i - 1])
            if _epilogue_name(layer) and follows and _takes_relu(prev):
                prev.activation = _epilogue_name(layer)
            else:
                keep.append((names[i], layer))
            joins = None
            i += 1
            continue
        joins = None
        if not layer.track_running_stats:
            not_folded.append((where(i), "it has no running statistics (batch statistics in "
                                         "eval mode too)"))
            keep.append((names[i], layer))
            i += 1
            continue
        reasons = []
        if into in ("previous", "any"):
            why = _foldable_previous(prev, layer) if keep else "it is the first layer"
            if why is None:
                _fold_into_previous(prev, layer)
                if layer.activation is not None:  # the fused activation moves on
                    if layer.activation in ("relu", "relu6") and _takes_relu(prev):
                        prev.activation = layer.activation  # into the product's epilogue
                    else:
                        keep.append((names[i], _activation_layer(layer.activation)))
                elif _takes_relu(prev):
                    joins = prev
                i += 1
                continue
            reasons.append(why)
        if into in ("next", "any"):
            if layer.activation is not None:
                why = f"its fused {layer.activation} sits between it and the next layer"
            elif i + 1 < len(layers):
                why = _foldable_next(layer, layers[i + 1])
            else:
                why = "it is the last layer"
            if why is None:
                _fold_into_next(layer, layers[i + 1])
                i += 1
                continue
            reasons.append(why)
        not_folded.append((where(i), "; ".join(reasons)))
        keep.append((names[i], layer))
        i += 1
    return keep


def _fuse_in_place(module) -> int:
    """Fuse BatchNorm -> ReLU, and Conv2d or Linear -> ReLU or ReLU6, pairs inside module
    (Sequentials at any depth); the count."""
    count = 0
    named = None
    if isinstance(module, nn.Sequential):
        named = module.named_layers()
    elif isinstance(module, nn.Residual) and module._named_body:
        named = module.body_items()
    chains = [named] if named else []
    if isinstance(module, _Composite):  # Fire: its conv -> ReLU pairs
        chains = [[(n, module._modules[n]) for n in chain] for chain in module._chains()]
    for named in chains:
        for (_, layer), (key, after) in zip(named[:-1], named[1:]):
            # a BatchNorm takes the ReLU its kernels carry (its other activations run as a
            # pass of their own, so fusing them would save nothing)
            if (isinstance(layer, _BatchNorm) and layer.activation is None
                    and not layer.renorm):
                name = "relu" if type(after) is nn.ReLU else None
            else:
                name = _epilogue_name(after) if _takes_relu(layer) else None
            if name is not None:
                layer.activation = name
                module._modules[key] = nn.Identity()
                count += 1
    for child in list(module._modules.values()):
        count += _fuse_in_place(child)
    return count


def fuse(model):
    """A model with every ReLU that follows a BatchNorm, Conv2d or Linear fused into it (and
    every ReLU6 that follows a Conv2d or Linear).

    In each :class:`Sequential` (at any depth, inside :class:`Residual` blocks too) a
    BatchNorm, Conv2d or Linear layer directly followed by a :class:`ReLU` gets
    ``activation="relu"`` (in the batch norm's elementwise pass, or the product's epilogue),
    a Conv2d or Linear followed by a :class:`ReLU6` ``activation="relu6"``,
    and the ReLU becomes an :class:`Identity`, so indices and state_dict keys stay as they
    were. The fused model computes the same outputs and gradients, bit for bit, in training
    and in eval mode, with one pass over memory fewer each way. (A :class:`Residual` block's
    add and ReLU fuse into its body's last BatchNorm, or last Conv2d, without this pass.)

    Parameters
    ----------
    model : Module
        Not modified.

    Returns
    -------
    Module
        A fused copy (in the given model's mode); its ``fused`` attribute counts the pairs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a cybn Module, got {type(model).__name__}")
    result = copy.deepcopy(model)
    object.__setattr__(result, "fused", _fuse_in_place(result))
    return result


def _output_moments(model, upto: int, X, batch_size: int) -> tuple:
    """Exact mean and (population) variance per channel of layer ``upto``'s output over X,
    streaming over batches with Chan's merge of (count, mean, M2)."""
    layer = model[upto]
    axis = -1 if _layer_channels_last(layer) else 1
    count = 0.0
    mean = m2 = np.zeros(0)
    for start in range(0, len(X), batch_size):
        z = X[start:start + batch_size]
        for k in range(upto + 1):
            z = model[k](z)
        z = np.asarray(z, dtype=np.float64)
        C = z.shape[axis]
        zc = np.moveaxis(z, axis, -1).reshape(-1, C)
        n_b = float(zc.shape[0])
        mean_b = zc.mean(axis=0)
        m2_b = ((zc - mean_b) ** 2).sum(axis=0)
        if count == 0.0:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (count * n_b / total)
        count = total
    return mean, m2 / count


def insert_batchnorm(model, X, *, after=None, eps: float = 1e-5, momentum=0.1,
                     batch_size: int = 256):
    """A model with a BatchNorm after each chosen layer that computes the same function.

    Each inserted BatchNorm gets the exact mean and variance of its input over ``X`` as
    running statistics, and ``weight = sqrt(running_var + eps)``, ``bias = running_mean``,
    so that in eval mode it is the identity up to rounding, and in training mode on a batch
    like X it nearly is (batch statistics instead of X's). Fine-tuning then starts from the
    trained network's function with batch norm's conditioning.

    Parameters
    ----------
    model : Sequential of cybn layers
    X : array
        Calibration inputs (a batch axis first, the model's input shape after it).
    after : tuple of layer classes, optional
        Insert after these (default ``(Linear, Conv2d)``); layers already followed by a
        BatchNorm are skipped.
    eps, momentum : float
        Of the new BatchNorm layers.
    batch_size : int
        X is pushed through the model in batches of this size (eval mode).

    Returns
    -------
    Sequential
        A new model (in the given model's mode); the given one is not modified. Its
        ``running_var`` holds the variance over X divided by the count (population), not
        PyTorch's unbiased running estimate.
    """
    _check_sequential(model)
    after = (nn.Linear, nn.Conv2d) if after is None else tuple(after)
    X = np.asarray(X)
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"X must be a nonempty batch of inputs, got shape {X.shape}")
    batch_size = positive_int(batch_size, "batch_size")
    reference = copy.deepcopy(model).eval()
    try:
        reference(X[:1])
    except (ValueError, TypeError) as err:
        raise ValueError(f"X of shape {X.shape} does not fit the model: {err}") from None
    layers = [copy.deepcopy(layer) for layer in model]
    out = []
    for i, layer in enumerate(layers):
        out.append(layer)
        if not isinstance(layer, after) or isinstance(layer, _BatchNorm):
            continue
        if i + 1 < len(layers) and isinstance(layers[i + 1], _BatchNorm):
            continue
        bn: _BatchNorm
        if isinstance(layer, nn.Linear):
            bn = nn.BatchNorm1d(layer.out_features, eps=eps, momentum=momentum,
                                dtype=layer.weight.data.dtype)
        elif isinstance(layer, nn.Conv2d):
            bn = nn.BatchNorm2d(layer.out_channels, eps=eps, momentum=momentum,
                                channels_last=_layer_channels_last(layer),
                                dtype=layer.weight.data.dtype)
        else:
            raise TypeError(f"insert_batchnorm inserts after Linear and Conv2d layers, not "
                            f"{type(layer).__name__}")
        mean, var = _output_moments(reference, i, X, batch_size)
        bn.running_mean[...] = mean
        bn.running_var[...] = var
        bn.weight.data[...] = np.sqrt(var + eps)
        bn.bias.data[...] = mean
        out.append(bn)
    result = nn.Sequential(*out)
    return result.train(model.training)


def _batchnorm_layers(module) -> list:
    """The BatchNorm layers of module at any depth, in forward order."""
    found = [module] if isinstance(module, _BatchNorm) else []
    for child in module._modules.values():
        found += _batchnorm_layers(child)
    return found


def recalibrate(model, X, *, batch_size: int = 256, comm=None):
    """Set every BatchNorm layer's running statistics to the exact mean and variance of its
    inputs over X, as the model in eval mode sees them.

    The layers are taken in forward order: the first one's inputs over X (in batches,
    merged exactly with :class:`cybn.RunningMoments`), then the next one's with the first
    already recalibrated, and so on (one pass over X per BatchNorm layer). The variance is
    the population's (divided by the count), as :func:`insert_batchnorm` sets it; PyTorch's
    ``update_bn`` instead averages per-batch statistics taken in training mode. With ``comm``
    (:mod:`cybn.distributed`) X is this rank's share and the statistics are merged over the
    ranks in rank order, the same on every rank.

    Parameters
    ----------
    model : Module
        Modified in place (its running statistics; ``num_batches_tracked`` is left alone);
        returned in the mode it was given.
    X : array
        Inputs, batch axis first.
    batch_size : int

    Returns
    -------
    model
    """
    from .ops import RunningMoments

    error = None
    try:  # checked on every rank before any collective (see cybn.distributed.agree)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a cybn Module, got {type(model).__name__}")
        X = np.asarray(X)
        if X.ndim < 2:
            raise ValueError(f"X must be a batch of inputs, got shape {X.shape}")
        batch_size = positive_int(batch_size, "batch_size")
    except (TypeError, ValueError) as err:
        if comm is None:
            raise
        error = err
    if comm is not None:
        from .distributed import agree

        agree(comm, "recalibrate (BatchNorm layers)",
              [-1 if error else len(_batchnorm_layers(model))], error)
    layers = [bn for bn in _batchnorm_layers(model) if bn.track_running_stats]
    training = model.training
    model.eval()
    try:
        for bn in layers:
            moments = RunningMoments()
            original = bn.forward

            def record(x, bn=bn, moments=moments, original=original):
                x = np.asarray(x)
                moments.axis = bn._axis(x)
                moments.update(x)
                return original(x)

            object.__setattr__(bn, "forward", record)
            try:
                for start in range(0, len(X), batch_size):
                    model(X[start:start + batch_size])
            finally:
                object.__delattr__(bn, "forward")
            C = bn.num_features
            count, mean, m2 = moments.stats() if moments.count else (0, np.zeros(C),
                                                                     np.zeros(C))
            if comm is not None:
                from .distributed import _gather_stats

                count, mean, m2 = _gather_stats(comm, count, mean, m2)
            if not count:
                raise ValueError("recalibrate needs at least one sample")
            bn.running_mean[...] = mean
            bn.running_var[...] = m2 / count
    finally:
        model.train(training)
    return model
