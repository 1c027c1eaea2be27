"""Channel-routing layers: Concat of branches, ChannelSlice, ChannelShuffle and
SqueezeExcitation, against their definitions (known permutations, NumPy compositions) and
finite differences of float64 gradients."""

import copy
import pickle

import numpy as np
import pytest

import cybn
from cybn import nn


def numeric_grad(f, x, dy, eps=1e-6):
    """d/dx of sum(f(x) * dy) by central differences."""
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = np.sum(f(x) * dy)
        flat[i] = old - eps
        down = np.sum(f(x) * dy)
        flat[i] = old
        g.reshape(-1)[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("channels_last", [False, True])
def test_concat_joins_branch_outputs_and_adds_their_gradients(channels_last):
    rng = np.random.default_rng(0)
    cl = channels_last
    a = nn.Conv2d(3, 2, 1, channels_last=cl, dtype=np.float64, rng=rng)
    b = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, channels_last=cl, dtype=np.float64,
                                rng=rng), nn.ReLU())
    layer = nn.Concat(a, b, channels_last=cl)
    shape = (2, 5, 5, 3) if cl else (2, 3, 5, 5)
    x = rng.standard_normal(shape)
    y = layer(x)
    axis = 3 if cl else 1
    np.testing.assert_array_equal(y, np.concatenate([a(x), b(x)], axis=axis))
    dy = rng.standard_normal(y.shape)
    layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, numeric_grad(layer, x.copy(), dy), rtol=1e-6, atol=1e-7)
    assert list(layer.state_dict())[:2] == ["0.weight", "0.bias"]
    assert "1.0.weight" in layer.state_dict()
    assert len(layer) == 2 and layer[1] is b


def test_concat_errors():
    with pytest.raises(ValueError, match="at least one"):
        nn.Concat()
    with pytest.raises(TypeError, match="branch 1"):
        nn.Concat(nn.ReLU(), "conv")
    layer = nn.Concat(nn.Identity(), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="differ"):
        layer(np.zeros((1, 2, 4, 4), np.float32))


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_slice_and_shuffle_move_the_known_channels(channels_last):
    x = np.arange(2 * 6 * 2 * 3, dtype=np.float64).reshape(2, 6, 2, 3)
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    take = lambda a, idx: np.take(a, idx, axis=3 if channels_last else 1)  # noqa: E731
    sl = nn.ChannelSlice(2, 5, channels_last=channels_last)
    np.testing.assert_array_equal(sl(x), take(x, [2, 3, 4]))
    dy = np.ones(sl(x).shape)
    sl(x)
    dx = sl.backward(dy)
    np.testing.assert_array_equal(take(dx, [0, 1, 5]), 0)
    np.testing.assert_array_equal(take(dx, [2, 3, 4]), 1)
    sh = nn.ChannelShuffle(2, channels_last=channels_last)
    y = sh(x)
    # (2, 3) groups -> output channel j * 2 + g is input channel g * 3 + j
    np.testing.assert_array_equal(y, take(x, [0, 3, 1, 4, 2, 5]))
    np.testing.assert_array_equal(sh.backward(y), x)  # the inverse permutation


def test_shufflenet_unit_of_split_branch_concat_and_shuffle():
    """ShuffleNetV2's stride-1 unit: x1, x2 = split(x); cat(x1, branch(x2)); shuffle(2)."""
    rng = np.random.default_rng(1)
    branch = nn.Sequential(nn.Conv2d(2, 2, 1, dtype=np.float64, rng=rng), nn.ReLU())
    unit = nn.Sequential(nn.Concat(nn.ChannelSlice(0, 2),
                                   nn.Sequential(nn.ChannelSlice(2, 4), branch)),
                         nn.ChannelShuffle(2))
    x = rng.standard_normal((2, 4, 3, 3))
    y = unit(x)
    expected = np.concatenate([x[:, :2], branch(x[:, 2:])], axis=1)[:, [0, 2, 1, 3]]
    np.testing.assert_array_equal(y, expected)
    dy = rng.standard_normal(y.shape)
    unit(x)
    np.testing.assert_allclose(unit.backward(dy), numeric_grad(unit, x.copy(), dy),
                               rtol=1e-6, atol=1e-7)


