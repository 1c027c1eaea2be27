"""fold_batchnorm and insert_batchnorm: the folded or extended model computes the same
function as the original, which is never modified."""

import warnings

import numpy as np
import pytest

import cybn


def randomize_bn(model, rng, zero_stats=False):
    """Trained-looking BatchNorm state: random running statistics, weight and bias."""
    for layer in model:
        if isinstance(layer, (cybn.BatchNorm1d, cybn.BatchNorm2d)):
            C = layer.num_features
            if not zero_stats:
                layer.running_mean[...] = rng.standard_normal(C) * 2
                layer.running_var[...] = rng.uniform(0.1, 3.0, C)
            if layer.affine:
                layer.weight.data[...] = rng.standard_normal(C)
                layer.bias.data[...] = rng.standard_normal(C)
    return model


def conv_net(dtype, channels_last=False, eps=1e-5):
    rng = np.random.default_rng(0)
    cl = channels_last
    return cybn.Sequential(
        cybn.Conv2d(3, 8, 3, padding=1, channels_last=cl, dtype=dtype, rng=rng),
        cybn.BatchNorm2d(8, eps=eps, channels_last=cl, dtype=dtype), cybn.ReLU(),
        cybn.Conv2d(8, 6, 3, stride=2, bias=False, channels_last=cl, dtype=dtype, rng=rng),
        cybn.BatchNorm2d(6, eps=1e-3, affine=False, channels_last=cl, dtype=dtype),
        cybn.MaxPool2d(2, channels_last=cl), cybn.Flatten(),
        cybn.Linear(6, 5, dtype=dtype, rng=rng),  # 6x6 -> 6x6 -> 2x2 -> 1x1
        cybn.BatchNorm1d(5, dtype=dtype),
    )


def input_for(channels_last, dtype, n=4, size=6):
    x = np.random.default_rng(1).standard_normal((n, 3, size, size)).astype(dtype)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("zero_stats", [False, True])
def test_folded_model_computes_the_same_function(dtype, rtol, channels_last, zero_stats):
    model = randomize_bn(conv_net(dtype, channels_last), np.random.default_rng(2), zero_stats)
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = input_for(channels_last, dtype)
    y = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = cybn.fold_batchnorm(model)
    assert not any(isinstance(layer, (cybn.BatchNorm1d, cybn.BatchNorm2d)) for layer in folded)
    # three BatchNorms folded, and the ReLU after the first moved into its conv
    assert len(folded) == len(model) - 4 and folded.not_folded == []
    assert folded[0].activation == "relu" and folded[1].activation is None
    assert not folded.training
    yf = folded(x)
    assert yf.dtype == dtype
    scale = np.abs(y).max()
    np.testing.assert_allclose(yf, y, rtol=rtol, atol=rtol * scale)
    for k, v in model.state_dict().items():  # the given model is unchanged
        np.testing.assert_array_equal(v, before[k])


