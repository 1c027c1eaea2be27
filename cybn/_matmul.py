"""Matrix products for the layers (Linear, the dense convolutions): cybn's own kernels
(``_kernels.matmul*``, see ``_kernels/gemm.h``) for float32 and float64 on cybn's OpenMP
threads, NumPy's matmul for any other dtype.

The kernels cut a product into tiles fixed by the shapes, so the bits do not depend on the
thread count (neither cybn's nor a BLAS library's: no BLAS is called). A weight gradient's
sum over a long inner dimension, or over a batch of products, is cut into chunks fixed by
the shapes, each summed on one thread, and the chunks are added in order. Not public API.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._openmp import get_num_threads

__all__ = ["linear", "matmul", "matmul_sum"]

MAX_CHUNKS = 16         # a split sum has at most this many chunks (fixed: it sets the bits)
MIN_CHUNK = 1024        # inner-dimension chunk at least (shorter ones waste the packing)
SPLIT_RATIO = 4         # an inner dimension this many times M + N or longer is split


def _ours(*arrays) -> bool:
    """True when the kernels take these arrays: one dtype, float32 or float64."""
    return arrays[0].dtype in (np.float32, np.float64) and \
        all(a.dtype == arrays[0].dtype for a in arrays)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           bias: np.ndarray | None = None) -> np.ndarray:
    """``a @ b (+ bias)`` into ``out`` (allocated when None) for 2-D a (M, K) and b (K, N),
    or a stacked product with a 3-D operand (the batch axis first; the other may be 2-D and
    is shared). Any strides (transposed views are read as they are). ``bias`` broadcasts
    against a 2-D result's rows (shape (N,)) or a stacked result's matrices."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and b.ndim == 2:  # (a layer's call: no broadcasting to work out)
        shape: tuple = (a.shape[0], b.shape[1])
    else:
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    if out is None:
        out = np.empty(shape, dtype=np.result_type(a, b))
    if not _ours(a, b, out) or len(shape) > 3 or out.shape != shape:
        np.matmul(a, b, out=out)
    else:
        dest = out if out.flags.c_contiguous else np.empty(shape, dtype=out.dtype)
        if dest.ndim == 2:
            if bias is not None and bias.shape == shape[1:] and bias.dtype == out.dtype:
                # the tiles start from the bias: no pass of its own
                _kernels.matmul(a, b, dest, False, get_num_threads(),
                                np.ascontiguousarray(bias))
                bias = None
            else:
                _kernels.matmul(a, b, dest, False, get_num_threads())
        else:
            a3 = a if a.ndim == 3 else np.broadcast_to(a, shape[:1] + a.shape)
            b3 = b if b.ndim == 3 else np.broadcast_to(b, shape[:1] + b.shape)
            _kernels.matmul_batch(a3, b3, dest, False, get_num_threads())
        if dest is not out:
            out[...] = dest
    if bias is not None:
        out += bias
    return out


# The activations the products apply in their epilogue (gemm.h's CYBN_ACT_*): ReLU as the
# ReLU layer (0 where <= 0), ReLU6 as the ReLU6 layer (PyTorch's hardtanh from 0 to 6);
# NaN kept by both
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}


def activation_code(activation) -> int:
    """The epilogue code of a Conv2d's or Linear's ``activation``; ValueError naming it for
    anything but None, "relu" and "relu6"."""
    if activation is None or (isinstance(activation, str) and activation in ACTIVATIONS):
        return ACTIVATIONS[activation]
    raise ValueError(f"activation must be None, 'relu' or 'relu6', got {activation!r}")


def apply_activation(y: np.ndarray, act: int) -> np.ndarray:
    """The epilogue's activation as a pass over y (changed in place): the ReLU and ReLU6
    layers' compiled kernels for float32/float64, NumPy otherwise."""
    if act == 0:
        return y
    if y.dtype in (np.float32, np.float64) and y.flags.c_contiguous and y.size:
        flat, threads = y.reshape(-1), get_num_threads()
        if act == 1:
            _kernels.relu_forward(flat, flat, np.empty(flat.size, np.uint8), threads)
        else:  # the ReLU6 layer's kernel: hardtanh (activation.pxi's ACT_HARDTANH) on [0, 6]
            _kernels.activation_forward(flat, flat, 0, 0.0, 6.0, threads)
        return y
    if act == 1:
        np.copyto(y, y.dtype.type(0), where=y <= 0)
    else:
        np.copyto(y, y.dtype.type(0), where=y < 0)
        np.copyto(y, y.dtype.type(6), where=y > 6)
    return y


