"""Batch norm ending in ReLU6, LeakyReLU, SiLU or Hardswish (activation=): against the float64
reference with PyTorch's formulas (kinks included), equal bit for bit to batch norm followed by
cybn's activation layer in every op (train, infer, backward, ghost) and in the layers, folded
and exported like the layer pair, bad input rejected."""

import numpy as np
import pytest

import cybn
import reference as ref
from conftest import bn_case as data

ACTS = ["relu6", "leaky_relu", "silu", "hardswish"]
CASES = [((6, 16, 20, 20), 1), ((6, 20, 20, 16), -1), ((64, 24), 1), ((4, 5, 7, 3), -1)]


def act64(name, z):
    """PyTorch's definitions, in float64: (f(z), f'(z)) with its choices at the kinks."""
    if name == "relu6":
        return np.clip(z, 0, 6), ((z > 0) & (z < 6)).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)
    if name == "silu":
        s = 1.0 / (1.0 + np.exp(-z))
        return z * s, s * (1 + z * (1 - s))
    return z * np.clip(z + 3, 0, 6) / 6, np.where(z < -3, 0.0, np.where(z <= 3, z / 3 + 0.5,
                                                                         1.0))


def layer(name):
    return {"relu6": cybn.ReLU6, "leaky_relu": cybn.LeakyReLU, "silu": cybn.SiLU,
            "hardswish": cybn.Hardswish}[name]()


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,axis", CASES)
def test_train_and_backward_against_float64_reference(act, shape, axis):
    x, w, b, _, dy = data(shape, axis, np.float64)
    x = x * 4  # values on both sides of every kink
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation=act)
    z, mean_r, inv_r, _ = ref.train(x, w, b, axis=axis)
    f, df = act64(act, z)
    np.testing.assert_allclose(y, f, rtol=1e-12, atol=1e-12)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation=act,
                                          bias=b)
    want = ref.backward(dy * df, x, w, mean_r, inv_r, axis=axis)
    for got, exp in zip((dx, dw, db), want):
        np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_ops_equal_batch_norm_then_activation_layer(act, shape, axis, dtype, with_residual):
    x, w, b, r, dy = data(shape, axis, dtype)
    x = x * 4
    res = r if with_residual else None
    y0, mean0, inv0 = cybn.batch_norm_train(x, w, b, axis=axis)
    pre = y0 + r if with_residual else y0
    f = layer(act)
    y, mean, inv = cybn.batch_norm_train(x, w, b, axis=axis, activation=act, residual=res)
    np.testing.assert_array_equal(y, f(pre))
    np.testing.assert_array_equal(mean, mean0)
    g = f.backward(dy)
    got = cybn.batch_norm_backward(dy, x, w, mean, inv, axis=axis, activation=act, bias=b,
                                   residual=res)
    want = cybn.batch_norm_backward(g, x, w, mean, inv, axis=axis)
    assert len(got) == (4 if with_residual else 3)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)
    if with_residual:
        np.testing.assert_array_equal(got[3], g)

    rm, rv = np.abs(w) + 0.1, np.abs(b) + 0.5
    z = cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis, residual=res)
    np.testing.assert_array_equal(
        cybn.batch_norm_infer(x, rm, rv, w, b, axis=axis, activation=act, residual=res),
        layer(act)(z))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_rounds_like_the_layer_pair(act, dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = np.dtype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)
    x, w, b, _, dy = data((4, 6, 5, 5), 1, np.float32)
    x, dy = (x * 4).astype(dt), dy.astype(dt)
    y0, mean, inv = cybn.batch_norm_train(x, w, b)
    f = layer(act)
    y, _, _ = cybn.batch_norm_train(x, w, b, activation=act)
    assert y.dtype == dt
    np.testing.assert_array_equal(y.astype(np.float32), f(y0).astype(np.float32))
    got = cybn.batch_norm_backward(dy, x, w, mean, inv, activation=act, bias=b)
    want = cybn.batch_norm_backward(f.backward(dy), x, w, mean, inv)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(e, np.float32))


