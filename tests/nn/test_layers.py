"""Layers: finite-difference gradients, agreement with the functional API, running statistics,
train/eval, state_dict round trips and PyTorch-produced state."""

import copy
import os
import pickle

import numpy as np
import pytest

import cybn
import reference as ref
from conftest import DATA, numeric_grad
from cybn import (BatchNorm1d, BatchNorm2d, BatchNorm3d, Conv2d, Dropout, Flatten, Linear,
                  MaxPool2d, ReLU, Sequential)

F64 = np.float64


def check_gradients(model, x, rtol=1e-5, atol=1e-7, loss=None):
    """Compare model.backward against finite differences for x and every parameter."""
    rng = np.random.default_rng(0)
    out = model(x)
    if loss is None:
        g = rng.standard_normal(out.shape)

        def f():
            return float(np.sum(model(x) * g))
    else:
        targets = rng.integers(0, out.shape[1], len(out))

        def f():
            return loss(model(x), targets)[0]

        _, g = loss(out, targets)
    model.zero_grad()
    model(x)
    dx = model.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=rtol, atol=atol)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, numeric_grad(f, p.data), rtol=rtol, atol=atol,
                                   err_msg=name)


@pytest.mark.parametrize("layer,shape", [
    (lambda: BatchNorm1d(3, dtype=F64), (5, 3)),
    (lambda: BatchNorm1d(3, dtype=F64), (4, 3, 5)),
    (lambda: BatchNorm1d(3, channels_last=True, dtype=F64), (4, 5, 3)),
    (lambda: BatchNorm2d(3, dtype=F64), (3, 3, 4, 2)),
    (lambda: BatchNorm2d(3, channels_last=True, dtype=F64), (3, 4, 2, 3)),
    (lambda: BatchNorm3d(2, dtype=F64), (2, 2, 3, 2, 2)),
    (lambda: Linear(4, 3, dtype=F64, rng=1), (5, 4)),
    (lambda: Conv2d(2, 3, 3, stride=2, padding=1, dtype=F64, rng=2), (2, 2, 5, 5)),
    (lambda: Conv2d(2, 3, (2, 3), padding=(1, 0), channels_last=True, dtype=F64, rng=3),
     (2, 4, 5, 2)),
    (lambda: ReLU(), (4, 6)),
    (lambda: MaxPool2d(2), (2, 3, 4, 6)),
    (lambda: MaxPool2d(3, stride=2, channels_last=True), (2, 7, 5, 3)),
    (lambda: Flatten(), (2, 3, 4)),
])
def test_layer_gradients(layer, shape):
    x = np.random.default_rng(5).standard_normal(shape)
    check_gradients(layer(), x)


def test_batchnorm_eval_gradient():
    bn = BatchNorm2d(3, dtype=F64)
    bn.running_mean[:] = [0.5, -1, 2]
    bn.running_var[:] = [2, 0.5, 1]
    bn.eval()
    check_gradients(bn, np.random.default_rng(6).standard_normal((2, 3, 3, 3)))


def test_mlp_gradient_with_cross_entropy():
    model = Sequential(Linear(6, 8, dtype=F64, rng=0), BatchNorm1d(8, dtype=F64), ReLU(),
                       Linear(8, 4, dtype=F64, rng=1))
    x = np.random.default_rng(7).standard_normal((10, 6))
    check_gradients(model, x, loss=cybn.cross_entropy)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cnn_gradient(channels_last):
    cl = channels_last
    model = Sequential(Conv2d(2, 3, 3, padding=1, channels_last=cl, dtype=F64, rng=0),
                       BatchNorm2d(3, channels_last=cl, dtype=F64), ReLU(),
                       MaxPool2d(2, channels_last=cl), Flatten(), Linear(12, 4, dtype=F64, rng=1))
    shape = (4, 4, 4, 2) if cl else (4, 2, 4, 4)
    x = np.random.default_rng(8).standard_normal(shape)
    check_gradients(model, x, loss=cybn.cross_entropy)


