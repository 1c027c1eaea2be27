"""Matrix products for the layers: NumPy's BLAS on one thread per block, the blocks spread
over cybn's threads.

A multi-threaded BLAS splits a product by its own thread count, and OpenBLAS's results then
change in the last bits with that count (measured: sgemm with 1 thread differs from 2, 3, 4
or 8). Here the product is cut into blocks whose bounds depend only on the shapes -- output
rows, output columns or the batch of a stacked product, or the inner dimension with the
partial products added in block order -- each block is one single-threaded BLAS call, and
OpenMP's threads run the calls (NumPy releases the GIL in them). The bits are then the same
for any cybn or BLAS thread setting, and BLAS threads never compete with cybn's OpenMP
threads for the cores (the calls run on OpenMP's own threads, see run_tasks). Not public API.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ._openmp import get_num_threads, run_tasks

__all__ = ["matmul", "matmul_sum"]

_MIN_WORK = 1 << 20       # multiply-adds below which a product is one call (about 0.1 ms)
_MAX_BLOCKS = 16          # blocks per product at most (fixed: it sets the bits)
_MIN_EXTENT = 128         # rows or columns per block at least (BLAS is slow on thin blocks)
_MIN_INNER = 256          # inner-dimension block at least, when the sum is split

_lock = threading.Lock()
_state: dict = {}         # "blas": threadpoolctl's controllers of NumPy's BLAS


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_controllers() -> list:
    if "blas" not in _state:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

        _state["blas"] = ThreadpoolController().select(user_api="blas").lib_controllers
    return _state["blas"]


def _run(tasks: list) -> None:
    """Call every task (no arguments) on cybn's OpenMP threads, each BLAS call on one
    thread (the BLAS setting is restored afterwards). Tasks must write disjoint outputs."""
    libs = _blas_controllers()
    with _lock:
        saved = [lib.num_threads for lib in libs]
        for lib in libs:
            lib.set_num_threads(1)
        try:
            run_tasks(tasks, min(get_num_threads(), len(tasks)))
        finally:
            for lib, n in zip(libs, saved):
                lib.set_num_threads(n)


def _bounds(extent: int, blocks: int) -> list:
    if extent == 0:  # an empty product: one empty block
        return [(0, 0)]
    step = -(-extent // blocks)
    return [(i, min(i + step, extent)) for i in range(0, extent, step)]


def _blocks(extent: int, work: int, minimum: int) -> int:
    return max(1, min(_MAX_BLOCKS, extent // minimum, work // _MIN_WORK))


def _blasable(*arrays) -> bool:
    return all(a.dtype in (np.float32, np.float64) for a in arrays) and \
        len({a.dtype for a in arrays}) == 1


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
           bias: np.ndarray | None = None) -> np.ndarray:
    """``a @ b (+ bias)`` into ``out`` (allocated when None) for 2-D a (M, K) and b (K, N),
    or a stacked product with a 3-D operand (the batch axis first; the other may be 2-D).
    Transposed views are fine (BLAS reads them as they are). ``bias`` broadcasts against a
    2-D result's rows (shape (N,)) or a stacked result's matrices, and is added block by
    block while the block is in cache."""
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
                       + (a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    if not _blasable(a, b, out):
        np.matmul(a, b, out=out)
        if bias is not None:
            out += bias
        return out
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = out.shape[0] if out.ndim == 3 else 1
    work = batch * m * k * n
    tasks: list = []

    def block(sa, sb, so, sbias) -> None:
        np.matmul(sa, sb, out=so)
        if sbias is not None:
            so += sbias

    if out.ndim == 3:
        for lo, hi in _bounds(batch, _blocks(batch, work, 1)):
            tasks.append((a[lo:hi] if a.ndim == 3 else a, b[lo:hi] if b.ndim == 3 else b,
                          out[lo:hi], bias))
    elif m >= n:
        for lo, hi in _bounds(m, _blocks(m, work, _MIN_EXTENT)):
            tasks.append((a[lo:hi], b, out[lo:hi], bias))
    else:
        for lo, hi in _bounds(n, _blocks(n, work, _MIN_EXTENT)):
            tasks.append((a, b[:, lo:hi], out[:, lo:hi], None if bias is None else
                          bias[..., lo:hi]))
    _run([lambda t=t: block(*t) for t in tasks])
    return out


def matmul_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D a (M, K) and b (K, N) with a long inner dimension K (a weight
    gradient: the sum over samples), or the sum over the batch of a stacked product
    ``sum_i a[i] @ b[i]``. The sum is cut into blocks added in order."""
    dtype = np.result_type(a, b)
    if a.ndim == 3:
        batch, m, n = a.shape[0], a.shape[1], b.shape[2]
        work, extent = batch * m * a.shape[2] * n, batch
    else:
        batch, (m, extent), n = 0, a.shape, b.shape[1]
        work = m * extent * n
    if a.ndim == 2 and max(m, n) >= 2 * _MIN_EXTENT:
        return matmul(a, b)  # enough output rows or columns to share; no split sum
    if not _blasable(a, b):
        return np.matmul(a, b).sum(axis=0) if batch else a @ b
    if extent == 0:  # an empty sum (an empty batch)
        return np.zeros((m, n), dtype=dtype)
    bounds = _bounds(extent, _blocks(extent, work, 1 if batch else _MIN_INNER))
    partial = np.empty((len(bounds), m, n), dtype=dtype)

    def block(t: int, lo: int, hi: int) -> None:
        if not batch:
            np.matmul(a[:, lo:hi], b[lo:hi], out=partial[t])
            return
        np.matmul(a[lo], b[lo], out=partial[t])
        term = np.empty((m, n), dtype=dtype)
        for i in range(lo + 1, hi):
            partial[t] += np.matmul(a[i], b[i], out=term)

    _run([lambda t=t, lo=lo, hi=hi: block(t, lo, hi) for t, (lo, hi) in enumerate(bounds)])
    total = partial[0]
    for t in range(1, len(bounds)):
        total += partial[t]
    return total
