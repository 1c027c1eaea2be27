"""cybn.from_torch: PyTorch modules (torch.nn layers and torchvision's model families)
converted to cybn models that compute the same outputs, input gradients, parameter
gradients and running statistics. Needs PyTorch (skipped without it); the torchvision
families need torchvision too."""

import sys
import types
import warnings

import numpy as np
import pytest

import cybn

torch = pytest.importorskip("torch")


def import_torchvision():
    """torchvision's model definitions, or skip. They are pure Python: where torchvision's
    compiled operators do not match the installed torch build (a CUDA wheel beside the CPU
    torch), its meta registrations fail to import, and are skipped for the definitions."""
    try:
        import torchvision.models as models
        return models
    except ImportError:
        pytest.skip("torchvision is not installed")
    except RuntimeError:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("stub")
        try:
            import torchvision.models as models
            return models
        except Exception as err:  # noqa: BLE001
            pytest.skip(f"torchvision does not import: {err}")


def trained_look(module):
    """Running statistics and affine parameters away from their initial values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return module


def compare(tm, shape, channels_last, training, rtol=1e-10):
    """Convert, run forward and backward on both, compare everything."""
    tm = trained_look(tm).double()
    tm.train(training)
    for m in tm.modules():  # random masks cannot agree
        if isinstance(m, torch.nn.Dropout) or type(m).__name__ == "StochasticDepth":
            m.eval()
    cm = cybn.from_torch(tm, channels_last=channels_last)
    for m in cm.modules():
        if isinstance(m, (cybn.Dropout, cybn.StochasticDepth)):
            m.eval()
    assert cm.training == training
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last and x.ndim == 4 else x
    y = cm(xin)
    cm.zero_grad()
    dx = cm.backward(dy)
    if channels_last and x.ndim == 4:
        dx = np.moveaxis(dx, -1, 1)

    def close(a, b, what):
        b = b.detach().numpy() if hasattr(b, "detach") else b
        scale = max(np.abs(b).max(), 1e-30)
        assert np.abs(a - b).max() <= rtol * scale, f"{what}: {np.abs(a - b).max() / scale}"

    close(y, ty, "output")
    close(dx, tx.grad, "input gradient")
    # parameters in the same order (cybn's structures register them as PyTorch's modules do)
    tparams, cparams = list(tm.parameters()), list(cm.parameters())
    assert [tuple(p.shape) for p in tparams] == [p.data.shape for p in cparams]
    top = max(float(p.grad.abs().max()) for p in tparams)
    for i, (tp, cp) in enumerate(zip(tparams, cparams)):
        err = np.abs(cp.grad - tp.grad.numpy()).max()
        assert err <= rtol * max(float(tp.grad.abs().max()), 1e-3 * top), \
            f"parameter {i} {tuple(tp.shape)}: gradient off by {err}"
    tstats = sorted(float(b.double().sum()) for name, b in tm.named_buffers()
                    if name.endswith(("running_mean", "running_var")))
    cstats = sorted(float(v.sum()) for k, v in cm.state_dict().items()
                    if k.endswith(("running_mean", "running_var")))
    np.testing.assert_allclose(cstats, tstats, rtol=1e-12, atol=1e-12)
    return cm


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_torch_nn_layers_convert(channels_last, training):
    tnn = torch.nn
    tm = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU6(),
        tnn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        tnn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False), tnn.Hardswish(),
        tnn.Conv2d(8, 12, 1), tnn.SiLU(), tnn.AvgPool2d(2, ceil_mode=True,
                                                       count_include_pad=False),
        tnn.AdaptiveMaxPool2d((3, 2)), tnn.Flatten(), tnn.Linear(72, 10), tnn.BatchNorm1d(10),
        tnn.GELU(approximate="tanh"), tnn.Dropout(0.2), tnn.Linear(10, 4), tnn.LeakyReLU(0.1))
    compare(tm, (2, 3, 11, 10), channels_last, training)


def test_the_first_module_without_a_counterpart_is_named():
    tnn = torch.nn
    tm = tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.Sequential(tnn.ReLU(), tnn.Softmax(dim=1)))
    with pytest.raises(TypeError, match=r"1\.1 \(torch\.nn\.modules\.activation\.Softmax\)"):
        cybn.from_torch(tm)
    with pytest.raises(TypeError, match="reflect"):
        cybn.from_torch(tnn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        cybn.from_torch(cybn.ReLU())


FAMILIES = {
    "resnet18": (lambda M: M.resnet18(num_classes=10), (2, 3, 40, 40)),
    "resnet_bottleneck": (lambda M: M.ResNet(M.resnet.Bottleneck, [1, 1, 1, 1],
                                             num_classes=10), (2, 3, 40, 40)),
    "mobilenet_v2": (lambda M: M.mobilenet_v2(num_classes=10, width_mult=0.25),
                     (2, 3, 40, 40)),
    "squeezenet1_1": (lambda M: M.squeezenet1_1(num_classes=10), (2, 3, 48, 48)),
    "shufflenet_v2": (lambda M: M.shufflenet_v2_x0_5(num_classes=10), (2, 3, 40, 40)),
    "efficientnet_b0": (lambda M: M.efficientnet_b0(num_classes=10), (2, 3, 40, 40)),
    "densenet": (lambda M: M.DenseNet(growth_rate=8, block_config=(2, 2),
                                      num_init_features=16, num_classes=10), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_torchvision_families_convert(family, channels_last, training):
    models = import_torchvision()
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    cm = compare(build(models), shape, channels_last, training)
    if not training:  # folded and fused, the converted model still computes the same
        x = np.random.default_rng(3).standard_normal(shape)
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = cm(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DenseNet's norms after a concat stay unfolded
            folded = cybn.fold_batchnorm(cybn.fuse(cm))
        np.testing.assert_allclose(folded(x), y, rtol=1e-9, atol=1e-9 * np.abs(y).max())

