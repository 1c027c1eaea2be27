"""The compiled MaxPool2d (and its NumPy path for windows over 255 taps) against a plain
loop: first maximum wins, NaN wins, overlapping windows add their gradients, both layouts
and dtypes, the same bits for any thread count; the compiled ReLU layer against NumPy."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn


def reference(x, k, s):
    """(y, dx for dy = 1 + output index) of NCHW x by loops."""
    (kh, kw), (sh, sw) = k, s
    n, C, H, W = x.shape
    ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    y = np.empty((n, C, ho, wo), x.dtype)
    dy = (1 + np.arange(y.size, dtype=np.float64).reshape(y.shape) % 7).astype(x.dtype)
    dx = np.zeros(x.shape, np.float64)
    for a in range(n):
        for c in range(C):
            for i in range(ho):
                for j in range(wo):
                    win = x[a, c, i * sh:i * sh + kh, j * sw:j * sw + kw].ravel()
                    t = int(np.argmax(win))  # first maximum; the first NaN wins
                    y[a, c, i, j] = win[t]
                    dx[a, c, i * sh + t // kw, j * sw + t % kw] += dy[a, c, i, j]
    return y, dy, dx.astype(x.dtype)


@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2)),
                                 ((2, 3), (3, 1)), ((1, 1), (1, 1)), ((16, 16), (1, 1))])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [3, 21])  # channels-last float32: 8 at a time and a tail
def test_max_pool_against_loops(k, s, channels_last, dtype, C):
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (2, C, 17, 18)).astype(dtype)  # many ties
    x[0, 0, 1, 1] = np.nan
    x[1, C - 1, 2, 3] = x[1, C // 2, 5, 5] = np.nan
    y0, dy, dx0 = reference(x, k, s)
    layer = cybn.MaxPool2d(k, s, channels_last=channels_last)
    to = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))) if channels_last else (
        lambda a: a)
    y = layer(to(x))
    dx = layer.backward(to(dy))
    np.testing.assert_array_equal(y, to(y0))
    np.testing.assert_array_equal(dx, to(dx0))
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_bits_for_any_thread_count(channels_last):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 16, 30, 30)).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    outs = []
    for n in (1, 2, 3):
        with threadpool_limits(limits=n, user_api="openmp"):
            layer = cybn.MaxPool2d(3, 2, channels_last=channels_last)
            y = layer(x)
            outs.append((y, layer.backward(np.ones_like(y))))
    for y, dx in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_array_equal(dx, outs[0][1])


def test_window_larger_than_input_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        cybn.MaxPool2d(4)(np.ones((1, 1, 3, 8), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_layer_semantics(dtype):
    x = np.array([[-np.inf, -1.0, -0.0, 0.0, 1e-30, 2.0, np.inf, np.nan]] * 3, dtype=dtype)
    x = np.tile(x, (1, 5000))  # several work items
    layer = cybn.ReLU()
    y = layer(x)
    want = np.where(x <= 0, dtype(0), x)
    np.testing.assert_array_equal(y, want)
    assert not np.signbit(y[x <= 0]).any()  # +0 where x <= 0
    dy = np.full(x.shape, np.inf, dtype=dtype)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, np.where(x <= 0, dtype(0), dy))  # exact 0, also for inf
    assert x[0, 0] == -np.inf  # the input is not modified
    # a gradient of another dtype takes the NumPy path, same values
    layer(x)
    np.testing.assert_array_equal(layer.backward(np.ones(x.shape, np.float16)),
                                  np.where(x <= 0, 0, 1).astype(np.float16))


@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2))])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_against_loops_and_finite_differences(k, s, channels_last, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 10)).astype(dtype)
    (kh, kw), (sh, sw) = k, s
    ho, wo = (9 - kh) // sh + 1, (10 - kw) // sw + 1
    y0 = np.empty((2, 3, ho, wo))
    dy = rng.standard_normal(y0.shape)
    dx0 = np.zeros(x.shape)
    for i in range(ho):
        for j in range(wo):
            y0[:, :, i, j] = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].mean(axis=(2, 3))
            dx0[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += dy[:, :, i:i + 1, j:j + 1] / (
                kh * kw)
    to = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))) if channels_last else (
        lambda a: a)
    layer = cybn.AvgPool2d(k, s, channels_last=channels_last)
    y = layer(to(x))
    dx = layer.backward(to(dy.astype(dtype)))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, to(y0), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, to(dx0), rtol=tol, atol=tol)
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("channels_last", [False, True])
def test_global_average_pool(channels_last):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 3))
    layer = cybn.AdaptiveAvgPool2d(1, channels_last=channels_last)
    y = layer(x)
    axes = (1, 2) if channels_last else (2, 3)
    np.testing.assert_allclose(y, x.mean(axis=axes, keepdims=True))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    count = 4 * 5 if channels_last else 5 * 3
    np.testing.assert_allclose(dx, np.broadcast_to(dy / count, x.shape))
    with pytest.raises(ValueError, match="output_size"):
        cybn.AdaptiveAvgPool2d(0)
    with pytest.raises(TypeError, match="float32 or float64"):
        cybn.AvgPool2d(2)(np.ones((1, 1, 4, 4), np.int64))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16), (3, 21)])
def test_compiled_global_average_pool_sums_in_double_for_any_thread_count(hw, dtype,
                                                                         channels_last):
    """The compiled means (summed in double) are the float64 means rounded to x's dtype,
    with the same bits for 1-4 threads; a strided x gives the same."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(4)
    shape = (3, *hw, 9) if channels_last else (3, 9, *hw)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)  # a large mean: cancellation
    axes = (1, 2) if channels_last else (2, 3)
    ref = x.astype(np.float64).mean(axis=axes, keepdims=True)
    layer = cybn.AdaptiveAvgPool2d(1, channels_last=channels_last)
    ys = []
    for threads in (1, 2, 3, 4):
        with threadpool_limits(threads, user_api="openmp"):
            ys.append(layer(x))
    assert ys[0].dtype == dtype and ys[0].shape == ref.shape
    rtol = (1 if dtype == np.float32 else 8) * np.finfo(dtype).eps  # double sums, rounded
    np.testing.assert_allclose(ys[0], ref, rtol=rtol)
    assert all(np.array_equal(y, ys[0]) for y in ys[1:])
    big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
    big[..., ::2] = x
    np.testing.assert_array_equal(layer(big[..., ::2]), ys[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("contiguous", [True, False])
def test_inplace_relu_writes_into_x_and_matches_the_plain_layer(dtype, contiguous):
    base = np.random.default_rng(5).standard_normal((4, 6, 10, 12)) * 3
    base = base.astype(dtype)
    x = base if contiguous else base[:, :, ::2, 1:]
    dy = np.random.default_rng(6).standard_normal(x.shape).astype(
        dtype if dtype != np.int32 else np.float64)
    plain, inplace = cybn.ReLU(), cybn.ReLU(inplace=True)
    expected = plain(x.copy())
    original = x.copy()
    y = inplace(x)
    assert y is x and repr(inplace) == "ReLU(inplace=True)"
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(x, np.maximum(original, 0))
    np.testing.assert_array_equal(inplace.backward(dy), plain.backward(dy))
    if not contiguous:  # the elements outside the view are untouched
        mask = np.ones(base.shape, bool)
        mask[:, :, ::2, 1:] = False
        assert (base[mask] < 0).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
def test_one_call_relu_entries_give_the_full_paths_bits(dtype, train, monkeypatch):
    """Contiguous float arrays take one compiled call each way (forward into the layer's
    mask scratch in training); with those calls disabled the layer takes its full path. The
    same outputs and gradients, NaN and signed zeros included; what the one-call entries
    cannot take (a strided dy, a wrong-sized mask) they leave to the full path."""
    from cybn import _kernels

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 7, 9)) * 2).astype(dtype)
    x.flat[::11] = np.nan
    x.flat[1::13] = -0.0
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy_strided = np.repeat(dy, 2, axis=-1)[..., ::2]

    def run():
        layer = cybn.ReLU()
        layer.train(train)
        y = layer(x)
        dx = layer.backward(dy)
        layer(x)
        return y, dx, layer.backward(dy_strided)

    fast = run()
    assert _kernels.fast_relu(x, None, False, 1) is not None
    assert _kernels.fast_relu_backward(dy, np.ones(x.shape, np.uint8), x.dtype.num, 1) \
        is not None
    assert _kernels.fast_relu(x, np.empty(x.size - 1, np.uint8), False, 1) is None
    assert _kernels.fast_relu_backward(dy_strided, np.ones(x.shape, np.uint8), x.dtype.num,
                                       1) is None
    assert _kernels.fast_relu_backward(dy, np.ones(x.size - 1, np.uint8), x.dtype.num,
                                       1) is None
    monkeypatch.setattr(_kernels, "fast_relu", lambda *args: None)
    monkeypatch.setattr(_kernels, "fast_relu_backward", lambda *args: None)
    full = run()
    for a, b in zip(fast, full):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
    np.testing.assert_array_equal(full[0], np.where(x <= 0, dtype(0), x))