def test_fold_into_next_layer_and_what_cannot_fold():
    rng = np.random.default_rng(3)
    model = cybn.Sequential(
        cybn.BatchNorm2d(3, dtype=np.float64),                     # first: into the next conv
        cybn.Conv2d(3, 4, 3, padding=0, dtype=np.float64, rng=rng),
        cybn.ReLU(),
        cybn.BatchNorm2d(4, dtype=np.float64),                     # next conv pads: stays
        cybn.Conv2d(4, 4, 3, padding=1, dtype=np.float64, rng=rng),
        cybn.Flatten(),
        cybn.BatchNorm1d(16, dtype=np.float64),                    # into the next Linear
        cybn.Linear(16, 2, dtype=np.float64, rng=rng),
    )
    randomize_bn(model, rng).eval()
    x = np.random.default_rng(4).standard_normal((5, 3, 4, 4))
    with pytest.warns(UserWarning, match="layer 3"):
        folded = cybn.fold_batchnorm(model, into="next")
    assert [i for i, _ in folded.not_folded] == [3]
    assert "pads" in folded.not_folded[0][1]
    # two BatchNorms folded, and the ReLU after the first conv moved into its epilogue
    assert len(folded) == len(model) - 3 and folded[0].activation == "relu"
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning):
        previous_only = cybn.fold_batchnorm(model)  # nothing before layer 0 and 6 folds
    assert [i for i, _ in previous_only.not_folded] == [0, 3, 6]
    assert "applies relu" in previous_only.not_folded[1][1]  # not into the conv's ReLU
    np.testing.assert_allclose(previous_only(x), model(x), rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning):
        either = cybn.fold_batchnorm(model, into="any")
    assert [i for i, _ in either.not_folded] == [3]
    np.testing.assert_allclose(either(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_moves_activations_into_products_without_batchnorm(channels_last):
    """A network without batch norm (SqueezeNet's kind): each ReLU or ReLU6 right after a
    Conv2d or Linear becomes that layer's epilogue, inside Fire blocks too, and the function
    is the same bit for bit; a ReLU after another layer stays."""
    rng = np.random.default_rng(5)
    cl = channels_last
    model = cybn.Sequential(
        cybn.Conv2d(3, 8, 3, padding=1, channels_last=cl, dtype=np.float32, rng=rng),
        cybn.ReLU(),
        cybn.Fire(8, 4, 6, 6, channels_last=cl, rng=rng),
        cybn.Conv2d(12, 5, 1, channels_last=cl, dtype=np.float32, rng=rng),
        cybn.ReLU6(),
        cybn.MaxPool2d(2, channels_last=cl),
        cybn.ReLU(),  # after a pool: stays
        cybn.Flatten(),
        cybn.Linear(20 if not cl else 20, 3, dtype=np.float32, rng=rng),
        cybn.ReLU(),
    ).eval()
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 4)).astype(np.float32) * 4
    if cl:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folded = cybn.fold_batchnorm(model)
    kinds = [type(layer).__name__ for layer in folded]
    assert kinds == ["Conv2d", "Fire", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Linear"]
    assert [folded[i].activation for i in (0, 2, 6)] == ["relu", "relu6", "relu"]
    fire = folded[1]
    for name in ("squeeze", "expand1x1", "expand3x3"):
        assert getattr(fire, name).activation == "relu"
        assert isinstance(getattr(fire, name + "_activation"), cybn.Identity)
    assert model[0].activation is None  # the given model is unchanged
    np.testing.assert_array_equal(folded(x), model(x))


def test_batchnorm_after_a_product_with_an_activation_stays():
    """BatchNorm after Conv2d(activation="relu") normalizes the ReLU's output: folding it
    into the conv's weight would scale before the ReLU, so it stays (and is listed)."""
    rng = np.random.default_rng(7)
    model = cybn.Sequential(
        cybn.Conv2d(3, 4, 3, dtype=np.float64, rng=rng, activation="relu"),
        cybn.BatchNorm2d(4, dtype=np.float64))
    randomize_bn(model, rng).eval()
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 5))
    with pytest.warns(UserWarning, match="applies relu"):
        folded = cybn.fold_batchnorm(model)
    assert [i for i, _ in folded.not_folded] == [1]
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_without_running_stats_is_left_in_place():
    model = cybn.Sequential(cybn.Linear(3, 2, rng=0),
                            cybn.BatchNorm1d(2, track_running_stats=False)).eval()
    with pytest.warns(UserWarning, match="no running statistics"):
        folded = cybn.fold_batchnorm(model)
    assert isinstance(folded[1], cybn.BatchNorm1d)


@pytest.mark.parametrize("make,error,match", [
    (lambda: cybn.Sequential(cybn.Linear(3, 2)), ValueError, "eval mode"),
    (lambda: cybn.Linear(3, 2).eval(), TypeError, "Sequential"),
    (lambda: cybn.Sequential(cybn.Linear(3, 2), cybn.BatchNorm1d(4)).eval(), ValueError,
     "4 channels"),
])
def test_fold_errors(make, error, match):
    with pytest.raises(error, match=match):
        cybn.fold_batchnorm(make())


def test_fold_rejects_unknown_into():
    with pytest.raises(ValueError, match="into"):
        cybn.fold_batchnorm(cybn.Sequential(cybn.Linear(2, 2)).eval(), into="both")


@pytest.mark.parametrize("channels_last", [False, True])
def test_inserted_batchnorm_keeps_the_function_and_holds_exact_statistics(channels_last):
    rng = np.random.default_rng(5)
    cl = channels_last
    model = cybn.Sequential(
        cybn.Conv2d(3, 4, 3, padding=1, channels_last=cl, dtype=np.float64, rng=rng),
        cybn.ReLU(), cybn.MaxPool2d(2, channels_last=cl), cybn.Flatten(),
        cybn.Linear(4 * 3 * 3, 5, dtype=np.float64, rng=rng))
    model.eval()
    X = input_for(cl, np.float64, n=50)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    new = cybn.insert_batchnorm(model, X, batch_size=16)
    assert [type(layer).__name__ for layer in new] == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "BatchNorm1d"]
    assert new[1].channels_last == cl and not new.training
    np.testing.assert_allclose(new(X), model(X), rtol=1e-10, atol=1e-12)
    # exact population statistics of the conv's output over all of X
    z = model[0](X)
    axes = (0, 1, 2) if cl else (0, 2, 3)
    np.testing.assert_allclose(new[1].running_mean, z.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(new[1].running_var, z.var(axis=axes), rtol=1e-12)
    # folding the inserted layers back gives the original function
    folded = cybn.fold_batchnorm(new)
    np.testing.assert_allclose(folded(X), model(X), rtol=1e-10, atol=1e-12)
    # in training mode on all of X at once (batch statistics == X's), the same function too
    new.train()
    np.testing.assert_allclose(new(X), model(X), rtol=1e-7, atol=1e-9)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_insert_errors():
    model = cybn.Sequential(cybn.Linear(3, 2, rng=0))
    with pytest.raises(ValueError, match="does not fit"):
        cybn.insert_batchnorm(model, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="nonempty"):
        cybn.insert_batchnorm(model, np.zeros((0, 3)))
    with pytest.raises(TypeError, match="Sequential"):
        cybn.insert_batchnorm(cybn.Linear(3, 2), np.zeros((4, 3)))
