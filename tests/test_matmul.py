"""The layers' matrix products (cybn._matmul on the compiled matmul kernels): right against
float64, the same bits for any OpenMP or BLAS thread setting; Conv2d and Linear through them;
backward_parameters (no input gradient) equal to backward's parameter gradients."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn
from cybn import _matmul
from test_threads import run_python

RNG = np.random.default_rng(7)


def data(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# a (M, K) @ b (K, N): one tile, many row blocks, column panels, a long inner dimension
PRODUCTS = [(5, 7, 3), (4096, 288, 64), (64, 784, 512), (3, 2000, 700), (1000, 1, 1)]
# sum over a long inner dimension (split in chunks, or not) / over a stacked batch
SUMS = [(32, 65536, 27), (64, 16384, 288), (6, 100, 5), (3, 5000, 2)]


def all_settings():
    for omp in (1, 2, 3):
        for blas in (1, 2, 4):
            yield omp, blas


def same_for_every_setting(fn):
    results = []
    for omp, blas in all_settings():
        with threadpool_limits(limits=omp, user_api="openmp"), \
                threadpool_limits(limits=blas, user_api="blas"):
            results.append(fn())
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    return results[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", PRODUCTS)
def test_matmul_is_right_and_independent_of_threads(m, k, n, dtype):
    a, b, bias = data(m, k, dtype=dtype), data(k, n, dtype=dtype), data(n, dtype=dtype)
    got = same_for_every_setting(lambda: _matmul.matmul(a, b, bias=bias))
    ref = a.astype(np.float64) @ b.astype(np.float64) + bias
    tol = 2e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.sqrt(k) * np.abs(ref).max())
    assert got.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", PRODUCTS + [(64, 4096, 10), (64, 512, 10), (1, 784, 512),
                                   (1, 37, 5), (1, 1500, 700)])
def test_linear_in_one_call_gives_matmuls_bits(m, k, n, dtype, monkeypatch):
    """_matmul.linear's compiled one-call path (contiguous arrays of one dtype) gives the
    bits of matmul(x, weight.T, bias) for any thread count (a batch of one: dot products,
    right against float64 and the same bits for any thread count); other arrays take
    matmul."""
    from cybn import _kernels

    x, w, bias = data(m, k, dtype=dtype), data(n, k, dtype=dtype), data(n, dtype=dtype)
    assert _kernels.fast_linear(x, w, bias, 1) is not None
    assert _kernels.fast_linear(x, w, None, 1) is not None
    assert _kernels.fast_linear(np.repeat(x, 2, axis=1)[:, ::2], w, bias, 1) is None
    assert _kernels.fast_linear(x, w, bias.astype(np.float16), 1) is None
    assert _kernels.fast_linear(x, w[:, :-1], None, 1) is None
    for b in (bias, None):
        got = same_for_every_setting(lambda: _matmul.linear(x, w, b))
        if m > 1:
            np.testing.assert_array_equal(got, _matmul.matmul(x, w.T, bias=b))
        ref = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
        tol = 2e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.sqrt(k) * np.abs(ref).max())
    monkeypatch.setattr(_kernels, "fast_linear", lambda *args: None)
    np.testing.assert_array_equal(_matmul.linear(x, w, bias), _matmul.matmul(x, w.T, bias=bias))


@pytest.mark.parametrize("m,k,n", SUMS)
def test_matmul_sum_is_right_and_independent_of_threads(m, k, n):
    a, b = data(k, m).T, data(k, n)           # a transposed view, as a weight gradient reads
    got = same_for_every_setting(lambda: _matmul.matmul_sum(a, b))
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.sqrt(k) * np.abs(ref).max())


def test_stacked_products_and_batch_sums():
    w, cols = data(16, 27), data(40, 27, 300)
    bias = data(16, 1)
    y = same_for_every_setting(lambda: _matmul.matmul(w, cols, bias=bias))
    np.testing.assert_allclose(y, np.einsum("ok,nkp->nop", w.astype(float), cols) + bias,
                               atol=1e-4)
    dy = data(40, 16, 300)
    dw = same_for_every_setting(lambda: _matmul.matmul_sum(dy, cols.transpose(0, 2, 1)))
    np.testing.assert_allclose(dw, np.einsum("nop,nkp->ok", dy.astype(float), cols),
                               rtol=1e-5, atol=1e-3)


def test_mixed_or_other_dtypes_fall_back_to_numpy():
    a, b = data(300, 40, dtype=np.float64), data(40, 500)
    assert np.array_equal(_matmul.matmul(a, b), a @ b)
    ai = np.arange(12).reshape(3, 4)
    assert np.array_equal(_matmul.matmul(ai, ai.T), ai @ ai.T)
    stacked = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(_matmul.matmul_sum(stacked, stacked.transpose(0, 2, 1)),
                          (stacked @ stacked.transpose(0, 2, 1)).sum(axis=0))


def test_a_strided_out_gets_the_product():
    a, b = data(40, 30), data(30, 20)
    out = np.zeros((20, 40), np.float32).T
    got = _matmul.matmul(a, b, out=out, bias=np.ones(20, np.float32))
    assert got is out
    np.testing.assert_allclose(out, a @ b + 1, rtol=1e-5, atol=1e-5)


def test_an_error_in_a_block_propagates_and_leaves_no_threads_stuck():
    a, b = data(4096, 288), data(288, 64)
    with pytest.raises(ValueError):
        _matmul.matmul(a, b, out=np.empty((4096, 63), np.float32))
    np.testing.assert_array_equal(_matmul.matmul(a, b), _matmul.matmul(a, b))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_conv_bits_do_not_depend_on_threads(channels_last, dtype):
    conv = cybn.Conv2d(8, 16, 3, padding=1, channels_last=channels_last, dtype=dtype, rng=0)
    shape = (16, 12, 12, 8) if channels_last else (16, 8, 12, 12)
    x = data(*shape, dtype=dtype)
    dy = data(*conv(x).shape, dtype=dtype)

    def run():
        conv.zero_grad()
        y = conv(x)
        dx = conv.backward(dy)
        return np.concatenate([y.ravel(), dx.ravel(), conv.weight.grad.ravel(),
                               conv.bias.grad.ravel()])

    same_for_every_setting(run)


@pytest.mark.parametrize("make,shape", [
    (lambda: cybn.Conv2d(3, 8, 3, stride=2, padding=1, dtype=np.float64, rng=1),
     (4, 3, 9, 9)),
    (lambda: cybn.Conv2d(3, 8, (3, 2), padding=(2, 0), dilation=(1, 2), channels_last=True,
                         dtype=np.float64, rng=1), (4, 9, 9, 3)),
    (lambda: cybn.Linear(20, 7, dtype=np.float64, rng=1), (6, 20)),
    (lambda: cybn.Sequential(cybn.Conv2d(2, 4, 3, dtype=np.float64, rng=1),
                             cybn.BatchNorm2d(4, dtype=np.float64), cybn.ReLU(),
                             cybn.Flatten(), cybn.Linear(4 * 25, 3, dtype=np.float64,
                                                         rng=2)), (5, 2, 7, 7)),
    (lambda: cybn.Sequential(cybn.BatchNorm1d(6, dtype=np.float64)), (8, 6)),
])
def test_backward_parameters_gives_backwards_parameter_gradients(make, shape):
    model = make()
    x = data(*shape, dtype=np.float64)
    dy = data(*model(x).shape, dtype=np.float64)
    model.zero_grad()
    model(x)
    model.backward(dy)
    expected = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    assert model.backward_parameters(dy) is None
    for p, g in zip(model.parameters(), expected):
        np.testing.assert_array_equal(p.grad, g)
    with pytest.raises(RuntimeError, match="needs a forward first"):
        model.backward_parameters(dy)


FORK_SCRIPT = """
import multiprocessing as mp, numpy as np, cybn
from cybn import _matmul
A = np.random.default_rng(0).random((4096, 288)).astype(np.float32)
B = np.random.default_rng(1).random((288, 64)).astype(np.float32)
def work(_):
    return _matmul.matmul(A, B).sum(dtype=np.float64)
