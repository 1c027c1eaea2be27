"""Model files (cybn.save / cybn.load): a bitwise round trip for every layer type (fused,
frozen, half-precision, SyncBatchNorm too), no code run from a file, corrupt, truncated and
foreign files refused with nothing half-loaded, and PyTorch loading the saved arrays."""

import json
import os
import sys

import numpy as np
import pytest

import cybn
from cybn import models

pytest.importorskip("safetensors")
import safetensors.numpy as st  # noqa: E402
from safetensors import safe_open  # noqa: E402

R = np.random.default_rng


def _layers():
    """(name, layer factory, input shape): every cybn layer class, in its common settings."""
    bn_keras = dict(convention="keras")
    return [
        ("bn2d", lambda: cybn.BatchNorm2d(4), (6, 4, 5, 5)),
        ("bn2d_cl_relu", lambda: cybn.BatchNorm2d(4, channels_last=True, activation="relu"),
         (6, 5, 5, 4)),
        ("bn1d_silu_f64", lambda: cybn.BatchNorm1d(4, dtype=np.float64, activation="silu"),
         (8, 4)),
        ("bn3d_keras", lambda: cybn.BatchNorm3d(3, **bn_keras), (4, 3, 2, 3, 3)),
        ("bn_any_rank", lambda: cybn.BatchNorm(4, momentum=None), (6, 4, 3)),
        ("bn_renorm", lambda: cybn.BatchNorm2d(4, renorm=True), (6, 4, 3, 3)),
        ("bn_ghost", lambda: cybn.BatchNorm2d(4, ghost_batch_size=2), (6, 4, 3, 3)),
        ("bn_frozen", lambda: cybn.BatchNorm2d(4).freeze(), (6, 4, 3, 3)),
        ("layer_norm", lambda: cybn.LayerNorm((5,)), (6, 3, 5)),
        ("rms_norm", lambda: cybn.RMSNorm(5), (6, 5)),
        ("group_norm", lambda: cybn.GroupNorm(2, 4), (3, 4, 5, 5)),
        ("instance_norm", lambda: cybn.InstanceNorm2d(4, affine=True, track_running_stats=True),
         (3, 4, 5, 5)),
        ("instance_norm1d", lambda: cybn.InstanceNorm1d(4), (3, 4, 5)),
        ("instance_norm3d", lambda: cybn.InstanceNorm3d(2), (3, 2, 3, 3, 3)),
        ("linear_relu6", lambda: cybn.Linear(5, 3, rng=1, activation="relu6"), (4, 5)),
        ("linear_f64", lambda: cybn.Linear(5, 3, rng=1, bias=False, dtype=np.float64), (4, 5)),
        ("conv", lambda: cybn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dilation=1,
                                     rng=2, activation="relu"), (2, 4, 7, 7)),
        ("conv_cl", lambda: cybn.Conv2d(4, 3, (1, 3), padding=(0, 2), dilation=2,
                                        channels_last=True, rng=2), (2, 7, 7, 4)),
        ("activations", lambda: cybn.Sequential(
            cybn.ReLU(), cybn.ReLU6(), cybn.Hardtanh(-2, 3), cybn.Hardswish(),
            cybn.Hardsigmoid(), cybn.SiLU(), cybn.Sigmoid(), cybn.Tanh(),
            cybn.GELU(approximate="tanh"), cybn.GELU(), cybn.LeakyReLU(0.2), cybn.Identity()),
         (3, 4)),
        ("dropout", lambda: cybn.Dropout(0.3, rng=7), (5, 6)),
        ("stochastic_depth", lambda: cybn.StochasticDepth(0.4, "row", rng=3), (5, 6)),
        ("pools", lambda: cybn.Sequential(
            cybn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            cybn.AvgPool2d(2, padding=1, count_include_pad=False),
            cybn.AdaptiveMaxPool2d((3, 2)), cybn.AdaptiveAvgPool2d(1), cybn.Flatten()),
         (2, 3, 9, 9)),
        ("residual_named", lambda: cybn.Residual(
            {"conv1": cybn.Conv2d(4, 4, 3, padding=1, bias=False, rng=3),
             "bn1": cybn.BatchNorm2d(4)},
            cybn.Sequential(cybn.Conv2d(4, 4, 1, rng=4), cybn.BatchNorm2d(4)),
            shortcut_name="downsample"), (3, 4, 5, 5)),
        ("concat_slice_shuffle", lambda: cybn.Sequential(
            cybn.Concat(cybn.ChannelSlice(0, 2), cybn.Sequential(cybn.ChannelSlice(2, 4),
                                                                 cybn.ReLU())),
            cybn.ChannelShuffle(2)), (2, 4, 3, 3)),
        ("squeeze_excitation", lambda: cybn.SqueezeExcitation(
            4, 2, scale_activation="hardsigmoid"), (2, 4, 3, 3)),
        ("fire", lambda: cybn.Fire(4, 2, 3, 3, rng=5), (2, 4, 5, 5)),
        ("shuffle_unit", lambda: cybn.ShuffleUnit(cybn.Sequential(
            cybn.Conv2d(2, 2, 1, rng=6), cybn.BatchNorm2d(2), cybn.ReLU())), (2, 4, 3, 3)),
    ]


