"""Behaviours no test pinned down before (a mutation run, tools/mutation.py, let a plausible
one-line bug through for each). Every assertion compares against the float64 reference or
exact values."""

import numpy as np
import pytest

import cybn
from cybn.ops import _schedule as S
from cybn.ops._layout import ChannelView

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
    below = ChannelView.of((S.MIN_PARALLEL_SIZE - 1, 1), 1)
    at = ChannelView.of((S.MIN_PARALLEL_SIZE, 1), 1)
    assert S.threads(below) == 1
    assert S.threads(at) == cybn.get_num_threads()


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


def small_model():
    return cybn.Sequential(cybn.Linear(4, 6, rng=0), cybn.BatchNorm1d(6), cybn.ReLU(),
                           cybn.Linear(6, 3, rng=1))


def test_failed_load_state_dict_changes_nothing():
    model = small_model()
    model.train()
    model(np.random.default_rng(6).standard_normal((8, 4)).astype(np.float32))
    before = model.state_dict()
    new = {k: np.asarray(v) + 1 for k, v in before.items()}   # change every value
    last = list(new)[-1]
    new[last] = np.zeros((7, 7), np.float32)                   # break a late key
    with pytest.raises(ValueError, match=last.replace(".", r"\.")):
        model.load_state_dict(new)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_reset_running_stats_and_affine_false():
    bn = cybn.BatchNorm1d(3, affine=False)
    x = np.random.default_rng(7).standard_normal((10, 3)).astype(np.float32) * 3 + 2
    y = bn(x)
    np.testing.assert_allclose(y, ref.train(x, axis=1)[0], rtol=1e-5, atol=1e-5)
    assert bn.weight is None and bn.bias is None and list(bn.parameters()) == []
    assert not np.all(bn.running_mean == 0) and int(bn.num_batches_tracked) == 1
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 0


def test_eval_mode_batchnorm_backward_with_a_large_eps():
    bn = cybn.BatchNorm1d(3, eps=0.5, dtype=np.float64)
    rng = np.random.default_rng(8)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2, 3)
    bn.weight.data[...] = rng.uniform(0.5, 2, 3)
    bn.eval()
    x = rng.standard_normal((5, 3))
    dy = rng.standard_normal((5, 3))
    bn(x)
    dx = bn.backward(dy)
    np.testing.assert_allclose(dx, dy * bn.weight.data / np.sqrt(bn.running_var + 0.5),
                               rtol=1e-13)
    np.testing.assert_allclose(bn.weight.grad,
                               (dy * (x - bn.running_mean) / np.sqrt(bn.running_var + 0.5))
                               .sum(axis=0), rtol=1e-12)


def test_maxpool_non_square_window_matches_a_loop():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 7, 9))
    pool = cybn.MaxPool2d((2, 3), stride=(2, 3))
    y = pool(x)
    expected = np.array([[[[x[n, c, 2 * i:2 * i + 2, 3 * j:3 * j + 3].max()
                            for j in range(3)] for i in range(3)]
                          for c in range(3)] for n in range(2)])
    np.testing.assert_array_equal(y, expected)
    dx = pool.backward(np.ones_like(y))
    assert dx.sum() == y.size and set(np.unique(dx)) <= {0.0, 1.0}


