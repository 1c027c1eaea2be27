"""Accuracy on awkward data: large offsets, constant channels, long runs of running statistics."""

import numpy as np
import pytest

import cybn
import reference as ref

LAYOUTS = [((16, 8, 30, 30), 1), ((16, 30, 30, 8), -1), ((3000, 8), 1)]


@pytest.mark.parametrize("ratio", [1.0, 1e2, 1e4, 1e5])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_variance_of_offset_float32_data(shape, axis, ratio):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) + ratio).astype(np.float32)  # mean / std = ratio
    _, var = cybn.moments(x, axis=axis)
    _, var_exact = ref.moments(x.astype(np.float64), axis=axis)  # the same float32 values
    rel = np.max(np.abs(var - var_exact) / var_exact)
    assert rel < 1e-6, rel
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    np.testing.assert_allclose(1 / invstd**2 - 1e-5, var_exact, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_output_within_a_few_ulps_of_float64(shape, axis):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1e4).astype(np.float32)
    C = shape[axis]
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    y, _, _ = cybn.batch_norm_train(x, w, b, axis=axis)
    y64, mean, invstd, _ = ref.train(x, w, b, axis=axis)
    # Units in the last place of the computation's largest term: y = xhat * w + b is summed
    # in float32, so where the two terms cancel the error is an ulp of the terms, not of y.
    shape_c = [1] * x.ndim
    shape_c[axis] = C
    xhat_w = (x - mean.reshape(shape_c)) * (invstd * w).reshape(shape_c)
    magnitude = np.maximum(np.abs(xhat_w), np.abs(b.astype(np.float64)).reshape(shape_c))
    ulps = np.abs(y.astype(np.float64) - y64) / np.spacing(magnitude.astype(np.float32))
    assert np.max(ulps) <= 8, np.max(ulps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_constant_channel_has_zero_variance_and_gives_bias(shape, axis, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    idx = [slice(None)] * len(shape)
    idx[axis] = 3
    x[tuple(idx)] = dtype(1234.567)
    C = shape[axis]
    b = rng.standard_normal(C).astype(dtype)
    _, var = cybn.moments(x, axis=axis)
    assert var[3] == 0.0
    y, mean, _ = cybn.batch_norm_train(x, np.ones(C), b, axis=axis)
    assert mean[3] == dtype(1234.567)
    np.testing.assert_array_equal(np.take(y, 3, axis=axis), b[3])


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_backward_accuracy_on_offset_data(shape, axis):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[axis]
    w = rng.standard_normal(C).astype(np.float32)
    _, mean, invstd = cybn.batch_norm_train(x, w, axis=axis)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
    _, mean_r, invstd_r, _ = ref.train(x, w, axis=axis)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, w, mean_r, invstd_r, axis=axis)
    assert np.max(np.abs(dx - dx_ref)) / np.max(np.abs(dx_ref)) < 1e-6
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3 * np.sqrt(x.size / C))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3 * np.sqrt(x.size / C))


def test_running_statistics_over_many_steps():
    rng = np.random.default_rng(8)
    C = 6
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm64, rv64 = np.zeros(C), np.ones(C)
    for step in range(300):
        x = (rng.standard_normal((8, C, 5, 5)) * (1 + step % 7) + 50).astype(np.float32)
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=0.05)
        rm64, rv64 = ref.running_update(rm64, rv64, x, 0.05)
    np.testing.assert_allclose(rm, rm64, rtol=1e-5)
    np.testing.assert_allclose(rv, rv64, rtol=1e-5)
