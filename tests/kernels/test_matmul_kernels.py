"""The compiled matrix products (_kernels.matmul, matmul_batch, matmul_sum, matmul_split):
right against a float64 product for shapes at and around every tile edge, any strides, the
same bits for 1-4 threads, every built variant within rounding of the others, and bad
arguments refused before anything is written."""

import importlib

import numpy as np
import pytest

from cybn import _kernels

RNG = np.random.default_rng(11)
DTYPES = [np.float32, np.float64]
# (M, K, N): single elements, the register tiles' edges (4-16 rows, 8-32 columns), the inner
# block (256 / 128), the row block (96) and the column block (4096) and one past each
SHAPES = [(1, 1, 1), (3, 5, 2), (7, 9, 8), (8, 16, 16), (17, 33, 17), (6, 257, 31),
          (97, 129, 33), (13, 300, 65), (200, 64, 7), (2, 3, 4100), (33, 600, 48)]


def data(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def reference(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


def close(got, ref, k, dtype):
    """Within the product's rounding: a few units of the dtype times sqrt(k) of the
    largest output magnitude (random data)."""
    eps = np.finfo(dtype).eps
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * eps * np.sqrt(k) * scale)


def product(a, b, threads=1, accumulate=False, out=None):
    out = np.zeros((a.shape[0], b.shape[1]), a.dtype) if out is None else out
    _kernels.matmul(a, b, out, accumulate, threads)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_products_are_right_and_the_same_for_any_thread_count(m, k, n, dtype):
    a, b = data(m, k, dtype=dtype), data(k, n, dtype=dtype)
    first = product(a, b)
    close(first, reference(a, b), k, dtype)
    for threads in (2, 3, 4):
        assert np.array_equal(product(a, b, threads), first)


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_strides_are_read_as_they_are(dtype):
    a, b = data(70, 90, dtype=dtype), data(90, 40, dtype=dtype)
    views = {
        "transposed a": (np.ascontiguousarray(a.T).T, b),
        "transposed b": (a, np.ascontiguousarray(b.T).T),
        "reversed rows": (a[::-1], b[::-1]),
        "every other column": (data(70, 180, dtype=dtype)[:, ::2], b),
        "both transposed": (np.asfortranarray(a), np.asfortranarray(b)),
    }
    for name, (x, y) in views.items():
        close(product(x, y, 2), reference(x, y), 90, dtype)


def test_accumulate_adds_to_out():
    a, b = data(20, 30), data(30, 50)
    start = data(20, 50)
    got = product(a, b, accumulate=True, out=start.copy())
    close(got, start + reference(a, b), 30, np.float32)


def test_an_empty_inner_dimension_gives_zeros_or_leaves_out():
    a, b = data(4, 0), data(0, 5)
    assert np.array_equal(product(a, b, out=np.full((4, 5), 7, np.float32)), np.zeros((4, 5)))
    out = np.full((4, 5), 7, np.float32)
    assert np.array_equal(product(a, b, accumulate=True, out=out), np.full((4, 5), 7))
    product(data(0, 3), data(3, 5))  # no rows: nothing to do
    product(data(3, 3), data(3, 0))


@pytest.mark.parametrize("shared", ["a", "b", None])
def test_stacked_products_spread_over_threads_or_inside_each(shared):
    a, b = data(6, 9, 20), data(6, 20, 11)
    if shared == "a":
        a = np.broadcast_to(data(9, 20), (6, 9, 20))
    if shared == "b":
        b = np.broadcast_to(data(20, 11), (6, 20, 11))
    results = []
    for threads in (1, 2, 3, 4, 8):  # more and fewer products than threads
        out = np.empty((6, 9, 11), np.float32)
        _kernels.matmul_batch(a, b, out, False, threads)
        results.append(out)
    close(results[0], np.einsum("nik,nkj->nij", a.astype(float), b), 20, np.float32)
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,chunk", [(1, 1), (7, 1), (7, 3), (16, 16), (40, 3)])
def test_batch_sums_are_right_and_the_same_for_any_thread_count(batch, chunk, dtype):
    a, b = data(batch, 5, 30, dtype=dtype), data(batch, 30, 9, dtype=dtype)
    results = []
    for threads in (1, 2, 3, 4):
        out = np.empty((5, 9), dtype)
        _kernels.matmul_sum(a, b, out, chunk, threads)
        results.append(out)
    ref = np.einsum("nik,nkj->ij", a.astype(np.float64), b.astype(np.float64))
    close(results[0], ref, 30 * batch, dtype)
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,chunk", [(1, 1), (5000, 1024), (4097, 256), (300, 1000), (0, 4)])
def test_split_sums_are_right_and_the_same_for_any_thread_count(k, chunk, dtype):
    a, b = data(k, 6, dtype=dtype).T, data(k, 10, dtype=dtype)  # a weight gradient's views
    results = []
    for threads in (1, 2, 3, 4):
        out = np.full((6, 10), np.nan, dtype)
        _kernels.matmul_split(a, b, out, chunk, threads)
        results.append(out)
    close(results[0], reference(a, b), max(k, 1), dtype)
    for r in results[1:]:
        assert np.array_equal(r, results[0])


def test_every_built_variant_agrees_within_rounding():
    a, b = data(50, 700, dtype=np.float64), data(700, 40, dtype=np.float64)
    ref = reference(a, b)
    for isa in _kernels.available_variants():
        impl = importlib.import_module(f"cybn._kernels.{isa}")
        for dtype in DTYPES:
            x, y = a.astype(dtype), b.astype(dtype)
            out = np.empty((50, 40), dtype)
            impl.matmul(x, y, out, False, 2)
            close(out, ref, 700, dtype)


BAD = {
    "b's rows": lambda: (data(3, 4), data(5, 2), np.empty((3, 2), np.float32), 1),
    "out": lambda: (data(3, 4), data(4, 2), np.empty((3, 3), np.float32), 1),
    "num_threads": lambda: (data(3, 4), data(4, 2), np.empty((3, 2), np.float32), 0),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_arguments_are_refused_before_anything_is_written(what):
    a, b, out, threads = BAD[what]()
    out[...] = 7
    with pytest.raises(ValueError, match="cybn kernel arguments"):
        _kernels.matmul(a, b, out, False, threads)
    assert np.all(out == 7)


def test_an_out_overlapping_an_input_is_refused():
    buf = data(8, 8)
    out = buf.reshape(-1)[:32].reshape(8, 4)  # buf's first four rows
    with pytest.raises(ValueError, match="out overlaps a"):
        _kernels.matmul(buf[::-1, :4], data(4, 4), out, False, 1)  # negative strides
    b = data(4, 4)
    with pytest.raises(ValueError, match="out overlaps b"):
        _kernels.matmul(data(4, 4), b, b, False, 1)


def test_strides_that_are_not_whole_elements_are_refused():
    raw = np.zeros(80, np.uint8)
    odd = np.lib.stride_tricks.as_strided(raw.view(np.float32), (3, 3), (6, 4))
    out = np.full((3, 2), 7, np.float32)
    with pytest.raises(ValueError, match="whole elements"):
        _kernels.matmul(odd, data(3, 2), out, False, 1)
    assert np.all(out == 7)


def test_bad_chunks_and_batches_are_refused():
    with pytest.raises(ValueError, match="chunk"):
        _kernels.matmul_sum(data(2, 3, 4), data(2, 4, 5), np.empty((3, 5), np.float32), 0, 1)
    with pytest.raises(ValueError, match="chunk"):
        _kernels.matmul_split(data(3, 4), data(4, 5), np.empty((3, 5), np.float32), 0, 1)
    with pytest.raises(ValueError, match="b's batch"):
        _kernels.matmul_batch(data(2, 3, 4), data(3, 4, 5), np.empty((2, 3, 5), np.float32),
                              False, 1)
