"""Framework conventions (running variance estimator, momentum meaning, default eps),
separate center/scale flags, freeze(), and the degenerate-batch policies, against NumPy
written from each framework's documented update rule."""

import numpy as np
import pytest

import cybn
from cybn.ops.conventions import CONVENTIONS

# (convention, biased running variance, momentum weighs the running value, momentum, eps)
RULES = {"torch": (False, False, 0.1, 1e-5), "keras": (True, True, 0.99, 1e-3),
         "flax": (True, True, 0.99, 1e-5), "onnx": (True, True, 0.9, 1e-5),
         "tensorflow": (False, True, 0.99, 1e-3)}


def expected_running(x, axis, rm, rv, convention, momentum=None):
    biased, weighs_old, default_m, _ = RULES[convention]
    m = default_m if momentum is None else momentum
    other = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=other), xd.var(axis=other)
    n = x.size // x.shape[axis]
    if not biased:
        var = var * n / (n - 1)
    keep = m if weighs_old else 1 - m
    return keep * rm + (1 - keep) * mean, keep * rv + (1 - keep) * var


def reference_y(x, axis, eps, w=None, b=None):
    other = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    xd = x.astype(np.float64)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    y = (xd - xd.mean(axis=other, keepdims=True)) / np.sqrt(xd.var(axis=other, keepdims=True)
                                                              + eps)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


def test_the_table_matches_the_rules():
    for name, (biased, old, m, eps) in RULES.items():
        c = CONVENTIONS[name]
        assert (c.running_variance == "biased") == biased
        assert (c.momentum_weights == "old") == old
        assert (c.momentum, c.eps) == (m, eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((6, 3, 5, 4), 1), ((6, 5, 4, 3), -1), ((8, 3), 1),
                                        ((2, 300, 3), -1)])  # the last takes the full path
@pytest.mark.parametrize("convention", sorted(RULES))
def test_functional_running_statistics_follow_each_convention(convention, shape, axis, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    C = shape[axis]
    rm0, rv0 = rng.standard_normal(C), rng.random(C) + 0.5
    rm, rv = rm0.copy(), rv0.copy()
    y, mean, invstd = cybn.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis,
                                            convention=convention)
    em, ev = expected_running(x, axis, rm0, rv0, convention)
    np.testing.assert_allclose(rm, em, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, ev, rtol=1e-6, atol=1e-7)
    eps = RULES[convention][3]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, reference_y(x, axis, eps), rtol=tol, atol=tol)
    np.testing.assert_allclose(cybn.batch_norm_infer(x, rm, rv, axis=axis, convention=convention),
                               cybn.batch_norm_infer(x, rm, rv, axis=axis, eps=eps))


def test_keras_momentum_zero_keeps_the_biased_batch_variance():
    """The case from the issue: Keras holds the biased variance (0.999 here), PyTorch the
    unbiased one (1.110 for 10 values)."""
    x = np.array([-1, 1] * 5, dtype=np.float64).reshape(10, 1) * np.sqrt(0.999)
    rm, rv = np.zeros(1), np.ones(1)
    cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=0.0, convention="keras")
    np.testing.assert_allclose(rv, [0.999], rtol=1e-14)
    rm, rv = np.zeros(1), np.ones(1)
    cybn.batch_norm_train(x, running_mean=rm, running_var=rv, momentum=1.0)
    np.testing.assert_allclose(rv, [0.999 * 10 / 9], rtol=1e-14)


def test_running_variance_alone_and_momentum_in_the_framework_s_terms():
    x = np.random.default_rng(0).standard_normal((16, 4))
    for kwargs, conv, mom in [({"running_variance": "biased"}, "flax", 0.9),
                              ({"convention": "keras", "momentum": 0.9}, "keras", 0.9),
                              ({"convention": "onnx", "running_variance": "unbiased",
                                "momentum": 0.5}, "torch", 0.5)]:
        rm, rv = np.zeros(4), np.ones(4)
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, **kwargs)
        if "convention" not in kwargs:
            em, ev = expected_running(x, 1, np.zeros(4), np.ones(4), "flax", 0.9)
        else:
            em, ev = expected_running(x, 1, np.zeros(4), np.ones(4), conv, mom)
        np.testing.assert_allclose(rm, em, rtol=1e-13)
        np.testing.assert_allclose(rv, ev, rtol=1e-13)


