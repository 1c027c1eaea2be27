"""Channel routing (cybn.ops.channels, the compiled copy under Concat, ChannelSlice,
ChannelShuffle and ShuffleNetV2's units): against NumPy's concatenate, indexing and
reshape-transpose, bit for bit, for every item size, layout, rank and thread count."""

import numpy as np
import pytest

import cybn
from cybn import _kernels
from cybn.ops import channels

DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint16, np.int64, np.complex64,
          np.complex128, np.bool_]


def data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 100
    if np.dtype(dtype).kind == "c":
        return (x + 1j * rng.standard_normal(shape)).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return x > 0
    return x.astype(dtype)


def reference_shuffle(x, groups, axis):
    C = x.shape[axis]
    v = x.reshape(x.shape[:axis] + (groups, C // groups) + x.shape[axis + 1:])
    return np.swapaxes(v, axis, axis + 1).reshape(x.shape)


def same_bits(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


SHAPES = [((2, 6, 5, 5), 1), ((2, 5, 5, 6), 3), ((3, 6), 1), ((2, 6, 3, 2, 2), 1),
          ((1, 6, 70, 70), 1), ((4, 9, 9, 6), 3), ((0, 6, 3), 1), ((2, 6, 40, 40), 1)]


@pytest.fixture(autouse=True, params=["numpy-ranges", "kernel-ranges"])
def route(request, monkeypatch):
    """Every test twice: small whole-range copies by NumPy, as shipped, and every copy by
    the kernel (channels.NUMPY_RANGE_BELOW set to 0)."""
    if request.param == "kernel-ranges":
        monkeypatch.setattr(channels, "NUMPY_RANGE_BELOW", 0)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_concat_and_split_match_numpy(dtype, shape, axis):
    sizes = [1, shape[axis] - 3, 2]
    parts = []
    for i, c in enumerate(sizes):
        s = list(shape)
        s[axis] = c
        parts.append(data(s, dtype, seed=i))
    y = channels.concat(parts, axis)
    same_bits(y, np.concatenate(parts, axis=axis))
    for got, want in zip(channels.split(y, sizes, axis), parts):
        same_bits(got, want)
        assert got.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("groups", [2, 3])
def test_interleaved_concat_is_concat_then_shuffle(dtype, shape, axis, groups):
    per = shape[axis] // groups
    s = list(shape)
    s[axis] = per
    parts = [data(s, dtype, seed=i) for i in range(groups)]
    y = channels.concat(parts, axis, interleave=True)
    same_bits(y, reference_shuffle(np.concatenate(parts, axis=axis), groups, axis))
    for got, want in zip(channels.split(y, [per] * groups, axis, interleave=True), parts):
        same_bits(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("groups", [2, 3])
def test_shuffle_and_its_inverse_match_numpy(dtype, shape, axis, groups):
    x = data(shape, dtype)
    y = channels.shuffle(x, groups, axis)
    same_bits(y, reference_shuffle(x, groups, axis))
    same_bits(channels.shuffle(y, groups, axis, inverse=True), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_channel_range_and_its_backward(dtype, shape, axis):
    x = data(shape, dtype)
    index = [slice(None)] * x.ndim
    index[axis] = slice(2, 5)
    part = channels.take_range(x, 2, 5, axis)
    same_bits(part, np.ascontiguousarray(x[tuple(index)]))
    dx = channels.put_range(part, x.shape, 2, axis, x.dtype)
    want = np.zeros_like(x)
    want[tuple(index)] = x[tuple(index)]
    same_bits(dx, want)


def test_non_contiguous_inputs_and_other_item_sizes_take_the_same_answer():
    x = data((2, 12, 7, 7), np.float32)[:, ::2]           # strided view
    same_bits(channels.shuffle(x, 2, 1), reference_shuffle(np.ascontiguousarray(x), 2, 1))
    objects = np.array([[1, "a", None, 2.5]], dtype=object)  # NumPy's way
    np.testing.assert_array_equal(channels.shuffle(objects, 2, 1),
                                  np.array([[1, None, "a", 2.5]], dtype=object))
    record = np.zeros((2, 4), dtype=[("a", np.int32), ("b", np.float32)])
    record["a"] = np.arange(8).reshape(2, 4)
    np.testing.assert_array_equal(channels.take_range(record, 1, 3, 1)["a"],
                                  [[1, 2], [5, 6]])


def test_nan_payloads_keep_their_bits():
    x = np.arange(4 * 8 * 9, dtype=np.uint32).reshape(4, 8, 9) | np.uint32(0x7FC00000)
    x = x.view(np.float32)  # NaNs with distinct payloads
    same_bits(channels.shuffle(x, 4, 1), reference_shuffle(x, 4, 1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_same_bits_on_any_thread_count(channels_last):
    shape, axis = ((8, 28, 28, 116), 3) if channels_last else ((8, 116, 28, 28), 1)
    x = data(shape, np.float32)
    results = []
    old = cybn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            cybn.set_num_threads(threads)
            results.append((channels.shuffle(x, 2, axis),
                            channels.concat(channels.split(x, [58, 58], axis), axis,
                                            interleave=True)))
    finally:
        cybn.set_num_threads(old)
    for y, z in results[1:]:
        same_bits(y, results[0][0])
        same_bits(z, results[0][1])
    same_bits(results[0][0], reference_shuffle(x, 2, axis))
    same_bits(results[0][0], results[0][1])


def test_the_kernel_writes_only_the_channels_it_names():
    src = np.arange(2 * 3 * 4, dtype=np.uint32).reshape(2, 3, 4)
    for inner in (4, 1):
        s = np.ascontiguousarray(src[:, :, :inner])
        dst = np.full((2, 7, inner), 99, np.uint32)
        _kernels.copy_channels(s, dst, 0, 1, 1, 2, 3, 2)  # to channels 1, 3 and 5
        np.testing.assert_array_equal(dst[:, 1::2][:, :3], s)
        np.testing.assert_array_equal(dst[:, [0, 2, 4, 6]], 99)
        with pytest.raises(ValueError, match="dst's channels"):  # 1 + 2 * 3 = 7: past
            _kernels.copy_channels(s, dst, 0, 1, 1, 3, 3, 2)


def test_interleave_needs_equal_parts():
    with pytest.raises(ValueError, match="equal channel counts"):
        channels.concat([np.zeros((1, 2)), np.zeros((1, 3))], 1, interleave=True)
