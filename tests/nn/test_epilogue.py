"""Fused epilogues of the products: Conv2d and Linear with activation="relu", a residual
added in a convolution's epilogue (Conv2d.forward_fused, Residual blocks ending in a
convolution), and fold_batchnorm producing such layers. Each is checked bit for bit against
the separate passes (convolution, add, ReLU layer), forward and backward."""

import copy

import numpy as np
import pytest

import cybn
from cybn import nn

# (in, out, kernel, stride, padding, groups, input spatial size): every route of Conv2d's
# forward (channels-first planes of >= 256 pixels, strided 1x1, small maps through the rows
# route, depthwise, grouped through NumPy)
CASES = [
    (3, 8, 3, 1, 1, 1, 16),     # planes, stride 1 (padded grid)
    (4, 6, 3, 2, 1, 1, 34),     # planes, stride 2 (packed columns)
    (4, 6, 1, 2, 0, 1, 32),     # strided 1x1
    (5, 7, 3, 1, 1, 1, 6),      # rows (small maps)
    (6, 6, 3, 2, 1, 6, 9),      # depthwise
    (4, 6, 3, 1, 0, 2, 7),      # grouped
]


def conv_pair(case, channels_last, dtype, rng, activation="relu"):
    cin, cout, k, s, p, g, _ = case
    plain = nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g,
                      channels_last=channels_last, dtype=dtype, rng=rng)
    fused = copy.deepcopy(plain)
    fused.activation = activation
    return plain, fused


def inputs(case, channels_last, dtype, rng, n=3):
    cin, size = case[0], case[-1]
    x = rng.standard_normal((n, cin, size, size)).astype(dtype)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_conv_relu_equals_conv_then_relu_layer(case, channels_last, dtype, activation):
    rng = np.random.default_rng(0)
    plain, fused = conv_pair(case, channels_last, dtype, rng, activation)
    if activation == "relu6":  # outputs on both sides of 6
        plain.weight.data *= 8
        fused.weight.data *= 8
    relu = nn.ReLU() if activation == "relu" else nn.ReLU6()
    x = inputs(case, channels_last, dtype, rng)
    y = relu(plain(x))
    yf = fused(x)
    np.testing.assert_array_equal(yf, y)
    assert (y == 0).any() and (y > 0).any()
    assert activation == "relu" or (y == 6).any()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = plain.backward(relu.backward(dy))
    dxf = fused.backward(dy)
    np.testing.assert_array_equal(dxf, dx)
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)
    assert f"activation='{activation}'" in repr(fused)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_residual_in_the_epilogue_equals_the_separate_add(case, channels_last, relu):
    rng = np.random.default_rng(1)
    dtype = np.float32
    plain, fused = conv_pair(case, channels_last, dtype, rng)
    fused.activation = None
    x = inputs(case, channels_last, dtype, rng)
    y = plain(x)
    r = rng.standard_normal(y.shape).astype(dtype)
    r_before = r.copy()
    pre = y + r
    expected = np.where(pre <= 0, dtype(0), pre) if relu else pre
    out = fused.forward_fused(x, r, "relu" if relu else None)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(r, r_before)  # the residual is read, not written
    dy = rng.standard_normal(y.shape).astype(dtype)
    g = np.where(pre <= 0, dtype(0), dy) if relu else dy
    dx = plain.backward(g)
    dxf, dr = fused.backward(dy)
    np.testing.assert_array_equal(dr, g)
    np.testing.assert_array_equal(dxf, dx)
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)


def test_a_residual_of_another_dtype_or_order_takes_the_separate_passes():
    rng = np.random.default_rng(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = conv(x)
    r64 = rng.standard_normal(y.shape)
    out = conv.forward_fused(x, r64, None)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, y + r64)
    rf = np.asfortranarray(r64.astype(np.float32))
    np.testing.assert_array_equal(conv.forward_fused(x, rf, "relu"),
                                  np.maximum(y + rf, np.float32(0)))


def test_relu_epilogue_keeps_nan_and_zeroes_negative_infinity():
    conv = nn.Conv2d(1, 1, 1, bias=False, rng=0, channels_last=True)
    conv.weight.data[...] = 1.0
    conv.activation = "relu"
    x = np.array([np.nan, -np.inf, np.inf, -1.0, 2.0, -0.0], np.float32).reshape(1, 1, 6, 1)
    y = conv(x).ravel()
    np.testing.assert_array_equal(y[1:], [0, np.inf, 0, 2, 0])
    assert np.isnan(y[0]) and not np.signbit(y[5])


def test_fused_conv_errors_leave_the_layer_usable():
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=0)
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="residual"):
        conv.forward_fused(x, np.zeros((2, 4, 5, 4), np.float32), "relu")
    with pytest.raises(ValueError, match="activation"):
        conv.forward_fused(x, None, "gelu")
    with pytest.raises(ValueError, match="activation"):
        nn.Conv2d(3, 4, 3, activation="tanh")
    with pytest.raises(ValueError, match="activation"):
        nn.Linear(3, 4, activation="sigmoid")
    with pytest.raises(ValueError, match="activation"):
        conv.forward_fused(x, None, "relu7")
    conv(x)
    assert conv.backward(np.ones((2, 4, 5, 5), np.float32)).shape == x.shape