def test_inplace_relu_rejects_what_it_cannot_write():
    x = np.linspace(-1, 1, 12, dtype=np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        cybn.ReLU(inplace=True)(x)
    np.testing.assert_array_equal(x, np.linspace(-1, 1, 12, dtype=np.float32))
    with pytest.raises(TypeError, match="must be an ndarray"):
        cybn.ReLU(inplace=True)([1.0, -1.0])


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_numpy_relu_path_follows_pytorch_at_nan_and_infinite_dy(dtype):
    """Dtypes without a compiled kernel: the gradient passes where x is NaN (not <= 0) and is
    exactly 0 where x <= 0, even for an infinite dy."""
    if dtype == np.float16:
        x = np.array([-1.0, 0.0, 2.0, np.nan, -np.inf], dtype=dtype)
        dy = np.array([np.inf, -np.inf, 3.0, 5.0, np.inf], dtype=dtype)
        want_y = np.array([0.0, 0.0, 2.0, np.nan, 0.0], dtype=dtype)
        want_dx = np.array([0.0, 0.0, 3.0, 5.0, 0.0], dtype=dtype)
    else:
        x = np.array([-1, 0, 2, 7], dtype=dtype)
        dy = np.array([1.0, 2.0, 3.0, 4.0])
        want_y = np.array([0, 0, 2, 7], dtype=dtype)
        want_dx = np.array([0.0, 0.0, 3.0, 4.0])
    relu = cybn.ReLU()
    np.testing.assert_array_equal(relu(x), want_y)
    dx = relu.backward(dy)
    np.testing.assert_array_equal(dx, want_dx)
    assert not np.isnan(dx[:2]).any()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel,stride,dtype", [((2, 3), (1, 2), np.float16),
                                                 ((3, 2), (2, 1), np.float16),
                                                 ((16, 17), (3, 2), np.float32)])