def test_shuffle_and_slice_errors():
    with pytest.raises(ValueError, match="groups"):
        nn.ChannelShuffle(4)(np.zeros((1, 6, 2, 2)))
    with pytest.raises(ValueError, match="start"):
        nn.ChannelSlice(3, 3)
    with pytest.raises(ValueError, match="channels"):
        nn.ChannelSlice(0, 5)(np.zeros((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="groups"):
        nn.ChannelShuffle(0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("scale", ["sigmoid", "hardsigmoid"])
def test_squeeze_excitation_matches_its_definition_and_finite_differences(channels_last,
                                                                          scale):
    rng = np.random.default_rng(2)
    se = nn.SqueezeExcitation(6, 3, scale_activation=scale, channels_last=channels_last,
                              dtype=np.float64, rng=rng)
    shape = (2, 4, 5, 6) if channels_last else (2, 6, 4, 5)
    x = rng.standard_normal(shape)
    axes = (1, 2) if channels_last else (2, 3)
    s = x.mean(axis=axes, keepdims=True)
    w1 = se.fc1.weight.data[:, :, 0, 0]
    w2 = se.fc2.weight.data[:, :, 0, 0]
    s = np.moveaxis(s, 3 if channels_last else 1, -1)
    h = np.maximum(s @ w1.T + se.fc1.bias.data, 0) @ w2.T + se.fc2.bias.data
    g = 1 / (1 + np.exp(-h)) if scale == "sigmoid" else np.clip(h / 6 + 0.5, 0, 1)
    expected = x * np.moveaxis(g, -1, 3 if channels_last else 1)
    np.testing.assert_allclose(se(x), expected, rtol=1e-13, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    se(x)
    dx = se.backward(dy)
    np.testing.assert_allclose(dx, numeric_grad(se, x.copy(), dy), rtol=1e-6, atol=1e-7)
    assert sorted(se.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    with pytest.raises(ValueError, match="scale_activation"):
        nn.SqueezeExcitation(6, 3, scale_activation="softmax")


def test_fold_batchnorm_folds_inside_concat_branches():
    import cybn
    rng = np.random.default_rng(3)
    fire = nn.Sequential(
        nn.Conv2d(4, 3, 1, rng=rng), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Concat(nn.Sequential(nn.Conv2d(3, 2, 1, rng=rng), nn.BatchNorm2d(2), nn.ReLU()),
                  nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, rng=rng), nn.BatchNorm2d(2),
                                nn.ReLU6())))
    for m in fire.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2, m.num_features)
    fire.eval()
    folded = cybn.fold_batchnorm(fire)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded[1][0][0].activation == "relu"  # the first branch's ReLU moved in
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(folded(x), fire(x), rtol=1e-5, atol=1e-5)


def test_fire_and_shuffle_unit_compose_their_named_children():
    """Fire and ShuffleUnit compute with the children that carry torchvision's names: a
    child swapped after construction (as fold_batchnorm and fuse do) is the one used, and
    forward/backward agree with the same layers written as Concat blocks."""
    rng = np.random.default_rng(0)
    fire = cybn.Fire(6, 3, 4, 5, dtype=np.float64, rng=1)
    assert [k.split(".")[0] for k in fire.state_dict()][::2] == ["squeeze", "expand1x1",
                                                                 "expand3x3"]
    plain = cybn.Sequential(fire.squeeze, cybn.ReLU(), cybn.Concat(
        cybn.Sequential(fire.expand1x1, cybn.ReLU()), cybn.Sequential(fire.expand3x3,
                                                                       cybn.ReLU())))
    x = rng.standard_normal((2, 6, 5, 7))
    y = fire(x)
    dy = rng.standard_normal(y.shape)
    fire.zero_grad()
    dx = fire.backward(dy)
    grads = [p.grad.copy() for p in fire.parameters()]
    fire.zero_grad()  # the same layer objects, run through plain
    np.testing.assert_array_equal(plain(x), y)
    np.testing.assert_array_equal(plain.backward(dy), dx)
    for g, p in zip(grads, fire.parameters()):
        np.testing.assert_array_equal(g, p.grad)
    with pytest.raises(RuntimeError, match="forward first"):
        fire.backward(dy)
    fire.expand3x3_activation = cybn.Identity()  # no ReLU on that branch any more
    assert (fire(x)[:, 4:] < 0).any()
    # the composition is kept between calls and rebuilt only for new children; copies and
    # pickles leave it out (and rebuild it from their own children)
    first = fire._composition()
    assert fire._composition() is first
    fire.expand3x3_activation = cybn.ReLU()
    assert fire._composition() is not first and (fire(x)[:, 4:] >= 0).all()
    clone = pickle.loads(pickle.dumps(fire))
    assert "_composed" not in copy.deepcopy(fire).__dict__
    np.testing.assert_array_equal(clone(x), fire(x))

    unit = cybn.ShuffleUnit(cybn.Sequential(cybn.Conv2d(4, 4, 1, dtype=np.float64, rng=2),
                                            cybn.BatchNorm2d(4, dtype=np.float64)))
    x = rng.standard_normal((2, 8, 3, 3))
    y = unit(x)
    half = cybn.ChannelShuffle(2)(np.concatenate([x[:, :4], unit.branch2(x[:, 4:])], axis=1))
    np.testing.assert_allclose(y, half, rtol=1e-14)
    assert unit.backward(np.ones_like(y)).shape == x.shape
    with pytest.raises(TypeError, match="branch2"):
        cybn.ShuffleUnit("conv")


def test_stochastic_depth_drops_whole_samples():
    x = np.ones((400, 3, 2, 2))
    layer = cybn.StochasticDepth(0.25, "row", rng=0)
    y = layer(x)
    kept = y.reshape(400, -1)
    assert set(np.unique(kept)) == {0.0, 1 / 0.75}
    assert np.all(kept.min(axis=1) == kept.max(axis=1))  # a whole sample or nothing
    assert 0.6 < np.mean(kept[:, 0] > 0) < 0.9
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)  # the same mask
    batch = cybn.StochasticDepth(0.5, "batch", rng=1)
    assert len(np.unique(batch(x))) == 1
    np.testing.assert_array_equal(cybn.StochasticDepth(1.0)(x), 0 * x)
    layer.eval()
    assert layer(x) is x or np.array_equal(layer(x), x)
    for bad in (dict(p=1.5), dict(p=0.1, mode="rows")):
        with pytest.raises(ValueError, match="p must|mode must"):
            cybn.StochasticDepth(**bad)


def test_fire_backward_checks_dy_before_using_the_forward():
    fire = cybn.Fire(4, 2, 3, 3, dtype=np.float64, rng=0)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5))
    y = fire(x)
    with pytest.raises(ValueError, match="dy must have the shape"):
        fire.backward(np.ones((2, 6, 5, 4)))
    assert fire.backward(np.ones_like(y)).shape == x.shape  # the forward's record kept