LAYERS = _layers()


def _round_trip(model, tmp_path):
    path = tmp_path / "model.safetensors"
    cybn.save(model, path)
    return cybn.load(path)


def _assert_same(a, b):
    assert type(a) is type(b) and repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert sa[k].tobytes() == sb[k].tobytes(), k
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.decay == pb.decay and pa.requires_grad == pb.requires_grad
    for ma, mb in zip(a.modules(), b.modules()):
        assert type(ma) is type(mb) and ma.training == mb.training


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_every_layer_round_trips_bit_for_bit(name, make, shape, tmp_path):
    layer = make()
    rng = R(0)
    x = rng.standard_normal(shape).astype(np.float32 if "f64" not in name else np.float64)
    for _ in range(2):  # trained state: running statistics, counters, generator states
        y = layer(x)
        layer.backward(np.ones_like(y))
    loaded = _round_trip(layer, tmp_path)
    _assert_same(layer, loaded)
    # training mode: the same output, dropout masks included (the generators' states)
    np.testing.assert_array_equal(loaded(x), layer(x))
    layer.eval()
    loaded = _round_trip(layer, tmp_path)
    _assert_same(layer, loaded)
    np.testing.assert_array_equal(loaded(x), layer(x))


@pytest.mark.parametrize("build", [models.resnet18, models.mobilenet_v2,
                                   models.squeezenet1_1, models.shufflenet_v2_x0_5])
