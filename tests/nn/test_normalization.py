"""The normalization layers: PyTorch's outputs, gradients and state on a fixture produced
by PyTorch (tools/fixtures/make_torch_norms_fixture.py), layouts, and use with fit."""

import os

import numpy as np
import pytest

import cybn
from conftest import DATA, numeric_grad

FIXTURE = os.path.join(DATA, "torch_norms.npz")


def torch_like(channels_last=False, dtype=np.float64):
    return cybn.Sequential(
        cybn.GroupNorm(2, 6, channels_last=channels_last, dtype=dtype),
        cybn.InstanceNorm2d(6, affine=True, track_running_stats=True, momentum=0.2,
                            channels_last=channels_last, dtype=dtype),
        cybn.LayerNorm((4, 5), dtype=dtype),
        cybn.RMSNorm(5, dtype=dtype),
        cybn.RMSNorm((4, 5), eps=1e-3, dtype=dtype),
    )


def load(prefix, data):
    return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def test_reproduces_pytorch_outputs_gradients_and_state():
    data = np.load(FIXTURE)
    model = torch_like()
    model.load_state_dict(load("state.", data))
    model.train()
    y = model(data["x"])
    np.testing.assert_allclose(y, data["y"], rtol=1e-10, atol=1e-10)
    dx = model.backward(data["dy"])
    np.testing.assert_allclose(dx, data["dx"], rtol=1e-9, atol=1e-9)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, data[f"grad.{name}"], rtol=1e-9, atol=1e-9,
                                   err_msg=name)
    after = model.state_dict()
    expected = load("after.", data)
    assert list(after) == list(load("state.", data))
    for k in expected:
        np.testing.assert_allclose(after[k], expected[k], rtol=1e-12, atol=1e-12, err_msg=k)
    model.eval()
    np.testing.assert_allclose(model(data["x"]), data["y_eval"], rtol=1e-10, atol=1e-10)


def test_channels_last_layers_equal_channels_first():
    data = np.load(FIXTURE)
    # GroupNorm and InstanceNorm only: LayerNorm/RMSNorm normalize the trailing axes
    first = cybn.Sequential(*list(torch_like())[:2])
    last = cybn.Sequential(*list(torch_like(channels_last=True))[:2])
    state = {k: v for k, v in load("state.", data).items() if k[0] in "01"}
    first.load_state_dict(state)
    last.load_state_dict(state)
    x = data["x"]
    y = first(x)
    y_last = last(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(y_last, y.transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(0).standard_normal(y.shape)
    dx = first.backward(g)
    dx_last = last.backward(np.ascontiguousarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx_last, dx.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer,shape", [
    (lambda: cybn.GroupNorm(3, 6), (2, 6, 3, 2)),
    (lambda: cybn.InstanceNorm1d(3, affine=True), (2, 3, 5)),
    (lambda: cybn.LayerNorm(4), (3, 4)),
    (lambda: cybn.RMSNorm((2, 3), eps=1e-4), (2, 2, 3)),
])
def test_layer_gradients_match_finite_differences(layer, shape):
    rng = np.random.default_rng(3)
    m = layer()
    for p in m.parameters():
        p.data = rng.standard_normal(p.shape)
        p.grad = np.zeros_like(p.data)
    x = rng.standard_normal(shape) + 1
    g = rng.standard_normal(shape)
    m(x)
    dx = m.backward(g)
    f = lambda: float(np.sum(m(x) * g))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    for p in m.parameters():
        grad = p.grad.copy()
        np.testing.assert_allclose(grad, numeric_grad(f, p.data), rtol=1e-5, atol=1e-7)


def test_instance_norm_eval_uses_running_stats_only_when_tracked():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)) + 5
    untracked = cybn.InstanceNorm2d(3).eval()
    np.testing.assert_allclose(untracked(x), cybn.instance_norm(x)[0])
    tracked = cybn.InstanceNorm2d(3, track_running_stats=True).eval()
    np.testing.assert_allclose(tracked(x), x / np.sqrt(1 + 1e-5))  # mean 0, var 1


def test_norm_layers_train_with_fit():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((64, 2, 4, 4)).astype(np.float32)
    y = (X.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    model = cybn.Sequential(cybn.Conv2d(2, 4, 3, padding=1, rng=0), cybn.GroupNorm(2, 4),
                            cybn.ReLU(), cybn.Flatten(), cybn.Linear(64, 8, rng=1),
                            cybn.LayerNorm(8), cybn.ReLU(), cybn.Linear(8, 2, rng=2))
    history = cybn.fit(model, X, y, epochs=15, batch_size=16,
                       optimizer=cybn.Adam(model.parameters(), lr=0.01), progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0]


@pytest.mark.parametrize("make,error,match", [
    (lambda: cybn.GroupNorm(4, 6), ValueError, "divisible"),
    (lambda: cybn.GroupNorm(0, 6), ValueError, "num_groups"),
    (lambda: cybn.LayerNorm(0), ValueError, "normalized_shape"),
    (lambda: cybn.LayerNorm(4, eps=-1.0), ValueError, "eps"),
    (lambda: cybn.InstanceNorm2d(3, momentum=2.0), ValueError, "momentum"),
    (lambda: cybn.RMSNorm(4, dtype=np.float16), TypeError, "dtype"),
    (lambda: cybn.GroupNorm(2, 4, affine="yes"), TypeError, "affine"),
])
def test_constructor_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_wrong_input_shapes_name_the_layer():
    with pytest.raises(ValueError, match="GroupNorm has 6 channels.*channels_last=True"):
        cybn.GroupNorm(2, 6)(np.zeros((2, 4, 4, 6)))
    with pytest.raises(ValueError, match="InstanceNorm2d expects 4-D"):
        cybn.InstanceNorm2d(3)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="normalized_shape"):
        cybn.LayerNorm(5)(np.zeros((2, 4)))
