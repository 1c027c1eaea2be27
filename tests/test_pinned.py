"""Behaviours no test pinned down before (issue 9's mutation run let a plausible one-line bug
through for each). Every assertion compares against the float64 reference or exact values."""

import numpy as np
import pytest

import cybn
import cybn.functional as F
from cybn._validate import ChannelView

import reference as ref


def test_batch_norm_eval_uses_eps_weight_and_bias_in_their_places():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 5))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    w, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    y = cybn.batch_norm(x, rm, rv, w, b, training=False, eps=0.25)
    expected = ((x - rm[:, None]) / np.sqrt(rv[:, None] + 0.25)) * w[:, None] + b[:, None]
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    # swapping weight and bias must change the result
    assert not np.allclose(cybn.batch_norm(x, rm, rv, b, w, training=False, eps=0.25), y)


def test_moments_default_axis_is_1_on_3d_input():
    x = np.random.default_rng(1).standard_normal((4, 3, 5))
    mean, var = cybn.moments(x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-12)


def test_moments_ddof_equal_to_the_count_gives_nan_variance_and_the_mean():
    x = np.random.default_rng(2).standard_normal((4, 3, 5))
    mean, var = cybn.moments(x, ddof=20)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-13)
    assert np.all(np.isnan(var))
    _, var19 = cybn.moments(x, ddof=19)
    np.testing.assert_allclose(var19, x.var(axis=(0, 2), ddof=19), rtol=1e-12)


def test_empty_batch_statistics_are_two_separate_nan_arrays():
    _, mean, invstd = cybn.batch_norm_train(np.zeros((0, 3)))
    assert mean is not invstd and not np.shares_memory(mean, invstd)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(invstd))
    mean[0] = 1.0
    assert np.isnan(invstd[0])


def test_single_thread_threshold_boundary():
    below = ChannelView.of((F.MIN_PARALLEL_SIZE - 1, 1), 1)
    at = ChannelView.of((F.MIN_PARALLEL_SIZE, 1), 1)
    assert F._threads(below) == 1
    assert F._threads(at) == cybn.get_num_threads()


@pytest.mark.parametrize("momentum", [1, np.float64(1.0), np.float32(1.0)])
def test_momentum_one_as_int_or_numpy_number_replaces_the_running_stats(momentum):
    x = np.random.default_rng(3).standard_normal((10, 3))
    rm, rv = np.full(3, 7.0), np.full(3, 7.0)
    cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=momentum)
    np.testing.assert_allclose(rm, x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(rv, x.var(axis=0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("eps", [np.inf, -1e-5, 0.0, np.nan])
def test_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match="eps must be positive and finite"):
        cybn.batch_norm_train(np.ones((4, 3)), eps=eps)


def test_running_buffers_sharing_memory_are_rejected_unchanged():
    buf = np.arange(6, dtype=np.float64)
    before = buf.copy()
    with pytest.raises(ValueError, match="running_mean and running_var must not share memory"):
        cybn.batch_norm_train(np.ones((4, 3)), running_mean=buf[:3], running_var=buf[2:5])
    np.testing.assert_array_equal(buf, before)


def test_out_with_the_right_size_but_the_wrong_shape_is_rejected():
    x = np.random.default_rng(4).standard_normal((4, 6))
    out = np.zeros((6, 4))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 6\)"):
        cybn.batch_norm_train(x, out=out)
    assert not out.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 32, 4, 4), (16, 64, 3, 3), (16, 48, 2, 5)])
def test_row_family_with_inner_above_one_matches_the_reference(shape, dtype):
    """Channels-first with small spatial maps and many channels (BatchNorm2d on 4x4 maps:
    the demo CNN's case) takes the row family with inner > 1."""
    assert ChannelView.of(shape, 1).family == "row" and ChannelView.of(shape, 1).inner > 1
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    y, mean, invstd = cybn.batch_norm_train(x, w, b)
    y_ref, mean_ref, invstd_ref, _ = ref.train(x, w, b, axis=1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * 10)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, w, mean_ref, invstd_ref, axis=1)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(db, db_ref, rtol=tol * 10, atol=tol * 10)
