"""Whole models through ONNX: cybn.to_onnx checked by running the file in ONNX Runtime, and
cybn.from_onnx_model checked on graphs written by PyTorch's exporter (tests/data/onnx, made
by tools/fixtures/make_onnx_fixtures.py, with PyTorch's outputs) and on to_onnx's own."""

import os

import numpy as np
import pytest

import cybn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DATA = os.path.join(os.path.dirname(__file__), "data", "onnx")
GRAPHS = ["resnet", "mobilenet_v2", "squeezenet", "shufflenet_v2", "mobilenet_v3"]


def run_ort(proto, x):
    session = ort.InferenceSession(proto.SerializeToString() if hasattr(proto, "graph")
                                   else proto, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def close(got, want, rtol=2e-6):
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


# ----- graphs written by PyTorch's exporter -------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", GRAPHS)
def test_torch_exported_graphs_match_pytorch(name, channels_last):
    outputs = np.load(os.path.join(DATA, "outputs.npz"))
    model = cybn.from_onnx_model(os.path.join(DATA, f"{name}.onnx"),
                                 channels_last=channels_last)
    assert not model.training
    x = outputs["input"]
    y = model(nhwc(x) if channels_last else x)
    close(y, outputs[name])


def kinds(model):
    return {type(m).__name__ for m in model.modules()}


@pytest.mark.parametrize("name, expected", [
    ("resnet", {"Residual", "MaxPool2d", "Linear"}),
    ("mobilenet_v2", {"Residual", "ReLU6"}),
    ("squeezenet", {"Concat", "MaxPool2d"}),
    ("shufflenet_v2", {"Concat", "ChannelSlice", "ChannelShuffle"}),
    ("mobilenet_v3", {"SqueezeExcitation", "Hardswish", "Hardsigmoid", "SiLU"}),
])
def test_torch_exported_graphs_become_cybns_layers(name, expected):
    model = cybn.from_onnx_model(os.path.join(DATA, f"{name}.onnx"))
    assert expected <= kinds(model)
    if name == "resnet":  # each block's Add and the Relu after it: one Residual
        blocks = [m for m in model.modules() if isinstance(m, cybn.Residual)]
        assert len(blocks) == 3 and all(b.activation == "relu" for b in blocks)
        assert sum(isinstance(m, cybn.ReLU) for m in model) == 1  # the stem's only


def test_imported_model_trains():
    model = cybn.from_onnx_model(os.path.join(DATA, "resnet.onnx")).train()
    x = np.load(os.path.join(DATA, "outputs.npz"))["input"]
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert all(np.any(p.grad != 0) for p in model.parameters())


# ----- cybn's own models out and back ---------------------------------------------------
def squeeze_like(cl):
    def fire(cin, s, e):
        return cybn.Sequential(cybn.Conv2d(cin, s, 1, channels_last=cl, rng=1), cybn.ReLU(),
                               cybn.Concat(cybn.Sequential(cybn.Conv2d(s, e, 1, channels_last=cl,
                                                                       rng=2), cybn.ReLU()),
                                           cybn.Sequential(cybn.Conv2d(s, e, 3, padding=1,
                                                                       channels_last=cl, rng=3),
                                                           cybn.ReLU()), channels_last=cl))
    return cybn.Sequential(
        cybn.Conv2d(3, 16, 3, 2, channels_last=cl, rng=0), cybn.BatchNorm2d(16, channels_last=cl),
        cybn.ReLU(), cybn.MaxPool2d(3, 2, ceil_mode=True, channels_last=cl), fire(16, 8, 8),
        cybn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False, channels_last=cl),
        fire(16, 8, 12), cybn.Dropout(0.5), cybn.Conv2d(24, 10, 1, channels_last=cl, rng=4),
        cybn.AdaptiveAvgPool2d(1, channels_last=cl), cybn.Flatten(channels_last=cl))


