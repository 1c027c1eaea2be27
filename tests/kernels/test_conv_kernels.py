"""The dense convolution kernels, channels-first (conv_forward_planes,
conv_weight_grad_planes) and channels-last (conv_forward_rows, conv_weight_grad_rows): the
products with the windows read where they lie equal the definition (float64) for every
window geometry, bitwise the same for 1-4 threads (for each chunking of the samples), and
both input-gradient routes of ops.conv (the flipped-weight convolution, the columns'
gradient folded back) equal the definition."""

import numpy as np
import pytest

from cybn import _kernels
from cybn.ops import conv as C

RNG = np.random.default_rng(5)

# (N, C, H, W, out, kh, kw, stride, padding, dilation)
GEOMETRIES = [
    (2, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1)),
    (3, 2, 9, 7, 5, 3, 2, (2, 1), (1, 0), (1, 1)),
    (2, 4, 11, 10, 3, 3, 3, (1, 2), (2, 3), (2, 1)),   # padding past the kernel's reach
    (1, 5, 6, 6, 7, 1, 1, (1, 1), (0, 0), (1, 1)),     # 1x1
    (2, 5, 7, 6, 7, 1, 1, (2, 3), (0, 0), (1, 1)),     # 1x1, strided (sampled pixels)
    (2, 16, 12, 12, 33, 3, 3, (1, 1), (1, 1), (1, 1)),  # several column panels
    (2, 3, 5, 40, 2, 2, 5, (3, 2), (0, 4), (1, 2)),
    (1, 1, 3, 3, 1, 3, 3, (1, 1), (0, 0), (1, 1)),     # one output
]