if __name__ == "__main__":
    cybn.set_num_threads(2)
    expected = work(0)  # starts the worker thread in the parent
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(work, range(4))
    assert got == [expected] * 4, (got, expected)
    print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_fork_after_a_threaded_product_does_not_hang():
    assert run_python(FORK_SCRIPT, timeout=120).strip() == "ok"


@pytest.mark.parametrize("a_shape,b_shape", [((0, 3), (3, 0)), ((0, 0), (0, 0)),
                                             ((0, 4, 3), (3, 5))])
def test_empty_products_are_empty(a_shape, b_shape):
    a, b = np.ones(a_shape, np.float32), np.ones(b_shape, np.float32)
    np.testing.assert_array_equal(_matmul.matmul(a, b), np.matmul(a, b))
    assert _matmul.matmul(a, b).shape == np.matmul(a, b).shape


@pytest.mark.parametrize("channels_last,size", [(True, 9), (False, 6), (False, 20)])
def test_backward_parameters_computes_no_input_gradient(channels_last, size, monkeypatch):
    """Each dense route (rows, small planes through rows, packed planes): no input gradient
    is computed, so no convolution runs after the forward."""
    import cybn.nn.conv as conv_module
    calls = []
    for name in ("conv_rows", "conv_planes", "conv_planes_input_grad", "col2im"):
        real = getattr(conv_module, name)
        monkeypatch.setattr(conv_module, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    conv = cybn.Conv2d(3, 4, 3, padding=1, channels_last=channels_last, rng=0)
    shape = (2, size, size, 3) if channels_last else (2, 3, size, size)
    y = conv(data(*shape))
    forward_calls = list(calls)
    assert conv.backward_parameters(np.ones_like(y)) is None
    assert calls == forward_calls
    assert np.abs(conv.weight.grad).sum() > 0
