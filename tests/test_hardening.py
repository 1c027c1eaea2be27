"""Regression tests for defects found by hostile use (issue 9): aliasing between the arrays
one call reads and writes, strided per-channel arrays, odd inputs that were silently
accepted. Each asserts either the right answer or an error before anything is written."""

import numpy as np
import pytest

import cybn

SHAPES = [((2, 3, 4, 4), 1),        # compiled fast path
          ((4, 3, 64, 64), 1),      # plane family, full path
          ((64, 9, 3), 2)]          # row family


def snapshot(*arrays):
    return [a.copy() for a in arrays]


def assert_unchanged(arrays, before):
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
def test_train_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(0)
    C = shape[axis]
    n = int(np.prod(shape))
    pool = rng.standard_normal(n + 4 * C).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    out = pool[:n].reshape(shape)
    args = {"weight": rng.uniform(0.5, 2, C).astype(np.float32),
            "bias": rng.standard_normal(C).astype(np.float32),
            "running_mean": np.zeros(C, np.float32), "running_var": np.ones(C, np.float32)}
    args[name] = pool[n - C // 2 - 1: n - C // 2 - 1 + C]  # straddles the end of out
    before = snapshot(pool, x, *args.values())
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_train(x, axis=axis, out=out, **args)
    assert_unchanged([pool, x, *args.values()], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
def test_infer_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(1)
    C = shape[axis]
    n = int(np.prod(shape))
    pool = rng.uniform(0.5, 2, n + 4 * C)
    x = rng.standard_normal(shape)
    out = pool[:n].reshape(shape)
    args = {"running_mean": np.zeros(C), "running_var": np.ones(C),
            "weight": np.ones(C), "bias": np.zeros(C)}
    args[name] = pool[:C]
    before = snapshot(pool, x)
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_infer(x, axis=axis, out=out, **args)
    assert_unchanged([pool, x], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["mean", "invstd", "weight"])
def test_backward_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(2)
    C = shape[axis]
    n = int(np.prod(shape))
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    pool = rng.uniform(0.5, 2, n)
    out = pool.reshape(shape)
    args = {"weight": np.ones(C), "mean": mean, "invstd": invstd}
    pool[:C] = args[name]
    args[name] = pool[:C]
    before = snapshot(pool, x, dy)
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_backward(dy, x, args["weight"], args["mean"], args["invstd"],
                                 axis=axis, out=out)
    assert_unchanged([pool, x, dy], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_in_place_training_with_running_mean_inside_x_is_rejected(shape, axis):
    rng = np.random.default_rng(3)
    C = shape[axis]
    x = rng.standard_normal(shape)
    rm = x.reshape(-1)[:C]
    rv = np.ones(C)
    before = snapshot(x, rv)
    with pytest.raises(ValueError, match="out overlaps running_mean"):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis, out=x)
    assert_unchanged([x, rv], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_running_buffers_are_updated_like_contiguous_ones(shape, axis, dtype):
    rng = np.random.default_rng(4)
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    y_ref, m_ref, i_ref = cybn.batch_norm_train(
        x, running_mean=(rm_ref := np.zeros(C, dtype)), running_var=(rv_ref := np.ones(C, dtype)),
        axis=axis)
    for strided in ("mean", "var", "both"):
        big_m = np.full(2 * C, 7, dtype)
        big_v = np.full(3 * C, 7, dtype)
        rm = big_m[::2] if strided in ("mean", "both") else big_m[:C]
        rv = big_v[::3] if strided in ("var", "both") else big_v[:C]
        rm[...] = 0
        rv[...] = 1
        y, m, i = cybn.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis,
                                        out=np.empty_like(x))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(rm, rm_ref)
        np.testing.assert_array_equal(rv, rv_ref)
        # the gaps between the strided elements are not touched
        if strided in ("mean", "both"):
            assert np.all(big_m[1::2] == 7)
        if strided in ("var", "both"):
            assert np.all(big_v[1::3] == 7) and np.all(big_v[2::3] == 7)


@pytest.mark.parametrize("shape,axis", SHAPES + [((300, 7), 1)])
def test_float64_statistics_near_the_overflow_limit(shape, axis):
    """A constant channel of 1e200 has variance exactly 0 (the first merge used to square
    the whole mean: NaN); a channel of +-1e308 gets a finite mean."""
    x = np.full(shape, 1e200)
    b = np.arange(shape[axis], dtype=np.float64)
    y, mean, invstd = cybn.batch_norm_train(x, bias=b, axis=axis)
    np.testing.assert_array_equal(mean, 1e200)
    np.testing.assert_array_equal(invstd, 1 / np.sqrt(1e-5))
    np.testing.assert_array_equal(cybn.moments(x, axis=axis)[1], 0.0)
    np.testing.assert_array_equal(np.moveaxis(y, axis, -1), np.broadcast_to(b, np.moveaxis(y, axis, -1).shape))
    x = np.full(shape, 1e308)
    x.reshape(-1)[::2] = -1e308
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    assert np.all(np.isfinite(mean)) and np.all(np.abs(mean) <= 1e308)


@pytest.mark.parametrize("shape,axis", SHAPES + [((300, 7), 1)])
def test_float32_spread_beyond_1e19_keeps_a_finite_variance(shape, axis):
    """Float32 deviations above ~1e19 square past FLT_MAX in float accumulators."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 1e20).astype(np.float32)
    _, _, invstd = cybn.batch_norm_train(x, axis=axis)
    axes = tuple(i for i in range(x.ndim) if i != axis)
    expected = 1 / np.sqrt(x.astype(np.float64).var(axis=axes) + 1e-5)
    np.testing.assert_allclose(invstd, expected, rtol=1e-6)


def test_masked_arrays_are_rejected_not_silently_unmasked():
    x = np.ma.masked_array(np.random.default_rng(6).standard_normal((8, 3)),
                           mask=np.zeros((8, 3), bool))
    x.mask[0, 0] = True
    with pytest.raises(TypeError, match="x is a masked array"):
        cybn.batch_norm_train(x)
    with pytest.raises(TypeError, match="weight is a masked array"):
        cybn.batch_norm_train(x.data, weight=np.ma.masked_array(np.ones(3)))
    rm = np.ma.masked_array(np.zeros(3))
    with pytest.raises(TypeError, match="running_mean is a masked array"):
        cybn.batch_norm_train(x.data, running_mean=rm, running_var=np.ones(3))
    with pytest.raises(TypeError, match="x is a masked array"):
        cybn.batch_norm_infer(x, np.zeros(3), np.ones(3))


@pytest.mark.parametrize("bad", ["False", 0, 1, None, np.array([True])])
def test_training_flag_must_be_a_bool(bad):
    x = np.random.default_rng(7).standard_normal((8, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="training must be True or False"):
        cybn.batch_norm(x, rm, rv, training=bad)
    np.testing.assert_array_equal(rm, 0)
    _, m, i = cybn.batch_norm_train(x)
    with pytest.raises(TypeError, match="training must be True or False"):
        cybn.batch_norm_backward(x, x, None, m, i, training=bad)
    # NumPy bools are bools
    y = cybn.batch_norm(x, rm, rv, training=np.bool_(False))
    np.testing.assert_array_equal(y, cybn.batch_norm_infer(x, rm, rv))


@pytest.mark.parametrize("name", ["x", "weight", "running_mean", "out"])
def test_a_wrong_dtype_is_a_type_error_for_every_argument(name):
    x = np.ones((4, 3))
    args = dict(x=x, weight=None, running_mean=np.zeros(3), running_var=np.ones(3), out=None)
    bad = {"x": np.ones((4, 3), np.int32), "weight": np.ones(3, np.int32),
           "running_mean": np.zeros(3, np.int64), "out": np.ones((4, 3), np.float32)}[name]
    args[name] = bad
    with pytest.raises(TypeError, match=f"{name} must have dtype"):
        cybn.batch_norm_train(args.pop("x"), **args)
