"""Channel routing for the branch layers: concatenation along the channel axis (optionally
interleaved, which is concatenation and channel shuffle in one pass), a channel range,
channel shuffle, and the backward of each. Each is one or a few compiled copies of evenly
spaced channels (``copy_channels``), on the threads, for any layout and rank; arrays whose
items are not 1, 2, 4 or 8 bytes of plain data go through NumPy instead, and so do small
copies of whole channel ranges (see NUMPY_RANGE_BELOW). Not public API
(the layers are :class:`cybn.Concat`, :class:`cybn.ChannelSlice` and
:class:`cybn.ChannelShuffle`)."""

from __future__ import annotations

import math

import numpy as np

from .. import _kernels
from . import _schedule

_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _words(a: np.ndarray, axis: int):
    """a as the kernel's (outer, C, inner) array of unsigned words of its item size, or
    None where the compiled copy does not take it (object or structured data, other item
    sizes, not C-contiguous)."""
    word = _WORDS.get(a.dtype.itemsize)
    if word is None or a.dtype.hasobject or a.dtype.fields is not None \
            or not a.flags.c_contiguous:
        return None
    outer, inner = math.prod(a.shape[:axis]), math.prod(a.shape[axis + 1:])
    return a.view(word).reshape(outer, a.shape[axis], inner)


def _copy(src, dst, src_start: int, src_step: int, dst_start: int, dst_step: int,
          count: int) -> None:
    """The compiled copy of ``count`` channels between two word arrays from _words."""
    threads = _schedule.threads_for(src.shape[0] * src.shape[2] * count)
    _kernels.copy_channels(src, dst, src_start, src_step, dst_start, dst_step, count,
                           threads)


# Below this many elements NumPy copies a whole channel range (concatenation, a range, a
# split) in less time than the kernel call: 4-11 us against 13-25 us from 0.1 to 0.4 MiB
# of float32, even at 0.7 MiB (22 us each), the kernel's threads ahead from 1.4 MiB (41
# against 97 us); 2 threads, Xeon VM, benchmarks/channel_routing.py, 2026-12-07.
NUMPY_RANGE_BELOW = 1 << 18


def _serial(size: int) -> bool:
    """Whether NumPy copies a whole range of ``size`` elements (see NUMPY_RANGE_BELOW)."""
    return size < NUMPY_RANGE_BELOW


def _index(ndim: int, axis: int, channels: slice) -> tuple:
    index = [slice(None)] * ndim
    index[axis] = channels
    return tuple(index)


def concat(parts: list, axis: int, interleave: bool = False) -> np.ndarray:
    """The parts (equal in every axis but ``axis``, one dtype) joined along ``axis``; with
    ``interleave`` (every part with the same channel count), part b's channel k becomes
    channel ``k * len(parts) + b``: concatenation followed by a channel shuffle in
    ``len(parts)`` groups."""
    if interleave and len({p.shape[axis] for p in parts}) > 1:
        raise ValueError(f"interleaved parts need equal channel counts, got "
                         f"{[p.shape[axis] for p in parts]}")
    shape = list(parts[0].shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    if not interleave and _serial(math.prod(shape)):
        return np.concatenate(parts, axis=axis)
    y = np.empty(shape, dtype=parts[0].dtype)
    dst = _words(y, axis)
    step = len(parts) if interleave else 1
    start = 0
    for b, part in enumerate(parts):
        C = part.shape[axis]
        src = None if dst is None else _words(np.ascontiguousarray(part), axis)
        first = b if interleave else start
        if src is None:
            y[_index(y.ndim, axis, slice(first, first + (C - 1) * step + 1, step))] = part
        else:
            _copy(src, dst, 0, 1, first, step, C)
        start += C
    return y


def split(y: np.ndarray, sizes: list, axis: int, interleave: bool = False) -> list:
    """The inverse of :func:`concat`: y's channels cut into contiguous parts of ``sizes``
    channels (with ``interleave``, part b takes channels b, b + len(sizes), ...)."""
    y = np.ascontiguousarray(y)
    step = len(sizes) if interleave else 1
    src = None if step == 1 and _serial(y.size) else _words(y, axis)
    parts = []
    start = 0
    for b, C in enumerate(sizes):
        first = b if interleave else start
        shape = list(y.shape)
        shape[axis] = C
        part = np.empty(shape, dtype=y.dtype)
        if src is None:  # (a copy: a view would let a branch's backward write into y)
            part[...] = y[_index(y.ndim, axis, slice(first, first + (C - 1) * step + 1, step))]
        else:
            _copy(src, _words(part, axis), first, step, 0, 1, C)
        parts.append(part)
        start += C
    return parts


def take_range(x: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    """A contiguous copy of x's channels ``start:stop`` (within x's channels)."""
    x = np.ascontiguousarray(x)
    shape = list(x.shape)
    shape[axis] = stop - start
    y = np.empty(shape, dtype=x.dtype)
    src = None if _serial(y.size) else _words(x, axis)
    if src is None:
        y[...] = x[_index(x.ndim, axis, slice(start, stop))]
    else:
        _copy(src, _words(y, axis), start, 1, 0, 1, stop - start)
    return y


def put_range(part: np.ndarray, shape: tuple, start: int, axis: int, dtype) -> np.ndarray:
    """Zeros of ``shape`` and ``dtype`` with ``part`` in the channels from ``start`` on (the
    backward of :func:`take_range`)."""
    dx = np.zeros(shape, dtype=dtype)
    part = np.ascontiguousarray(part, dtype=dtype)
    src, dst = (None, None) if _serial(part.size) else (_words(part, axis), _words(dx, axis))
    if src is None or dst is None:
        dx[_index(dx.ndim, axis, slice(start, start + part.shape[axis]))] = part
    else:
        _copy(src, dst, 0, 1, start, 1, part.shape[axis])
    return dx


def shuffle(x: np.ndarray, groups: int, axis: int, inverse: bool = False) -> np.ndarray:
    """Channel shuffle: the C channels seen as (groups, C // groups) transposed, so output
    channel ``j * groups + g`` is input channel ``g * (C // groups) + j`` (``inverse``: the
    other way round). C must be a multiple of groups."""
    x = np.ascontiguousarray(x)
    per = x.shape[axis] // groups
    y = np.empty_like(x)
    src, dst = _words(x, axis), _words(y, axis)
    for g in range(groups):
        ranged, spaced = slice(g * per, (g + 1) * per), slice(g, g + (per - 1) * groups + 1,
                                                              groups)
        if src is None:
            into, outof = (ranged, spaced) if inverse else (spaced, ranged)
            y[_index(y.ndim, axis, into)] = x[_index(x.ndim, axis, outof)]
        elif inverse:
            _copy(src, dst, g, groups, g * per, 1, per)
        else:
            _copy(src, dst, g * per, 1, g, groups, per)
    return y
