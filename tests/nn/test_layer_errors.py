"""Clear errors where layer users trip, and PyTorch's ReLU at the extremes."""

import numpy as np
import pytest

import cybn

X4 = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


def layers_and_inputs():
    return [(cybn.Linear(3, 2, rng=0), X4[:, :, 0, 0]),
            (cybn.Conv2d(3, 2, 3, padding=1, rng=0), X4),
            (cybn.ReLU(), X4),
            (cybn.MaxPool2d(2), X4),
            (cybn.Flatten(), X4),
            (cybn.Dropout(0.5, rng=0), X4),
            (cybn.BatchNorm2d(3), X4)]


@pytest.mark.parametrize("index", range(7))
def test_backward_needs_a_forward_and_only_one_per_forward(index):
    layer, x = layers_and_inputs()[index]
    name = type(layer).__name__
    with pytest.raises(RuntimeError, match=f"{name}.backward needs a forward first"):
        layer.backward(np.ones_like(x))
    y = layer.forward(x)
    dy = np.ones_like(y)
    layer.backward(dy)
    grads = [p.grad.copy() for p in layer.parameters()]
    with pytest.raises(RuntimeError, match=f"{name}.backward needs a forward first"):
        layer.backward(dy)
    for p, g in zip(layer.parameters(), grads):  # not added twice
        np.testing.assert_array_equal(p.grad, g)


def test_gradients_accumulate_over_forward_backward_pairs():
    layer = cybn.Linear(3, 2, rng=0)
    x = X4[:, :, 0, 0]
    dy = np.ones((2, 2), np.float32)
    layer.forward(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)


@pytest.mark.parametrize("make,match", [
    (lambda: cybn.Conv2d(1, 2, 0), "kernel_size must be positive"),
    (lambda: cybn.Conv2d(1, 2, 3, stride=0), "stride must be positive"),
    (lambda: cybn.Conv2d(1, 2, 3, padding=-1), "padding must be at least 0"),
    (lambda: cybn.Conv2d(0, 2, 3), "in_channels must be a positive int"),
    (lambda: cybn.Conv2d(1, -2, 3), "out_channels must be a positive int"),
    (lambda: cybn.Linear(0, 4), "in_features must be a positive int"),
    (lambda: cybn.Linear(-3, 4), "in_features must be a positive int"),
    (lambda: cybn.Linear(3, 0), "out_features must be a positive int"),
    (lambda: cybn.Linear(2.5, 4), "in_features must be a positive int"),
    (lambda: cybn.MaxPool2d(0), "kernel_size must be positive"),
    (lambda: cybn.MaxPool2d(2, stride=(1, 0)), "stride must be positive"),
    (lambda: cybn.Dropout("0.5"), "p must be a number"),
    (lambda: cybn.BatchNorm2d(0), "num_features must be a positive int"),
])
def test_constructor_sizes_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batchnorm_channel_mismatch_names_the_layer_and_suggests_the_layout():
    x = np.zeros((2, 5, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm2d has 3 channels, but the input has 5 "
                                         r"along axis 1.*channels_last=True"):
        cybn.BatchNorm2d(3)(x)
    with pytest.raises(ValueError, match=r"has 3 channels, but the input has 4 along axis 3"
                                         r".*leave channels_last=False"):
        cybn.BatchNorm2d(3, channels_last=True)(np.zeros((2, 3, 5, 4), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_at_infinities_and_nan_matches_pytorch(dtype):
    relu = cybn.ReLU()
    x = np.array([[-np.inf, -1.0, 0.0, 2.0, np.inf, np.nan]], dtype)
    y = relu.forward(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.array([[0, 0, 0, 2, np.inf, np.nan]], dtype))
    dy = np.array([[np.inf, -np.inf, np.nan, 3.0, 4.0, 5.0]], dtype)
    # PyTorch 2.13 (threshold_backward): 0 where x <= 0, else dy (NaN x passes dy)
    np.testing.assert_array_equal(relu.backward(dy), np.array([[0, 0, 0, 3, 4, 5]], dtype))