def test_dropout_masks_and_scales():
    d = Dropout(0.25, rng=0)
    x = np.ones((200, 50))
    y = d(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d.eval()
    assert d(x) is x


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_layer_matches_functional_and_tracks_running_stats(momentum):
    rng = np.random.default_rng(9)
    bn = BatchNorm2d(4, momentum=momentum, dtype=F64)
    bn.weight.data[:] = rng.standard_normal(4)
    bn.bias.data[:] = rng.standard_normal(4)
    rm, rv = np.zeros(4), np.ones(4)
    batches = [rng.standard_normal((3, 4, 5, 5)) * (i + 1) + i for i in range(5)]
    for i, x in enumerate(batches):
        y = bn(x)
        np.testing.assert_allclose(y, ref.train(x, bn.weight.data, bn.bias.data)[0],
                                   rtol=1e-12, atol=1e-12)
        m = momentum if momentum is not None else 1.0 / (i + 1)
        rm, rv = ref.running_update(rm, rv, x, m)
    assert bn.num_batches_tracked == 5
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    if momentum is None:  # cumulative average of the batch statistics
        np.testing.assert_allclose(bn.running_mean,
                                   np.mean([ref.moments(x)[0] for x in batches], axis=0))
    bn.eval()
    x = batches[0]
    np.testing.assert_allclose(bn(x), ref.infer(x, rm, rv, bn.weight.data, bn.bias.data),
                               rtol=1e-12, atol=1e-12)
    assert bn.num_batches_tracked == 5  # eval does not count
    bn.train()
    bn(x)
    assert bn.num_batches_tracked == 6


def test_track_running_stats_false_uses_batch_stats_in_eval():
    bn = BatchNorm1d(3, track_running_stats=False, dtype=F64).eval()
    x = np.random.default_rng(10).standard_normal((6, 3))
    np.testing.assert_allclose(bn(x), ref.train(x)[0], rtol=1e-12, atol=1e-12)
    assert "running_mean" not in bn.state_dict()


def test_batchnorm_rejects_wrong_rank():
    with pytest.raises(ValueError, match="BatchNorm2d expects 4-D input"):
        BatchNorm2d(3)(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1d expects 2-D or 3-D"):
        BatchNorm1d(3)(np.ones((2, 3, 1, 1), np.float32))


def build_torch_like():
    return Sequential(Conv2d(2, 3, 3, padding=1, rng=0), BatchNorm2d(3), ReLU(), MaxPool2d(2),
                      Flatten(), Linear(12, 5, rng=1), BatchNorm1d(5, momentum=None))


def test_state_dict_keys_and_round_trip():
    a, b = build_torch_like(), Sequential(Conv2d(2, 3, 3, padding=1, rng=5), BatchNorm2d(3),
                                          ReLU(), MaxPool2d(2), Flatten(), Linear(12, 5, rng=6),
                                          BatchNorm1d(5, momentum=None))
    x = np.random.default_rng(11).standard_normal((6, 2, 4, 4)).astype(np.float32)
    a(x)  # moves running statistics
    state = a.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                           "1.running_var", "1.num_batches_tracked", "5.weight", "5.bias",
                           "6.weight", "6.bias", "6.running_mean", "6.running_var",
                           "6.num_batches_tracked"]
    assert state["1.num_batches_tracked"].shape == () and state["0.weight"].shape == (3, 2, 3, 3)
    b.load_state_dict(state)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    state["0.weight"][:] = 0  # state_dict returns copies
    assert np.any(a[0].weight.data != 0)


def test_load_state_dict_errors_change_nothing():
    model = build_torch_like()
    before = model.state_dict()
    bad = dict(before)
    bad["1.running_mean"] = np.zeros(4)
    with pytest.raises(ValueError, match="1.running_mean.*shape"):
        model.load_state_dict(bad)
    bad = dict(before)
    bad["7.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="unexpected keys \\['7.weight'\\]"):
        model.load_state_dict(bad)
    bad = dict(before)
    del bad["5.bias"]
    with pytest.raises(ValueError, match="missing keys \\['5.bias'\\]"):
        model.load_state_dict(bad)
    after = model.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_state_dict_without_num_batches_tracked_loads_strictly():
    """Older PyTorch saved no num_batches_tracked; PyTorch loads such a state in strict mode
    and keeps the counter."""
    source, model = build_torch_like(), build_torch_like()
    source(np.random.default_rng(12).standard_normal((6, 2, 4, 4)).astype(np.float32))
    old = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    model.load_state_dict(old)
    for k, v in old.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert model.state_dict()["1.num_batches_tracked"] == 0
    del old["1.running_var"]
    with pytest.raises(ValueError, match="missing keys \\['1.running_var'\\]"):
        model.load_state_dict(old)


def test_loads_pytorch_state_and_gives_pytorch_outputs():
    data = np.load(os.path.join(DATA, "torch_sequential.npz"))
    state = {k[len("state."):]: data[k] for k in data.files if k.startswith("state.")}
    model = build_torch_like()
    model.load_state_dict(state)
    model.eval()
    np.testing.assert_allclose(model(data["x"]), data["y_eval"], rtol=1e-5, atol=1e-5)
    model.train()
    np.testing.assert_allclose(model(data["x"]), data["y_train"], rtol=1e-4, atol=1e-4)
    back = model.state_dict()
    assert set(back) == set(state)
    assert back["6.num_batches_tracked"] == state["6.num_batches_tracked"] + 1


def test_losses_match_finite_differences():
    rng = np.random.default_rng(12)
    logits = rng.standard_normal((5, 4)) * 3
    t = rng.integers(0, 4, 5)
    loss, g = cybn.cross_entropy(logits, t)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(5), t])))
    np.testing.assert_allclose(g, numeric_grad(lambda: cybn.cross_entropy(logits, t)[0], logits),
                               rtol=1e-6, atol=1e-9)
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    loss, g = cybn.cross_entropy(big, np.array([1, 1]))
    assert np.isfinite(loss) and loss == pytest.approx(1000.0 / 2 + 1000.0 / 2)
    pred, target = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    loss, g = cybn.mse_loss(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2))
    np.testing.assert_allclose(g, numeric_grad(lambda: cybn.mse_loss(pred, target)[0], pred),
                               rtol=1e-6)


