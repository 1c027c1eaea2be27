"""cybn.models' builders against torchvision's own models (tests/data/torch_models.npz, made
by tools/fixtures/make_torch_models_fixture.py): the same state_dict keys and shapes, and
with the same weights the same eval output, training output, input gradient, parameter
gradients and running statistics, in both layouts, before and after fuse and
fold_batchnorm."""

import os
import sys

import numpy as np
import pytest

import cybn

sys.path.insert(0, os.path.dirname(__file__))
from model_cases import MODEL_CASES, model_input, model_state, output_grad, probe  # noqa: E402

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "data", "torch_models.npz"))
CASES = [pytest.param(name, builder, kwargs, id=name) for name, builder, kwargs in MODEL_CASES]


def build(builder, kwargs, channels_last=False, dtype=np.float64):
    model = getattr(cybn.models, builder)(channels_last=channels_last, dtype=dtype, rng=0,
                                          **kwargs)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(model_state(shapes))
    return model


# The training step's gradients relative to their largest entry. ResNet-50's training step
# at batch 2 is ill-conditioned: its 2x2 last stage normalizes over 8 values per channel, and
# the 16 batch norms in train mode amplify rounding so that PyTorch's own NCHW and
# channels-last float64 results differ by 1e-8. Block by block, with PyTorch's inputs and
# output gradients, cybn's agree with PyTorch's within 4e-14
# (tools/fixtures/make_torch_models_fixture.py, then compare block by block).
TRAIN_GRAD_RTOL = {"resnet18": 1e-9, "resnet50": 1e-4, "mobilenet_v2": 1e-9,
                   "squeezenet1_1": 1e-9, "shufflenet_v2_x0_5": 1e-9}


def layout(a, channels_last):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if channels_last else a


def layout_back(a, channels_last):
    return a.transpose(0, 3, 1, 2) if channels_last else a


def close(got, want, rtol):
    assert np.shape(got) == np.shape(want)
    if np.size(want) == 0:  # no running statistics (SqueezeNet)
        return
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name, builder, kwargs", CASES)
def test_keys_and_shapes_are_torchvisions(name, builder, kwargs):
    model = getattr(cybn.models, builder)(**kwargs)
    assert list(model.state_dict()) == list(FIXTURE[f"{name}_keys"])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name, builder, kwargs", CASES)
def test_training_step_matches_torchvision(name, builder, kwargs, channels_last):
    model = build(builder, kwargs, channels_last)
    x = layout(model_input(), channels_last)
    y = model(x)
    close(y, FIXTURE[f"{name}_train"], 1e-9)
    dx = model.backward(output_grad(y.shape))
    rtol = TRAIN_GRAD_RTOL[name]
    close(layout_back(dx, channels_last), FIXTURE[f"{name}_dx"], rtol)
    grads = [probe(p.grad, j) for j, (_, p) in enumerate(model.named_parameters())]
    close(np.array(grads), FIXTURE[f"{name}_grads"], rtol)
    stats = [probe(v, j) for j, (k, v) in enumerate(model.state_dict().items())
             if k.endswith(("running_mean", "running_var"))]
    close(np.array(stats), FIXTURE[f"{name}_stats"], 1e-9)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name, builder, kwargs", CASES)
def test_inference_matches_torchvision_fused_and_folded(name, builder, kwargs, channels_last):
    model = build(builder, kwargs, channels_last).eval()
    x = layout(model_input(), channels_last)
    want = FIXTURE[f"{name}_eval"]
    close(model(x), want, 1e-9)
    fused = cybn.fuse(model)
    assert fused.fused == {"resnet18": 9, "resnet50": 33, "mobilenet_v2": 0, "squeezenet1_1": 26,
                           "shufflenet_v2_x0_5": 37}[name]
    assert list(fused.state_dict()) == list(model.state_dict())  # ReLUs hold no state
    np.testing.assert_array_equal(fused(x), model(x))
    folded = cybn.fold_batchnorm(model)
    assert folded.not_folded == []
    assert not any(isinstance(m, cybn.BatchNorm2d) for m in folded.modules())
    close(folded(x), want, 1e-9)


@pytest.mark.parametrize("name, builder, kwargs", CASES)
def test_fused_training_step_is_the_same(name, builder, kwargs):
    model = build(builder, kwargs)
    fused = cybn.fuse(model)
    x = model_input()
    y, yf = model(x), fused(x)
    np.testing.assert_array_equal(yf, y)
    dy = output_grad(y.shape)
    np.testing.assert_array_equal(fused.backward(dy), model.backward(dy))
    for (k, p), (_, q) in zip(model.named_parameters(), fused.named_parameters()):
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=k)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_float32_within_rounding(channels_last):
    name, builder, kwargs = MODEL_CASES[0]
    model = build(builder, kwargs, channels_last, np.float32).eval()
    x = layout(model_input(), channels_last).astype(np.float32)
    y = model(x)
    assert y.dtype == np.float32
    close(y, FIXTURE[f"{name}_eval"], 2e-5)


def test_torchvision_names_are_attributes():
    model = cybn.models.resnet18(num_classes=7)
    assert model.fc.out_features == 7
    block = model.layer2[0]
    assert isinstance(block, cybn.Residual) and block.conv1.stride == (2, 2)
    assert block.downsample[0].kernel_size == (1, 1)
    assert model.layer1[0]._shortcut() is None
    mnet = cybn.models.mobilenet_v2()
    assert isinstance(mnet.features[2], cybn.Sequential)  # 16 -> 24 channels: no add
    assert isinstance(mnet.features[3], cybn.Residual)
    assert mnet.classifier[1].in_features == 1280


def test_resnet34_has_torchvisions_block_counts():
    keys = cybn.models.resnet34().state_dict()
    blocks = {k.split(".")[0]: set() for k in keys if k.startswith("layer")}
    for k in keys:
        if k.startswith("layer"):
            blocks[k.split(".")[0]].add(int(k.split(".")[1]))
    assert [len(blocks[f"layer{i}"]) for i in range(1, 5)] == [3, 4, 6, 3]
    assert len(keys) == 218  # torchvision's resnet34().state_dict() has 218 entries


def test_initialization_is_torchvisions():
    model = cybn.models.resnet18(rng=1)
    w = model.layer3[1].conv2.weight.data
    assert abs(w.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.02  # He-normal over the fan-out
    assert np.all(model.layer3[1].bn2.weight.data == 1)
    assert np.all(model.layer3[1].bn2.bias.data == 0)
    a, b = cybn.models.resnet18(rng=3), cybn.models.resnet18(rng=3)
    np.testing.assert_array_equal(a.conv1.weight.data, b.conv1.weight.data)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 0}, "num_classes"),
    ({"dtype": np.int32}, "dtype"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        cybn.models.resnet18(**kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        cybn.models.mobilenet_v2(**kwargs)
    with pytest.raises(ValueError, match="width_mult"):
        cybn.models.mobilenet_v2(width_mult=0)