def test_kernel_refuses_a_residual_of_the_wrong_shape_or_overlapping_y():
    from cybn import _kernels
    x = np.zeros((1, 4, 4, 2), np.float32)
    w = np.zeros((3, 9 * 2), np.float32)
    b = np.zeros(0, np.float32)
    y = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="residual"):
        _kernels.conv_forward_rows(x, w, b, 3, 3, 1, 1, 1, 1, 1, 1, y, 1,
                                   np.zeros((1, 4, 4, 2), np.float32), True)
    with pytest.raises(ValueError, match="overlap|apart|residual"):
        _kernels.conv_forward_rows(x, w, b, 3, 3, 1, 1, 1, 1, 1, 1, y, 1, y, True)
    xp = np.zeros((1, 2, 16, 16), np.float32)
    yp = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="residual"):
        _kernels.conv_forward_planes(xp, w, b, 3, 3, 1, 1, 1, 1, 1, 1, yp, 1,
                                     np.zeros((1, 3, 16, 15), np.float32), False)


@pytest.mark.parametrize("batch", [1, 2, 37])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_linear_relu_equals_linear_then_relu_layer(batch, dtype, activation):
    rng = np.random.default_rng(3)
    plain = nn.Linear(40, 33, dtype=dtype, rng=rng)
    plain.weight.data *= 20
    fused = copy.deepcopy(plain)
    fused.activation = activation
    relu = nn.ReLU() if activation == "relu" else nn.ReLU6()
    x = rng.standard_normal((batch, 40)).astype(dtype)
    y = relu(plain(x))
    np.testing.assert_array_equal(fused(x), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(relu.backward(dy)))
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)
    xs = x[:, ::2]  # a strided input takes the path with a separate pass: the same rule
    lin = nn.Linear(20, 5, dtype=dtype, rng=0, activation=activation)
    ref = nn.Linear(20, 5, dtype=dtype, rng=0)
    lin.weight.data *= 20
    ref.weight.data *= 20
    np.testing.assert_array_equal(lin(xs), relu(ref(xs)))


def resnet(rng, channels_last=False):
    cl = channels_last

    def block(cin, cout, stride):
        body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, channels_last=cl,
                      rng=rng), nn.BatchNorm2d(cout, channels_last=cl), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False, channels_last=cl, rng=rng),
            nn.BatchNorm2d(cout, channels_last=cl))
        shortcut = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False, channels_last=cl, rng=rng),
            nn.BatchNorm2d(cout, channels_last=cl))
        return nn.Residual(body, shortcut)

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False, channels_last=cl, rng=rng),
        nn.BatchNorm2d(8, channels_last=cl), nn.ReLU(),
        nn.Sequential(block(8, 8, 1), block(8, 16, 2)),
        nn.AdaptiveAvgPool2d(1, channels_last=cl), nn.Flatten(), nn.Linear(16, 5, rng=rng))


def trained_statistics(model, rng):
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features
            layer.running_mean[...] = rng.standard_normal(c) * 0.3
            layer.running_var[...] = rng.uniform(0.5, 2.0, c)
            layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
            layer.bias.data[...] = rng.standard_normal(c) * 0.2
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_batchnorm_walks_residual_blocks_and_fuses_the_relus(channels_last):
    rng = np.random.default_rng(4)
    model = trained_statistics(resnet(rng, channels_last), rng)
    shape = (2, 20, 20, 3) if channels_last else (2, 3, 20, 20)
    x = rng.standard_normal(shape)
    y = model(x.astype(np.float32))
    folded = cybn.fold_batchnorm(model)
    assert folded.not_folded == []
    assert not any(isinstance(m, nn.BatchNorm2d | nn.ReLU) for m in folded.modules())
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    # stem and each block's first conv take the ReLU; the blocks' last convs and the
    # projection do not (their ReLU comes after the add, in the Residual's epilogue)
    assert [c.activation for c in convs] == ["relu", "relu", None, "relu", None, None]
    block = folded[1][1]
    assert block._split_body()[1] is block.body[-1]  # the add and ReLU in the conv
    np.testing.assert_allclose(folded(x.astype(np.float32)), y, rtol=2e-5,
                               atol=2e-5 * np.abs(y).max())
    # the given model still has all of its batch norms
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6


def test_folded_residual_block_equals_the_separate_passes():
    rng = np.random.default_rng(5)
    model = trained_statistics(resnet(rng), rng)
    folded = cybn.fold_batchnorm(model)
    block = folded[1][1]
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    y = block(x)
    body, short = block.body, block.shortcut
    pre = copy.deepcopy(body)(x) + copy.deepcopy(short)(x)
    np.testing.assert_array_equal(y, np.where(pre <= 0, np.float32(0), pre))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = np.where(pre <= 0, np.float32(0), dy)
    b2, s2 = copy.deepcopy(body), copy.deepcopy(short)
    b2(x), s2(x)
    np.testing.assert_array_equal(block.backward(dy), b2.backward(g) + s2.backward(g))


