"""The layouts the kernels take: every array is viewed as ``(outer, C, inner)``.

One concept for batch norm and every other norm. :class:`ChannelView` is the per-channel view
of batch norm (and of instance norm's samples): the axes before the channel axis flattened
into ``outer``, those after it into ``inner``, and the choice between the two kernel families
(``plane``: the 3-D view; ``row``: rows of several outer slices side by side, for short
inner runs). :class:`Samples` views group and instance norm's data a sample at a time,
:class:`Rows` layer and RMS norm's as (M, D). :func:`kernel_array` gives any array in a
layout's kernel view, and :class:`Output` the buffer a kernel writes the result into.
Nothing here checks arguments (that is :mod:`cybn._validate`) or runs a kernel;
:class:`Output` picks the kernel set that writes the result.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .. import _kernels
from .._validate import normalize_axis

# Plane family below this many elements per (sample, channel) run turns into the row family,
# except for arrays below SMALL_SIZE elements, which skip the row family's column set-up.
MIN_PLANE_INNER = 32
SMALL_SIZE = 4096
# Row family: aim for at least this many columns per row (SIMD width).
MIN_ROW_WIDTH = 64

@dataclass(frozen=True)
class ChannelView:
    """How an array with a channel axis is handed to the kernels.

    Any array is viewed as ``(outer, C, inner)``: the axes before the channel axis flattened
    into ``outer``, those after it into ``inner``. Statistics run over ``outer`` and
    ``inner`` (``count = outer * inner`` values per channel).

    ``family == "plane"`` (inner >= MIN_PLANE_INNER): kernels take the 3-D view.
    ``family == "row"``: kernels take a 2-D view ``(rows, L)`` with ``L = k * C * inner``,
    ``k`` consecutive outer slices side by side so rows are wide enough for SIMD; column
    ``j`` belongs to channel ``(j // inner) % C``.
    """

    shape: tuple
    axis: int
    outer: int
    channels: int
    inner: int
    family: str
    k: int

    @classmethod
    def of(cls, shape, axis: int, small_plane: bool = True) -> "ChannelView":
        """The view of an array of ``shape``; ``small_plane``: arrays of fewer than
        SMALL_SIZE elements take the plane family whatever their inner size (False: only
        by the inner size, as for the many small per-sample views of group norm)."""
        outer = math.prod(shape[:axis])
        channels = shape[axis]
        inner = math.prod(shape[axis + 1:])
        small = small_plane and outer * channels * inner < SMALL_SIZE
        if inner >= MIN_PLANE_INNER or small:
            return cls(tuple(shape), axis, outer, channels, inner, "plane", 1)
        width = channels * inner
        k = 1
        if 0 < width < MIN_ROW_WIDTH:
            for cand in range(-(-MIN_ROW_WIDTH // width), 4 * MIN_ROW_WIDTH // width + 1):
                if outer % cand == 0:
                    k = cand
                    break
        return cls(tuple(shape), axis, outer, channels, inner, "row", k)

    @property
    def count(self) -> int:
        return self.outer * self.inner

    @property
    def size(self) -> int:
        return self.outer * self.channels * self.inner

    @property
    def rows(self) -> int:
        return self.outer // self.k

    @property
    def width(self) -> int:
        return self.k * self.channels * self.inner

    def kernel_view(self, arr: np.ndarray) -> np.ndarray:
        """C-contiguous 3-D (plane) or 2-D (row) view of arr; a copy only if arr is strided."""
        arr = np.ascontiguousarray(arr)
        if self.family == "plane":
            return arr.reshape(self.outer, self.channels, self.inner)
        return arr.reshape(self.rows, self.width)


@functools.lru_cache(maxsize=256)
def view_of(shape: tuple, axis: int) -> ChannelView:
    """The ChannelView of an array of ``shape`` with the (checked, non-negative) channel
    axis ``axis``, memoized per shape and axis."""
    return ChannelView.of(shape, axis)


def channel_view(x: np.ndarray, axis) -> ChannelView:
    """The ChannelView of x with channel axis ``axis`` (any int, checked here)."""
    return view_of(x.shape, normalize_axis(axis, x.ndim))


@dataclass(frozen=True)
class Samples:
    """How x (batch axis 0, channel axis ``axis`` >= 1) reaches the sample kernels.

    ``rows`` arrays of ``size`` elements, each viewed as ``(outer, channels, inner)`` in the
    family ``plane``/row (``k`` as in ChannelView). Channels-first data (nothing between the
    batch and the channel axis) is one row of ``N * C`` channels; otherwise one row per
    sample. Per-(sample, channel) vectors are ``(N, C)`` arrays, ``(rows, channels)`` to
    the kernels.
    """

    shape: tuple
    N: int
    C: int
    rows: int
    geometry: tuple[int, int, int, int, bool]  # (outer, channels, inner, k, plane) of a row

    @classmethod
    def of(cls, shape: tuple, axis: int) -> "Samples":
        N, C = shape[0], shape[axis]
        # by the inner size only: a sample's plane family on short runs costs a call per
        # run, which the whole array of many samples pays many times
        per_sample = ChannelView.of(shape[1:], axis - 1, small_plane=False)
        if per_sample.outer == 1:
            geometry = (1, N * C, per_sample.inner, 1, True)
            return cls(tuple(shape), N, C, 1, geometry)
        geometry = (per_sample.outer, C, per_sample.inner, per_sample.k,
                    per_sample.family == "plane")
        return cls(tuple(shape), N, C, N, geometry)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def run(self) -> float:
        """Elements per contiguous run the kernels write (plane rows; the row family's
        rows are whole: infinite)."""
        _, _, inner, _, plane = self.geometry
        return inner if plane else math.inf

    def kernel_view(self, arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr).reshape(self.rows, -1)

    def vector(self, v: np.ndarray) -> np.ndarray:
        """An (N, C) float64 array as the kernels take it."""
        return np.ascontiguousarray(v, dtype=np.float64).reshape(self.rows, -1)



@dataclass(frozen=True)
class Rows:
    """x as (M, D): D the size of the normalized (trailing) axes."""

    shape: tuple
    lead: tuple   # x.shape without the normalized axes: the statistics' shape
    M: int
    D: int

    @classmethod
    def of(cls, shape: tuple, normalized: tuple) -> "Rows":
        lead = tuple(shape[:len(shape) - len(normalized)])
        return cls(tuple(shape), lead, math.prod(lead), math.prod(normalized))

    def kernel_view(self, arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr).reshape(self.M, self.D)



def kernel_array(view: "Layout", arr: np.ndarray) -> np.ndarray:
    """What the kernels take for arr: its C-contiguous kernel view (a copy only if arr is
    strided), half-precision data as its 16-bit words."""
    k = view.kernel_view(arr)
    return k.view(np.uint16) if k.dtype.itemsize == 2 else k


class Layout(Protocol):
    """How an op hands arrays of ``shape`` to its kernels (ChannelView and the like)."""

    @property
    def shape(self) -> tuple: ...

    def kernel_view(self, arr: np.ndarray) -> np.ndarray: ...


class Output:
    """Where a kernel writes: ``out`` itself when it is C-contiguous, else a buffer that
    :meth:`result` copies into ``out``. ``kernel`` is the buffer in the kernels' view
    (half-precision data as 16-bit words) and ``kernels`` the kernel set that writes data
    of this dtype (:func:`cybn._kernels.for_dtype`)."""

    def __init__(self, view: Layout, out, dtype):
        self.view, self.out = view, out
        self.kernels = _kernels.for_dtype(np.dtype(dtype))
        if out is not None and out.flags.c_contiguous:
            self.buffer = out
        else:
            self.buffer = np.empty(view.shape, dtype=dtype)
        self.kernel = kernel_array(view, self.buffer)

    def result(self) -> np.ndarray:
        if self.out is None:
            return self.buffer
        if self.buffer is not self.out:
            np.copyto(self.out, self.buffer)
        return self.out


def empty_result(view: ChannelView, out, dtype) -> np.ndarray:
    """The result of an op on an empty array: ``out``, or a new empty array."""
    return out if out is not None else np.empty(view.shape, dtype=dtype)