def test_sgd_and_adam_follow_pytorch_rules():
    p = cybn.Parameter(np.array([1.0, -2.0]))
    opt = cybn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    grads = [np.array([0.5, 0.25]), np.array([-0.5, 1.0])]
    w, buf = p.data.copy(), None
    for g in grads:
        p.grad[:] = g
        opt.step()
        d = g + 0.01 * w
        buf = d.copy() if buf is None else 0.9 * buf + d
        w = w - 0.1 * (d + 0.9 * buf)
    np.testing.assert_allclose(p.data, w, rtol=1e-14)

    q = cybn.Parameter(np.array([1.0, -2.0]))
    adam = cybn.Adam([q], lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    w, m, v = q.data.copy(), 0, 0
    for t, g in enumerate(grads, 1):
        q.grad[:] = g
        adam.step()
        d = g + 0.1 * w
        m = 0.8 * m + 0.2 * d
        v = 0.9 * v + 0.1 * d * d
        w = w - 0.01 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-6)
    np.testing.assert_allclose(q.data, w, rtol=1e-14)


def test_weight_decay_skips_batchnorm_parameters():
    bn = BatchNorm1d(2, dtype=F64)
    lin = Linear(2, 2, dtype=F64, rng=0)
    w0 = lin.weight.data.copy()
    opt = cybn.SGD(list(bn.parameters()) + list(lin.parameters()), lr=1.0, weight_decay=0.5)
    opt.zero_grad()
    opt.step()
    np.testing.assert_array_equal(bn.weight.data, 1.0)
    np.testing.assert_allclose(lin.weight.data, w0 * 0.5)


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 5)) * 3
    y = rng.integers(0, 3, n)
    X = (centers[y] + rng.standard_normal((n, 5))).astype(np.float32)
    return X, y


