"""Conv2d with groups (depthwise included), dilation, stride and padding, against a direct
float64 loop and finite differences, in both layouts; folding batch norm into such convs."""

import numpy as np
import pytest

import cybn
from conftest import numeric_grad


def direct_conv(x, w, b, stride, padding, dilation, groups):
    """NCHW cross-correlation written from its definition."""
    n, c, h, wd = x.shape
    out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - (kh - 1) * dh - 1) // sh + 1
    wo = (wd + 2 * pw - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, out, ho, wo))
    og = out // groups
    for o in range(out):
        g = o // og
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + (kh - 1) * dh + 1:dh,
                           j * sw:j * sw + (kw - 1) * dw + 1:dw]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + (0 if b is None else b[o])
    return y


CASES = [  # in, out, kernel, stride, padding, dilation, groups
    (4, 6, 3, 1, 1, 1, 2),
    (4, 4, 3, 1, 1, 1, 4),        # depthwise
    (6, 12, 3, 2, 2, 2, 3),       # stride, dilation
    (3, 6, (3, 2), 1, (2, 0), (2, 1), 3),
    (4, 8, 1, 1, 0, 1, 1),        # pointwise
    (4, 8, 1, 2, 0, 1, 1),        # pointwise, stride 2 (the sampled pixels' convolution)
    (3, 5, 3, 2, 1, 1, 1),        # dense (compiled im2col in either layout), stride 2
    (2, 3, (3, 2), (2, 1), (2, 0), (2, 1), 1),  # dense, everything asymmetric
    (2, 3, 5, 1, 3, 1, 1),        # dense, padding wider than half the kernel
    (4, 6, (3, 2), 1, (2, 1), 1, 2),  # grouped (NumPy path), asymmetric kernel and padding
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_grouped_dilated_conv_matches_the_definition(case, channels_last):
    cin, cout, k, s, p, d, g = case
    conv = cybn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g,
                       channels_last=channels_last, dtype=np.float64, rng=0)
    assert conv.weight.shape == (cout, cin // g) + conv.kernel_size
    x = np.random.default_rng(1).standard_normal((2, cin, 7, 8))
    ref = direct_conv(x, conv.weight.data, conv.bias.data, conv.stride, conv.padding,
                      conv.dilation, g)
    if channels_last:
        y = conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    else:
        y = conv(x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES[:4] + CASES[5:])
def test_grouped_conv_gradients_match_finite_differences(case, channels_last):
    cin, cout, k, s, p, d, g = case
    conv = cybn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g,
                       channels_last=channels_last, dtype=np.float64, rng=2)
    shape = (2, 6, 7, cin) if channels_last else (2, cin, 6, 7)
    x = np.random.default_rng(3).standard_normal(shape)
    out = conv(x)
    gy = np.random.default_rng(4).standard_normal(out.shape)
    dx = conv.backward(gy)
    f = lambda: float(np.sum(conv(x) * gy))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8)
    dw = conv.weight.grad.copy()
    np.testing.assert_allclose(dw, numeric_grad(f, conv.weight.data), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(conv.bias.grad, numeric_grad(f, conv.bias.data), rtol=1e-6,
                               atol=1e-8)


# without padding: a k x 1 kernel (the product writes the output in place, its rows read
# in place) and a dilated 3 x 3 one (x read in place, the outputs copied out)
UNPADDED = [(3, 5, (3, 1), 1, 0, 1, 1), (3, 5, 3, 1, 0, (1, 2), 1)]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", [c for c in CASES if c[-1] == 1] + UNPADDED)
def test_large_channels_first_planes_equal_the_definition_and_the_other_route(case, batch):
    """Output planes of 256 pixels or more take the packed-columns route (ops.conv_planes)
    for a batch, and for a 1x1 convolution at any batch: forward against the definition,
    every gradient against the channels-last route (checked against finite differences
    above), float64."""
    cin, cout, k, s, p, d, _ = case
    make = lambda cl: cybn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d,  # noqa
                                  channels_last=cl, dtype=np.float64, rng=5)
    first, last = make(False), make(True)
    x = np.random.default_rng(6).standard_normal((batch, cin, 34, 36))
    y = first(x)
    assert y.shape[2] * y.shape[3] >= 256
    assert first.__dict__["_cache"][0] == ("planes" if batch > 1 or
                                           first.kernel_size == (1, 1) else "rows")
    np.testing.assert_allclose(y, direct_conv(x, first.weight.data, first.bias.data,
                                              first.stride, first.padding, first.dilation, 1),
                               rtol=1e-12, atol=1e-12)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    last(xh)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx = first.backward(dy)
    dxh = last.backward(np.ascontiguousarray(dy.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx, dxh.transpose(0, 3, 1, 2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first.weight.grad, last.weight.grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first.bias.grad, last.bias.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make,match", [
    (lambda: cybn.Conv2d(4, 6, 3, groups=3), "groups"),
    (lambda: cybn.Conv2d(4, 6, 3, groups=0), "groups"),
    (lambda: cybn.Conv2d(4, 4, 3, dilation=0), "dilation"),
])
def test_conv_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batchnorm_folds_into_and_across_depthwise_convs():
    rng = np.random.default_rng(5)
    model = cybn.Sequential(
        cybn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=np.float64, rng=rng),   # depthwise
        cybn.BatchNorm2d(4, dtype=np.float64),
        cybn.BatchNorm2d(4, dtype=np.float64),
        cybn.Conv2d(4, 8, 3, groups=2, bias=False, dtype=np.float64, rng=rng),  # unpadded
    )
    for bn in (model[1], model[2]):
        bn.running_mean[...] = rng.standard_normal(4)
        bn.running_var[...] = rng.uniform(0.5, 2, 4)
        bn.weight.data[...] = rng.standard_normal(4)
        bn.bias.data[...] = rng.standard_normal(4)
    model.eval()
    x = rng.standard_normal((2, 4, 6, 6))
    folded = cybn.fold_batchnorm(model)  # both into the depthwise conv before them
    assert [type(layer).__name__ for layer in folded] == ["Conv2d", "Conv2d"]
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)
    # the second one into the grouped conv after it
    with pytest.warns(UserWarning, match="layer 1"):  # the first: the next is a BatchNorm
        folded = cybn.fold_batchnorm(model, into="next")
    assert [type(layer).__name__ for layer in folded] == ["Conv2d", "BatchNorm2d", "Conv2d"]
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_depthwise_float32_and_thread_bits(channels_last, monkeypatch):
    from threadpoolctl import threadpool_limits

    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)
    conv = cybn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=2, groups=8,
                       channels_last=channels_last, rng=6)
    x = np.random.default_rng(7).standard_normal((3, 8, 9, 10)).astype(np.float32)
    xi = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x
    ref = direct_conv(x.astype(np.float64), conv.weight.data.astype(np.float64),
                      conv.bias.data.astype(np.float64), conv.stride, conv.padding,
                      conv.dilation, 8)
    results = []
    for n in (1, 2):
        with threadpool_limits(limits=n, user_api="openmp"):
            conv.zero_grad()
            y = conv(xi)
            dx = conv.backward(np.ones_like(y))
            results.append((y, dx, conv.weight.grad.copy()))
    y = results[0][0].transpose(0, 3, 1, 2) if channels_last else results[0][0]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 2, 2), ((1, 2), (0, 3), 1),
                                                    (1, (2, 0), (1, 2))])
