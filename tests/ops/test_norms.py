"""Layer, group, instance and RMS norm against the float64 reference and finite differences;
bits for any thread count; offset data; bad arguments."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn
import reference as ref
from conftest import assert_close, numeric_grad, stat_rtol

DTYPES = [np.float32, np.float64]

# (shape, channel axis, groups): channels-first, channels-last, a middle axis; plane and row
# families per sample, samples split across or inside threads, folded channels-first.
GROUP_CASES = [
    ((2, 6, 5, 7), 1, 3),
    ((2, 5, 7, 6), -1, 2),
    ((3, 4, 6), 1, 4),         # instance-like: one channel per group
    ((1, 8, 33), 1, 1),        # one group, one sample
    ((1, 9, 10, 4), -1, 4),    # one sample, channels-last, one channel per group
    ((5, 12), 1, 3),           # rank 2: no spatial axes
    ((2, 3, 4, 4, 2), 1, 3),   # rank 5
    ((2, 7, 8, 40), 2, 1),     # channel axis in the middle (plane family per sample)
    ((3, 40, 70, 8), -1, 4),   # channels-last, row family per sample
    ((4, 1024, 8), -1, 4),     # channels-last, short rows folded (k > 1)
    ((2, 64, 48, 48), 1, 32),  # large enough for both threads; a group per thread item
    ((8, 24, 9, 9), 1, 8),     # channels-first, 64 groups: a group per thread item
]


def data(shape, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


def per_channel(C, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(C), rng.standard_normal(C)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,groups", GROUP_CASES)
def test_group_norm_matches_reference(shape, axis, groups, dtype, threads):
    x = data(shape, dtype)
    C = shape[axis]
    w, b = per_channel(C)
    y, mean, invstd = cybn.group_norm(x, groups, w, b, eps=1e-5, axis=axis)
    ry, rmean, rinv = ref.group_norm(x, groups, w, b, eps=1e-5, axis=axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.shape == invstd.shape == (shape[0], groups) and mean.dtype == np.float64
    assert_close(y, ry, dtype)
    np.testing.assert_allclose(mean, rmean, rtol=stat_rtol(dtype))
    np.testing.assert_allclose(invstd, rinv, rtol=stat_rtol(dtype) * 2)

    g = data(shape, dtype, seed=5, offset=0.0)
    dx, dw, db = cybn.group_norm_backward(g, x, groups, w, mean, invstd, axis=axis)
    rdx, rdw, rdb = ref.group_norm_backward(g, x, groups, w, mean, invstd, axis=axis)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert_close(dx, rdx, dtype)
    assert_close(dw, rdw, dtype, scale=max(1.0, float(np.abs(rdw).max())) * 4)
    assert_close(db, rdb, dtype, scale=max(1.0, float(np.abs(rdb).max())) * 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((2, 3, 5, 7), 1), ((2, 5, 7, 3), -1), ((4, 6, 50), 1),
                                        ((4, 16, 6, 6), 1),
                                        ((3, 80, 16), -1)])
def test_instance_norm_matches_reference_and_updates_running_stats(shape, axis, dtype,
                                                                   threads):
    x = data(shape, dtype)
    C = shape[axis]
    w, b = per_channel(C)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, mean, invstd = cybn.instance_norm(x, w, b, running_mean=rm, running_var=rv,
                                         momentum=0.2, axis=axis)
    ry, rmean, rinv = ref.group_norm(x, C, w, b, axis=axis)
    assert mean.shape == (shape[0], C)
    assert_close(y, ry, dtype)
    np.testing.assert_allclose(mean, rmean, rtol=stat_rtol(dtype))
    # PyTorch's convention: the batch average of each instance's (unbiased) statistics
    moved = np.moveaxis(x.astype(np.float64), axis, 1).reshape(shape[0], C, -1)
    np.testing.assert_allclose(rm, 0.2 * moved.mean(axis=2).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(rv, 0.8 + 0.2 * moved.var(axis=2, ddof=1).mean(axis=0),
                               rtol=1e-6)

    g = data(shape, dtype, seed=6, offset=0.0)
    dx, dw, db = cybn.instance_norm_backward(g, x, w, mean, invstd, axis=axis)
    rdx, rdw, rdb = ref.group_norm_backward(g, x, C, w, mean, invstd, axis=axis)
    assert_close(dx, rdx, dtype)
    assert_close(dw, rdw, dtype, scale=max(1.0, float(np.abs(rdw).max())) * 4)


@pytest.mark.parametrize("axis", [1, -1])
def test_instance_norm_with_running_stats_is_batch_norm_inference(axis):
    shape = (3, 4, 5, 6) if axis == 1 else (3, 5, 6, 4)
    x = data(shape, np.float32)
    w, b = per_channel(4)
    rm, rv = np.array([0.5, 1.0, -1.0, 2.0]), np.array([1.0, 2.0, 0.5, 3.0])
    y, mean, invstd = cybn.instance_norm(x, w, b, running_mean=rm, running_var=rv,
                                         use_input_stats=False, axis=axis)
    np.testing.assert_array_equal(y, cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis))
    np.testing.assert_array_equal(mean, rm)
    g = data(shape, np.float32, seed=2)
    dx, dw, db = cybn.instance_norm_backward(g, x, w, mean, invstd, use_input_stats=False,
                                             axis=axis)
    bdx, bdw, bdb = cybn.batch_norm_backward(g, x, w, mean, invstd, training=False, axis=axis)
    np.testing.assert_array_equal(dx, bdx)
    np.testing.assert_array_equal(dw, bdw)


LAYER_CASES = [((6, 10), (10,)), ((2, 3, 4, 5), (4, 5)), ((7,), (7,)), ((3, 1), (1,)),
               ((40, 300), (300,)), ((3, 5, 4100), (4100,)), ((2, 3, 64), (3, 64))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized", LAYER_CASES)
def test_layer_norm_matches_reference(shape, normalized, dtype, threads):
    x = data(shape, dtype)
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal(normalized), rng.standard_normal(normalized)
    y, mean, invstd = cybn.layer_norm(x, normalized, w, b, eps=1e-5)
    ry, rmean, rinv = ref.layer_norm(x, normalized, w, b, eps=1e-5)
    assert y.dtype == dtype and mean.shape == shape[:len(shape) - len(normalized)]
    assert_close(y, ry, dtype, scale=max(1.0, float(np.abs(ry).max())) * 2)
    np.testing.assert_allclose(mean, rmean, rtol=stat_rtol(dtype))
    np.testing.assert_allclose(invstd, rinv, rtol=stat_rtol(dtype) * 2)

    g = data(shape, dtype, seed=7, offset=0.0)
    dx, dw, db = cybn.layer_norm_backward(g, x, w, mean, invstd, normalized)
    rdx, rdw, rdb = ref.layer_norm_backward(g, x, w, mean, invstd, normalized)
    assert dw.shape == db.shape == tuple(normalized) and dx.dtype == dtype
    assert_close(dx, rdx, dtype, scale=max(1.0, float(np.abs(rdx).max())) * 4)
    assert_close(dw, rdw, dtype, scale=max(1.0, float(np.abs(rdw).max())) * 4)
    assert_close(db, rdb, dtype, scale=max(1.0, float(np.abs(rdb).max())) * 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized", LAYER_CASES)
def test_rms_norm_matches_reference(shape, normalized, dtype, threads):
    x = data(shape, dtype, offset=0.5)
    w = np.random.default_rng(4).standard_normal(normalized)
    y, invrms = cybn.rms_norm(x, normalized, w, eps=1e-6)
    ry, rinv = ref.rms_norm(x, normalized, w, eps=1e-6)
    assert_close(y, ry, dtype, scale=max(1.0, float(np.abs(ry).max())) * 2)
    np.testing.assert_allclose(invrms, rinv, rtol=stat_rtol(dtype) * 2)
    g = data(shape, dtype, seed=8, offset=0.0)
    dx, dw = cybn.rms_norm_backward(g, x, w, invrms, normalized)
    rdx, rdw = ref.rms_norm_backward(g, x, w, invrms, normalized)
    assert_close(dx, rdx, dtype, scale=max(1.0, float(np.abs(rdx).max())) * 4)
    assert_close(dw, rdw, dtype, scale=max(1.0, float(np.abs(rdw).max())) * 4)


def test_rms_norm_default_eps_is_the_dtypes_machine_epsilon():
    x = np.zeros((2, 4), np.float32)
    x[0] = 1e-4
    _, invrms = cybn.rms_norm(x, 4)
    assert invrms[1] == pytest.approx(1 / np.sqrt(np.finfo(np.float32).eps))
    assert invrms[0] == pytest.approx(1 / np.sqrt(1e-8 + np.finfo(np.float32).eps))


# --- gradients by finite differences (float64) -------------------------------------------

@pytest.mark.parametrize("shape,axis,groups", [((2, 4, 3, 2), 1, 2), ((2, 3, 2, 4), -1, 2),
                                               ((3, 3, 5), 1, 3)])
def test_group_norm_gradient_matches_finite_differences(shape, axis, groups):
    x = data(shape, np.float64)
    w, b = per_channel(shape[axis])
    g = data(shape, np.float64, seed=9, offset=0.0)
    _, mean, invstd = cybn.group_norm(x, groups, w, b, axis=axis)
    dx, dw, db = cybn.group_norm_backward(g, x, groups, w, mean, invstd, axis=axis)
    f = lambda: float(np.sum(cybn.group_norm(x, groups, w, b, axis=axis)[0] * g))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-5, atol=1e-7)


def test_instance_norm_gradient_matches_finite_differences():
    x = data((2, 3, 4, 2), np.float64)
    w, b = per_channel(3)
    g = data(x.shape, np.float64, seed=10, offset=0.0)
    _, mean, invstd = cybn.instance_norm(x, w, b)
    dx, dw, db = cybn.instance_norm_backward(g, x, w, mean, invstd)
    f = lambda: float(np.sum(cybn.instance_norm(x, w, b)[0] * g))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,normalized", [((3, 5), (5,)), ((2, 3, 4), (3, 4))])
def test_layer_and_rms_norm_gradients_match_finite_differences(shape, normalized):
    x = data(shape, np.float64)
    rng = np.random.default_rng(11)
    w, b = rng.standard_normal(normalized), rng.standard_normal(normalized)
    g = data(shape, np.float64, seed=12, offset=0.0)
    _, mean, invstd = cybn.layer_norm(x, normalized, w, b)
    dx, dw, db = cybn.layer_norm_backward(g, x, w, mean, invstd, normalized)
    f = lambda: float(np.sum(cybn.layer_norm(x, normalized, w, b)[0] * g))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-5, atol=1e-7)

    _, invrms = cybn.rms_norm(x, normalized, w, eps=1e-6)
    dx, dw = cybn.rms_norm_backward(g, x, w, invrms, normalized)
    f = lambda: float(np.sum(cybn.rms_norm(x, normalized, w, eps=1e-6)[0] * g))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-5, atol=1e-7)


# --- bits, accuracy, in place ----------------------------------------------------------------

def run_all(x_first, x_last, x_rows):
    outs = []
    outs += cybn.group_norm(x_first, 8, axis=1)
    y, mean, invstd = cybn.group_norm(x_first, 2, axis=1)  # few groups: the sample kernels
    outs += cybn.group_norm_backward(x_first * 0.5, x_first, 2, None, mean, invstd)
    outs += cybn.group_norm(x_last, 8, axis=-1)
    y, mean, invstd = cybn.group_norm(x_last, 4, axis=-1)
    outs += cybn.group_norm_backward(x_last * 0.5, x_last, 4, None, mean, invstd, axis=-1)
    y, mean, invstd = cybn.instance_norm(x_first)
    outs += cybn.instance_norm_backward(x_first * 0.5, x_first, None, mean, invstd)
    y, mean, invstd = cybn.layer_norm(x_rows, x_rows.shape[-1])
    outs += cybn.layer_norm_backward(x_rows * 0.5, x_rows, None, mean, invstd,
                                     x_rows.shape[-1])
    outs += cybn.rms_norm(x_rows, x_rows.shape[-1])
    return outs


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_any_thread_count(dtype, monkeypatch):
    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)
    x_first = data((6, 16, 20, 20), dtype)       # folded: one row of N*C channels
    x_last = data((6, 20, 20, 16), dtype)        # per-sample rows, split across threads
    x_big = data((2, 90, 90, 16), dtype)         # large samples, threads inside each
    x_rows = data((300, 70), dtype)
    results = {}
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="openmp"):
            results[n] = run_all(x_first, x_last, x_rows) + list(
                cybn.group_norm(x_big, 4, axis=-1))
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_accurate_on_offset_data(dtype):
    rng = np.random.default_rng(13)
    x64 = 1e5 + rng.standard_normal((4, 8, 30, 30))
    x = x64.astype(dtype)
    exact = x.astype(np.float64)
    for groups in (2, 8):  # per-sample kernels, and a group per thread item (64 rows)
        xg = np.concatenate([x, x[::-1]]) if groups == 8 else x
        _, mean, invstd = cybn.group_norm(xg, groups, eps=1e-12)
        _, rmean, rinv = ref.group_norm(xg.astype(np.float64), groups, eps=1e-12)
        np.testing.assert_allclose(1 / invstd ** 2, 1 / rinv ** 2, rtol=1e-6)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    _, mean, invstd = cybn.instance_norm(xl, axis=-1, eps=1e-12)
    _, rmean, rinv = ref.group_norm(xl.astype(np.float64), 8, eps=1e-12, axis=-1)
    np.testing.assert_allclose(1 / invstd ** 2, 1 / rinv ** 2, rtol=1e-6)
    _, mean, invstd = cybn.layer_norm(x.reshape(32, 900), 900, eps=1e-12)
    _, rmean, rinv = ref.layer_norm(exact.reshape(32, 900), (900,), eps=1e-12)
    np.testing.assert_allclose(1 / invstd ** 2, 1 / rinv ** 2, rtol=1e-6)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12)


def test_out_and_in_place_give_the_same_result():
    x = data((3, 8, 6, 6), np.float32)
    y, _, _ = cybn.group_norm(x, 4)
    out = np.empty_like(x)
    assert cybn.group_norm(x, 4, out=out)[0] is out
    np.testing.assert_array_equal(out, y)
    xc = x.copy()
    assert cybn.group_norm(xc, 4, out=xc)[0] is xc
    np.testing.assert_array_equal(xc, y)
    rows = x.reshape(24, 36)
    y, mean, invstd = cybn.layer_norm(rows, 36)
    rc = rows.copy()
    cybn.layer_norm(rc, 36, out=rc)
    np.testing.assert_array_equal(rc, y)
    g = data(rows.shape, np.float32, seed=3)
    dx, _, _ = cybn.layer_norm_backward(g, rows, None, mean, invstd, 36)
    gc = g.copy()
    cybn.layer_norm_backward(gc, rows, None, mean, invstd, 36, out=gc)
    np.testing.assert_array_equal(gc, dx)


def test_strided_input_gives_the_contiguous_result():
    x = data((4, 6, 10, 10), np.float64)
    strided = np.asfortranarray(x)
    np.testing.assert_array_equal(cybn.group_norm(strided, 3)[0], cybn.group_norm(x, 3)[0])
    np.testing.assert_array_equal(cybn.layer_norm(x[:, :, ::2], (5, 10))[0],
                                  cybn.layer_norm(x[:, :, ::2].copy(), (5, 10))[0])


# --- bad arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda x: cybn.group_norm(x, 4), ValueError, "num_groups"),
    (lambda x: cybn.group_norm(x, 2.0), TypeError, "num_groups"),
    (lambda x: cybn.group_norm(x, 3, axis=0), ValueError, "batch axis"),
    (lambda x: cybn.group_norm(x, 3, np.ones(4)), ValueError, "weight"),
    (lambda x: cybn.group_norm(x.astype(np.complex64), 3), TypeError, "x must have dtype"),
    (lambda x: cybn.group_norm_backward(x, x, 3, None, np.zeros((2, 2)), np.ones((2, 3))),
     ValueError, "mean must have shape"),
    (lambda x: cybn.instance_norm(x[:, :, :1, :1]), ValueError, "more than 1 spatial"),
    (lambda x: cybn.instance_norm(x, use_input_stats=False), ValueError, "required"),
    (lambda x: cybn.instance_norm(x, use_input_stats=1), TypeError, "use_input_stats"),
    (lambda x: cybn.layer_norm(x, (5, 4)), ValueError, "normalized_shape"),
    (lambda x: cybn.layer_norm(x, 5, np.ones(4)), ValueError, "weight"),
    (lambda x: cybn.layer_norm(x, "5"), ValueError, "normalized_shape"),
    (lambda x: cybn.layer_norm(x, 5, eps=0.0), ValueError, "eps"),
    (lambda x: cybn.rms_norm(x, 5, eps=-1.0), ValueError, "eps"),
    (lambda x: cybn.rms_norm_backward(x, x, None, np.ones(3), 5), ValueError, "invrms"),
    (lambda x: cybn.group_norm(x, 3, out=x[:, :, :, ::-1]), ValueError, "overlaps"),
])
def test_bad_arguments_raise_and_change_nothing(call, error, match):
    x = data((2, 6, 4, 5), np.float64)
    before = x.copy()
    with pytest.raises(error, match=match):
        call(x)
    np.testing.assert_array_equal(x, before)


def test_empty_input():
    x = np.empty((0, 6, 3, 3), np.float32)
    y, mean, invstd = cybn.group_norm(x, 3)
    assert y.shape == x.shape and mean.shape == (0, 3)
    y, mean, invstd = cybn.layer_norm(np.empty((0, 4)), 4)
    assert y.shape == (0, 4) and mean.shape == (0,)


def test_python_threads_give_the_serial_bits():
    import threading

    xs = [data((4, 16, 20, 20), np.float32, seed=s) for s in range(4)]
    serial = [cybn.group_norm(x, 4)[0] for x in xs] + [cybn.layer_norm(x, (16, 20, 20))[0]
                                                       for x in xs]
    results = [None] * 8

    def job(i):
        x = xs[i % 4]
        results[i] = cybn.group_norm(x, 4)[0] if i < 4 else cybn.layer_norm(x, (16, 20, 20))[0]

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a, b)


ROW_FAST_CASES = [((768,), 768), ((5, 768), 768), ((2, 3, 33), (33,)), ((300, 520), 520),
                  ((7, 1), 1)]


def _row_ops(x, dy, w, b, D, out=None):
    """Layer and RMS norm forward and backward (out: a callable giving each call's out)."""
    o = (lambda: None) if out is None else out
    y, mean, invstd = cybn.layer_norm(x, D, w, b, out=o())
    res = [y, mean, invstd]
    res += cybn.layer_norm_backward(dy, x, w, mean, invstd, D, out=o())
    r, invrms = cybn.rms_norm(x, D, w, out=o())
    res += [r, invrms]
    res += cybn.rms_norm_backward(dy, x, w, invrms, D, out=o())
    res += cybn.rms_norm(x, D, w, eps=1e-3, out=o())
    return res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,D", ROW_FAST_CASES)
@pytest.mark.parametrize("min_parallel", [1, 1 << 17])
def test_row_norm_fast_path_gives_the_bits_of_the_full_path(shape, D, dtype, min_parallel,
                                                            monkeypatch):
    """Layer and RMS norm calls with an int normalized shape take one compiled entry point
    (on the calling thread or, from min_parallel elements, on all threads); with it disabled
    every call takes the full Python path. The same bits, statistics and parameter
    gradients included, with and without out=."""
    from cybn import _kernels
    from cybn.ops import _schedule

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    n = shape[-1]
    w, b = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", min_parallel)
    assert _kernels.fast_rows_forward(x, D, w, b, 1e-5, None, True, min_parallel, 2) is not None
    with threadpool_limits(limits=2, user_api="openmp"):
        fast = _row_ops(x, dy, w, b, D)
        fast_out = _row_ops(x, dy, w, b, D, out=lambda: np.empty_like(x))
        for name in ("fast_rows_forward", "fast_rows_backward"):
            monkeypatch.setattr(_kernels, name, lambda *args: None)
        full = _row_ops(x, dy, w, b, D)
    for a, a_out, c in zip(fast, fast_out, full):
        assert a.dtype == a_out.dtype == c.dtype and a.shape == c.shape
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a_out, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_norm_fast_path_in_place_and_what_it_leaves_to_the_full_path(dtype):
    """out=x (forward) and out=dy or x (backward) work in place on the fast path; what it
    does not take (a partly overlapping out, a float16 weight, a list) goes to the full
    path, which answers or rejects it as before."""
    from cybn import _kernels

    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 40)).astype(dtype)
    dy = rng.standard_normal((6, 40)).astype(dtype)
    w = rng.standard_normal(40).astype(dtype)
    y, mean, invstd = cybn.layer_norm(x, 40, w, w)
    xi = x.copy()
    assert cybn.layer_norm(xi, 40, w, w, out=xi)[0] is xi
    np.testing.assert_array_equal(xi, y)
    dx = cybn.layer_norm_backward(dy, x, w, mean, invstd, 40)[0]
    for which in ("dy", "x"):
        g, xx = dy.copy(), x.copy()
        target = g if which == "dy" else xx
        cybn.layer_norm_backward(g, xx, w, mean, invstd, 40, out=target)
        np.testing.assert_array_equal(target, dx)
    buf = np.concatenate([x.ravel(), x.ravel()])
    shifted = buf[1: x.size + 1].reshape(x.shape)
    assert _kernels.fast_rows_forward(buf[: x.size].reshape(x.shape), 40, w, w, 1e-5, shifted,
                                      True, 1 << 17, 1) is None
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps x"):
        cybn.layer_norm(buf[: x.size].reshape(x.shape), 40, w, w, out=shifted)
    np.testing.assert_array_equal(buf, before)
    # left to the full path: a mean of the wrong shape, a float32 mean, an int eps
    assert _kernels.fast_rows_backward(dy, x, w, mean[:5], invstd, 40, None, True,
                                       1 << 17, 1) is None
    assert _kernels.fast_rows_backward(dy, x, w, mean.astype(np.float32), invstd, 40, None,
                                       True, 1 << 17, 1) is None
    assert _kernels.fast_rows_forward(x, 40, w, w, 1, None, True, 1 << 17, 1) is None
    with pytest.raises(ValueError, match="mean"):
        cybn.layer_norm_backward(dy, x, w, mean[:5], invstd, 40)
    np.testing.assert_array_equal(cybn.layer_norm(x, 40, w, w, eps=1)[0],
                                  cybn.layer_norm(x, [40], w, w, eps=1.0)[0])


