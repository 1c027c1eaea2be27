"""Hostile inputs (property-based): every public function and layer, called with one of its
arguments replaced by a generated bad value -- a wrong shape, a wrong dtype, NaN or inf,
empty, huge, a wrong type, or an array that aliases another argument. The promise: the
right answer or a TypeError/ValueError whose message names the argument; nothing the
caller passed is modified when the call fails; no crash (a crash ends pytest) and no hang
(each call is timed).

The default run draws a fixed budget of examples per target (CI's profile is derandomized);
``-m slow`` runs the long exploration.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cybn

MAX_SECONDS = 20.0  # one call of a small problem; a hang would be far beyond

# ---------------------------------------------------------------------------------------
# The targets: a builder of valid arguments for each public function and layer.
# ---------------------------------------------------------------------------------------


def data(shape=(4, 3, 5, 5), seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 1).astype(dtype)


def bn_train():
    x = data()
    return cybn.batch_norm_train, dict(
        x=x, weight=np.full(3, 1.5, np.float32), bias=np.zeros(3, np.float32),
        running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32),
        momentum=0.1, eps=1e-5, axis=1, out=None)


def bn_infer():
    return cybn.batch_norm_infer, dict(
        x=data(), running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32),
        weight=np.ones(3, np.float32), bias=np.zeros(3, np.float32), eps=1e-5, axis=1,
        out=None)


def bn_backward():
    x = data()
    _, mean, invstd = cybn.batch_norm_train(x)
    return cybn.batch_norm_backward, dict(dy=data(seed=1), x=x, weight=np.ones(3, np.float32),
                                          mean=mean, invstd=invstd, training=True, axis=1,
                                          out=None)


def bn_ghost():
    return cybn.batch_norm_ghost, dict(x=data(), weight=np.ones(3, np.float32),
                                       bias=np.zeros(3, np.float32), ghost_batch_size=2,
                                       running_mean=np.zeros(3, np.float32),
                                       running_var=np.ones(3, np.float32), axis=1, out=None)


def bn_ghost_backward():
    x = data()
    _, mean, invstd = cybn.batch_norm_ghost(x, ghost_batch_size=2)
    return cybn.batch_norm_ghost_backward, dict(
        dy=data(seed=1), x=x, weight=np.ones(3, np.float32), mean=mean, invstd=invstd,
        ghost_batch_size=2, axis=1, training=True, out=None)


def bn_renorm():
    return cybn.batch_norm_renorm, dict(x=data(), weight=np.ones(3, np.float32),
                                        bias=np.zeros(3, np.float32),
                                        running_mean=np.zeros(3, np.float32),
                                        running_var=np.ones(3, np.float32), rmax=3.0,
                                        dmax=5.0, axis=1, out=None)


def bn_renorm_backward():
    x = data()
    rm, rv = np.zeros(3), np.ones(3)
    _, mean, invstd, r, d = cybn.batch_norm_renorm(x, running_mean=rm, running_var=rv)
    return cybn.batch_norm_renorm_backward, dict(dy=data(seed=1), x=x,
                                                 weight=np.ones(3, np.float32), mean=mean,
                                                 invstd=invstd, r=r, d=d, axis=1, out=None)


def bn_stats():
    return cybn.batch_norm_stats, dict(x=data(), axis=1)


def bn_masked():
    x = data()
    mask = np.ones((4, 5, 5), bool)
    mask[0] = False
    return cybn.batch_norm_train, dict(x=x, running_mean=np.zeros(3, np.float32),
                                       running_var=np.ones(3, np.float32), axis=1, mask=mask,
                                       out=None)


def layer_norm():
    return cybn.layer_norm, dict(x=data((4, 6)), normalized_shape=(6,),
                                 weight=np.ones(6, np.float32), bias=np.zeros(6, np.float32),
                                 eps=1e-5, out=None)


def group_norm():
    return cybn.group_norm, dict(x=data((4, 6, 5)), num_groups=3,
                                 weight=np.ones(6, np.float32), bias=np.zeros(6, np.float32),
                                 eps=1e-5, axis=1, out=None)


def rms_norm():
    return cybn.rms_norm, dict(x=data((4, 6)), normalized_shape=(6,),
                               weight=np.ones(6, np.float32), eps=1e-5, out=None)


def merge():
    return cybn.merge_stats, dict(counts=np.array([3.0, 4.0]), means=np.zeros((2, 3)),
                                  m2s=np.ones((2, 3)))


def cross_entropy():
    return cybn.cross_entropy, dict(logits=data((4, 3)), targets=np.array([0, 1, 2, 1]))


FROM_OUTPUT = object()  # a layer's dy made to fit the forward's output


def layer(make, shape, dtype=np.float32):
    """(forward-then-backward of a fresh layer, its arguments): x and dy (the forward's
    output shape)."""
    probe = make()
    x = data(shape, dtype=dtype)
    y = probe(x)
    if isinstance(y, tuple):
        y = y[0]

    def call(x, dy):
        m = make()
        y = m(x)
        if dy is FROM_OUTPUT:  # x was replaced: a dy that fits whatever x gave
            dy = np.ones(np.shape(y), getattr(y, "dtype", np.float32))
        return m.backward(dy)

    return call, dict(x=x, dy=np.ones(y.shape, y.dtype))


LAYERS = {
    "BatchNorm2d": (lambda: cybn.BatchNorm2d(3), (4, 3, 5, 5)),
    "BatchNorm1d-ghost": (lambda: cybn.BatchNorm1d(3, ghost_batch_size=2), (6, 3)),
    "BatchNorm1d-renorm": (lambda: cybn.BatchNorm1d(3, renorm=True), (6, 3)),
    "LayerNorm": (lambda: cybn.LayerNorm(5), (4, 3, 5)),
    "GroupNorm": (lambda: cybn.GroupNorm(3, 3), (4, 3, 5, 5)),
    "InstanceNorm2d": (lambda: cybn.InstanceNorm2d(3, affine=True), (4, 3, 5, 5)),
    "Conv2d": (lambda: cybn.Conv2d(3, 4, 3, padding=1, rng=0), (2, 3, 6, 6)),
    "Conv2d-depthwise": (lambda: cybn.Conv2d(3, 3, 3, groups=3, rng=0), (2, 3, 6, 6)),
    "Conv2d-last": (lambda: cybn.Conv2d(3, 4, 3, channels_last=True, rng=0), (2, 6, 6, 3)),
    "Linear": (lambda: cybn.Linear(5, 4, rng=0), (3, 5)),
    "MaxPool2d": (lambda: cybn.MaxPool2d(2), (2, 3, 6, 6)),
    "MaxPool2d-last": (lambda: cybn.MaxPool2d(3, stride=2, channels_last=True), (2, 7, 7, 3)),
    "AvgPool2d": (lambda: cybn.AvgPool2d(2, stride=1), (2, 3, 6, 6)),
    "AdaptiveAvgPool2d": (lambda: cybn.AdaptiveAvgPool2d(1), (2, 3, 6, 6)),
    "ReLU": (lambda: cybn.ReLU(), (2, 3, 6)),
    "Flatten": (lambda: cybn.Flatten(), (2, 3, 6)),
    "Dropout": (lambda: cybn.Dropout(0.3, rng=0), (2, 3, 6)),
    "Residual": (lambda: cybn.Residual(cybn.Sequential(cybn.Conv2d(3, 3, 3, padding=1, rng=0),
                                                       cybn.BatchNorm2d(3)),
                                       activation="relu"), (2, 3, 5, 5)),
}

TARGETS = {
    "batch_norm_train": bn_train, "batch_norm_infer": bn_infer,
    "batch_norm_backward": bn_backward, "batch_norm_ghost": bn_ghost,
    "batch_norm_ghost_backward": bn_ghost_backward, "batch_norm_renorm": bn_renorm,
    "batch_norm_renorm_backward": bn_renorm_backward, "batch_norm_stats": bn_stats,
    "batch_norm_train-mask": bn_masked, "layer_norm": layer_norm, "group_norm": group_norm,
    "rms_norm": rms_norm, "merge_stats": merge, "cross_entropy": cross_entropy,
    **{f"layer {name}": (lambda make=make, shape=shape: layer(make, shape))
       for name, (make, shape) in LAYERS.items()},
}

# ---------------------------------------------------------------------------------------
# Bad values.
# ---------------------------------------------------------------------------------------


class Opaque:
    """An object no function should accept as a number or an array."""


def bad_values(good):
    """A strategy of replacements for the argument whose valid value is ``good``."""
    shape = np.shape(good) if isinstance(good, np.ndarray) else ()
    dims = st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple)
    common = [
        st.just(None), st.just("abc"), st.just(Opaque()), st.just([[1.0, 2.0], [3.0]]),
        st.just({"a": 1}), st.just(np.bool_(True)), st.just(True),
        st.sampled_from([0, -1, 2 ** 62, -(2 ** 62), 0.5, -1e308, 1e308, np.nan, np.inf,
                         -np.inf, np.int64(3), 1 + 2j]),
    ]
    if not isinstance(good, np.ndarray):
        return st.one_of(*common, dims.map(lambda s: np.zeros(s, np.float32)))
    dtypes = st.sampled_from([np.int32, np.int64, np.uint8, np.bool_, np.complex64,
                              np.float16, np.float64, np.float32, "U3", object])

    def reshaped(s):
        return np.ones(s, good.dtype) if good.dtype != object else np.ones(s)

    return st.one_of(
        *common,
        dims.filter(lambda s: s != shape).map(reshaped),                 # wrong shape
        dtypes.map(lambda t: np.ones(shape, t) if t not in ("U3", object)
                   else np.full(shape, "a" if t == "U3" else None, dtype=t)),
        st.sampled_from([np.nan, np.inf, -np.inf]).map(                  # non-finite
            lambda v: np.full(shape, v, good.dtype) if good.dtype.kind == "f" else good),
        st.just(np.zeros((0,) + shape[1:], good.dtype)),                 # empty
        st.just(np.broadcast_to(np.ones(1, good.dtype), shape) if shape else good),  # read-only
        st.just(np.ones(shape + (2,), good.dtype)[..., 0] if shape else good),  # strided
        st.just(np.ma.masked_array(good)),
    )


def aliases(kwargs, name):
    """Arrays among the other arguments that the replacement may alias."""
    return [k for k, v in kwargs.items() if k != name and isinstance(v, np.ndarray)]


# ---------------------------------------------------------------------------------------
# The property.
# ---------------------------------------------------------------------------------------

ALLOWED_NAMES = {  # words an error may use for an argument instead of its name
    "logits": ("pred", "logits"), "targets": ("target",), "counts": ("count",),
    "means": ("mean",), "m2s": ("m2",), "normalized_shape": ("normalized_shape", "trailing"),
    "x": ("x", "input", "expects", "window", "kernel"),
}


def names_argument(message: str, name: str) -> bool:
    words = ALLOWED_NAMES.get(name, ()) + (name,)
    return any(re.search(rf"\b{re.escape(w)}\b", message) for w in words)


def snapshot(kwargs):
    return {k: v.copy() for k, v in kwargs.items()
            if isinstance(v, np.ndarray) and v.dtype != object}


def check_call(target, choice, data_draw):
    fn, kwargs = TARGETS[target]()
    names = list(kwargs)
    name = names[choice % len(names)]
    mode = data_draw(st.sampled_from(["bad", "bad", "bad", "alias"]))
    if mode == "alias" and aliases(kwargs, name):
        other = data_draw(st.sampled_from(aliases(kwargs, name)))
        value = kwargs[other]
    else:
        value = data_draw(bad_values(kwargs[name]))
    kwargs[name] = value
    if target.startswith("layer ") and name == "x":
        kwargs["dy"] = FROM_OUTPUT
    inputs = {k: v for k, v in kwargs.items() if k != name or mode == "alias"}
    before = snapshot(inputs)
    start = time.perf_counter()
    try:
        fn(**kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        assert names_argument(message, name) or any(
            names_argument(message, k) for k in kwargs if kwargs[k] is value), \
            f"{target}: the error for a bad {name!r} does not name it: {message}"
        for k, v in before.items():  # a failed call changes nothing
            np.testing.assert_array_equal(kwargs[k], v, err_msg=f"{target}: {k} changed")
    except (RuntimeError, ZeroDivisionError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError) as err:
        raise AssertionError(f"{target}: a bad {name!r} gave {type(err).__name__}: {err}")
    finally:
        assert time.perf_counter() - start < MAX_SECONDS, f"{target}: {name} took too long"


# an exception swallowed inside a compiled helper (printed as "Exception ignored in") fails
UNRAISABLE = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@UNRAISABLE
@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(choice=st.integers(0, 100), draw=st.data())
def test_hostile_arguments(target, choice, draw):
    check_call(target, choice, draw.draw)


@pytest.mark.slow
@UNRAISABLE
@pytest.mark.parametrize("target", sorted(TARGETS))
@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(choice=st.integers(0, 100), draw=st.data())
def test_hostile_arguments_long(target, choice, draw):
    check_call(target, choice, draw.draw)


@UNRAISABLE
@pytest.mark.parametrize("axis", [2 ** 62, -(2 ** 62), 2 ** 31])
def test_a_huge_axis_is_refused_by_the_full_path_without_a_swallowed_error(axis):
    x = np.ones((2, 3, 4, 4), np.float32)  # small: the compiled fast path is tried first
    with pytest.raises(ValueError, match="axis"):
        cybn.batch_norm_train(x, axis=axis)
    with pytest.raises(ValueError, match="axis"):
        cybn.batch_norm_infer(x, np.zeros(3), np.ones(3), axis=axis)