def test_numpy_max_pool_path_equals_the_compiled_one(kernel, stride, dtype, channels_last):
    """float16, and windows of more taps than a byte names, run through NumPy: forward and
    backward equal the compiled float32 kernels' (non-square windows pin the tap index)."""
    rng = np.random.default_rng(21)
    shape = (2, 20, 21, 3) if channels_last else (2, 3, 20, 21)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / 64  # no ties
    x16 = x.astype(dtype)
    slow = cybn.MaxPool2d(kernel, stride, channels_last=channels_last)
    y = slow(x16)
    dy = rng.integers(1, 5, y.shape).astype(dtype)
    dx = slow.backward(dy)
    if kernel[0] * kernel[1] > 255:  # the reference: windows by hand
        (kh, kw), (sh, sw) = kernel, stride
        xn = x if channels_last else x.transpose(0, 2, 3, 1)
        dyn = dy if channels_last else dy.transpose(0, 2, 3, 1)
        ref = np.zeros_like(xn)
        for i in range(dyn.shape[1]):
            for j in range(dyn.shape[2]):
                win = xn[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :].reshape(2, -1, 3)
                k = win.argmax(axis=1)
                r, c = np.divmod(k, kw)
                for n in range(2):
                    for ch in range(3):
                        ref[n, i * sh + r[n, ch], j * sw + c[n, ch], ch] += dyn[n, i, j, ch]
        ref = ref if channels_last else ref.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(dx, ref)
        return
    fast = cybn.MaxPool2d(kernel, stride, channels_last=channels_last)
    np.testing.assert_array_equal(y, fast(x16.astype(np.float32)).astype(dtype))
    np.testing.assert_array_equal(dx, fast.backward(dy.astype(np.float32)).astype(dtype))