# channels-first few and many (sample, group) rows, channels-last plane and row family,
# a 3-D (N, C, L) and a 2-D (N, C) batch
GROUP_FAST_CASES = [((2, 8, 5, 5), 1, 4), ((16, 32, 6, 6), 1, 8), ((3, 6, 6, 16), -1, 4),
                    ((4, 40, 40, 8), -1, 2), ((5, 12, 33), 1, 3), ((6, 12), 1, 4),
                    ((8, 64, 28, 28), 1, 32),
                    # beyond 4 MiB in float64 (the fast path's limit follows the cache)
                    ((4, 64, 48, 40), 1, 32), ((4, 48, 40, 64), -1, 16)]


def _group_ops(x, dy, w, b, G, axis, out=None):
    o = (lambda: None) if out is None else out
    y, mean, invstd = cybn.group_norm(x, G, w, b, axis=axis, out=o())
    res = [y, mean, invstd]
    res += cybn.group_norm_backward(dy, x, G, w, mean, invstd, axis=axis, out=o())
    if x.size > x.shape[0] * x.shape[axis]:
        yi, mi, ii = cybn.instance_norm(x, w, b, axis=axis, out=o())
        res += [yi, mi, ii]
        res += cybn.instance_norm_backward(dy, x, w, mi, ii, axis=axis, out=o())
    return res


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,G", GROUP_FAST_CASES)
@pytest.mark.parametrize("min_parallel", [1, 1 << 17])
def test_group_norm_fast_path_gives_the_bits_of_the_full_path(shape, axis, G, dtype,
                                                              min_parallel, monkeypatch):
    """Group and instance norm calls up to mid size take one compiled entry point (one
    thread below min_parallel elements, two from there); with it disabled every call takes
    the full Python path. The same bits, statistics and parameter gradients included, with
    and without out=."""
    from cybn import _kernels
    from cybn.ops import _schedule
    from cybn.ops.norms import MIN_GROUP_ROWS

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", min_parallel)
    monkeypatch.setattr(_schedule, "FAST_MAX_SIZE", dict.fromkeys(_schedule.FAST_MAX_SIZE,
                                                                 1 << 30))
    assert _kernels.fast_group_forward(x, G, w, b, 1e-5, axis, None, 1 << 30, MIN_GROUP_ROWS,
                                       min_parallel, 2) is not None
    with threadpool_limits(limits=2, user_api="openmp"):
        fast = _group_ops(x, dy, w, b, G, axis)
        fast_out = _group_ops(x, dy, w, b, G, axis, out=lambda: np.empty_like(x))
        for name in ("fast_group_forward", "fast_group_backward"):
            monkeypatch.setattr(_kernels, name, lambda *args: None)
        full = _group_ops(x, dy, w, b, G, axis)
    assert len(fast) == len(full)
    for a, a_out, c in zip(fast, fast_out, full):
        assert a.dtype == a_out.dtype == c.dtype and a.shape == c.shape
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a_out, c)