def test_fit_keeps_a_last_batch_of_two_and_weights_the_epoch_loss_by_batch_size():
    """The epoch loss is the mean over samples (batches weighted by their size, the last
    batch of 3 included): with lr ~ 0 and no BatchNorm (train and eval modes agree) it
    equals evaluate() on the same data."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((11, 4)).astype(np.float64)   # batches of 4, 4, 3
    y = rng.integers(0, 3, 11)
    model = cybn.Sequential(cybn.Linear(4, 5, dtype=np.float64, rng=0), cybn.ReLU(),
                            cybn.Linear(5, 3, dtype=np.float64, rng=1))
    opt = cybn.SGD(model.parameters(), lr=1e-300)
    h = cybn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=4, shuffle=False,
                 progress=False)
    loss, acc = cybn.evaluate(model, X, y)
    assert h["loss"][0] == pytest.approx(loss, rel=1e-12)
    assert h["accuracy"][0] == pytest.approx(acc, rel=1e-12)


def test_fit_switches_back_to_train_mode_each_epoch_and_predict_leaves_running_stats():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = small_model()
    seen = []
    bn = model[1]
    original = bn.forward

    def spy(x):
        seen.append(bn.training)
        return original(x)

    bn.forward = spy
    cybn.fit(model, X, y, epochs=2, batch_size=16, validation_data=(X, y), progress=False)
    # first the check of (X, y) and of validation_data on two samples each, in eval mode;
    # then per epoch: 2 training batches in train mode, then validation in eval mode
    assert seen == [False, False, True, True, False, True, True, False]
    rm = bn.running_mean.copy()
    cybn.predict(model, X)
    cybn.evaluate(model, X, y)
    np.testing.assert_array_equal(bn.running_mean, rm)


def test_fit_flags_divergence_on_inf():
    X = np.ones((8, 4), np.float32)
    y = np.zeros(8, np.int64)
    model = cybn.Sequential(cybn.Linear(4, 3, rng=0))
    model[0].weight.data[...] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        h = cybn.fit(model, X, y, epochs=3, batch_size=4, progress=False)
    assert h["diverged"] is True and len(h["loss"]) == 1


def test_sgd_nesterov_without_weight_decay_matches_pytorch_rule():
    p = cybn.Parameter(np.array([1.0, -2.0]))
    opt = cybn.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    grads = [np.array([0.5, 1.0]), np.array([-1.0, 2.0])]
    buf, expected = None, np.array([1.0, -2.0])
    for g in grads:
        p.grad[...] = g
        opt.step()
        buf = g.copy() if buf is None else 0.9 * buf + g
        expected = expected - 0.1 * (g + 0.9 * buf)
    np.testing.assert_allclose(p.data, expected, rtol=1e-15)


def test_adam_with_betas_zero_is_sign_like_step():
    p = cybn.Parameter(np.array([1.0, -2.0]))
    opt = cybn.Adam([p], lr=0.1, betas=(0.0, 0.0), eps=1e-12)
    p.grad[...] = np.array([3.0, -0.5])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, -1.9], rtol=1e-10)


def test_targets_equal_to_the_class_count_are_rejected():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        cybn.cross_entropy(logits, np.array([0, 1, 2, 3]))


def test_moments_of_an_empty_batch_are_two_separate_nan_arrays():
    mean, var = cybn.moments(np.zeros((0, 3)))
    assert not np.shares_memory(mean, var)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(var))


def test_batchnorm_parameter_gradients_accumulate_over_forward_backward_pairs():
    bn = cybn.BatchNorm1d(3, dtype=np.float64)
    rng = np.random.default_rng(12)
    x, dy = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    bn(x)
    bn.backward(dy)
    once_w, once_b = bn.weight.grad.copy(), bn.bias.grad.copy()
    assert np.all(once_w != 0)
    bn(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.weight.grad, 2 * once_w, rtol=1e-14)
    np.testing.assert_allclose(bn.bias.grad, 2 * once_b, rtol=1e-14)


@pytest.mark.parametrize("channels_last", [False, True])
def test_maxpool_ties_send_the_gradient_to_the_first_maximum(channels_last):
    """As PyTorch: among equal maxima, the first in row-major window order wins."""
    x = np.zeros((1, 2, 4, 4))
    if channels_last:
        x = x.transpose(0, 2, 3, 1).copy()
    pool = cybn.MaxPool2d(2, channels_last=channels_last)
    y = pool(x)
    dx = pool.backward(np.ones_like(y))
    plane = dx[0, :, :, 0] if channels_last else dx[0, 0]
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1
    np.testing.assert_array_equal(plane, expected)


def test_fit_drops_only_a_last_batch_of_one_sample():
    """9 samples in batches of 4: 4, 4 and a single sample, which is skipped (BatchNorm
    needs two values per channel); the two full batches train."""
    rng = np.random.default_rng(13)
    X = rng.standard_normal((9, 4)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    h = cybn.fit(small_model(), X, y, epochs=1, batch_size=4, shuffle=False, progress=False)
    assert np.isfinite(h["loss"][0]) and not h["diverged"]


def test_fit_flags_an_infinite_loss_as_divergence():
    """A loss that overflows to +inf (not NaN) also stops training."""
    X = np.ones((8, 4))
    y = np.zeros((8, 1))
    model = cybn.Sequential(cybn.Linear(4, 1, dtype=np.float64, rng=0))
    model[0].weight.data[...] = 1e300
    with np.errstate(over="ignore", invalid="ignore"):
        h = cybn.fit(model, X, y, loss="mse", epochs=3, batch_size=4, progress=False)
    assert h["loss"][0] == np.inf
    assert h["diverged"] is True and len(h["loss"]) == 1


def test_group_norm_path_policy():
    """Channels-first group norm takes a group per thread item from MIN_GROUP_ROWS (sample,
    group) rows on; fewer rows, channels-last and middle axes take the per-sample kernels."""
    from cybn.ops import norms
    from cybn.ops._layout import Samples

    assert norms.MIN_GROUP_ROWS == 64
    assert norms._group_rows(Samples.of((16, 64, 8, 8), 1), 64) == 64  # S = 8 * 8
    assert norms._group_rows(Samples.of((2, 64, 5, 5), 1), 32) == 25
    assert norms._group_rows(Samples.of((2, 6, 5, 5), 1), 3) == 0
    assert norms._group_rows(Samples.of((16, 8, 8, 64), 3), 64) == 0
