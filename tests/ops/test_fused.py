"""Fused batch norm + ReLU and batch norm + residual add + ReLU (activation=, residual=):
equal to the unfused composition bit for bit, against the float64 reference and finite
differences, ReLU's kink handled as PyTorch does, bad input rejected with nothing written."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn
import reference as ref
from conftest import bn_case as data
from conftest import numeric_grad, tolerance

# (shape, axis): both kernel families (plane: channels-first with long planes; row:
# channels-last and short planes), ranks 2 to 5, odd sizes, C = 1, N = 1
CASES = [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1), ((64, 24), 1), ((4, 3, 5, 7), 1),
         ((4, 5, 7, 3), -1), ((2, 8, 3000), 1), ((3, 9, 1), 1), ((5, 1, 33), 1),
         ((1, 7, 6, 2, 3), 1), ((2, 3, 4, 5, 6), -1)]
DTYPES = [np.float32, np.float64]


def relu(v):
    return np.where(v <= 0, v.dtype.type(0), v)


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add_relu"])
def test_train_equals_unfused_composition(shape, axis, dtype, with_residual, threads):
    x, w, b, r, dy = data(shape, axis, dtype)
    res = r if with_residual else None
    y0, mean0, inv0 = cybn.batch_norm_train(x, w, b, axis=axis)
    pre = y0 + r if with_residual else y0
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=res)
    np.testing.assert_array_equal(y, relu(pre))
    np.testing.assert_array_equal(mean, mean0)
    np.testing.assert_array_equal(inv, inv0)

    g = np.where(pre <= 0, dtype(0), dy)
    dx0, dw0, db0 = cybn.batch_norm_backward(g, x, w, mean, inv, axis=axis)
    got = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation="relu", bias=b,
                                   residual=res)
    assert len(got) == (4 if with_residual else 3)
    np.testing.assert_array_equal(got[0], dx0)
    np.testing.assert_array_equal(got[1], dw0)
    np.testing.assert_array_equal(got[2], db0)
    if with_residual:
        np.testing.assert_array_equal(got[3], g)


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add_relu"])
def test_infer_equals_unfused_composition(shape, axis, dtype, with_residual, threads):
    x, w, b, r, dy = data(shape, axis, dtype, seed=1)
    C = shape[axis]
    rng = np.random.default_rng(2)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    res = r if with_residual else None
    y0 = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis)
    pre = y0 + r if with_residual else y0
    y = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis, activation="relu", residual=res)
    np.testing.assert_array_equal(y, relu(pre))

    # frozen batch norm (training=False): the mask recomputed from the running statistics
    invstd = 1 / np.sqrt(rv + 1e-5)
    g = np.where(pre <= 0, dtype(0), dy)
    want = cybn.batch_norm_backward(g, x, w, rm, invstd, training=False, axis=axis)
    got = cybn.batch_norm_backward(dy, x, w, rm, invstd, training=False, axis=axis,
                                   activation="relu", bias=b, residual=res)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("shape,axis", [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1),
                                        ((64, 24), 1), ((4, 5, 7, 3), -1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_against_float64_reference(shape, axis, dtype):
    x, w, b, r, dy = data(shape, axis, dtype, seed=3)
    yr, mr, ir, _ = ref.train(x, w, b, axis=axis)
    pre = yr + r.astype(np.float64)
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=r)
    scale = np.abs(yr).max() + np.abs(r).max()
    np.testing.assert_allclose(y, np.maximum(pre, 0), rtol=0, atol=4 * tolerance(dtype) * scale)
    # gradients: the reference backward of the masked dy (mask of the reference forward,
    # away from the kink, where float32 rounding could move the sign)
    keep = np.abs(pre) > 1e-3
    g = np.where(pre > 0, dy.astype(np.float64), 0.0) * keep
    dxr, dwr, dbr = ref.backward(g, x, w, mr, ir, axis=axis)
    dx, dw, db, dres = cybn.batch_norm_backward(np.where(keep, dy, 0).astype(dtype), x, w, mean,
                                                inv, axis=axis, activation="relu", bias=b,
                                                residual=r)
    tol = 20 * tolerance(dtype)
    np.testing.assert_allclose(dres, g, rtol=0, atol=0)
    np.testing.assert_allclose(dx, dxr, rtol=tol, atol=tol * np.abs(dxr).max())
    np.testing.assert_allclose(dw, dwr, rtol=tol, atol=tol * np.abs(dwr).max())
    np.testing.assert_allclose(db, dbr, rtol=tol, atol=tol * np.abs(dbr).max())


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((3, 4, 2, 3), -1), ((2, 3, 40), 1)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add_relu"])
def test_gradients_match_finite_differences(shape, axis, with_residual):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape) * 2 + 1
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    r = rng.standard_normal(shape) if with_residual else None
    g = rng.standard_normal(shape)

    def loss():
        y = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=r)[0]
        return float(np.sum(y * g))

    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=r)
    got = cybn.batch_norm_backward(g, x, w, mean, inv, axis=axis, activation="relu", bias=b,
                                   residual=r)
    # no pre-activation value within the finite-difference step of the kink
    pre = cybn.batch_norm_train(x, w, b, axis=axis)[0] + (0 if r is None else r)
    assert np.abs(pre).min() > 1e-4
    checks = [(got[0], x), (got[1], w), (got[2], b)] + ([(got[3], r)] if with_residual else [])
    for analytic, arr in checks:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((4, 3, 24), 1), ((4, 24, 3), -1), ((64, 3), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_at_exactly_zero_has_zero_gradient(shape, axis, dtype):
    # channel 0 has weight 0 and bias 0: its output is exactly 0 everywhere, the ReLU's
    # kink, where PyTorch's threshold_backward gives gradient 0
    x, w, b, r, dy = data(shape, axis, dtype, seed=11)
    w[0], b[0] = 0.0, 0.0
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu")
    assert not np.take(y, 0, axis=axis).any()
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation="relu",
                                          bias=b)
    assert dw[0] == 0 and db[0] == 0
    pre = cybn.batch_norm_train(x, w, b, axis=axis)[0]
    g = np.where(pre > 0, dy.astype(np.float64), 0.0)
    dxr, dwr, dbr = ref.backward(g, x, w, mean, inv, axis=axis)
    tol = 20 * tolerance(dtype)
    np.testing.assert_allclose(db, dbr, rtol=tol, atol=tol * np.abs(dbr).max())
    np.testing.assert_allclose(dw, dwr, rtol=tol, atol=tol * np.abs(dwr).max())
    np.testing.assert_allclose(dx, dxr, rtol=tol, atol=tol * np.abs(dxr).max())


@pytest.mark.parametrize("shape,axis", [((4, 8, 40), 1), ((40, 8), 1)])
def test_nonfinite_dy_where_masked_gives_exact_zero(shape, axis):
    x, w, b, r, dy = data(shape, axis, np.float32, seed=5)
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu")
    dy = dy.copy()
    dy[y == 0] = np.inf  # the ReLU blocks these: they must not reach the sums
    assert np.isinf(dy).any()
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation="relu",
                                          bias=b)
    assert np.isfinite(dx).all() and np.isfinite(dw).all() and np.isfinite(db).all()


def test_forward_relu_keeps_nan_and_zeroes_minus_inf():
    x = np.random.default_rng(6).standard_normal((8, 3, 40)).astype(np.float32)
    rm, rv = np.zeros(3), np.ones(3)
    r = np.zeros_like(x)
    r[0, 0, :3] = [np.nan, -np.inf, np.inf]
    y = cybn.batch_norm_infer(x, rm, rv, activation="relu", residual=r)
    assert np.isnan(y[0, 0, 0]) and y[0, 0, 1] == 0 and y[0, 0, 2] == np.inf
    assert np.isnan(y).sum() == 1 and (y[~np.isnan(y)] >= 0).all()


@pytest.mark.parametrize("shape,axis", [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1)])
def test_bits_do_not_depend_on_thread_count(shape, axis):
    x, w, b, r, dy = data(shape, axis, np.float32, seed=7)
    results = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="openmp"):
            y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu",
                                                 residual=r)
            grads = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis,
                                             activation="relu", bias=b, residual=r)
            results.append((y, *grads))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("shape,axis", [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1)])
def test_in_place_and_strided(shape, axis):
    x, w, b, r, dy = data(shape, axis, np.float32, seed=8)
    want, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=r)
    # out=residual: the ResNet block's sum written over its shortcut
    r2 = r.copy()
    y, _, _ = cybn.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=r2, out=r2)
    assert y is r2
    np.testing.assert_array_equal(y, want)
    # strided x and residual
    xs = np.repeat(x, 2, axis=0)[::2]
    rs = np.repeat(r, 2, axis=0)[::2]
    y, _, _ = cybn.batch_norm_train(xs, w, b, axis=axis, activation="relu", residual=rs)
    np.testing.assert_array_equal(y, want)
    # backward in place over dy, and over the residual
    gx = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation="relu", bias=b,
                                  residual=r)
    d2 = dy.copy()
    got = cybn.batch_norm_backward(d2, x, w, mean, inv, axis=axis, activation="relu", bias=b,
                                   residual=r, out=d2)
    assert got[0] is d2
    for a, e in zip(got, gx):
        np.testing.assert_array_equal(a, e)
    r3 = r.copy()
    got = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation="relu", bias=b,
                                   residual=r3, out=r3)
    for a, e in zip(got, gx):
        np.testing.assert_array_equal(a, e)


def test_residual_without_activation_is_a_plain_add():
    x, w, b, r, dy = data((4, 8, 40), 1, np.float64, seed=9)
    y0, mean, inv = cybn.batch_norm_train(x, w, b)
    y, _, _ = cybn.batch_norm_train(x, w, b, residual=r)
    np.testing.assert_array_equal(y, y0 + r)
    dx, dw, db, dres = cybn.batch_norm_backward(dy, x, w, mean, inv, residual=r)
    want = cybn.batch_norm_backward(dy, x, w, mean, inv)
    for a, e in zip((dx, dw, db), want):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(dres, dy)
    assert dres is not dy


def test_empty_input():
    x = np.empty((0, 3, 4), dtype=np.float32)
    y, mean, inv = cybn.batch_norm_train(x, activation="relu", residual=x.copy())
    assert y.shape == x.shape
    got = cybn.batch_norm_backward(x, x, None, np.zeros(3), np.ones(3), activation="relu",
                                   residual=x)
    assert len(got) == 4 and got[3].shape == x.shape


def test_bad_input_is_rejected_and_nothing_changes():
    x, w, b, r, dy = data((4, 8, 40), 1, np.float32, seed=10)
    rm, rv = np.zeros(8), np.ones(8)
    snapshot = [a.copy() for a in (x, r, dy, rm, rv)]
    out = np.zeros_like(x)
    with pytest.raises(ValueError, match="activation"):
        cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, activation="gelu",
                              out=out)
    with pytest.raises(ValueError, match="activation"):
        cybn.batch_norm_infer(x, rm, rv, activation="ReLU", out=out)
    with pytest.raises(ValueError, match="activation"):
        cybn.batch_norm_backward(dy, x, w, rm, rv, activation=True, out=out)
    with pytest.raises(ValueError, match="residual"):
        cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, activation="relu",
                              residual=r[:2], out=out)
    with pytest.raises(ValueError, match="residual"):
        cybn.batch_norm_train(x, activation="relu", residual=r.astype(np.float64), out=out)
    with pytest.raises(ValueError, match="residual"):
        cybn.batch_norm_backward(dy, x, w, rm, rv, activation="relu", residual=r[..., :3],
                                 out=out)
    with pytest.raises(ValueError, match="bias"):
        cybn.batch_norm_backward(dy, x, w, rm, rv, activation="relu", bias=np.ones(3), out=out)
    with pytest.raises(ValueError, match="residual"):  # out overlapping the residual in part
        big = np.concatenate([r, r])
        cybn.batch_norm_train(x, activation="relu", residual=big[2:6], out=big[1:5])
    for a, s in zip((x, r, dy, rm, rv), snapshot):
        np.testing.assert_array_equal(a, s)
    assert not out.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_arrays_fast_path_gives_the_same_bits(dtype, monkeypatch):
    """Small plain arrays take the one-call fast path (ReLU included); the full path and the
    unfused composition give the same bits."""
    from cybn.ops import _schedule

    x, w, b, r, dy = data((4, 6, 5, 5), 1, dtype, seed=12)
    rm, rv = np.linspace(-1, 1, 6), np.linspace(0.5, 2, 6)
    fast_train = cybn.batch_norm_train(x, w, b, activation="relu")
    fast_infer = cybn.batch_norm_infer(x, rm, rv, w, b, activation="relu")
    np.testing.assert_array_equal(fast_train[0], relu(cybn.batch_norm_train(x, w, b)[0]))
    np.testing.assert_array_equal(fast_infer, relu(cybn.batch_norm_infer(x, rm, rv, w, b)))
    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)
    full_train = cybn.batch_norm_train(x, w, b, activation="relu")
    for a, e in zip(fast_train, full_train):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(fast_infer,
                                  cybn.batch_norm_infer(x, rm, rv, w, b, activation="relu"))
