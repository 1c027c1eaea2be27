"""Masked batch statistics against NumPy on the unmasked subset, the exact gradient by finite
differences, both layouts and dtypes, the all-masked and one-value cases, and the layer."""

import numpy as np
import pytest

import cybn
from conftest import numeric_grad

# (x shape, channel axis): NCL and NLC sequences, NCHW and NHWC images, (N, C)
CASES = [((6, 3, 10), 1), ((6, 10, 3), -1), ((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1),
         ((9, 4), 1), ((700, 5), 1)]  # the last spans two row blocks


def make_mask(x, axis, seed=0):
    shape = x.shape[:axis % x.ndim] + x.shape[axis % x.ndim + 1:]
    m = np.random.default_rng(seed).random(shape) < 0.7
    m.flat[:2] = True
    return m


def reference(x, axis, mask, w, b, eps=1e-5):
    xc = np.moveaxis(x.astype(np.float64), axis, -1)   # (..., C)
    sel = xc[mask]                                     # (count, C)
    mean, var = sel.mean(axis=0), sel.var(axis=0)
    y = (xc - mean) / np.sqrt(var + eps) * w + b
    return np.moveaxis(y, -1, axis), mean, var, len(sel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", CASES)
def test_masked_forward_matches_numpy_on_the_unmasked_subset(shape, axis, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    mask = make_mask(x, axis)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, mean, invstd = cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                            axis=axis, mask=mask)
    ref, m_ref, v_ref, n = reference(x, axis, mask, w, b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, m_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(v_ref + 1e-5), rtol=1e-12)
    np.testing.assert_allclose(rm, 0.1 * m_ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * v_ref * n / (n - 1), rtol=1e-12)
    # the values under the mask do not matter to the statistics
    x2 = x.copy()
    np.moveaxis(x2, axis, -1)[~mask] = 1e6
    _, mean2, invstd2 = cybn.batch_norm_train(x2, w, b, axis=axis, mask=mask)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(invstd2, invstd)


@pytest.mark.parametrize("shape,axis", CASES[:5])
def test_masked_gradients_by_finite_differences(shape, axis):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    mask = make_mask(x, axis, seed=3)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    dy = rng.standard_normal(shape)
    _, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis, mask=mask)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis, mask=mask)

    def f():
        return float(np.sum(dy * reference(x, axis, mask, w, b)[0]))

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-6, atol=1e-8)


def test_an_all_true_mask_is_plain_batch_norm_and_bits_do_not_depend_on_threads():
    x = np.random.default_rng(4).standard_normal((8, 6, 5, 4)).astype(np.float32)
    mask = np.ones((8, 5, 4), bool)
    y, mean, invstd = cybn.batch_norm_train(x, axis=1, mask=mask)
    y0, mean0, invstd0 = cybn.batch_norm_train(x, axis=1)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean, mean0, rtol=1e-6, atol=1e-7)  # plain: float32 blocks
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(cybn.batch_norm_backward(dy, x, None, mean, invstd, mask=mask)[0],
                               cybn.batch_norm_backward(dy, x, None, mean0, invstd0)[0],
                               rtol=1e-5, atol=1e-6)
    from threadpoolctl import threadpool_limits
    results = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="openmp"):
            xm = np.random.default_rng(6).standard_normal((300, 7)).astype(np.float32)
            mm = np.random.default_rng(7).random(300) < 0.5
            y, mean, invstd = cybn.batch_norm_train(xm, mask=mm)
            dx = cybn.batch_norm_backward(xm, xm, None, mean, invstd, mask=mm)[0]
            results.append(np.concatenate([y.ravel(), mean, dx.ravel()]))
    assert all(np.array_equal(results[0], r) for r in results)