def activation_grad(y: np.ndarray, act: int, dy: np.ndarray, workspace=None) -> np.ndarray:
    """dy through the epilogue's activation, from its output y: an exact 0 where ReLU cut
    (y <= 0) or ReLU6 clamped (y <= 0 or y >= 6), dy elsewhere (NaN y included). The ReLU
    and ReLU6 layers' compiled kernels for C-contiguous float32/float64 arrays of one
    dtype, NumPy otherwise. ``workspace(name, shape, dtype)``, a layer's
    :meth:`Module._workspace`, gives the result and the mask buffers to reuse between
    training steps (fresh arrays of a large map cost more in page faults than the pass)."""
    if act == 0:
        return dy
    if (y.dtype in (np.float32, np.float64) and dy.dtype == y.dtype and y.shape == dy.shape
            and y.flags.c_contiguous and dy.flags.c_contiguous and y.size):
        flat, g = y.reshape(-1), dy.reshape(-1)
        spaces = workspace if workspace is not None else (lambda name, shape, dtype: None)
        dx = spaces("activation_grad", dy.shape, dy.dtype)
        dx = np.empty_like(dy) if dx is None else dx
        if act == 1:  # the ReLU layer's backward: keep dy where y is not <= 0
            keep = spaces("activation_keep", flat.shape, np.bool_)
            keep = np.less_equal(flat, 0, out=keep)
            np.logical_not(keep, out=keep)
            _kernels.relu_backward(g, keep.view(np.uint8), dx.reshape(-1), get_num_threads())
        else:  # the ReLU6 layer's: hardtanh's backward on [0, 6] from its output
            _kernels.activation_backward(flat, g, dx.reshape(-1), 0, 0.0, 6.0,
                                         get_num_threads())
        return dx
    if act == 1:
        return np.where(y <= 0, dy.dtype.type(0), dy)
    return np.where((y <= 0) | (y >= 6), dy.dtype.type(0), dy)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
           act: int = 0) -> np.ndarray:
    """``x @ weight.T (+ bias)`` for 2-D x (M, K) and weight (N, K), then the activation act
    (ACTIVATIONS): one compiled call for C-contiguous float32/float64 arrays of one dtype
    (the bits of ``matmul``, the activation in the product's registers), ``matmul`` and a
    pass otherwise."""
    y = _kernels.fast_linear(x, weight, bias, get_num_threads(), act)
    if y is None:
        y = apply_activation(matmul(x, weight.T, bias=bias), act)
    return y


def matmul_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D a (M, K) and b (K, N) with a possibly long inner dimension K (a
    weight gradient: the sum over samples), or the sum over the batch of a stacked product
    ``sum_i a[i] @ b[i]``. A sum much longer than the output's sides (a convolution's
    weight gradient: the output's few tiles could not share the work) is cut into chunks,
    one thread each, added in order."""
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.result_type(a, b)
    if not _ours(a, b):
        return np.matmul(a, b).sum(axis=0) if a.ndim == 3 else a @ b
    threads = get_num_threads()
    if a.ndim == 3:
        out = np.empty((a.shape[1], b.shape[2]), dtype=dtype)
        chunk = max(1, -(-a.shape[0] // MAX_CHUNKS))
        _kernels.matmul_sum(a, b, out, chunk, threads)
        return out
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), dtype=dtype)
    if k < SPLIT_RATIO * (m + n) or k < 2 * MIN_CHUNK:  # the output tiles share the work
        _kernels.matmul(a, b, out, False, threads)
    else:
        _kernels.matmul_split(a, b, out, max(MIN_CHUNK, -(-k // MAX_CHUNKS)), threads)
    return out
