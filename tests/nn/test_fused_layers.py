"""Fused layers: BatchNorm with activation="relu", the Residual block, and cybn.fuse, against
the unfused layers (outputs, input and parameter gradients, running statistics: bit for
bit)."""

import copy

import numpy as np
import pytest

import cybn
from cybn import nn


def grads(model):
    return [p.grad.copy() for p in model.parameters()]


def step(model, x, dy):
    """Forward and backward once; (y, dx, parameter gradients)."""
    model.zero_grad()
    y = model(x)
    dx = model.backward(dy)
    return y, dx, grads(model)


def assert_same(a, b):
    ya, dxa, ga = a
    yb, dxb, gb = b
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(dxa, dxb)
    assert len(ga) == len(gb)
    for p, q in zip(ga, gb):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_relu_equals_batchnorm_then_relu(channels_last, training, dtype):
    rng = np.random.default_rng(0)
    shape = (4, 6, 6, 5) if channels_last else (4, 5, 6, 6)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    plain = nn.Sequential(nn.BatchNorm2d(5, channels_last=channels_last, dtype=dtype), nn.ReLU())
    plain[0].weight.data[...] = rng.standard_normal(5)
    plain[0].bias.data[...] = rng.standard_normal(5)
    plain[0].running_mean[...] = rng.standard_normal(5)
    fused = nn.BatchNorm2d(5, channels_last=channels_last, dtype=dtype, activation="relu")
    fused.load_state_dict({k[2:]: v for k, v in plain.state_dict().items()})
    plain.train(training)
    fused.train(training)
    assert_same(step(plain, x, dy), step(fused, x, dy))
    np.testing.assert_array_equal(plain[0].running_mean, fused.running_mean)
    np.testing.assert_array_equal(plain[0].running_var, fused.running_var)
    assert "activation='relu'" in repr(fused)