def test_group_norm_fast_path_leaves_the_unusual_to_the_full_path():
    """What the compiled call does not take goes to the full path, which gives its errors:
    a group count not dividing C, axis 0, a bool group count, one element per instance,
    (N, G) statistics of the wrong shape or dtype."""
    from cybn import _kernels

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    w = np.ones(6, np.float32)
    args = (1 << 30, 64, 1 << 15, 1)
    for g, axis in ((4, 1), (2, 0), (True, 1), (0, 1), (7, 1)):
        assert _kernels.fast_group_forward(x, g, w, w, 1e-5, axis, None, *args) is None
    with pytest.raises(ValueError, match="num_groups"):
        cybn.group_norm(x, 4, w, w)
    with pytest.raises(ValueError, match="axis"):
        cybn.group_norm(x, 2, w, w, axis=0)
    x1 = x[:, :, :1, :1].copy()
    assert _kernels.fast_group_forward(x1, None, w, w, 1e-5, 1, None, *args) is None
    with pytest.raises(ValueError, match="spatial element"):
        cybn.instance_norm(x1, w, w)
    y, mean, invstd = cybn.group_norm(x, 3, w, w)
    for m in (mean[:1], mean.astype(np.float32), mean.T.copy()):
        assert _kernels.fast_group_backward(x, x, 3, w, m, invstd, 1, None, *args) is None
    with pytest.raises(ValueError, match="mean"):
        cybn.group_norm_backward(x, x, 3, w, mean[:1], invstd)