def columns(x, kh, kw, stride, padding, dilation):
    """The column matrices (N, C * kh * kw, Ho * Wo) by the definition, float64."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                  j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, ho * wo), ho, wo


def close(got, ref, k, dtype):
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, ref, rtol=0,
                               atol=8 * eps * np.sqrt(k) * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_and_weight_gradient_equal_the_definition(geometry, dtype):
    n, c, h, w, out, kh, kw, stride, padding, dilation = geometry
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    weight = RNG.standard_normal((out, c * kh * kw)).astype(dtype)
    bias = RNG.standard_normal(out).astype(dtype)
    cols, ho, wo = columns(x, kh, kw, stride, padding, dilation)
    args = (kh, kw, *stride, *padding, *dilation)
    ys = []
    for threads in (1, 2, 3, 4):
        y = np.full((n, out, ho, wo), np.nan, dtype)
        _kernels.conv_forward_planes(x, weight, bias, *args, y, threads)
        ys.append(y)
    ref = np.einsum("ok,nkp->nop", weight.astype(np.float64), cols) + bias[:, None]
    close(ys[0].reshape(n, out, -1), ref, c * kh * kw, dtype)
    assert all(np.array_equal(y, ys[0]) for y in ys[1:])
    dy = RNG.standard_normal((n, out, ho, wo)).astype(dtype)
    ref_dw = np.einsum("nop,nkp->ok", dy.reshape(n, out, -1).astype(np.float64), cols)
    for chunk in (1, 2, n):
        dws = []
        for threads in (1, 2, 3, 4):
            dw = np.full((out, c * kh * kw), np.nan, dtype)
            _kernels.conv_weight_grad_planes(dy, x, *args, dw, chunk, threads)
            dws.append(dw)
        close(dws[0], ref_dw, n * ho * wo, dtype)
        assert all(np.array_equal(d, dws[0]) for d in dws[1:])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_input_gradient_equals_the_definition(geometry):
    n, c, h, w, out, kh, kw, stride, padding, dilation = geometry
    weight = RNG.standard_normal((out, c, kh, kw))
    x_shape = (n, c, h, w)
    _, ho, wo = columns(np.zeros(x_shape), kh, kw, stride, padding, dilation)
    dy = RNG.standard_normal((n, out, ho, wo))
    dx = C.conv_planes_input_grad(dy, weight, x_shape, stride, padding, dilation)
    # the definition: dx = d/dx of sum(dy * conv(x)), by the linear map's transpose
    basis = np.eye(n * c * h * w).reshape(-1, *x_shape)[:: max(1, n * c * h * w // 60)]
    for e in basis:  # <dx, e> == <dy, conv(e)>
        cols, _, _ = columns(e, kh, kw, stride, padding, dilation)
        y = np.einsum("ok,nkp->nop", weight.reshape(out, -1), cols)
        np.testing.assert_allclose(np.sum(dx * e), np.sum(dy.reshape(n, out, -1) * y),
                                   atol=1e-10)


def test_an_empty_batch_gives_empty_outputs_and_zero_weight_gradients():
    x = np.zeros((0, 3, 5, 5), np.float32)
    y = np.empty((0, 2, 5, 5), np.float32)
    _kernels.conv_forward_planes(x, np.ones((2, 27), np.float32), np.empty(0, np.float32),
                                 3, 3, 1, 1, 1, 1, 1, 1, y, 2)
    dw = np.full((2, 27), np.nan, np.float32)
    _kernels.conv_weight_grad_planes(y, x, 3, 3, 1, 1, 1, 1, 1, 1, dw, 1, 2)
    assert np.array_equal(dw, np.zeros((2, 27)))
    xh, yh = x.transpose(0, 2, 3, 1).copy(), y.transpose(0, 2, 3, 1).copy()
    _kernels.conv_forward_rows(xh, np.ones((2, 27), np.float32), np.empty(0, np.float32),
                               3, 3, 1, 1, 1, 1, 1, 1, yh, 2)
    dw[...] = np.nan
    _kernels.conv_weight_grad_rows(yh, xh, 3, 3, 1, 1, 1, 1, 1, 1, dw, 1, 2)
    assert np.array_equal(dw, np.zeros((2, 27)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_channels_last_rows_forward_equals_the_definition(geometry, dtype):
    n, c, h, w, out, kh, kw, stride, padding, dilation = geometry
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    weight = RNG.standard_normal((out, c, kh, kw)).astype(dtype)
    bias = RNG.standard_normal(out).astype(dtype)
    cols, ho, wo = columns(x, kh, kw, stride, padding, dilation)
    ref = np.einsum("ok,nkp->nop", weight.reshape(out, -1).astype(np.float64), cols)
    ref = (ref + bias[:, None]).reshape(n, out, ho, wo).transpose(0, 2, 3, 1)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for channel_major in (False, True):
        rows = weight.reshape(out, -1) if channel_major else \
            np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(out, -1)
        ys = []
        for threads in (1, 2, 3, 4):
            y = np.full((n, ho, wo, out), np.nan, dtype)
            _kernels.conv_forward_rows(xh, rows, bias, kh, kw, *stride, *padding, *dilation,
                                       y, threads, None, 0, channel_major)
            ys.append(y)
        close(ys[0], ref, c * kh * kw, dtype)
        assert all(np.array_equal(y, ys[0]) for y in ys[1:])
    y = np.empty_like(ys[0])  # no bias
    _kernels.conv_forward_rows(xh, rows, np.empty(0, dtype), kh, kw, *stride, *padding,
                               *dilation, y, 2, None, 0, True)
    close(y, ref - bias, c * kh * kw, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_channels_last_weight_gradient_equals_the_definition(geometry, dtype):
    """conv_weight_grad_rows: dy^T @ columns(x) with the columns' panels gathered from the
    windows where they lie; the same bits for 1-4 threads for each chunking of the
    samples."""
    n, c, h, w, out, kh, kw, stride, padding, dilation = geometry
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    cols, ho, wo = columns(x, kh, kw, stride, padding, dilation)
    dy = RNG.standard_normal((n, out, ho, wo)).astype(dtype)
    ref = np.einsum("nop,nkp->ok", dy.reshape(n, out, -1).astype(np.float64), cols)
    ref = ref.reshape(out, c, kh, kw).transpose(0, 2, 3, 1).reshape(out, -1)  # (kh, kw, C)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    dyh = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    for chunk in (1, 2, n):
        dws = []
        for threads in (1, 2, 3, 4):
            dw = np.full((out, kh * kw * c), np.nan, dtype)
            _kernels.conv_weight_grad_rows(dyh, xh, kh, kw, *stride, *padding, *dilation, dw,
                                           chunk, threads)
            dws.append(dw)
        close(dws[0], ref, n * ho * wo, dtype)
        assert all(np.array_equal(d, dws[0]) for d in dws[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_rows_route_gives_the_column_matrix_routes_bits(dtype):
    """Reading the windows in place changes where the operands come from, not the
    arithmetic: bitwise the product on the compiled im2col's column matrix (its columns
    in the order the rows route sums in: (kh, kw, C), or (C, kh, kw) with channel_major)."""
    x = RNG.standard_normal((3, 11, 13, 6)).astype(dtype)
    rows = RNG.standard_normal((9, 6 * 3 * 3)).astype(dtype)
    cols = C.im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), 11, 13)  # (kh, kw, C) order
    for channel_major in (False, True):
        y = np.empty((3, 11, 13, 9), dtype)
        _kernels.conv_forward_rows(x, rows, np.empty(0, dtype), 3, 3, 1, 1, 1, 1, 1, 1, y, 2,
                                   None, 0, channel_major)
        c = np.ascontiguousarray(cols.reshape(-1, 3, 3, 6).transpose(0, 3, 1, 2)).reshape(
            cols.shape) if channel_major else cols
        ref = np.empty((c.shape[0], 9), dtype)
        _kernels.matmul(c, rows.T, ref, False, 2)
        assert np.array_equal(y.reshape(-1, 9), ref)


@pytest.mark.parametrize("size", [7, 8])
def test_strided_pointwise_ops_equal_the_definition(size):
    """ops.conv's strided 1x1 route (the stride-1 convolution of the sampled pixels)."""
    x = RNG.standard_normal((3, 4, size, size + 1))
    weight = RNG.standard_normal((6, 4, 1, 1))
    bias = RNG.standard_normal(6)
    g = ((2, 2), (0, 0), (1, 1))
    cols, ho, wo = columns(x, 1, 1, *g)
    y = C.conv_planes(x, weight, bias, *g)
    ref = np.einsum("ok,nkp->nop", weight.reshape(6, 4), cols) + bias[:, None]
    np.testing.assert_allclose(y.reshape(3, 6, -1), ref, atol=1e-12)
    dy = RNG.standard_normal(y.shape)
    dw = C.conv_planes_weight_grad(dy, x, (1, 1), *g)
    np.testing.assert_allclose(dw.reshape(6, 4), np.einsum("nop,nkp->ok",
                               dy.reshape(3, 6, -1), cols), atol=1e-12)
    dx = C.conv_planes_input_grad(dy, weight, x.shape, *g)
    expected = np.zeros_like(x)
    expected[:, :, ::2, ::2] = np.einsum("oc,nohw->nchw", weight.reshape(6, 4), dy)
    np.testing.assert_allclose(dx, expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 40, 33, 35), (3, 64, 1, 1), (0, 2, 3, 3)])