@pytest.mark.parametrize("kwargs,match", [
    ({"convention": "caffe"}, "convention must be one of"),
    ({"convention": "keras", "running_variance": "population"}, "running_variance must be"),
    ({"convention": "keras", "momentum": 1.5}, "momentum must be in"),
    ({"on_degenerate": "ignore"}, "on_degenerate must be one of"),
])
def test_bad_convention_arguments_raise_and_change_nothing(kwargs, match):
    x = np.random.default_rng(0).standard_normal((8, 3))
    rm, rv, x0 = np.zeros(3), np.ones(3), x.copy()
    with pytest.raises(ValueError, match=match):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, **kwargs)
    with pytest.raises(ValueError, match=match):
        cybn.BatchNorm1d(3, **kwargs)
    np.testing.assert_array_equal(x, x0)
    assert (rm == 0).all() and (rv == 1).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("convention", sorted(RULES))
def test_layers_follow_the_convention_over_steps(convention, channels_last):
    bn = cybn.BatchNorm2d(3, convention=convention, channels_last=channels_last,
                          dtype=np.float64)
    assert bn.eps == RULES[convention][3] and bn.momentum == RULES[convention][2]
    axis = -1 if channels_last else 1
    rm, rv = np.zeros(3), np.ones(3)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((4, 5, 5, 3) if channels_last else (4, 3, 5, 5)) * 3 + 2
        y = bn(x)
        np.testing.assert_allclose(y, reference_y(x, axis, bn.eps), rtol=1e-12, atol=1e-12)
        rm, rv = expected_running(x, axis, rm, rv, convention)
        np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    if convention != "torch":
        assert f"convention='{convention}'" in repr(bn)


def test_cumulative_momentum_in_any_convention():
    bn = cybn.BatchNorm1d(2, momentum=None, convention="keras", dtype=np.float64)
    xs = [np.random.default_rng(i).standard_normal((6, 2)) for i in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([x.var(0) for x in xs], axis=0),
                               rtol=1e-12)


@pytest.mark.parametrize("center,scale", [(True, False), (False, True), (False, False)])
def test_center_and_scale_flags(center, scale):
    bn = cybn.BatchNorm1d(4, center=center, scale=scale, dtype=np.float64)
    assert (bn.bias is not None) == center and (bn.weight is not None) == scale
    keys = set(bn.state_dict())
    assert ("bias" in keys) == center and ("weight" in keys) == scale
    if center:
        bn.bias.data[:] = [1, -2, 3, 0.5]
    if scale:
        bn.weight.data[:] = [2, 0.5, -1, 3]
    x = np.random.default_rng(2).standard_normal((7, 4))
    y = bn(x)
    ref = reference_y(x, 1, 1e-5, bn.weight.data if scale else None,
                      bn.bias.data if center else None)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    dx = bn.backward(dy)
    full = cybn.BatchNorm1d(4, dtype=np.float64)
    full.weight.data[:] = bn.weight.data if scale else 1
    full.bias.data[:] = bn.bias.data if center else 0
    full(x)
    np.testing.assert_allclose(dx, full.backward(dy), rtol=1e-13, atol=1e-13)
    if scale:
        np.testing.assert_allclose(bn.weight.grad, full.weight.grad, rtol=1e-13)
    if center:
        np.testing.assert_allclose(bn.bias.grad, full.bias.grad, rtol=1e-13)
    assert len(list(bn.parameters())) == center + scale
    if center != scale:
        assert f"center={center}, scale={scale}" in repr(bn)