@pytest.mark.parametrize("width", [12, 40])  # channels-first stride 1: whole planes, rows
def test_compiled_depthwise_layouts_give_the_same_forward_bits(stride, padding, dilation,
                                                               width):
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=6, rng=8)
    first = cybn.Conv2d(6, 6, 3, **kwargs)
    last = cybn.Conv2d(6, 6, 3, channels_last=True, **kwargs)
    x = np.random.default_rng(9).standard_normal((2, 6, 11, width)).astype(np.float32)
    ref = direct_conv(x.astype(np.float64), first.weight.data.astype(np.float64),
                      first.bias.data.astype(np.float64), first.stride, first.padding,
                      first.dilation, 6)
    np.testing.assert_allclose(first(x), ref, rtol=1e-5, atol=1e-5)
    y = first(x)
    y_last = last(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(y_last.transpose(0, 3, 1, 2), y)
    g = np.random.default_rng(10).standard_normal(y.shape).astype(np.float32)
    dx = first.backward(g)
    dx_last = last.backward(np.ascontiguousarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx_last.transpose(0, 3, 1, 2), dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(first.weight.grad, last.weight.grad)  # same order, double


@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_channels_first_takes_the_planes_at_any_size_with_the_same_bits(batch):
    """A 1x1 channels-first convolution is a product per sample on the planes at any batch
    and plane size (with bias, residual and ReLU6 in the epilogue): float64 against the
    definition; float32 with the same bits on 1, 2 and 3 threads (fewer samples than
    threads: each product on all of them)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(8)
    for hw, dtype in [((5, 6), np.float64), ((20, 18), np.float64), ((20, 18), np.float32)]:
        conv = cybn.Conv2d(6, 10, 1, dtype=dtype, rng=3, activation="relu6")
        x = rng.standard_normal((batch, 6) + hw).astype(dtype) * 3
        res = rng.standard_normal((batch, 10) + hw).astype(dtype)
        ref = direct_conv(x.astype(np.float64), conv.weight.data.astype(np.float64),
                          conv.bias.data.astype(np.float64), (1, 1), (0, 0), (1, 1), 1)
        ref = np.clip(ref + res, 0, 6)
        outs = []
        for threads in (1, 2, 3):
            with threadpool_limits(limits=threads, user_api="openmp"):
                outs.append(conv.forward_fused(x, res, "relu6"))
        assert conv.__dict__["_cache"][0] == "planes"
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(outs[0], ref, rtol=tol, atol=tol * 10)
        for other in outs[1:]:
            np.testing.assert_array_equal(other, outs[0])
