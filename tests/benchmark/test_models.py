"""bench --models: the networks it times are the ones it says (shapes, layouts, a residual
net that trains), and with PyTorch installed its PyTorch copies compute the same outputs and
the suite reports consistent ratios. PyTorch is optional: those tests skip without it."""

import json

import numpy as np
import pytest

import cybn
from cybn.benchmark import models as bench_models


@pytest.mark.parametrize("name,layout,build,shape", bench_models.MODELS,
                         ids=[f"{m[0]} {m[1]}" for m in bench_models.MODELS])
def test_each_model_maps_its_batch_to_ten_logits_and_trains(name, layout, build, shape):
    model = build(np.random.default_rng(1))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = np.arange(shape[0]) % 10
    out = model(x)
    assert out.shape == (shape[0], 10) and out.dtype == np.float32
    loss0, g = cybn.cross_entropy(out, y)
    model.backward_parameters(g)
    opt = cybn.SGD(model.parameters(), lr=1e-3)  # the 4096-wide head diverges at 1e-2
    opt.step()
    for _ in range(5):
        opt.zero_grad()
        _, g = cybn.cross_entropy(model(x), y)
        model.backward_parameters(g)
        opt.step()
    assert cybn.cross_entropy(model(x), y)[0] < loss0
    channels_last = any(getattr(m, "channels_last", False) for m in model.modules())
    assert channels_last == (layout == "NHWC")


def as_float64(model) -> None:
    """The model's parameters and float32 buffers in float64, in place."""
    for m in model.modules():
        for k, v in list(vars(m).items()):
            if isinstance(v, np.ndarray) and v.dtype == np.float32:
                setattr(m, k, v.astype(np.float64))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)


@pytest.mark.parametrize("entry", bench_models.MODELS, ids=lambda m: f"{m[0]} {m[1]}")
def test_the_pytorch_copy_computes_the_same_outputs_and_gradients(entry):
    """Outputs against PyTorch's float32 copy; every parameter gradient in float64 against
    PyTorch's float64 copy. (float32 gradients are no element-by-element yardstick: where a
    ReLU's input rounds to the other side of 0 in one of two correct float32 computations,
    that element's gradient differs by its whole size, and everything upstream with it.)"""
    torch = pytest.importorskip("torch")
    _, layout, build, shape = entry
    model = build(np.random.default_rng(1))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tm, tx = bench_models.to_torch(model, x, torch)
    np.testing.assert_allclose(model(x), tm(tx).detach().numpy(), rtol=1e-4, atol=1e-4)
    tm = tm.double().train()
    as_float64(model)
    model.train()
    y = np.arange(shape[0]) % 10
    out = model(x.astype(np.float64))
    assert out.dtype == np.float64
    _, g = cybn.cross_entropy(out, y)
    model.backward_parameters(g)
    torch.nn.functional.cross_entropy(tm(tx.double()), torch.from_numpy(y)).backward()
    params = list(model.parameters())
    assert len(params) == len(list(tm.parameters()))
    for p, ref in zip(params, tm.parameters()):
        grad = p.grad
        if layout == "NHWC" and grad.shape == (10, 4096):  # the head reads (H, W, C) there
            grad = grad.reshape(10, 8, 8, 64).transpose(0, 3, 1, 2).reshape(10, -1)
        np.testing.assert_allclose(grad, ref.grad.numpy(), rtol=1e-9, atol=1e-13)


def test_models_suite_reports_consistent_rows(capsys):
    pytest.importorskip("torch")
    suite = [m for m in bench_models.MODELS if m[0].startswith("demo")]
    result = bench_models.models_suite(repeats=2, suite=suite)
    rows = result["rows"]
    assert [(r["model"], r["pass"]) for r in rows] == [
        (m[0], p) for m in suite for p in ("train", "infer")]
    for r in rows:
        assert r["cybn_ms"] > 0 and r["torch_ms"] > 0 and r["fused_ms"] > 0
        assert abs(r["cybn_over_torch"] - r["cybn_ms"] / r["torch_ms"]) < 1e-9
    json.dumps(result)
    assert bench_models.models_markdown(result).count("\n") == len(rows) + 1
    assert "demo CNN" in capsys.readouterr().out
