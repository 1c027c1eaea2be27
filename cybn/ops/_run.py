"""Running the kernel families on a ChannelView: per-channel moments, the affine pass, the
output buffer and the running-statistics update, shared by every op."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .. import _kernels
from .._validate import ChannelView
from . import _schedule


def kernel_array(view: "Layout", arr: np.ndarray) -> np.ndarray:
    """What the kernels take for arr: its C-contiguous kernel view (a copy only if arr is
    strided), half-precision data as its 16-bit words."""
    k = view.kernel_view(arr)
    return k.view(np.uint16) if k.dtype.itemsize == 2 else k


def channel_moments(view: ChannelView, x: np.ndarray, threads: int) -> tuple:
    """Per-channel (mean, m2) in float64 of a nonempty array x."""
    mean = np.empty(view.channels, dtype=np.float64)
    m2 = np.empty(view.channels, dtype=np.float64)
    K = _kernels.for_dtype(x.dtype)
    xk = kernel_array(view, x)
    if view.family == "plane":
        K.plane_moments(xk, mean, m2, threads)
    else:
        K.row_moments(xk, view.channels, view.inner, mean, m2, threads)
    return mean, m2


def channel_affine(view: ChannelView, x, shift, scale, offset, yk, threads: int, *,
                   residual=None, ep: int = 0) -> None:
    """yk = ep((x - shift[c]) * scale[c] + offset[c]) for float64 per-channel vectors, yk the
    output's kernel array; ep: the kernels' fused-epilogue bits (residual: an array of x's
    shape, with EP_RESIDUAL)."""
    K = _kernels.for_dtype(x.dtype)
    xk = kernel_array(view, x)
    streaming = _schedule.streaming(view, x.itemsize, "infer")
    rk = xk if residual is None else kernel_array(view, residual)
    if view.family == "plane":
        K.plane_infer(xk, shift, scale, offset, yk, rk, ep, streaming, threads)
    else:
        K.row_infer(xk, view.channels, view.inner, shift, scale, offset, yk, rk, ep, streaming,
                    threads)


class Layout(Protocol):
    """How an op hands arrays of ``shape`` to its kernels (ChannelView and the like)."""

    @property
    def shape(self) -> tuple: ...

    def kernel_view(self, arr: np.ndarray) -> np.ndarray: ...


class Output:
    """Where a kernel writes: ``out`` itself when it is C-contiguous, else a buffer that
    :meth:`result` copies into ``out``."""

    def __init__(self, view: Layout, out, dtype):
        self.view, self.out = view, out
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


def update_running(buffer: np.ndarray, batch: np.ndarray, momentum: float,
                   factor: float) -> None:
    """running = (1 - momentum) * running + momentum * batch * factor, in place; a strided
    buffer is updated through a contiguous copy (the same arithmetic)."""
    if buffer.flags.c_contiguous:
        _kernels.update_running(buffer, batch, momentum, factor)
    else:
        tmp = np.ascontiguousarray(buffer)
        _kernels.update_running(tmp, batch, momentum, factor)
        buffer[...] = tmp
