"""Batch renormalization and ghost batch normalization against NumPy written from the
papers' definitions, finite differences, and plain batch norm where they coincide."""

import numpy as np
import pytest

import cybn
from conftest import numeric_grad

LAYOUTS = [((6, 3, 4, 5), 1), ((6, 4, 5, 3), -1), ((7, 3), 1), ((5, 4, 3), -1)]


def stats(x, axis):
    other = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    xd = x.astype(np.float64)
    return xd.mean(axis=other), xd.var(axis=other), other


def bshape(x, axis):
    s = [1] * x.ndim
    s[axis] = x.shape[axis]
    return s


def renorm_reference(x, w, b, rm, rv, rmax, dmax, eps, axis, r=None, d=None):
    mean, var, _ = stats(x, axis)
    sigma_run = np.sqrt(rv + eps)
    if r is None:
        r = np.clip(np.sqrt(var + eps) / sigma_run, 1 / rmax, rmax)
        d = np.clip((mean - rm) / sigma_run, -dmax, dmax)
    s = bshape(x, axis)
    xhat = (x.astype(np.float64) - mean.reshape(s)) / np.sqrt(var + eps).reshape(s)
    return (xhat * r.reshape(s) + d.reshape(s)) * w.reshape(s) + b.reshape(s), r, d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_renorm_forward_matches_the_paper(shape, axis, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm = np.linspace(-3, 3, C)          # far from the batch: d clips at dmax in some channels
    rv = np.linspace(0.05, 20, C)       # and r at rmax / 1/rmax
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd, r, d = cybn.batch_norm_renorm(x, w, b, running_mean=rm, running_var=rv,
                                                   rmax=1.5, dmax=0.7, axis=axis)
    ref, r_ref, d_ref = renorm_reference(x, w, b, rm0, rv0, 1.5, 0.7, 1e-5, axis)
    st = 1e-7 if dtype == np.float32 else 1e-12  # float32 data: moments from float32 blocks
    np.testing.assert_allclose(r, r_ref, rtol=st)
    np.testing.assert_allclose(d, d_ref, rtol=st, atol=1e-15)
    assert np.isclose(r, 1.5).any() or np.isclose(r, 1 / 1.5).any()
    assert np.isclose(np.abs(d), 0.7).any()
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * 10)
    m, v, _ = stats(x, axis)
    n = x.size // C
    np.testing.assert_allclose(rm, 0.9 * rm0 + 0.1 * m, rtol=st)
    np.testing.assert_allclose(rv, 0.9 * rv0 + 0.1 * v * n / (n - 1), rtol=st)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(v + 1e-5), rtol=st)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_renorm_with_r_1_d_0_is_plain_batch_norm(shape, axis):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    C = shape[axis]
    w, b = np.linspace(0.5, 2, C), np.linspace(-1, 1, C)
    y, mean, invstd, r, d = cybn.batch_norm_renorm(x, w, b, running_mean=np.zeros(C),
                                                   running_var=np.ones(C), rmax=1.0,
                                                   dmax=0.0, axis=axis)
    assert (r == 1).all() and (d == 0).all()
    y_bn, mean_bn, invstd_bn = cybn.batch_norm_train(x, w, b, axis=axis)
    np.testing.assert_allclose(y, y_bn, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mean, mean_bn)
    dy = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    for got, want in zip(cybn.batch_norm_renorm_backward(dy, x, w, mean, invstd, r, d,
                                                         axis=axis),
                         cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,axis", [((4, 3, 2, 3), 1), ((4, 2, 3, 3), -1)])
def test_renorm_gradients_by_finite_differences(shape, axis):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.3
    _, mean, invstd, r, d = cybn.batch_norm_renorm(x, w, b, running_mean=rm.copy(),
                                                   running_var=rv.copy(), rmax=1.2, dmax=0.3,
                                                   axis=axis)
    dy = rng.standard_normal(shape)
    dx, dw, db = cybn.batch_norm_renorm_backward(dy, x, w, mean, invstd, r, d, axis=axis)

    def f():  # r and d held constant, as in the paper
        return float(np.sum(dy * renorm_reference(x, w, b, rm, rv, 0, 0, 1e-5, axis, r, d)[0]))

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-6, atol=1e-8)


def test_renorm_schedule_is_the_paper_s_warm_up():
    s = cybn.RenormSchedule()
    assert s(0) == (1.0, 0.0) and s(4999) == (1.0, 0.0) and s(5000) == (1.0, 0.0)
    rmax, dmax = s(25000)
    assert np.isclose(rmax, 1 + 2 * 20000 / 35000) and dmax == 5.0
    assert s(40000) == (3.0, 5.0) and s(10 ** 6) == (3.0, 5.0)
    short = cybn.RenormSchedule(rmax=2.0, dmax=1.0, warmup=2, rmax_steps=4, dmax_steps=3)
    assert [short(t) for t in range(5)] == [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.5, 1.0),
                                           (2.0, 1.0)]
    with pytest.raises(ValueError, match="rmax must be a number >= 1"):
        cybn.RenormSchedule(rmax=0.5)