def test_layout_changes_equal_numpys_transposes(shape, dtype):
    """ops.conv.to_channels_last / to_channels_first (the compiled tiled transpose) equal
    NumPy's copies of the transposed views, for any thread count; other dtypes take
    NumPy's copy."""
    from threadpoolctl import threadpool_limits

    x = RNG.standard_normal(shape).astype(dtype)
    for threads in (1, 2, 3):
        with threadpool_limits(threads, user_api="openmp"):
            xl = C.to_channels_last(x)
            back = C.to_channels_first(xl)
        np.testing.assert_array_equal(xl, x.transpose(0, 2, 3, 1))
        assert xl.flags.c_contiguous and back.flags.c_contiguous
        np.testing.assert_array_equal(back, x)
    strided = np.repeat(x, 2, axis=-1)[..., ::2]
    np.testing.assert_array_equal(C.to_channels_last(strided), x.transpose(0, 2, 3, 1))
    half = x.astype(np.float16)
    np.testing.assert_array_equal(C.to_channels_last(half), half.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (64, 40, 3, 1), (3, 7, 1, 1), (2, 2, 2, 5)])
@pytest.mark.parametrize("as_is", [False, True])
def test_flipped_weight_rows_equal_numpys_copy(shape, dtype, as_is):
    """ops.conv.transposed_flipped_rows (the compiled one-pass copy for float32 and float64)
    equals NumPy's copy of the flipped, swapped view, in both orders, on any thread count."""
    from threadpoolctl import threadpool_limits

    w = RNG.standard_normal(shape).astype(dtype)
    out, cin = shape[:2]
    swapped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)                # (C, out, kh, kw)
    want = (swapped if as_is else swapped.transpose(0, 2, 3, 1)).reshape(cin, -1)
    for threads in (1, 2, 3):
        with threadpool_limits(threads, user_api="openmp"):
            got = C.transposed_flipped_rows(w, as_is)
        assert got.dtype == w.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