def shuffle_like(cl):
    def branch(c):
        return cybn.Sequential(cybn.Conv2d(c, c, 1, channels_last=cl, rng=5),
                               cybn.BatchNorm2d(c, channels_last=cl, activation="relu"),
                               cybn.Conv2d(c, c, 3, padding=1, groups=c, channels_last=cl, rng=6),
                               cybn.BatchNorm2d(c, channels_last=cl))
    block = cybn.Sequential(cybn.Concat(cybn.ChannelSlice(0, 8, channels_last=cl),
                                        cybn.Sequential(cybn.ChannelSlice(8, 16,
                                                                          channels_last=cl),
                                                        branch(8)), channels_last=cl),
                            cybn.ChannelShuffle(2, channels_last=cl))
    return cybn.Sequential(cybn.Conv2d(3, 16, 3, 2, 1, channels_last=cl, rng=7), block,
                           cybn.MaxPool2d(2, 2, 1, 2, channels_last=cl),
                           cybn.AdaptiveMaxPool2d(1, channels_last=cl),
                           cybn.Flatten(channels_last=cl), cybn.Linear(16, 5, rng=8))


def se_like(cl):
    return cybn.Sequential(
        cybn.Conv2d(3, 16, 3, 2, 1, channels_last=cl, rng=0),
        cybn.BatchNorm2d(16, channels_last=cl),
        cybn.Hardswish(), cybn.SqueezeExcitation(16, 8, scale_activation="hardsigmoid",
                                                 channels_last=cl, rng=1),
        cybn.SiLU(), cybn.Conv2d(16, 8, 1, channels_last=cl, rng=2), cybn.LeakyReLU(0.1),
        cybn.Tanh(), cybn.Hardtanh(-0.5, 0.75), cybn.Sigmoid(), cybn.Flatten(channels_last=False))


def mlp(cl):
    return cybn.Sequential(cybn.Linear(12, 32, rng=0), cybn.BatchNorm1d(32), cybn.ReLU(),
                           cybn.Linear(32, 16, rng=1, activation="relu6"), cybn.Dropout(0.2),
                           cybn.Linear(16, 4, rng=2))