def test_renorm_layer_follows_its_schedule_and_infers_as_plain_bn():
    sched = cybn.RenormSchedule(rmax=2.0, dmax=1.0, warmup=1, rmax_steps=3, dmax_steps=2)
    layer = cybn.BatchNorm2d(3, renorm=True, renorm_clipping=sched, dtype=np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    rng = np.random.default_rng(4)
    for step in range(4):
        x = rng.standard_normal((5, 3, 4, 4)) * 3 + 2
        rmax, dmax = sched(step)
        ref, _, _ = renorm_reference(x, np.ones(3), np.zeros(3), rm, rv, rmax, dmax, 1e-5, 1)
        np.testing.assert_allclose(layer(x), ref, rtol=1e-12, atol=1e-12)
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv)
        np.testing.assert_allclose(layer.running_var, rv, rtol=1e-12)
        dy = rng.standard_normal(x.shape)
        layer.zero_grad()
        dx = layer.backward(dy)
        assert dx.shape == x.shape and np.isfinite(layer.weight.grad).all()
    layer.eval()
    np.testing.assert_allclose(layer(x), cybn.batch_norm_infer(x, rm, rv), rtol=1e-12)
    static = cybn.BatchNorm1d(3, renorm=True, renorm_clipping=(1.0, 0.0), dtype=np.float64)
    x = rng.standard_normal((8, 3))
    np.testing.assert_allclose(static(x), cybn.batch_norm_train(x)[0], rtol=1e-12)
    assert "renorm=True" in repr(static)


@pytest.mark.parametrize("kwargs,match", [
    ({"renorm": True, "activation": "relu"}, "renorm needs"),
    ({"renorm": True, "track_running_stats": False}, "renorm needs"),
    ({"renorm_clipping": (3, 5)}, "renorm is False"),
    ({"renorm": True, "renorm_clipping": (0.5, 1)}, "rmax >= 1"),
    ({"renorm": True, "renorm_clipping": 3}, "renorm_clipping must be"),
    ({"ghost_batch_size": 0}, "ghost_batch_size must be"),
    ({"ghost_batch_size": 4, "momentum": None}, "fixed momentum"),
])
def test_variant_layer_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cybn.BatchNorm1d(3, **kwargs)