def test_whole_models_fused_and_folded(build, tmp_path):
    x = R(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    model = build()
    model(x)
    model.eval()
    for m in (model, cybn.fuse(model), cybn.fold_batchnorm(model)):
        loaded = _round_trip(m, tmp_path)
        _assert_same(m, loaded)
        np.testing.assert_array_equal(loaded(x), m(x))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_and_arrays(dtype, tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    model = cybn.Sequential(cybn.Conv2d(3, 4, 3, rng=1), cybn.BatchNorm2d(4, activation="relu"))
    x = R(2).standard_normal((4, 3, 6, 6)).astype(dt)
    model(x)
    model.bn_half = np.arange(3).astype(dt)  # a half-precision setting array
    model.input_dtype = dt
    loaded = _round_trip(model, tmp_path)
    _assert_same(model, loaded)
    assert loaded.input_dtype == dt and loaded.bn_half.dtype == dt
    np.testing.assert_array_equal(loaded.bn_half, model.bn_half)
    np.testing.assert_array_equal(np.asarray(loaded(x), np.float32),
                                  np.asarray(model(x), np.float32))


def test_sync_batchnorm_loads_with_or_without_mpi(tmp_path, monkeypatch):
    comm = cybn.distributed.ThreadComm.group(1)[0]
    model = cybn.distributed.convert_sync_batchnorm(
        cybn.Sequential(cybn.Conv2d(3, 4, 1, rng=1), cybn.BatchNorm2d(4)), comm)
    x = R(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model(x)
    path = tmp_path / "sync.safetensors"
    cybn.save(model, path)
    model.eval()
    want = model(x)
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as where mpi4py is not installed
    plain = cybn.load(path)
    assert type(plain[1]) is cybn.BatchNorm
    plain.eval()
    np.testing.assert_array_equal(plain(x), want)
    monkeypatch.undo()
    pytest.importorskip("mpi4py")
    sync = cybn.load(path)
    assert type(sync[1]) is cybn.SyncBatchNorm and sync[1].comm.size >= 1
    sync.eval()
    np.testing.assert_array_equal(sync(x), want)


def _small():
    model = cybn.Sequential(cybn.Linear(3, 4, rng=1), cybn.BatchNorm1d(4), cybn.ReLU())
    model(R(0).standard_normal((5, 3)).astype(np.float32))
    return model


def _rewrite(path, out, *, metadata=None, tensors=None, arch=None):
    """A copy of a model file with its metadata, tensors or architecture changed."""
    with safe_open(str(path), "np") as f:
        meta = dict(f.metadata())
    data = st.load_file(str(path))
    if arch is not None:
        meta["architecture"] = json.dumps(arch(json.loads(meta["architecture"])))
    meta.update(metadata or {})
    st.save_file(tensors(data) if tensors else data, str(out), metadata=meta)


def _remove_key(d, key):
    d.pop(key)
    return d


def _evil_class(tree):
    tree["modules"][0][1]["class"] = "system"
    return tree


def _evil_setting(tree):
    tree["settings"]["training"] = {"__object__": "Popen", "fields": {}}
    return tree


BAD = {
    "newer_version": (dict(metadata={"format_version": "99"}), "newer"),
    "bad_version": (dict(metadata={"format_version": "one"}), "format_version"),
    "missing_array": (dict(tensors=lambda d: _remove_key(d, "1.running_mean")), "lacks"),
    "extra_array": (dict(tensors=lambda d: {**d, "extra": np.zeros(2)}), "no layer"),
    "unknown_class": (dict(arch=_evil_class), "unknown layer class 'system'"),
    "unknown_object": (dict(arch=_evil_setting), "unknown setting object"),
    "broken_json": (dict(metadata={"architecture": "{not json"}), "corrupt"),
    "wrong_tree": (dict(metadata={"architecture": "[1, 2]"}), "corrupt"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_tampered_files_are_refused(case, tmp_path):
    path, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    cybn.save(_small(), path)
    kwargs, message = BAD[case]
    _rewrite(path, bad, **kwargs)
    with pytest.raises(ValueError, match=message):
        cybn.load(bad)


def test_truncated_foreign_and_missing_files(tmp_path):
    path = tmp_path / "m.safetensors"
    cybn.save(_small(), path)
    raw = path.read_bytes()
    for cut in (4, 20, len(raw) // 2, len(raw) - 3):
        (tmp_path / "cut").write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            cybn.load(tmp_path / "cut")
    (tmp_path / "text").write_text("hello, not a model")
    with pytest.raises(ValueError, match="not a readable"):
        cybn.load(tmp_path / "text")
    st.save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="without a cybn architecture"):
        cybn.load(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):
        cybn.load(tmp_path / "absent")


def test_save_refuses_what_a_file_cannot_hold_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.safetensors"
    cybn.save(_small(), path)
    before = path.read_bytes()

    class Custom(cybn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="not a cybn layer"):
        cybn.save(cybn.Sequential(cybn.ReLU(), Custom()), path)
    odd = _small()
    odd[0].note = object()
    with pytest.raises(TypeError, match=r"0\.note"):
        cybn.save(odd, path)
    with pytest.raises(TypeError, match="model must be a cybn Module"):
        cybn.save({"w": np.ones(2)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary left behind


def test_file_is_safetensors_with_state_dict_keys(tmp_path):
    model = _small()
    path = tmp_path / "m.safetensors"
    cybn.save(model, path)
    data = st.load_file(str(path))
    state = model.state_dict()
    assert sorted(data) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(data[k], state[k])
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "cybn.model" and meta["format_version"] == "1"


def test_pytorch_module_loads_the_saved_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    model = cybn.Sequential(cybn.Conv2d(3, 4, 3, padding=1, rng=1), cybn.BatchNorm2d(4),
                            cybn.ReLU(), cybn.AdaptiveAvgPool2d(1), cybn.Flatten(),
                            cybn.Linear(4, 2, rng=2))
    x = R(4).standard_normal((3, 3, 6, 6)).astype(np.float32)
    model(x)
    model.eval()
    path = tmp_path / "m.safetensors"
    cybn.save(model, path)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    ref.load_state_dict(st_torch.load_file(str(path)), strict=True)
    ref.eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