@pytest.mark.parametrize("act", ACTS)
def test_ghost_batches_each_end_in_the_activation(act):
    x, w, b, _, dy = data((10, 6, 4, 4), 1, np.float32)
    x = x * 4
    y, mean, inv = cybn.batch_norm_ghost(x, w, b, ghost_batch_size=4, activation=act)
    y0, _, _ = cybn.batch_norm_ghost(x, w, b, ghost_batch_size=4)
    np.testing.assert_array_equal(y, layer(act)(y0))
    f = layer(act)
    f(y0)
    got = cybn.batch_norm_ghost_backward(dy, x, w, mean, inv, ghost_batch_size=4,
                                         activation=act, bias=b)
    want = cybn.batch_norm_ghost_backward(f.backward(dy), x, w, mean, inv, ghost_batch_size=4)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (16, 8, 24, 24)], ids=["fast", "kernels"])
def test_layer_equals_batchnorm_then_activation(act, channels_last, shape):
    rng = np.random.default_rng(3)
    C = shape[1]
    if channels_last:
        shape = (shape[0], shape[2], shape[3], C)
    fused = cybn.BatchNorm2d(C, activation=act, channels_last=channels_last)
    plain = cybn.BatchNorm2d(C, channels_last=channels_last)
    for m in (fused, plain):
        m.weight.data[:] = np.linspace(-1.5, 2, C)
        m.bias.data[:] = np.linspace(-1, 1, C)
    f = layer(act)
    for step in range(2):
        x = (rng.standard_normal(shape) * 4).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(fused(x), f(plain(x)))
        np.testing.assert_array_equal(fused.backward(dy), plain.backward(f.backward(dy)))
        np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
        np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)
        np.testing.assert_array_equal(fused.running_var, plain.running_var)
    fused.eval()
    plain.eval()
    np.testing.assert_array_equal(fused(x), f(plain(x)))
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(f.backward(dy)))
    assert repr(act) in repr(fused)


@pytest.mark.parametrize("act,into", [("relu6", "epilogue"), ("silu", "layer"),
                                      ("hardswish", "layer"), ("leaky_relu", "layer")])
def test_fold_batchnorm_keeps_the_activation(act, into):
    rng = np.random.default_rng(5)
    model = cybn.Sequential(cybn.Conv2d(3, 8, 3, padding=1, rng=1),
                            cybn.BatchNorm2d(8, activation=act), cybn.Flatten())
    model.train()
    model(rng.standard_normal((8, 3, 6, 6)).astype(np.float32) * 3)
    model.eval()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    folded = cybn.fold_batchnorm(model)
    if into == "epilogue":
        assert folded[0].activation == act and len(folded) == 2
    else:
        assert type(folded[1]) is type(layer(act))
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fuse_leaves_the_unfused_activations_as_layers():
    model = cybn.Sequential(cybn.BatchNorm2d(4), cybn.SiLU(), cybn.BatchNorm2d(4), cybn.ReLU())
    fused = cybn.fuse(model)
    assert fused.fused == 1 and type(fused[1]) is cybn.SiLU and fused[2].activation == "relu"


@pytest.mark.parametrize("act", ACTS)
def test_onnx_export_runs_in_onnx_runtime(act, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(2)
    bn = cybn.BatchNorm2d(5, activation=act)
    bn.weight.data[:] = rng.standard_normal(5)
    bn.bias.data[:] = rng.standard_normal(5)
    bn.running_var[:] = rng.uniform(0.5, 2, 5)
    model = cybn.Sequential(bn).eval()
    x = (rng.standard_normal((2, 5, 4, 4)) * 4).astype(np.float32)
    path = str(tmp_path / "bn.onnx")
    cybn.to_onnx(model, path, input_shape=x.shape)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model(x), rtol=1e-5, atol=1e-5)


def test_bad_activations_are_rejected_before_anything_changes():
    x, w, b, _, dy = data((4, 3, 5), 1, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    for bad in ("gelu", "ReLU6", 6):
        with pytest.raises(ValueError, match="activation"):
            cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, activation=bad)
        with pytest.raises(ValueError, match="activation"):
            cybn.BatchNorm1d(3, activation=bad)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    mask = np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="mask"):
        cybn.batch_norm_train(x, w, b, running_mean=rm, running_var=rv, activation="silu",
                              mask=mask)
    np.testing.assert_array_equal(rm, 0)
    y, mean, inv = cybn.batch_norm_train(x, w, b)
    with pytest.raises(ValueError, match="mask"):
        cybn.batch_norm_backward(dy, x, w, mean, inv, activation="silu", mask=mask)
    with pytest.raises(ValueError, match="dy"):
        cybn.batch_norm_backward(dy[:2], x, w, mean, inv, activation="hardswish")
