"""Pooling (padding, dilation, ceil mode, count_include_pad, divisor_override, adaptive) and
activation layers against PyTorch's outputs and input gradients, stored in
tests/data/torch_layers.npz by tools/fixtures/make_torch_layers_fixture.py (PyTorch 2.13):
float64 within 1e-12, float32 within float32 rounding, both layouts; plus the bits for any
thread count and the layers' argument errors."""

import os

import numpy as np
import pytest

import cybn
from cybn import nn

from torch_layer_cases import ACTIVATION_CASES, POOL_CASES

DATA = np.load(os.path.join(os.path.dirname(__file__), os.pardir, "data", "torch_layers.npz"))


def to_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def run(layer, x, dy):
    y = layer(x)
    return y, layer.backward(dy)


@pytest.mark.parametrize("case", POOL_CASES, ids=[c[0] for c in POOL_CASES])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pooling_matches_pytorch(case, channels_last, dtype):
    name, kind, kwargs, _ = case
    x, dy = DATA[f"{name}_x"].astype(dtype), DATA[f"{name}_dy"].astype(dtype)
    want_y, want_dx = DATA[f"{name}_y"], DATA[f"{name}_dx"]
    layer = getattr(nn, kind)(**kwargs, channels_last=channels_last)
    if channels_last:
        x, dy, want_y, want_dx = map(to_last, (x, dy, want_y, want_dx))
    y, dx = run(layer, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    assert y.shape == want_y.shape and dx.shape == want_dx.shape
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(y, want_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, want_dx, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=[c[0] for c in ACTIVATION_CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activations_match_pytorch(case, dtype):
    name, kind, kwargs, _ = case
    x, dy = DATA[f"{name}_x"].astype(dtype), DATA[f"{name}_dy"].astype(dtype)
    layer = getattr(nn, kind)(**kwargs)
    y, dx = run(layer, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    tol = 1e-13 if dtype == np.float64 else 3e-6
    np.testing.assert_allclose(y, DATA[f"{name}_y"], rtol=tol, atol=tol)
    # PyTorch's hardsigmoid gradient multiplies by 1/6 rounded to float32, in float64 too
    dtol = max(tol, 6e-8) if kind == "Hardsigmoid" else tol
    np.testing.assert_allclose(dx, DATA[f"{name}_dx"], rtol=dtol, atol=dtol)
    assert (x == 0).any()  # the fixture has values at the kinks


@pytest.mark.parametrize("kind,kwargs", [("ReLU6", {}), ("Hardtanh", {"min_val": -2.0}),
                                         ("LeakyReLU", {"negative_slope": 0.2}),
                                         ("Hardswish", {}), ("SiLU", {})])
def test_inplace_activations_write_into_x_and_keep_the_gradient(kind, kwargs):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 5, 6)) * 4).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ref = getattr(nn, kind)(**kwargs)
    y_ref, dx_ref = run(ref, x.copy(), dy)
    layer = getattr(nn, kind)(**kwargs, inplace=True)
    xi = x.copy()
    y = layer(xi)
    assert y is xi
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(layer.backward(dy), dx_ref)
    assert "inplace=True" in repr(layer)


def test_half_precision_activations_round_once():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.linspace(-5, 5, 101)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        y = nn.SiLU()(x.astype(dtype))
        assert y.dtype == dtype
        exact = nn.SiLU()(x.astype(dtype).astype(np.float64))
        np.testing.assert_array_equal(y, exact.astype(dtype))


def test_sigmoid_does_not_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(all="raise"):
        y = nn.Sigmoid()(x)
    np.testing.assert_allclose(y, [0.0, np.exp(-50.0), 0.5, 1.0, 1.0], rtol=1e-15, atol=0)


def test_nan_stays_nan_through_the_clamps():
    x = np.array([np.nan, -np.inf, np.inf, 3.0], np.float32)
    y = nn.ReLU6()(x)
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:], [0.0, 6.0, 3.0])


@pytest.mark.parametrize("kind,kwargs", [
    ("MaxPool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("AvgPool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ("AdaptiveAvgPool2d", {"output_size": (5, 3)}),
    ("AdaptiveMaxPool2d", {"output_size": (5, 3)}),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pooling_bits_do_not_depend_on_the_thread_count(kind, kwargs, channels_last):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 9, 17, 15)).astype(np.float32)
    if channels_last:
        x = to_last(x)
    results = []
    old = cybn.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            cybn.set_num_threads(threads)
            layer = getattr(nn, kind)(**kwargs, channels_last=channels_last)
            y = layer(x)
            results.append((y, layer.backward(np.ones_like(y))))
    finally:
        cybn.set_num_threads(old)
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


def test_max_pooling_of_other_dtypes_takes_the_same_windows():
    rng = np.random.default_rng(2)
    x = rng.integers(-100, 100, (2, 3, 9, 10)).astype(np.int32)
    layer = nn.MaxPool2d(3, 2, padding=1, dilation=1, ceil_mode=True)
    ref = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
    y = layer(x)
    y64 = ref(x.astype(np.float64))
    np.testing.assert_array_equal(y, y64)
    dy = rng.standard_normal(y.shape)
    # the same windows and maxima; overlapping windows' gradients add in another order
    np.testing.assert_allclose(layer.backward(dy), ref.backward(dy), rtol=1e-14, atol=1e-14)
    dil = nn.MaxPool2d(2, 1, padding=1, dilation=2)
    np.testing.assert_array_equal(dil(x.astype(np.float16)),
                                  nn.MaxPool2d(2, 1, padding=1, dilation=2)(x.astype(np.float64)))


@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.MaxPool2d(3, padding=2), ValueError, "padding"),
    (lambda: nn.AvgPool2d(2, padding=-1), ValueError, "padding"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    (lambda: nn.MaxPool2d(2, dilation=0), ValueError, "dilation"),
    (lambda: nn.AdaptiveAvgPool2d((2, 3, 4)), ValueError, "output_size"),
    (lambda: nn.AdaptiveMaxPool2d(0), ValueError, "output_size"),
    (lambda: nn.Hardtanh(1.0, -1.0), ValueError, "min_val"),
    (lambda: nn.GELU("fast"), ValueError, "approximate"),
])
def test_layer_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_pooling_input_errors():
    with pytest.raises(ValueError, match="does not fit"):
        nn.MaxPool2d(3, dilation=3)(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="no pixels"):
        nn.AdaptiveAvgPool2d(2)(np.zeros((1, 1, 0, 5), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.AdaptiveMaxPool2d(2)(np.zeros((1, 1, 4, 4), np.float16))
    with pytest.raises(TypeError, match="floating"):
        nn.SiLU()(np.zeros(3, np.int64))
    layer = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
    y = layer(np.zeros((1, 2, 6, 6), np.float32))
    with pytest.raises(ValueError):
        layer.backward(np.zeros((1, 2, 3, 4), np.float32))
    assert layer.backward(np.zeros_like(y)).shape == (1, 2, 6, 6)  # still usable
