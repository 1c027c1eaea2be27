"""Importers of Keras, Flax and ONNX batch-norm weights against numbers those frameworks
computed (tests/data/interop_fixtures.npz and batchnorm15.onnx, made by
tools/fixtures/make_interop_fixtures.py): the imported layer's inference output, its training
output and its updated running statistics equal theirs."""

import os

import numpy as np
import pytest

import cybn

from conftest import DATA
F = np.load(os.path.join(DATA, "interop_fixtures.npz"))


def check_layer(layer, prefix, train_tol=2e-5):
    """The layer reproduces the framework's inference output, then one training step."""
    x = F[f"{prefix}_x"]
    np.testing.assert_allclose(layer(x), F[f"{prefix}_y_infer"], rtol=1e-5, atol=1e-5)
    layer.train()
    np.testing.assert_allclose(layer(x), F[f"{prefix}_y_train"], rtol=train_tol,
                               atol=train_tol)
    np.testing.assert_allclose(layer.running_mean, F[f"{prefix}_new_mean"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(layer.running_var, F[f"{prefix}_new_var"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("prefix,ndim", [("keras_nhwc", 4), ("keras_nchw_beta_only", 4),
                                         ("keras_dense", 2)])
def test_keras_layer_reproduces_keras(prefix, ndim):
    axis, momentum, epsilon, center, scale = F[f"{prefix}_config"]
    config = {"axis": int(axis), "momentum": float(momentum), "epsilon": float(epsilon),
              "center": bool(center), "scale": bool(scale)}
    weights = ([F[f"{prefix}_gamma"]] if scale else []) + \
        ([F[f"{prefix}_beta"]] if center else []) + [F[f"{prefix}_mean"], F[f"{prefix}_var"]]
    layer = cybn.from_keras(weights, ndim=ndim, config=config)
    assert layer.convention == "keras" and layer.channels_last == (int(axis) == -1 and ndim > 2)
    assert (layer.weight is None) == (not scale)
    check_layer(layer, prefix)


def test_keras_weights_as_a_dict_and_keyword_arguments():
    p = "keras_nhwc"
    axis, momentum, epsilon, _, _ = F[f"{p}_config"]
    layer = cybn.from_keras({"gamma": F[f"{p}_gamma"], "beta": F[f"{p}_beta"],
                             "moving_mean": F[f"{p}_mean"], "moving_variance": F[f"{p}_var"]},
                            ndim=4, axis=-1, momentum=float(momentum), epsilon=float(epsilon))
    check_layer(layer, p)


@pytest.mark.parametrize("prefix,ndim", [("flax_nhwc", 4), ("flax_dense", 2)])
def test_flax_layer_reproduces_flax(prefix, ndim):
    momentum, epsilon = F[f"{prefix}_config"]
    layer = cybn.from_flax({"scale": F[f"{prefix}_gamma"], "bias": F[f"{prefix}_beta"]},
                           {"mean": F[f"{prefix}_mean"], "var": F[f"{prefix}_var"]},
                           ndim=ndim, momentum=float(momentum), epsilon=float(epsilon))
    assert layer.convention == "flax"
    check_layer(layer, prefix)


def test_onnx_node_reproduces_onnx_runtime():
    pytest.importorskip("onnx")
    layer = cybn.from_onnx(os.path.join(DATA, "batchnorm15.onnx"))
    momentum, epsilon = F["onnx_nchw_config"]
    assert isinstance(layer, cybn.BatchNorm2d) and not layer.channels_last
    assert layer.convention == "onnx" and np.isclose(layer.momentum, momentum)
    assert np.isclose(layer.eps, epsilon)
    check_layer(layer, "onnx_nchw")
    with open(os.path.join(DATA, "batchnorm15.onnx"), "rb") as f:
        again = cybn.from_onnx(f.read(), "bn1")
    np.testing.assert_array_equal(again.running_var, F["onnx_nchw_var"])
    with pytest.raises(ValueError, match="node must name one BatchNormalization"):
        cybn.from_onnx(os.path.join(DATA, "batchnorm15.onnx"), "bn2")


@pytest.mark.parametrize("call,match", [
    (lambda: cybn.from_keras([np.ones(3)] * 3, ndim=4), "weights must hold"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=6), "ndim"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=4, axis=2), "neither the channel axis"),
    (lambda: cybn.from_keras([np.ones(3), np.ones(3), np.ones(4), np.ones(3)], ndim=2),
     "moving_variance must be"),
    (lambda: cybn.from_flax({}, {"mean": np.zeros(2)}, ndim=2), "batch_stats lacks"),
    (lambda: cybn.from_flax({"scale": np.ones(3)}, {"mean": np.zeros(2), "var": np.ones(2)},
                            ndim=2), "params\\['scale'\\] must be"),
])
def test_importer_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
