"""Every op against the float64 reference, over ranks, layouts, dtypes, threads and edge sizes."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from conftest import assert_close, stat_rtol

import cybn
from cybn.ops import _layout
import reference as ref

DTYPES = [np.float32, np.float64]

# (shape, axis): ranks 2 to 5; channels-first, channels-last and a middle axis; C = 1,
# N = 1 with spatial > 1, C above the thread count, odd sizes; both kernel families
# (plane: inner >= 32, row: inner < 32), plane blocks split in several (inner > 4096),
# few channels (blocks across threads) and many (whole channels per thread).
CASES = [
    ((16, 5), 1),
    ((7, 1), 1),
    ((3, 33), -1),
    ((2, 3, 50), 1),
    ((4, 37, 3), 1),
    ((5, 17, 8), -1),
    ((1, 4, 9, 11), 1),
    ((2, 3, 67, 71), 1),
    ((2, 1, 70, 70), 1),
    ((3, 64, 5, 7), 1),
    ((7, 33, 17, 19), 1),
    ((7, 17, 19, 33), -1),
    ((2, 9, 9, 3), -1),
    ((1, 6, 6, 1), -1),
    ((4, 5, 6, 7), 2),
    ((2, 3, 4, 5, 6), 1),
    ((2, 4, 5, 6, 3), -1),
    ((3, 2, 9, 4, 5), 2),
    ((1, 2, 5000), 1),
]


def make(rng, shape, axis, dtype, offset=0.0):
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    C = shape[axis]
    w = rng.standard_normal(C)
    b = rng.standard_normal(C)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES)
def test_train_matches_reference(shape, axis, dtype, threads, rng):
    x, w, b = make(rng, shape, axis, dtype, offset=3.0)
    y, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis)
    y_ref, mean_ref, invstd_ref, _ = ref.train(x, w, b, axis=axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == np.float64 and invstd.dtype == np.float64
    assert_close(y, y_ref, dtype)
    np.testing.assert_allclose(mean, mean_ref, rtol=stat_rtol(dtype), atol=1e-13)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=stat_rtol(dtype, 1e-12))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES)
def test_infer_matches_reference(shape, axis, dtype, threads, rng):
    x, w, b = make(rng, shape, axis, dtype)
    C = shape[axis]
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, C)
    y = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis, eps=1e-3)
    assert y.dtype == dtype
    assert_close(y, ref.infer(x, rm, rv, w, b, eps=1e-3, axis=axis), dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES)
def test_backward_matches_reference(shape, axis, dtype, training, threads, rng):
    x, w, _ = make(rng, shape, axis, dtype, offset=-2.0)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    if training:
        _, mean, invstd, _ = ref.train(x, axis=axis)
    else:
        mean, invstd = rng.standard_normal(C), rng.uniform(0.5, 2.0, C)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd, training=training, axis=axis)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, w, mean, invstd, training=training, axis=axis)
    assert dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    assert_close(dx, dx_ref, dtype)
    assert_close(dw, dw_ref, dtype, scale=max(1.0, np.abs(dy).sum() / C))
    assert_close(db, db_ref, dtype, scale=max(1.0, np.abs(dy).sum() / C))


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", CASES)
def test_moments_match_reference(shape, axis, dtype, ddof, threads, rng):
    x, _, _ = make(rng, shape, axis, dtype, offset=10.0)
    mean, var = cybn.moments(x, axis=axis, ddof=ddof)
    mean_ref, var_ref = ref.moments(x, axis=axis, ddof=ddof)
    np.testing.assert_allclose(mean, mean_ref, rtol=stat_rtol(dtype))
    np.testing.assert_allclose(var, var_ref, rtol=stat_rtol(dtype, 1e-11))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((8, 6, 5, 5), 1), ((8, 5, 5, 6), -1), ((40, 6), 1)])
def test_running_statistics_update(shape, axis, dtype, rng):
    C = shape[axis]
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C)
    rm_ref, rv_ref = rm.astype(np.float64), rv.copy()
    for step in range(5):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=0.3, axis=axis)
        rm_ref, rv_ref = ref.running_update(rm_ref, rv_ref, x, 0.3, axis=axis)
    assert rm.dtype == np.float32 and rv.dtype == np.float64
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=stat_rtol(dtype, 1e-12))


def test_momentum_zero_and_one_keep_or_replace(rng):
    x = rng.standard_normal((6, 3, 4))
    rm, rv = np.full(3, 7.0), np.full(3, 9.0)
    cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=0.0)
    np.testing.assert_array_equal(rm, 7.0)
    np.testing.assert_array_equal(rv, 9.0)
    cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=1.0)
    mean_ref, var_ref = ref.moments(x, 1, ddof=1)
    np.testing.assert_allclose(rm, mean_ref, rtol=1e-13)
    np.testing.assert_allclose(rv, var_ref, rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_channel_dtypes_independent_of_x(dtype, rng):
    x = rng.standard_normal((4, 3, 10)).astype(dtype)
    w32, b64 = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3)
    y, _, _ = cybn.batch_norm_train(x, w32, b64)
    assert y.dtype == dtype
    assert_close(y, ref.train(x, w32, b64)[0], dtype)


def test_batch_norm_matches_torch_semantics(rng):
    x = rng.standard_normal((5, 4, 6))
    rm, rv = np.zeros(4), np.ones(4)
    y = cybn.batch_norm(x, rm, rv, training=True, momentum=0.2)
    assert_close(y, ref.train(x)[0], np.float64)
    rm_ref, rv_ref = ref.running_update(np.zeros(4), np.ones(4), x, 0.2)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-13)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-13)
    y_eval = cybn.batch_norm(x, rm, rv, training=False)
    assert_close(y_eval, ref.infer(x, rm, rv), np.float64)
    # training without running statistics is allowed, like torch
    y2 = cybn.batch_norm(x, None, None, training=True)
    assert_close(y2, ref.train(x)[0], np.float64)


@pytest.mark.parametrize("op", ["train", "infer", "backward"])
@pytest.mark.parametrize("axis", [1, -1])
def test_out_in_place_equals_out_of_place(op, axis, rng):
    shape = (4, 6, 7, 5) if axis == 1 else (4, 7, 5, 6)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[axis]
    rm, rv = rng.standard_normal(C), rng.uniform(1, 2, C)
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)

    def run(out=None, xx=None, gg=None):
        xx = x if xx is None else xx
        gg = dy if gg is None else gg
        if op == "train":
            return cybn.batch_norm_train(xx, axis=axis, out=out)[0]
        if op == "infer":
            return cybn.batch_norm_infer(xx, rm, rv, axis=axis, out=out)
        return cybn.batch_norm_backward(gg, xx, None, mean, invstd, axis=axis, out=out)[0]

    expected = run()
    out = np.empty_like(x)
    assert run(out=out) is out
    np.testing.assert_array_equal(out, expected)
    xc = x.copy()
    res = run(out=xc, xx=xc)
    assert res is xc
    np.testing.assert_array_equal(xc, expected)
    if op == "backward":
        gc = dy.copy()
        res = run(out=gc, gg=gc)
        np.testing.assert_array_equal(gc, expected)


@pytest.mark.parametrize("op", ["train", "infer", "backward"])
def test_strided_negative_and_fortran_inputs(op, rng):
    base = rng.standard_normal((6, 10, 9, 8)).astype(np.float64)
    views = [base[::2, ::3, :, ::-1], base[:, 2:7, ::-2, :], np.asfortranarray(base),
             base.transpose(0, 2, 3, 1)]
    for v in views:
        C = v.shape[1]
        c = np.ascontiguousarray(v)
        if op == "train":
            got, want = cybn.batch_norm_train(v)[0], cybn.batch_norm_train(c)[0]
        elif op == "infer":
            rm, rv = np.arange(C) * 0.1, np.arange(1, C + 1) * 0.5
            got, want = cybn.batch_norm_infer(v, rm, rv), cybn.batch_norm_infer(c, rm, rv)
        else:
            _, m, s = cybn.batch_norm_train(c)
            got = cybn.batch_norm_backward(v[::-1], v, None, m, s)[0]
            want = cybn.batch_norm_backward(np.ascontiguousarray(v[::-1]), c, None, m, s)[0]
        np.testing.assert_array_equal(got, want)
        assert_close(got, ref.train(c)[0] if op == "train" else want, np.float64)


def test_out_strided_and_in_place_strided(rng):
    base = rng.standard_normal((4, 6, 10, 10))
    x = base[:, :, ::2, ::2]
    expected = ref.train(x)[0]
    out_base = np.zeros((4, 6, 10, 10))
    out = out_base[:, :, 1::2, 1::2]
    cybn.batch_norm_train(x, out=out)
    assert_close(out, expected, np.float64)
    assert np.all(out_base[:, :, ::2, :] == 0)
    cybn.batch_norm_train(x, out=x)
    assert_close(base[:, :, ::2, ::2], expected, np.float64)


def test_lists_are_accepted(rng):
    x = [[1.0, 2.0], [3.0, 5.0], [4.0, 0.0]]
    y, mean, _ = cybn.batch_norm_train(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(mean, [8 / 3, 7 / 3])
    yi = cybn.batch_norm_infer([[1, 2], [3, 4]], [0, 0], [1, 1], eps=1e-12)
    np.testing.assert_allclose(yi, [[1, 2], [3, 4]])


def test_empty_batch(rng):
    x = np.empty((0, 3, 4), dtype=np.float32)
    rm, rv = np.ones(3), np.ones(3)
    y, mean, invstd = cybn.batch_norm_train(x, running_mean=rm, running_var=rv)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.isnan(mean)) and np.all(np.isnan(invstd))
    np.testing.assert_array_equal(rm, 1.0)
    np.testing.assert_array_equal(rv, 1.0)
    assert cybn.batch_norm_infer(x, rm, rv).shape == x.shape
    dx, dw, db = cybn.batch_norm_backward(x, x, None, rm, rv)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)
    m, v = cybn.moments(np.empty((4, 0)))
    assert m.shape == (0,) and v.shape == (0,)


@pytest.mark.parametrize("axis", [1, -1])
def test_nan_inf_confined_to_their_channel(axis, rng):
    shape = (4, 5, 6, 7) if axis == 1 else (4, 6, 7, 5)
    x = rng.standard_normal(shape)
    idx = [slice(None)] * 4
    idx[axis] = 2
    x[tuple(idx)][0, 0, 0] = np.nan
    idx[axis] = 4
    x[tuple(idx)][1, 1, 1] = np.inf
    y, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    ok = [0, 1, 3]
    assert np.all(np.isfinite(np.take(y, ok, axis=axis)))
    assert np.all(np.isnan(np.take(y, 2, axis=axis)))
    assert np.isnan(mean[2]) and not np.isfinite(mean[4])
    dy = rng.standard_normal(shape)
    dx, dw, db = cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=axis)
    assert np.all(np.isfinite(np.take(dx, ok, axis=axis)))
    assert np.all(np.isfinite(dw[ok])) and np.all(np.isfinite(db))
    assert np.isnan(dw[2])
    _, good_mean, good_invstd, _ = ref.train(np.take(x, ok, axis=axis), axis=axis)
    np.testing.assert_allclose(mean[ok], good_mean, rtol=1e-13)


FAST_CASES = [((2, 3, 4, 4), 1), ((2, 4, 4, 3), -1), ((5, 7), 1), ((9, 17, 21, 29), 1),
              ((3, 5, 7), 2), ((1, 2, 3), 1),
              # the row family: (N, C) batches, channels-last maps, short channels-first runs
              ((64, 512), 1), ((96, 5, 5, 40), -1), ((30, 48, 4, 4), 1), ((700, 9), 1)]
# mid sizes (threads from MIN_PARALLEL_SIZE on), and beyond 4 MiB in float64 (the fast
# path's limit follows the cache: _schedule.fast_max_size)
MID_CASES = [((8, 64, 28, 28), 1), ((8, 28, 28, 64), -1), ((1200, 160), 1),
             ((16, 96, 7, 7), 1), ((6, 64, 40, 48), 1), ((6, 40, 48, 64), -1)]


def run_ops(x, dy, w, b, rm, rv, axis, out=None):
    """Every op once: train (with running statistics), infer, backward both modes."""
    res = list(cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, axis=axis,
                                     out=None if out is None else out()))
    res.append(cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis,
                                     out=None if out is None else out()))
    for training in (True, False):
        res.extend(cybn.batch_norm_backward(dy, x, w, res[1], res[2], training=training,
                                            axis=axis, out=None if out is None else out()))
    return res + [rm, rv]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("min_parallel", [1 << 17, 1])
@pytest.mark.parametrize("shape,axis", FAST_CASES + MID_CASES)
def test_fast_path_gives_the_bits_of_the_full_path(shape, axis, dtype, min_parallel, rng,
                                                   monkeypatch):
    """Plain calls up to mid size (with or without out=) take one compiled entry point, on
    one thread below min_parallel elements and on two from there; with it disabled every
    call takes the full Python path. Both give the same bits, running statistics
    included."""
    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", min_parallel)
    monkeypatch.setattr(_schedule, "FAST_MAX_SIZE", dict.fromkeys(_schedule.FAST_MAX_SIZE,
                                                                 1 << 30))
    with threadpool_limits(limits=2, user_api="openmp"):
        _fast_and_full_paths_agree(shape, axis, dtype, rng, monkeypatch)


def _fast_and_full_paths_agree(shape, axis, dtype, rng, monkeypatch):
    from cybn import _kernels
    from cybn.ops import _schedule

    x, w, b = make(rng, shape, axis, dtype, offset=5.0)
    C = shape[axis]
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(0.5, 2, C)
    # the fast path is really taken for these calls, with and without out=
    max_size = _schedule.FAST_MAX_SIZE["infer"]
    assert _kernels.fast_infer(x, rm, rv, w, b, 1e-5, axis, None, max_size) is not None
    out = np.empty_like(x)
    assert _kernels.fast_infer(x, rm, rv, w, b, 1e-5, axis, out, max_size) is out
    fast = run_ops(x, dy, w, b, rm.copy(), rv.copy(), axis)
    fast_out = run_ops(x, dy, w, b, rm.copy(), rv.copy(), axis, out=lambda: np.empty_like(x))
    for name in ("fast_infer", "fast_train", "fast_backward"):
        monkeypatch.setattr(_kernels, name, lambda *args: None)
    full = run_ops(x, dy, w, b, rm.copy(), rv.copy(), axis)
    for a, b_, c in zip(fast, fast_out, full):
        assert a.dtype == b_.dtype == c.dtype
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b_, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_path_out_in_place_and_overlap(dtype, rng):
    """out= on the fast path: exactly x (or dy in backward) works in place; an out that
    overlaps an input any other way, or a per-channel argument, is left to the full path,
    which rejects it before writing."""
    shape, axis = (2, 3, 4, 4), 1
    x, w, b = make(rng, shape, axis, dtype, offset=5.0)
    dy = rng.standard_normal(shape).astype(dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    y_ref = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis)
    xi = x.copy()
    assert cybn.batch_norm_infer(xi, rm, rv, w, b, axis=axis, out=xi) is xi
    np.testing.assert_array_equal(xi, y_ref)
    t_ref, m, i = cybn.batch_norm_train(x, w, b, axis=axis)
    xi = x.copy()
    np.testing.assert_array_equal(cybn.batch_norm_train(xi, w, b, axis=axis, out=xi)[0], t_ref)
    np.testing.assert_array_equal(xi, t_ref)
    dx_ref = cybn.batch_norm_backward(dy, x, w, m, i, axis=axis)[0]
    for which in ("dy", "x"):
        g, xx = dy.copy(), x.copy()
        target = g if which == "dy" else xx
        cybn.batch_norm_backward(g, xx, w, m, i, axis=axis, out=target)
        np.testing.assert_array_equal(target, dx_ref)
    # partial overlap with x: rejected, nothing written
    buf = np.concatenate([x.ravel(), x.ravel()])
    xs = buf[: x.size].reshape(shape)
    shifted = buf[1: x.size + 1].reshape(shape)
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps x"):
        cybn.batch_norm_infer(xs, rm, rv, w, b, axis=axis, out=shifted)
    np.testing.assert_array_equal(buf, before)


def test_fast_path_uses_the_family_rule_of_the_full_path():
    """The compiled fast path repeats the layout module's plane-family rule in C; they must
    agree, or the two paths would pick different blocks (and bits)."""
    from cybn import _kernels

    assert _kernels.FAST_PLANE_RULE == (_layout.SMALL_SIZE, _layout.MIN_PLANE_INNER,
                                        _layout.MIN_ROW_WIDTH)