def test_all_masked_and_one_value_cases():
    x = np.random.default_rng(8).standard_normal((4, 3, 5))
    rm, rv = np.zeros(3), np.ones(3)
    y, mean, invstd = cybn.batch_norm_train(x, running_mean=rm, running_var=rv,
                                            mask=np.zeros((4, 5), bool))
    assert np.isnan(y).all() and np.isnan(mean).all() and np.isnan(invstd).all()
    assert (rm == 0).all() and (rv == 1).all()
    one = np.zeros((4, 5), bool)
    one[2, 3] = True
    with pytest.raises(ValueError, match="more than 1 unmasked value"):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, mask=one)
    y, _, _ = cybn.batch_norm_train(x, np.ones(3), np.full(3, 0.5), running_mean=rm,
                                    running_var=rv, mask=one, on_degenerate="skip_update")
    assert np.allclose(y[2, :, 3], 0.5) and (rv == 1).all()


@pytest.mark.parametrize("mask,exc,match", [
    (np.ones((4, 5)), TypeError, "mask must be a boolean array"),
    (np.ones((4, 3), bool), ValueError, "mask must have x's shape without the channel axis"),
    ([[True] * 5] * 3, ValueError, "mask must have"),
])
def test_bad_masks_raise_and_change_nothing(mask, exc, match):
    x = np.random.default_rng(9).standard_normal((4, 3, 5))
    rm, rv, x0 = np.zeros(3), np.ones(3), x.copy()
    with pytest.raises(exc, match=match):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, mask=mask)
    assert (rm == 0).all() and (rv == 1).all() and np.array_equal(x, x0)
    with pytest.raises(ValueError, match="without stats=, residual= and activation="):
        cybn.batch_norm_train(x, activation="relu", mask=np.ones((4, 5), bool))


def test_the_layer_takes_a_mask_for_padded_sequences():
    rng = np.random.default_rng(10)
    lengths = [7, 3, 5, 1]
    x = rng.standard_normal((4, 7, 6))                     # (N, L, C) channels-last
    mask = np.arange(7)[None, :] < np.array(lengths)[:, None]
    bn = cybn.BatchNorm1d(6, channels_last=True, dtype=np.float64)
    y = bn(x, mask=mask)
    ref, m_ref, v_ref, n = reference(x, -1, mask, np.ones(6), np.zeros(6))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * v_ref * n / (n - 1), rtol=1e-12)
    dy = np.where(mask[..., None], rng.standard_normal(x.shape), 0.0)  # a loss ignoring pads
    dx = bn.backward(dy)
    _, mean, invstd = cybn.batch_norm_train(x, axis=-1, mask=mask)
    np.testing.assert_allclose(dx, cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=-1,
                                                            mask=mask)[0], rtol=1e-12)
    # padded positions, whose dy is 0, get no gradient, and the unpadded ones do not see
    # the padding: the same as batch norm on the unpadded rows alone
    sel = x[mask]
    _, mean_s, invstd_s = cybn.batch_norm_train(sel)
    np.testing.assert_allclose(dx[mask], cybn.batch_norm_backward(dy[mask], sel, None, mean_s,
                                                                  invstd_s)[0], rtol=1e-10)
    assert np.allclose(dx[~mask], 0)
    bn.eval()
    np.testing.assert_allclose(bn(x, mask=mask), bn(x))  # running statistics: no mask needed


@pytest.mark.parametrize("shape,axis", [((4, 3, 9), 1), ((4, 9, 3), -1), ((3, 2, 5, 6), 1)])
def test_nan_and_inf_under_the_mask_do_not_leak_into_the_statistics(shape, axis):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    mask = make_mask(x, axis, seed=12)
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis, mask=mask)
    dirty = x.copy()
    hidden = np.moveaxis(dirty, axis, -1)
    hidden[~mask] = np.nan
    hidden[~mask & (np.arange(mask.size).reshape(mask.shape) % 2 == 0)] = np.inf
    y, mean2, invstd2 = cybn.batch_norm_train(dirty, axis=axis, mask=mask)
    np.testing.assert_array_equal(mean2, mean)      # the fallback gives the same bits
    np.testing.assert_array_equal(invstd2, invstd)
    assert np.isfinite(np.moveaxis(y, axis, -1)[mask]).all()