def with_stats(model):
    """Non-trivial running statistics (a few training steps), then eval mode."""
    rng = np.random.default_rng(0)
    for m in model.modules():
        if isinstance(m, cybn.BatchNorm2d) or isinstance(m, cybn.BatchNorm1d):
            m.running_mean[...] = rng.uniform(-0.3, 0.3, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data[...] = rng.uniform(-0.2, 0.2, m.num_features)
    return model.eval()


BUILDERS = {
    "resnet18": lambda cl: cybn.models.resnet18(7, channels_last=cl, rng=0),
    "mobilenet_v2": lambda cl: cybn.models.mobilenet_v2(7, width_mult=0.35, channels_last=cl,
                                                        rng=0),
    "squeezenet1_1": lambda cl: cybn.models.squeezenet1_1(7, channels_last=cl, rng=0),
    "shufflenet_v2": lambda cl: cybn.models.shufflenet_v2_x0_5(7, channels_last=cl, rng=0),
    "squeeze_like": squeeze_like,
    "shuffle_like": shuffle_like,
    "se_like": se_like,
    "mlp": mlp,
}


def sample(name, cl):
    rng = np.random.default_rng(1)
    if name == "mlp":
        return rng.standard_normal((5, 12)).astype(np.float32)
    x = rng.standard_normal((2, 3, 37, 41)).astype(np.float32)
    return nhwc(x) if cl else x


@pytest.mark.parametrize("prepare", ["as_built", "fused", "folded"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_export_runs_in_onnx_runtime_and_imports_back(name, channels_last, prepare, tmp_path):
    model = with_stats(BUILDERS[name](channels_last))
    if prepare == "fused":
        model = cybn.fuse(model)
    elif prepare == "folded":
        model = cybn.fold_batchnorm(model)  # warns where it leaves a BatchNorm
    x = sample(name, channels_last)
    want = model(x)
    path = tmp_path / "model.onnx"
    proto = cybn.to_onnx(model, path)
    close(run_ort(str(path), x), want)
    back = cybn.from_onnx_model(path)
    assert not back.training
    np.testing.assert_array_equal(back(x), want)
    onnx.checker.check_model(proto)


def test_export_leaves_the_model_unchanged():
    model = with_stats(cybn.models.resnet18(7, rng=0))
    before = model.state_dict()
    cybn.to_onnx(model)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not model.training


def test_export_with_fixed_input_shape_and_gelu_opset_20():
    model = cybn.Sequential(cybn.Linear(6, 8, rng=0), cybn.GELU(), cybn.Linear(8, 3, rng=1),
                            cybn.GELU("tanh")).eval()
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(TypeError, match="1 .GELU.*opset 20"):
        cybn.to_onnx(model)
    proto = cybn.to_onnx(model, input_shape=(4, 6), opset=20)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 6]
    close(run_ort(proto, x), model(x))
    np.testing.assert_array_equal(cybn.from_onnx_model(proto)(x), model(x))


@pytest.mark.parametrize("layer, match", [
    (cybn.Sequential(cybn.Conv2d(3, 4, 3), cybn.AdaptiveAvgPool2d(2)), "1 .AdaptiveAvgPool2d"),
    (cybn.Sequential(cybn.Conv2d(3, 4, 3), cybn.AvgPool2d(2, divisor_override=3)),
     "divisor_override"),
    (cybn.Sequential(cybn.Conv2d(3, 4, 3), cybn.BatchNorm2d(4, track_running_stats=False)),
     "1 .BatchNorm2d.*running statistics"),
    (cybn.Sequential(cybn.Linear(3, 4), cybn.LayerNorm(4)), "1 .LayerNorm"),
])
def test_export_errors_name_the_layer(layer, match):
    with pytest.raises(TypeError, match=match):
        cybn.to_onnx(layer.eval())


def graph_of(nodes, inits, shape=(None, 4, 8, 8)):
    h = onnx.helper
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                           list(shape))],
                     [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)],
                     [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k)
                      for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_import_errors_name_the_node():
    h = onnx.helper
    model = graph_of([h.make_node("Relu", ["input"], ["r"], name="first"),
                      h.make_node("Softmax", ["r"], ["output"], name="probabilities")], {})
    with pytest.raises(TypeError, match="probabilities .Softmax."):
        cybn.from_onnx_model(model)
    pads = graph_of([h.make_node("Conv", ["input", "w"], ["output"], name="c",
                                 pads=[1, 1, 0, 0])], {"w": np.ones((2, 4, 3, 3))})
    with pytest.raises(TypeError, match="c .Conv.: asymmetric pads"):
        cybn.from_onnx_model(pads)
    two = graph_of([h.make_node("Relu", ["input"], ["a"], name="a"),
                    h.make_node("Sigmoid", ["input"], ["output"], name="b")], {})
    two.graph.output.append(h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, None))
    with pytest.raises(TypeError, match="2 outputs"):
        cybn.from_onnx_model(two)
    with pytest.raises(TypeError, match="model must be"):
        cybn.from_onnx_model(3.5)


def test_import_clip_and_gemm_variants():
    h = onnx.helper
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    model = graph_of([h.make_node("Clip", ["input", "lo", "hi"], ["c"], name="clip"),
                      h.make_node("Gemm", ["c", "w", "b"], ["output"], name="fc", alpha=2.0,
                                  beta=0.5)],
                     {"lo": np.float32(-1), "hi": np.float32(2), "w": w, "b": np.ones(3)},
                     shape=(None, 4))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32) * 3
    m = cybn.from_onnx_model(model)
    assert type(m[0]) is cybn.Hardtanh
    close(m(x), run_ort(model, x))
