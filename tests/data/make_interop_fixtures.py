"""Generates tests/data/interop_fixtures.npz and tests/data/batchnorm15.onnx: batch-norm
outputs and updated running statistics computed by Keras 3, Flax and ONNX Runtime, for the
importers' tests (which then need none of those frameworks).

Run once, in an environment with them (not a dependency of cybn or its tests):

    pip install "keras>=3" jax flax onnx onnxruntime
    KERAS_BACKEND=jax python tests/data/make_interop_fixtures.py

Versions used for the stored files: keras 3.15.1 (JAX backend), jax 0.10.2, flax 0.12.8,
onnx 1.23.2, onnxruntime 1.32.0.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(2026)
out = {}


def channel_params(prefix, C):
    out[f"{prefix}_gamma"] = rng.uniform(0.5, 1.5, C).astype(np.float32)
    out[f"{prefix}_beta"] = rng.uniform(-0.5, 0.5, C).astype(np.float32)
    out[f"{prefix}_mean"] = rng.uniform(-1, 1, C).astype(np.float32)
    out[f"{prefix}_var"] = rng.uniform(0.5, 2.0, C).astype(np.float32)


def keras_case(prefix, shape, axis, center=True, scale=True, momentum=0.9, epsilon=1e-3):
    import keras

    C = shape[axis]
    channel_params(prefix, C)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    layer = keras.layers.BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon,
                                            center=center, scale=scale)
    layer.build(shape)
    weights = ([out[f"{prefix}_gamma"]] if scale else []) + \
        ([out[f"{prefix}_beta"]] if center else []) + [out[f"{prefix}_mean"], out[f"{prefix}_var"]]
    layer.set_weights(weights)
    out[f"{prefix}_x"] = x
    out[f"{prefix}_y_infer"] = np.asarray(layer(x, training=False))
    out[f"{prefix}_y_train"] = np.asarray(layer(x, training=True))
    w = layer.get_weights()
    out[f"{prefix}_new_mean"], out[f"{prefix}_new_var"] = np.asarray(w[-2]), np.asarray(w[-1])
    out[f"{prefix}_config"] = np.array([axis, momentum, epsilon, center, scale], dtype=np.float64)


def flax_case(prefix, shape, momentum=0.9, epsilon=1e-5):
    import jax.numpy as jnp
    from flax import linen as nn

    C = shape[-1]
    channel_params(prefix, C)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    model = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon)
    variables = {"params": {"scale": jnp.asarray(out[f"{prefix}_gamma"]),
                            "bias": jnp.asarray(out[f"{prefix}_beta"])},
                 "batch_stats": {"mean": jnp.asarray(out[f"{prefix}_mean"]),
                                 "var": jnp.asarray(out[f"{prefix}_var"])}}
    y, updated = model.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    y_infer = nn.BatchNorm(use_running_average=True, momentum=momentum,
                           epsilon=epsilon).apply(variables, jnp.asarray(x))
    out[f"{prefix}_x"] = x
    out[f"{prefix}_y_train"] = np.asarray(y)
    out[f"{prefix}_y_infer"] = np.asarray(y_infer)
    out[f"{prefix}_new_mean"] = np.asarray(updated["batch_stats"]["mean"])
    out[f"{prefix}_new_var"] = np.asarray(updated["batch_stats"]["var"])
    out[f"{prefix}_config"] = np.array([momentum, epsilon], dtype=np.float64)


def onnx_case(prefix, shape, momentum=0.8, epsilon=1e-4):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    C = shape[1]
    channel_params(prefix, C)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    inits = [numpy_helper.from_array(out[f"{prefix}_{k}"], name=n) for k, n in
             (("gamma", "scale"), ("beta", "B"), ("mean", "input_mean"), ("var", "input_var"))]
    results = {}
    for training in (0, 1):
        outputs = ["Y"] + (["running_mean", "running_var"] if training else [])
        node = helper.make_node("BatchNormalization", ["X", "scale", "B", "input_mean",
                                                       "input_var"], outputs, name="bn1",
                                epsilon=epsilon, momentum=momentum, training_mode=training)
        graph = helper.make_graph(
            [node], "bn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape))],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(shape))]
            + [helper.make_tensor_value_info(o, TensorProto.FLOAT, [C]) for o in outputs[1:]],
            inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
        onnx.checker.check_model(model)
        if not training:
            onnx.save(model, os.path.join(HERE, "batchnorm15.onnx"))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results[training] = sess.run(None, {"X": x})
    out[f"{prefix}_x"] = x
    out[f"{prefix}_y_infer"] = results[0][0]
    out[f"{prefix}_y_train"] = results[1][0]
    out[f"{prefix}_new_mean"], out[f"{prefix}_new_var"] = results[1][1], results[1][2]
    out[f"{prefix}_config"] = np.array([momentum, epsilon], dtype=np.float64)


keras_case("keras_nhwc", (8, 5, 5, 4), -1)
keras_case("keras_nchw_beta_only", (6, 3, 4, 4), 1, scale=False, momentum=0.5)
keras_case("keras_dense", (16, 6), -1, epsilon=1e-2)
flax_case("flax_nhwc", (8, 4, 4, 3))
flax_case("flax_dense", (12, 5), momentum=0.7)
onnx_case("onnx_nchw", (6, 3, 4, 5))
np.savez(os.path.join(HERE, "interop_fixtures.npz"), **out)
print(f"wrote {len(out)} arrays")