def test_fold_batchnorm_names_a_nested_layer_it_leaves_by_its_path():
    rng = np.random.default_rng(6)
    body = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1, rng=rng),
                         nn.BatchNorm2d(4))
    model = trained_statistics(nn.Sequential(nn.Conv2d(4, 4, 1, rng=rng),
                                             nn.Residual(body)), rng)
    with pytest.warns(UserWarning, match="1.body.0"):
        folded = cybn.fold_batchnorm(model)
    assert [w for w, _ in folded.not_folded] == ["1.body.0"]
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fuse_takes_relus_into_convolutions_and_linears_and_keeps_gradients():
    rng = np.random.default_rng(7)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=rng), nn.ReLU6(), nn.Flatten(),
                          nn.Linear(4 * 36, 6, rng=rng), nn.ReLU(), nn.Linear(6, 2, rng=rng))
    model[0].weight.data *= 10  # outputs above 6 too
    fused = cybn.fuse(model)
    assert fused.fused == 2
    assert fused[0].activation == "relu6" and fused[3].activation == "relu"
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[4], nn.Identity)
    assert list(fused.state_dict()) == list(model.state_dict())
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    for m in (model, fused):
        m.zero_grad()
    y, yf = model(x), fused(x)
    np.testing.assert_array_equal(yf, y)
    np.testing.assert_array_equal(fused.backward(dy), model.backward(dy))
    for p, q in zip(model.parameters(), fused.parameters()):
        np.testing.assert_array_equal(q.grad, p.grad)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_batchnorm_moves_a_relu6_into_the_convolution(channels_last):
    """MobileNet's Conv2d + BatchNorm2d + ReLU6 becomes one convolution with a ReLU6
    epilogue, computing what the three layers compute."""
    rng = np.random.default_rng(8)
    cl = channels_last
    model = trained_statistics(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False, channels_last=cl, rng=rng),
        nn.BatchNorm2d(6, channels_last=cl), nn.ReLU6(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False, channels_last=cl, rng=rng),
        nn.BatchNorm2d(6, channels_last=cl), nn.ReLU6()), rng)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data *= 6
    folded = cybn.fold_batchnorm(model)
    assert len(folded) == 2
    assert [m.activation for m in folded] == ["relu6", "relu6"]
    shape = (2, 9, 9, 3) if cl else (2, 3, 9, 9)
    x = rng.standard_normal(shape).astype(np.float32) * 3
    y = model(x)
    assert (y == 6).any() and (y == 0).any()
    np.testing.assert_allclose(folded(x), y, rtol=1e-5, atol=1e-5)


def test_fuse_leaves_a_relu6_after_batchnorm_alone():
    """BatchNorm's fused activation is ReLU only: a ReLU6 after it stays a layer."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, rng=0), nn.BatchNorm2d(4), nn.ReLU6())
    fused = cybn.fuse(model)
    assert fused.fused == 0 and isinstance(fused[2], nn.ReLU6)
    assert fused[1].activation is None


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_rows_input_grad_reads_the_flipped_weight_in_the_order_of_its_own_output(
        channels_last):
    """A valid-padding convolution whose output has fewer rows than 8 per input channel
    (1 x 5 x 5 < 8 x 4) while its input gradient has more (1 x 9 x 9): the input
    gradient's flipped weight must be laid out for the input gradient's product, not for
    the forward's. Checked against the adjoint identity <conv(x), dy> = <x, dx>."""
    rng = np.random.default_rng(7)
    conv = nn.Conv2d(4, 6, 5, channels_last=channels_last, dtype=np.float64, rng=3)
    shape = (1, 9, 9, 4) if channels_last else (1, 4, 9, 9)
    x = rng.standard_normal(shape)
    y = conv(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    conv.bias.data[...] = 0
    np.testing.assert_allclose((conv(x) * dy).sum(), (x * dx).sum(), rtol=1e-12)


@pytest.mark.parametrize("act, keep", [(1, lambda y: ~(y <= 0)),
                                       (2, lambda y: ~((y <= 0) | (y >= 6)))])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "float16"])
def test_activation_grad_kernel_and_numpy_paths_agree(act, keep, layout):
    """dy through a fused ReLU (act 1) or ReLU6 (act 2) from the output y: dy where the
    activation passed (a NaN y too), an exact 0 elsewhere, on the compiled path
    (C-contiguous float32/float64) and on NumPy's (strided views, other dtypes)."""
    from cybn import _matmul

    rng = np.random.default_rng(3)
    y = np.clip(rng.standard_normal((6, 10)) * 5, 0, 6)
    y[0, :4] = [0.0, 6.0, np.nan, 3.0]
    dy = rng.standard_normal(y.shape)
    dy[1, 0] = np.inf
    if layout == "strided":
        y, dy = y[:, ::2], dy[:, ::2]
    elif layout == "float16":
        y, dy = y.astype(np.float16), dy.astype(np.float16)
    got = _matmul.activation_grad(y, act, dy)
    want = np.where(keep(y), dy, 0)
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[~keep(y)]).any()  # exact (+0) zeros where cut