def small_cnn(rng, channels_last=False):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, channels_last=channels_last, rng=rng),
        nn.BatchNorm2d(8, channels_last=channels_last), nn.ReLU(),
        nn.Residual(nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False, channels_last=channels_last, rng=rng),
            nn.BatchNorm2d(8, channels_last=channels_last), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False, channels_last=channels_last, rng=rng),
            nn.BatchNorm2d(8, channels_last=channels_last))),
        nn.Residual(nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False, channels_last=channels_last,
                      rng=rng),
            nn.BatchNorm2d(16, channels_last=channels_last), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False, channels_last=channels_last, rng=rng),
            nn.BatchNorm2d(16, channels_last=channels_last)),
            shortcut=nn.Sequential(
                nn.Conv2d(8, 16, 1, stride=2, bias=False, channels_last=channels_last, rng=rng),
                nn.BatchNorm2d(16, channels_last=channels_last))),
        nn.MaxPool2d(2, channels_last=channels_last), nn.Flatten(), nn.Linear(64, 10, rng=rng))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fuse_keeps_outputs_gradients_and_keys(channels_last, training):
    rng = np.random.default_rng(1)
    model = small_cnn(rng, channels_last)
    shape = (4, 8, 8, 3) if channels_last else (4, 3, 8, 8)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal((4, 10)).astype(np.float32)
    model.train(training)
    before = model.state_dict()
    fused = cybn.fuse(model)
    assert fused.fused == 3
    assert isinstance(fused[2], nn.Identity) and fused[1].activation == "relu"
    assert model[1].activation is None and isinstance(model[2], nn.ReLU)  # not modified
    assert list(fused.state_dict()) == list(before)
    assert fused.training == training
    assert_same(step(model, x, dy), step(fused, x, dy))
    for (k, a), b in zip(model.state_dict().items(), fused.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def unfused_residual(block):
    """The same block computed as separate layers: body, add, ReLU."""
    body = copy.deepcopy(block.body)
    short = copy.deepcopy(block._modules.get("shortcut"))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            if short is not None:
                self.shortcut = short

        def forward(self, x):
            s = x if short is None else short(x)
            self.pre = body(x) + s
            return np.maximum(self.pre, 0)

        def backward(self, dy):
            g = np.where(self.pre <= 0, 0, dy).astype(dy.dtype)
            ds = g if short is None else short.backward(g)
            return body.backward(g) + ds

    return Plain()


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_residual_block_equals_separate_add_and_relu(projection, training):
    rng = np.random.default_rng(2)
    cout = 6 if projection else 4
    body = nn.Sequential(nn.Conv2d(4, cout, 3, padding=1, rng=rng), nn.BatchNorm2d(cout))
    short = nn.Sequential(nn.Conv2d(4, cout, 1, rng=rng), nn.BatchNorm2d(cout)) \
        if projection else None
    block = nn.Residual(body, short)
    plain = unfused_residual(block)
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((3, cout, 5, 5)).astype(np.float32)
    block.train(training)
    plain.train(training)
    assert_same(step(plain, x, dy), step(block, x, dy))
    assert block._split_body()[1] is body[1]  # the fused path was taken
    keys = list(block.state_dict())
    assert keys[0] == "body.0.weight" and (not projection or "shortcut.1.running_var" in keys)


def test_residual_without_trailing_batchnorm_runs_unfused():
    rng = np.random.default_rng(3)
    body = nn.Sequential(nn.Linear(5, 5, rng=rng))
    block = nn.Residual(body, activation="relu")
    assert block._split_body() == (None, None)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    y = block(x)
    pre = x @ body[0].weight.data.T + body[0].bias.data + x
    np.testing.assert_allclose(y, np.maximum(pre, 0), rtol=1e-6, atol=1e-6)
    dx = block.backward(dy)
    g = np.where(pre <= 0, 0, dy)
    np.testing.assert_allclose(dx, g @ body[0].weight.data + g, rtol=1e-5, atol=1e-6)
    block2 = nn.Residual(nn.BatchNorm1d(5), activation=None)
    z = block2(x)
    np.testing.assert_allclose(z, cybn.batch_norm_train(x)[0] + x, rtol=1e-6)


def test_fold_batchnorm_moves_a_fused_relu_into_the_layer():
    rng = np.random.default_rng(4)
    model = cybn.fuse(nn.Sequential(nn.Linear(6, 5, rng=rng), nn.BatchNorm1d(5), nn.ReLU(),
                                    nn.Linear(5, 3, rng=rng)))
    model[1].running_mean[...] = rng.standard_normal(5)
    model.eval()
    x = rng.standard_normal((7, 6)).astype(np.float32)
    folded = cybn.fold_batchnorm(model, into="previous")
    assert folded[0].activation == "relu"
    assert not any(isinstance(layer, nn.ReLU) for layer in folded)
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="fused relu"):
        folded = cybn.fold_batchnorm(model, into="next")
    assert folded.not_folded[0][0] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        nn.BatchNorm2d(3, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        nn.Residual(nn.BatchNorm2d(3), activation="tanh")
    with pytest.raises(TypeError, match="body"):
        nn.Residual("conv")
    with pytest.raises(TypeError, match="model"):
        cybn.fuse([nn.ReLU()])


def test_fuse_leaves_other_neighbours_alone():
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Linear(6, 5, rng=rng), nn.BatchNorm1d(5), nn.Linear(5, 5, rng=rng),
                          nn.BatchNorm1d(5), nn.Dropout(0.0), nn.ReLU(), nn.BatchNorm1d(5),
                          nn.ReLU())
    fused = cybn.fuse(model)
    assert fused.fused == 1
    assert fused[1].activation is None and fused[3].activation is None
    assert isinstance(fused[5], nn.ReLU) and fused[6].activation == "relu"
    assert isinstance(fused[7], nn.Identity)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    dy = rng.standard_normal((8, 5)).astype(np.float32)
    assert_same(step(model, x, dy), step(fused, x, dy))
