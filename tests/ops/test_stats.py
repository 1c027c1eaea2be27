"""Batch norm over shards (the primitives of SyncBatchNorm): per-shard statistics merged
exactly, the training forward with the whole batch's statistics, and the backward's two
halves, against single-process batch norm on the concatenated batch."""

import numpy as np
import pytest

import cybn
import reference as ref

CASES = [((12, 16, 20, 20), 1), ((12, 20, 20, 16), -1), ((60, 24), 1), ((9, 3, 5, 7), 1),
         ((10, 5, 7, 3), -1)]
DTYPES = [np.float32, np.float64]


def split(x, sizes):
    """Shards of x along the batch axis (sizes may include 0)."""
    bounds = np.cumsum([0] + list(sizes))
    assert bounds[-1] == len(x)
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def shard_sizes(n):
    return [(n, 0), (n // 2, n - n // 2), (1, n - 4, 0, 3), (n - 1, 1)]


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_batch_primitives_give_batch_norms_bits(shape, axis, dtype, threads):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    count, mean, m2 = cybn.batch_norm_stats(x, axis=axis)
    assert count == x.size // C
    y0, mean0, inv0 = cybn.batch_norm_train(x, w, b, axis=axis)
    np.testing.assert_array_equal(mean, mean0)
    rm, rv = np.zeros(C), np.ones(C)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean1, inv = cybn.batch_norm_train(x, w, b, axis=axis, running_mean=rm, running_var=rv,
                                          stats=(count, mean, m2), activation="relu")
    cybn.batch_norm_train(x, w, b, axis=axis, running_mean=rm0, running_var=rv0)
    np.testing.assert_array_equal(y, np.maximum(y0, 0))
    np.testing.assert_array_equal(inv, inv0)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    sum_dy, sum_dy_xmu = cybn.batch_norm_backward_reduce(dy, x, mean, axis=axis)
    dx0, dw0, db0 = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis)
    dx = cybn.batch_norm_backward_elemt(dy, x, w, mean, inv, sum_dy, sum_dy_xmu, count,
                                        axis=axis)
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_array_equal((sum_dy_xmu * inv).astype(dtype), dw0)
    np.testing.assert_array_equal(sum_dy.astype(dtype), db0)


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shards_equal_the_concatenated_batch(shape, axis, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y0, mean0, inv0 = cybn.batch_norm_train(x, w, b, axis=axis)
    dx0, dw0, db0 = cybn.batch_norm_backward(dy, x, w, mean0, inv0, axis=axis)
    mr, vr = ref.moments(x, axis)
    tol = 1e-12 if dtype == np.float64 else 5e-7
    for sizes in shard_sizes(shape[0]):
        xs, dys = split(x, sizes), split(dy, sizes)
        parts = [cybn.batch_norm_stats(s, axis=axis) for s in xs]
        count, mean, m2 = cybn.merge_stats([p[0] for p in parts], [p[1] for p in parts],
                                           [p[2] for p in parts])
        assert count == x.size // C
        np.testing.assert_allclose(mean, mr, rtol=1e-14 if dtype == np.float64 else 1e-9)
        np.testing.assert_allclose(m2 / count, vr, rtol=tol)
        outs = [cybn.batch_norm_train(s, w, b, axis=axis, stats=(count, mean, m2))
                for s in xs]
        y = np.concatenate([o[0] for o in outs])
        inv = outs[0][2]
        np.testing.assert_allclose(y, y0, rtol=0, atol=(4e-6 if dtype == np.float32
                                                       else 1e-12) * np.abs(y0).max())
        sums = [cybn.batch_norm_backward_reduce(g, s, mean, axis=axis) for g, s in zip(dys, xs)]
        sum_dy = np.sum([s[0] for s in sums], axis=0)
        sum_dy_xmu = np.sum([s[1] for s in sums], axis=0)
        dx = np.concatenate([cybn.batch_norm_backward_elemt(g, s, w, mean, inv, sum_dy,
                                                            sum_dy_xmu, count, axis=axis)
                             for g, s in zip(dys, xs)])
        scale = np.abs(dx0).max()
        np.testing.assert_allclose(dx, dx0, rtol=0, atol=(2e-5 if dtype == np.float32
                                                         else 1e-10) * scale)
        np.testing.assert_allclose(sum_dy_xmu * inv, dw0, rtol=1e-5 if dtype == np.float32
                                   else 1e-10, atol=1e-6 * np.abs(dw0).max())


def test_merge_order_and_empty_partials():
    rng = np.random.default_rng(2)
    data = [rng.standard_normal((n, 3)) + 1e6 for n in (5, 1, 7)]
    parts = [cybn.batch_norm_stats(d) for d in data]
    counts = [p[0] for p in parts]
    count, mean, m2 = cybn.merge_stats(counts + [0], [p[1] for p in parts] + [np.full(3, 7.0)],
                                       [p[2] for p in parts] + [np.full(3, 9.0)])
    whole = np.concatenate(data)
    assert count == 13
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(m2, ((whole - whole.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-9)
    # every process merging the same rows gets the same bits; an all-empty merge is zeros
    again = cybn.merge_stats(np.array(counts + [0]), np.stack([p[1] for p in parts]
                                                              + [np.full(3, 7.0)]),
                             np.stack([p[2] for p in parts] + [np.full(3, 9.0)]))
    np.testing.assert_array_equal(again[1], mean)
    empty = cybn.batch_norm_stats(np.empty((0, 3)))
    assert empty[0] == 0 and not empty[1].any() and not empty[2].any()
    assert cybn.merge_stats([0, 0], np.ones((2, 3)), np.ones((2, 3)))[0] == 0


def test_empty_shard_with_global_stats_updates_running_statistics():
    rm, rv = np.zeros(3), np.ones(3)
    y, mean, inv = cybn.batch_norm_train(np.empty((0, 3, 4)), running_mean=rm,
                                         running_var=rv, momentum=0.5,
                                         stats=(10, np.ones(3), np.full(3, 18.0)))
    assert y.shape == (0, 3, 4)
    np.testing.assert_allclose(rm, 0.5)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * 2.0)  # m2 / (count - 1)
    np.testing.assert_allclose(inv, 1 / np.sqrt(1.8 + 1e-5))


def test_bad_arguments_change_nothing():
    x = np.random.default_rng(3).standard_normal((4, 3, 5))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="count"):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, stats=(1, np.zeros(3),
                                                                         np.ones(3)))
    with pytest.raises(TypeError, match="stats"):
        cybn.batch_norm_train(x, stats=[20, np.zeros(3), np.ones(3)])
    with pytest.raises(ValueError, match="stats mean"):
        cybn.batch_norm_train(x, stats=(20, np.zeros(4), np.ones(3)))
    with pytest.raises(ValueError, match="counts"):
        cybn.merge_stats([2, -1], np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="m2s"):
        cybn.merge_stats([2, 1], np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="count"):
        cybn.batch_norm_backward_elemt(x, x, None, np.zeros(3), np.ones(3), np.zeros(3),
                                       np.zeros(3), 0)
    with pytest.raises(ValueError, match="sum_dy"):
        cybn.batch_norm_backward_elemt(x, x, None, np.zeros(3), np.ones(3), np.zeros(2),
                                       np.zeros(3), 20)
    assert not rm.any() and (rv == 1).all()


def test_running_moments_are_exact_over_any_batching():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((103, 3, 4)) * 0.01 + 1e5
    acc = cybn.RunningMoments(axis=1)
    for start in range(0, 103, 10):
        acc.update(x[start:start + 10])
    whole_mean, whole_var = ref.moments(x, 1)
    assert acc.count == 103 * 4
    np.testing.assert_allclose(acc.mean, whole_mean, rtol=4e-15)
    np.testing.assert_allclose(acc.var(), whole_var, rtol=1e-9)
    np.testing.assert_allclose(acc.var(ddof=1), x.var(axis=(0, 2), ddof=1), rtol=1e-9)
    # merge: two halves equal the whole; channels-last batches with axis=-1
    a = cybn.RunningMoments().update(x[:50])
    b = cybn.RunningMoments().update(x[50:])
    np.testing.assert_allclose(a.merge(b).var(), whole_var, rtol=1e-9)
    last = cybn.RunningMoments(axis=-1).update(np.moveaxis(x, 1, -1))
    np.testing.assert_allclose(last.mean, whole_mean, rtol=4e-15)
    with pytest.raises(ValueError, match="seen no data"):
        cybn.RunningMoments().mean
    with pytest.raises(ValueError, match="channels"):
        cybn.RunningMoments().update(x).update(np.ones((2, 5)))


def test_recalibrate_sets_exact_statistics_of_eval_mode_inputs():
    rng = np.random.default_rng(5)
    model = cybn.Sequential(cybn.Linear(4, 6, dtype=np.float64, rng=rng),
                            cybn.BatchNorm1d(6, dtype=np.float64), cybn.ReLU(),
                            cybn.Linear(6, 5, dtype=np.float64, rng=rng),
                            cybn.BatchNorm1d(5, dtype=np.float64))
    X = rng.standard_normal((70, 4)) * 3 + 2
    model.train()
    cybn.recalibrate(model, X, batch_size=16)
    assert model.training
    z1 = model[0](X)
    np.testing.assert_allclose(model[1].running_mean, z1.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model[1].running_var, z1.var(axis=0), rtol=1e-12)
    model.eval()
    z2 = model[3](model[2](model[1](z1)))  # the second BatchNorm's eval-mode inputs
    np.testing.assert_allclose(model[4].running_mean, z2.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model[4].running_var, z2.var(axis=0), rtol=1e-12)
    # the batching does not matter beyond rounding
    again = cybn.recalibrate(model, X, batch_size=70)
    np.testing.assert_allclose(again[4].running_var, model[4].running_var, rtol=1e-13)
    with pytest.raises(TypeError, match="model"):
        cybn.recalibrate([model], X)
