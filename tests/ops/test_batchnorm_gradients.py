"""batch_norm_backward against central finite differences of the forward, in float64."""

import numpy as np
import pytest

import cybn
from conftest import numeric_grad


def loss_train(x, w, b, g, axis):
    return float(np.sum(cybn.batch_norm_train(x, w, b, axis=axis)[0] * g))


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((3, 4, 2, 3), -1), ((6, 2), 1),
                                        ((2, 3, 40), 1)])
def test_training_gradient_matches_finite_differences(shape, axis):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 2 + 1
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    g = rng.standard_normal(shape)
    _, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis)
    dx, dw, db = cybn.batch_norm_backward(g, x, w, mean, invstd, axis=axis)
    f = lambda: loss_train(x, w, b, g, axis)  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((4, 3, 5), 1), ((3, 4, 2, 3), -1)])
def test_inference_gradient_matches_finite_differences(shape, axis):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    g = rng.standard_normal(shape)
    eps = 1e-5
    invstd = 1 / np.sqrt(rv + eps)
    dx, dw, db = cybn.batch_norm_backward(g, x, w, rm, invstd, training=False, axis=axis)

    def f():
        return float(np.sum(cybn.batch_norm_infer(x, rm, rv, w, b, eps=eps, axis=axis) * g))

    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_grad(f, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, numeric_grad(f, b), rtol=1e-6, atol=1e-8)
