"""float16 and bfloat16 storage: the conversions against NumPy's and ml_dtypes' (round to
nearest even), every batch norm op equal to the float32 op on the widened data rounded once,
within 1 ulp of the float64 reference, and the per-channel results as accurate as for float32
input."""

import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn
import reference as ref
from conftest import bn_case as data
from cybn import _kernels
from cybn._validate import resolve_dtype

ml_dtypes = pytest.importorskip("ml_dtypes")
HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
IDS = ["float16", "bfloat16"]
CASES = [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1), ((64, 24), 1), ((4, 3, 5, 7), 1),
         ((4, 5, 7, 3), -1), ((2, 8, 3000), 1), ((3, 9, 1), 1), ((2, 3, 4, 5, 6), -1)]


def kind(dtype):
    return _kernels.HALF_KINDS[np.dtype(dtype).name]


def bits_equal(a, b):
    """Equal bit patterns, NaNs compared as NaNs."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.itemsize == 2:
        same = a.view(np.uint16) == b.view(np.uint16)
        nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
    else:
        same = a == b
        nan = np.isnan(a) & np.isnan(b)
    assert np.all(same | nan), f"{np.count_nonzero(~(same | nan))} elements differ"


def ulps(a, b64, dtype):
    """Distance in units in the last place of the half type between a and float64 b64."""
    def ordinal(v):
        w = v.view(np.uint16).astype(np.int64)
        return np.where(w & 0x8000, -(w & 0x7FFF), w)
    return np.abs(ordinal(a) - ordinal(b64.astype(dtype)))


# ----------------------------------------------------------------------------- conversions

@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_every_half_value_widens_exactly(dtype):
    words = np.arange(65536, dtype=np.uint16)
    got = np.empty(65536, np.float32)
    _kernels.half_to_float(words, got, kind(dtype))
    bits_equal(got, words.view(dtype).astype(np.float32))


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_float32_rounds_to_nearest_even(dtype):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    grid = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float32)
    grid = grid[np.isfinite(grid)]
    ordered = np.unique(grid)
    ties = (ordered[:-1].astype(np.float64) + ordered[1:]) / 2  # exact in float32
    edges = np.array([65504, 65519.996, 65520, 65536, 2.0 ** -24, 2.0 ** -25, 3e-8, 1e-45,
                      3.4e38, np.inf, 0.0], dtype=np.float32)
    values = np.concatenate([values, ties.astype(np.float32), edges, -edges,
                             np.nextafter(grid, np.float32(np.inf))])
    got = np.empty(values.size, np.uint16)
    _kernels.half_from_float(values, got, kind(dtype))
    with np.errstate(all="ignore"):
        want = values.astype(dtype)
    bits_equal(got.view(dtype), want)


def test_bfloat16_needs_ml_dtypes(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match="ml_dtypes"):
        resolve_dtype("bfloat16")
    assert resolve_dtype("float16") == np.float16


# ----------------------------------------------------------------------------- the ops

def reference_forward(x, shift, scale, offset, axis, r=None, relu=False):
    """The forward in float64 (the residual added to its float32 rounding, as the kernels
    add it in float32), before the final rounding to the half type."""
    x64 = x.astype(np.float64)
    v = ((x64 - ref._bcast(shift, x64, axis)) * ref._bcast(scale, x64, axis)
         + ref._bcast(offset, x64, axis))
    if r is not None:
        v = (v.astype(np.float32) + r.astype(np.float32)).astype(np.float64)
    return np.where(v <= 0, 0.0, v) if relu else v


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_ops_against_float32_and_float64(shape, axis, dtype, threads):
    """Statistics and gradients as for float32 data (the float32 op on the widened data, bit
    for bit); the forward (plain and fused) within 1 ulp of float64; every result rounded
    once to the half type."""
    x, w, b, r, dy = data(shape, axis, dtype)
    x32, r32, dy32 = (a.astype(np.float32) for a in (x, r, dy))
    C = shape[axis]
    rm, rv = np.linspace(-1, 1, C), np.linspace(0.5, 2, C)
    for relu, res in ((False, None), (True, None), (True, r), (False, r)):
        kw = {"activation": "relu" if relu else None, "residual": res}
        y, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis, **kw)
        _, mean32, invstd32 = cybn.batch_norm_train(x32, w, b, axis=axis)
        assert y.dtype == dtype
        bits_equal(mean, mean32)
        bits_equal(invstd, invstd32)
        yi = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis, **kw)
        for got_y, shift, scale in ((y, mean, w * invstd), (yi, rm, w / np.sqrt(rv + 1e-5))):
            want_y = reference_forward(x, shift, scale, b, axis, res, relu)
            if res is None:
                assert ulps(got_y, want_y, dtype).max() <= 1
            else:  # the float32 add can cancel: its operands' float32 rounding counts too
                bn = reference_forward(x, shift, scale, b, axis)
                err = np.abs(got_y.astype(np.float64) - want_y)
                assert np.all((ulps(got_y, want_y, dtype) <= 1) | (err <= 2.0 ** -23 * np.abs(bn)))
        # backward: the float32 backward of dy where the forward's output is positive
        g32 = np.where(y.astype(np.float32) > 0, dy32, np.float32(0)) if relu else dy32
        got = cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis, bias=b, **kw)
        want = cybn.batch_norm_backward(g32, x32, w, mean, invstd, axis=axis)
        bits_equal(got[0], want[0].astype(dtype))
        bits_equal(got[1], want[1])  # float32 per-channel gradients
        bits_equal(got[2], want[2])
        if res is not None:
            bits_equal(got[3], g32.astype(dtype))
    m, v = cybn.moments(x, axis=axis)
    m32, v32 = cybn.moments(x32, axis=axis)
    bits_equal(m, m32)
    bits_equal(v, v32)


@pytest.mark.parametrize("shape,axis", [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1),
                                        ((64, 24), 1)])
@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_within_one_ulp_of_the_float64_result(shape, axis, dtype):
    x, w, b, r, dy = data(shape, axis, dtype, seed=2)
    x64 = x.astype(np.float64)
    y, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis)
    yr, mr, ir, var = ref.train(x64, w, b, axis=axis)
    assert ulps(y, yr, dtype).max() <= 1
    # where y nearly cancels too (|y| far below its terms): channel 0 shifted so that its
    # outputs cross 0 with bias -0.3
    b2 = b.copy()
    b2[0] = -0.3
    y2 = cybn.batch_norm_train(x, w, b2, axis=axis)[0]
    assert ulps(y2, ref.train(x64, w, b2, axis=axis)[0], dtype).max() <= 1
    # statistics as accurate as for float32 input: the data are exact in float32
    np.testing.assert_allclose(mean, mr, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(1 / invstd ** 2 - 1e-5, var, rtol=1e-6)
    C = shape[axis]
    rm, rv = np.linspace(-1, 1, C), np.linspace(0.5, 2, C)
    assert ulps(cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis),
                ref.infer(x64, rm, rv, w, b, axis=axis), dtype).max() <= 1
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
    dxr, dwr, dbr = ref.backward(dy.astype(np.float64), x64, w, mean, invstd, axis=axis)
    assert ulps(dx, dxr, dtype).max() <= 1
    assert dw.dtype == np.float32 and db.dtype == np.float32
    np.testing.assert_allclose(dw, dwr, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(db, dbr, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_offset_data_keep_their_variance(dtype):
    # mean 256, spread 1: float16 keeps 3 bits below the point there, bfloat16 none, so
    # build values on the half type's grid near 256 and compare with float64 moments
    rng = np.random.default_rng(3)
    x = (256 + rng.integers(-8, 9, (64, 4, 50)) * (0.25 if dtype == np.float16 else 2.0))
    x = x.astype(dtype)
    mean, var = cybn.moments(x, axis=1)
    mr, vr = ref.moments(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(mean, mr, rtol=1e-12)
    np.testing.assert_allclose(var, vr, rtol=1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_out_in_place_strided_and_threads(dtype):
    x, w, b, r, dy = data((6, 16, 20, 20), 1, dtype, seed=4)
    want, mean, invstd = cybn.batch_norm_train(x, w, b)
    out = np.empty_like(x)
    got, _, _ = cybn.batch_norm_train(x, w, b, out=out)
    assert got is out
    bits_equal(out, want)
    x2 = x.copy()
    cybn.batch_norm_train(x2, w, b, out=x2)
    bits_equal(x2, want)
    xs = np.repeat(x, 2, axis=0)[::2]
    bits_equal(cybn.batch_norm_train(xs, w, b)[0], want)
    grads = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="openmp"):
            grads.append(cybn.batch_norm_backward(dy, x, w, mean, invstd))
    for g in grads[1:]:
        for a, e in zip(g, grads[0]):
            bits_equal(a, e)


def test_bad_half_input_is_rejected():
    x16 = np.ones((4, 3, 5), np.float16)
    xb = np.ones((4, 3, 5), ml_dtypes.bfloat16)
    out = np.zeros((4, 3, 5), np.float32)
    with pytest.raises(TypeError, match="out must have dtype float16"):
        cybn.batch_norm_train(x16, out=out)
    with pytest.raises(ValueError, match="residual must have the dtype of x"):
        cybn.batch_norm_train(x16, activation="relu", residual=xb)
    with pytest.raises(ValueError, match="dy must have the dtype of x"):
        cybn.batch_norm_backward(xb, x16, None, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="dy must have the dtype of x"):
        cybn.layer_norm_backward(xb, x16, None, np.zeros((4, 3)), np.ones((4, 3)), 5)
    with pytest.raises(TypeError, match="out must have dtype float16"):
        cybn.group_norm(x16, 3, out=out)
    with pytest.raises(TypeError, match="weight must have dtype"):  # parameters: float32/64
        cybn.batch_norm_train(x16, np.ones(3, np.float16))
    assert not out.any()


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_other_norms_take_half_precision_through_float32(dtype):
    x, w, b, r, dy = data((4, 6, 5, 5), 1, dtype, seed=7)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    D = 5
    cases = [
        (lambda a: cybn.group_norm(a, 3, w, b), lambda a, g, st: cybn.group_norm_backward(
            g, a, 3, w, st[1], st[2])),
        (lambda a: cybn.instance_norm(a, w, b), lambda a, g, st: cybn.instance_norm_backward(
            g, a, w, st[1], st[2])),
        (lambda a: cybn.layer_norm(a, D, np.ones(D), np.zeros(D)),
         lambda a, g, st: cybn.layer_norm_backward(g, a, np.ones(D), st[1], st[2], D)),
        (lambda a: cybn.rms_norm(a, D, np.ones(D), eps=1e-6),
         lambda a, g, st: cybn.rms_norm_backward(g, a, np.ones(D), st[1], D)),
    ]
    for fwd, bwd in cases:
        got, want = fwd(x), fwd(x32)
        bits_equal(got[0], want[0].astype(dtype))
        for a, e in zip(got[1:], want[1:]):
            bits_equal(a, e)
        gb, wb = bwd(x, dy, got), bwd(x32, dy32, want)
        bits_equal(gb[0], wb[0].astype(dtype))
        for a, e in zip(gb[1:], wb[1:]):
            bits_equal(a, e)
    out = np.empty_like(x)
    y, _, _ = cybn.group_norm(x, 3, w, b, out=out)
    assert y is out
    bits_equal(out, cybn.group_norm(x32, 3, w, b)[0].astype(dtype))
    # RMS norm's default eps: the half type's machine epsilon
    eps = float(np.finfo(np.float16).eps) if dtype == np.float16 else float(
        ml_dtypes.finfo(dtype).eps)
    bits_equal(cybn.rms_norm(x, D)[0], cybn.rms_norm(x32, D, eps=eps)[0].astype(dtype))


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_layer_mixed_precision(dtype, channels_last):
    """Half activations; float32 parameters, running statistics and gradients; the results
    of the functional ops on the same data."""
    rng = np.random.default_rng(5)
    shape = (4, 6, 6, 5) if channels_last else (4, 5, 6, 6)
    axis = -1 if channels_last else 1
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    half = cybn.BatchNorm2d(5, channels_last=channels_last, activation="relu")
    full = cybn.BatchNorm2d(5, channels_last=channels_last, activation="relu")
    y = half(x)
    full(x.astype(np.float32))
    assert y.dtype == dtype and half.weight.data.dtype == np.float32
    want, mean, invstd = cybn.batch_norm_train(x, np.ones(5), np.zeros(5), axis=axis,
                                               activation="relu")
    bits_equal(y, want)
    bits_equal(half.running_mean, full.running_mean)
    bits_equal(half.running_var, full.running_var)
    dx = half.backward(dy)
    wdx, wdw, wdb = cybn.batch_norm_backward(dy, x, np.ones(5), mean, invstd, axis=axis,
                                             activation="relu", bias=np.zeros(5))
    assert dx.dtype == dtype and half.weight.grad.dtype == np.float32
    bits_equal(dx, wdx)
    bits_equal(half.weight.grad, wdw)
    half.eval()
    bits_equal(half(x), cybn.batch_norm_infer(x, half.running_mean, half.running_var,
                                              axis=axis, activation="relu"))


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_training_helper_with_half_precision_inputs(dtype):
    """Half-precision data through fit: the first BatchNorm sees it, the float32 gradient
    from the Conv2d after it is rounded to the activation's dtype."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((128, 1, 8, 8)).astype(dtype)
    y = (X.astype(np.float32).mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    model = cybn.Sequential(cybn.BatchNorm2d(1), cybn.Conv2d(1, 4, 3, padding=1, rng=rng),
                            cybn.BatchNorm2d(4), cybn.ReLU(), cybn.Flatten(),
                            cybn.Linear(256, 2, rng=rng))
    bn = model[0]
    z = bn(X[:8])
    dz = np.ones(z.shape, np.float32) * 0.3
    dx = bn.backward(dz)
    bn2 = cybn.BatchNorm2d(1)
    bn2(X[:8])
    bits_equal(dx, bn2.backward(dz.astype(dtype)))
    assert dx.dtype == dtype
    model.zero_grad()
    history = cybn.fit(model, X, y, optimizer=cybn.SGD(model.parameters(), lr=0.1), epochs=3,
                       batch_size=32, seed=0)
    losses = history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", HALF, ids=IDS)
def test_norm_layers_in_mixed_precision(dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6, 5, 5)).astype(dtype)
    dy32 = rng.standard_normal(x.shape).astype(np.float32)
    for make in (lambda: cybn.GroupNorm(3, 6), lambda: cybn.InstanceNorm2d(6, affine=True),
                 lambda: cybn.LayerNorm(5), lambda: cybn.RMSNorm(5, eps=1e-6)):
        half, full = make(), make()
        bits_equal(half(x), full(x.astype(np.float32)).astype(dtype))
        dx = half.backward(dy32)  # a float32 gradient is rounded to the activation's dtype
        dx32 = full.backward(dy32.astype(dtype).astype(np.float32))
        assert dx.dtype == dtype
        bits_equal(dx, dx32.astype(dtype))
        assert half.weight.grad.dtype == np.float32
        bits_equal(half.weight.grad, full.weight.grad)