def test_freeze_runs_inference_in_training_mode_and_trains_nothing():
    rng = np.random.default_rng(4)
    model = cybn.Sequential(cybn.Linear(5, 4, dtype=np.float64, rng=0),
                            cybn.BatchNorm1d(4, dtype=np.float64))
    bn = model[1]
    opt = cybn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # trained first: SGD holds momentum buffers for bn's parameters
        opt.zero_grad()
        model.backward(model(rng.standard_normal((8, 5))))
        opt.step()
    bn.freeze()
    model.train()
    state = {k: v.copy() for k, v in bn.state_dict().items()}
    x = rng.standard_normal((8, 5))
    y = model(x)
    h = model[0](x)
    np.testing.assert_allclose(y, cybn.batch_norm_infer(h, bn.running_mean, bn.running_var,
                                                        bn.weight.data, bn.bias.data))
    opt.zero_grad()
    dy = rng.standard_normal(y.shape)
    model(x)
    model.backward(dy)
    expected_dx = cybn.batch_norm_backward(dy, h, bn.weight.data, bn.running_mean,
                                           1 / np.sqrt(bn.running_var + bn.eps),
                                           training=False)[0]
    np.testing.assert_allclose(model[0].weight.grad, expected_dx.T @ x, rtol=1e-12)
    opt.step()
    for k, v in bn.state_dict().items():  # parameters and running statistics unchanged
        np.testing.assert_array_equal(v, state[k])
    assert (bn.weight.grad == 0).all() and "frozen=True" in repr(bn)
    bn.unfreeze()
    model(x)
    assert not np.array_equal(bn.running_mean, state["running_mean"])


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC"])
def test_on_degenerate_policies(layout):
    shape, axis = {"NC": ((1, 3), 1), "NCHW": ((1, 3, 1, 1), 1), "NHWC": ((1, 1, 1, 3), -1)}[layout]
    x = np.array([0.5, -2.0, 3.0]).reshape(shape)
    w, b = np.array([2.0, 3.0, 4.0]), np.array([0.1, 0.2, 0.3])
    rm, rv = np.array([1.0, 0.0, -1.0]), np.array([4.0, 1.0, 0.25])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, axis=axis)
    y, _, _ = cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, axis=axis,
                                    on_degenerate="skip_update")
    np.testing.assert_array_equal(y.reshape(-1), b)
    assert rm.tolist() == [1.0, 0.0, -1.0] and rv.tolist() == [4.0, 1.0, 0.25]
    y, mean, invstd = cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                            axis=axis, on_degenerate="use_running")
    np.testing.assert_allclose(y, cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis))
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rv + 1e-5))
    assert rm.tolist() == [1.0, 0.0, -1.0] and rv.tolist() == [4.0, 1.0, 0.25]
    with pytest.raises(ValueError, match="needs running_mean"):
        cybn.batch_norm_train(x, on_degenerate="use_running", axis=axis)


def test_layer_use_running_gives_the_inference_gradient():
    bn = cybn.BatchNorm1d(3, dtype=np.float64, on_degenerate="use_running")
    bn.running_mean[:] = [1, 0, -1]
    bn.running_var[:] = [4, 1, 0.25]
    bn.weight.data[:] = [2, 3, 4]
    x, dy = np.array([[0.5, -2.0, 3.0]]), np.array([[1.0, -1.0, 2.0]])
    y = bn(x)
    np.testing.assert_allclose(y, (x - [1, 0, -1]) / np.sqrt(np.array([4, 1, 0.25]) + 1e-5)
                               * [2, 3, 4])
    assert int(bn.num_batches_tracked) == 0
    np.testing.assert_allclose(bn.backward(dy), dy * [2, 3, 4] / np.sqrt([4 + 1e-5, 1 + 1e-5,
                                                                          0.25 + 1e-5]))
    skip = cybn.BatchNorm1d(3, dtype=np.float64, on_degenerate="skip_update")
    np.testing.assert_array_equal(skip(x), np.zeros((1, 3)))
    assert (skip.running_var == 1).all()