def ghost_reference(x, axis, g, w, b, rm, rv, momentum=0.1, eps=1e-5):
    """y and the running statistics after updating once per ghost batch, in order."""
    y = np.empty(x.shape)
    rm, rv = rm.copy(), rv.copy()
    for start in range(0, x.shape[0], g):
        part = x[start:start + g]
        mean, var, _ = stats(part, axis)
        s = bshape(part, axis)
        y[start:start + g] = ((part - mean.reshape(s)) / np.sqrt(var + eps).reshape(s)
                              * w.reshape(s) + b.reshape(s))
        n = part.size // part.shape[axis]
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    return y, rm, rv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("g", [2, 4, 6, 100])  # uneven last ghost batch for 4 (and 7 rows)
def test_ghost_forward_matches_a_loop_over_ghost_batches(shape, axis, g, dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    if x.ndim == 2 and shape[0] % g == 1:
        pytest.skip("a last ghost batch of one value per channel: tested separately")
    y, mean, invstd = cybn.batch_norm_ghost(x, w, b, ghost_batch_size=g, running_mean=rm,
                                            running_var=rv, axis=axis)
    ref, rm_ref, rv_ref = ghost_reference(x, axis, g, w, b, np.zeros(C), np.ones(C))
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * 10)
    st = 1e-7 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rm, rm_ref, rtol=st, atol=1e-15)
    np.testing.assert_allclose(rv, rv_ref, rtol=st)
    assert mean.shape == invstd.shape == (-(-shape[0] // g), C)
    if g >= shape[0]:  # one ghost batch: plain batch norm, bit for bit
        np.testing.assert_array_equal(y, cybn.batch_norm_train(x, w, b, axis=axis)[0])


@pytest.mark.parametrize("shape,axis", [((5, 3, 2, 2), 1), ((5, 2, 2, 3), -1)])
def test_ghost_gradients_by_finite_differences(shape, axis):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    _, mean, invstd = cybn.batch_norm_ghost(x, w, b, ghost_batch_size=2, axis=axis)
    dy = rng.standard_normal(shape)
    dx, dw, db = cybn.batch_norm_ghost_backward(dy, x, w, mean, invstd, ghost_batch_size=2,
                                                axis=axis)

    def f():
        return float(np.sum(dy * ghost_reference(x, axis, 2, w, b, np.zeros(C),
                                                 np.ones(C))[0]))

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-6, atol=1e-8)


def test_a_last_ghost_batch_of_one_value_raises_before_anything_changes():
    x = np.random.default_rng(7).standard_normal((5, 3))
    rm, rv, out = np.zeros(3), np.ones(3), np.full((5, 3), 7.0)
    with pytest.raises(ValueError, match="last ghost batch has one value per channel"):
        cybn.batch_norm_ghost(x, ghost_batch_size=2, running_mean=rm, running_var=rv, out=out)
    assert (rm == 0).all() and (rv == 1).all() and (out == 7).all()
    y, mean, _ = cybn.batch_norm_ghost(x, ghost_batch_size=2, running_mean=rm, running_var=rv,
                                       on_degenerate="skip_update")
    assert (y[4] == 0).all() and mean.shape == (3, 3)


def test_ghost_layer_with_fused_relu_trains_like_the_functional_loop():
    layer = cybn.BatchNorm2d(3, ghost_batch_size=4, activation="relu", dtype=np.float64,
                             channels_last=True)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 3, 3, 3))
    y = layer(x)
    ref, rm, rv = ghost_reference(x, -1, 4, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.running_var, rv, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 3
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    _, mean, invstd = cybn.batch_norm_ghost(x, ghost_batch_size=4, axis=-1)
    want = cybn.batch_norm_ghost_backward(dy, x, np.ones(3), mean, invstd, ghost_batch_size=4,
                                          axis=-1, activation="relu", bias=np.zeros(3))
    np.testing.assert_allclose(dx, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, want[1], rtol=1e-12)
    layer.eval()
    np.testing.assert_allclose(layer(x), np.maximum(cybn.batch_norm_infer(
        x, layer.running_mean, layer.running_var, axis=-1), 0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((12, 3, 70, 40), 1), ((12, 7, 9, 16), -1),
                                        ((30, 33), 1), ((10, 3, 5), 1)])
def test_the_ghost_kernel_gives_the_bits_of_one_call_per_ghost_batch(shape, axis, dtype):
    """Equal ghost batches run as one kernel call (a ghost batch per work item); each equals
    batch_norm_train / batch_norm_backward on that ghost batch, for any thread count."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    g = 3  # 12 / 3 (and 30, 10 / 3): equal ghost batches, plus a remainder for 10
    for threads in (1, 2, 3):
        with threadpool_limits(limits=threads, user_api="openmp"):
            rm, rv = np.zeros(C), np.ones(C)
            y, mean, invstd = cybn.batch_norm_ghost(x, w, b, ghost_batch_size=g,
                                                    running_mean=rm, running_var=rv, axis=axis)
            dx, dw, db = cybn.batch_norm_ghost_backward(dy, x, w, mean, invstd,
                                                        ghost_batch_size=g, axis=axis)
            rm2, rv2 = np.zeros(C), np.ones(C)
            for k, start in enumerate(range(0, shape[0], g)):
                s = slice(start, start + g)
                yk, mk, ik = cybn.batch_norm_train(x[s], w, b, running_mean=rm2,
                                                   running_var=rv2, axis=axis)
                np.testing.assert_array_equal(y[s], yk)
                np.testing.assert_array_equal(mean[k], mk)
                np.testing.assert_array_equal(invstd[k], ik)
                dxk = cybn.batch_norm_backward(dy[s], x[s], w, mk, ik, axis=axis)[0]
                np.testing.assert_array_equal(dx[s], dxk)
            np.testing.assert_array_equal(rm, rm2)
            np.testing.assert_array_equal(rv, rv2)
            if threads == 1:
                first = (dx, dw, db)
            else:
                for got, want in zip((dx, dw, db), first):
                    np.testing.assert_array_equal(got, want)


def test_ghost_backward_out_may_be_dy():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 3, 4, 4))
    dy = rng.standard_normal(x.shape)
    _, mean, invstd = cybn.batch_norm_ghost(x, ghost_batch_size=2)
    want = cybn.batch_norm_ghost_backward(dy, x, None, mean, invstd, ghost_batch_size=2)
    got = cybn.batch_norm_ghost_backward(dy, x, None, mean, invstd, ghost_batch_size=2, out=dy)
    assert got[0] is dy
    np.testing.assert_array_equal(dy, want[0])
    with pytest.raises(ValueError):
        cybn.batch_norm_ghost_backward(dy, x, None, mean, invstd, ghost_batch_size=2,
                                       out=np.empty((8, 3, 4, 5)))