def test_fit_lowers_loss_and_is_reproducible():
    X, y = blobs()

    def run():
        model = Sequential(Linear(5, 16, rng=0), BatchNorm1d(16), ReLU(), Linear(16, 3, rng=1))
        hist = cybn.fit(model, X, y, epochs=5, batch_size=32, validation_data=(X, y),
                        progress=False, seed=3)
        return model, hist

    model, hist = run()
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.9
    assert len(hist["time"]) == 5 and not hist["diverged"]
    loss, acc = cybn.evaluate(model, X, y)
    assert loss == pytest.approx(hist["val_loss"][-1])
    assert cybn.predict(model, X).shape == (len(X), 3)
    _, hist2 = run()
    assert hist2["loss"] == hist["loss"] and hist2["val_loss"] == hist["val_loss"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_regression_and_divergence_flag():
    X, _ = blobs(64)
    target = X[:, :2] * 2.0
    model = Sequential(Linear(5, 2, rng=0))
    hist = cybn.fit(model, X, target, loss="mse", epochs=30, batch_size=16, progress=False,
                    optimizer=cybn.SGD(model.parameters(), lr=0.05))
    assert hist["loss"][-1] < 0.05 * hist["loss"][0]
    assert hist["accuracy"][-1] is None
    model = Sequential(Linear(5, 2, rng=0))
    hist = cybn.fit(model, X * 1e3, target, loss="mse", epochs=30, batch_size=16,
                    progress=False, optimizer=cybn.SGD(model.parameters(), lr=10.0))
    assert hist["diverged"] and len(hist["loss"]) < 30


def test_zero_grad_reads_as_zeros_and_the_next_backward_writes_its_gradient():
    """zero_grad defers its zeros: a read sees zeros, the first accumulate writes its values
    (the same as adding to zeros), later ones add; copies and pickles keep that state, and
    a Parameter pickled with a plain ``grad`` attribute still loads."""
    p = cybn.Parameter(np.ones(3, np.float32))
    p.accumulate(np.array([1.0, 2.0, 3.0]))
    p.accumulate(np.float32(1.0))  # broadcast, like +=
    np.testing.assert_array_equal(p.grad, [2, 3, 4])
    p.zero_grad()
    clone = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(clone.grad, [0, 0, 0])
    p.accumulate(np.array([5.0, -1.0, 0.5]))
    np.testing.assert_array_equal(p.grad, [5, -1, 0.5])
    assert p.grad.dtype == np.float32
    p.zero_grad()
    np.testing.assert_array_equal(copy.deepcopy(p).grad, 0)
    np.testing.assert_array_equal(p.grad, 0)  # read: zeros; the next accumulate adds
    p.accumulate(np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(p.grad, 1)
    with pytest.raises(TypeError):  # complex into float32, refused as += refuses it
        p.accumulate(np.ones(3, np.complex64))
    old = cybn.Parameter.__new__(cybn.Parameter)
    old.__setstate__({"data": np.zeros(2), "grad": np.array([1.0, 2.0]), "decay": True,
                      "requires_grad": True})
    np.testing.assert_array_equal(old.grad, [1, 2])


def test_a_layer_after_zero_grad_gets_the_gradient_of_one_backward():
    rng = np.random.default_rng(0)
    layer = cybn.Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 5, 5))
    dy = rng.standard_normal((2, 4, 5, 5))
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0], rtol=1e-12)
    layer.zero_grad()
    layer(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.weight.grad, once[0])
    np.testing.assert_array_equal(layer.bias.grad, once[1])
