"""How an op runs on the kernels: thread count, streaming stores and the plane schedule.

These choices change speed only: every kernel gives bitwise identical results for any thread
count, schedule and store kind. They are module globals so that tests (and users measuring
their machine) can change them.
"""

from __future__ import annotations

import functools
import glob
import math
import os

from .._openmp import get_num_threads
from ._layout import ChannelView

# Arrays with fewer elements run on the calling thread: waking OpenMP's threads costs more
# than it saves there, and next to other spinning thread pools (OpenBLAS in a training loop)
# it can cost milliseconds. Measured on 2 cores (Zen, AVX-512), batch norm in one compiled
# call: two threads win from about 16-32K float32 elements (NCHW (4, 64, 32, 16) inference
# 14.7 -> 9.8 us, training 32 -> 22 us; at 8K elements they lose 0.3-1 us).
MIN_PARALLEL_SIZE = 1 << 15

# Outputs larger than a share of the last-level cache are written with streaming
# (non-temporal) stores, which skip the read-for-ownership of every output line; smaller
# outputs stay in the cache, where the next op finds them (streaming them was up to 1.5x
# slower). The share is per op because the inputs compete for the cache too: measured on a
# 32 MB L3 (Zen 3, 2 threads), streaming won from about 16 MB of output for inference,
# 11 MB for training forward and 7 MB for backward; remeasured on a 32 MB L3 (EPYC VM,
# AVX-512), inference of exactly 16 MiB streamed took 0.43 ms and stayed in the cache
# 0.26 ms (the size sweep's dip to 0.67x PyTorch), so inference streams from 3/4 of the
# cache (training and backward at 16 MiB: streaming still 10-20% faster). Never below
# STREAM_MIN_BYTES, and only
# where the kernel writes contiguous runs of at least STREAM_MIN_RUN bytes (short runs leave
# partly written lines, which cost more than they save).
STREAM_MIN_BYTES = 4 << 20
STREAM_CACHE_SHARE = {"infer": 3 / 4, "train": 1 / 3, "backward": 1 / 5}
STREAM_MIN_RUN = 4096

# How many full-size arrays each op's elementwise pass reads (plane_group's ``arrays``)
OP_ARRAYS = {"infer": 1, "train": 1, "backward": 2}


def fast_max_size(op: str) -> int:
    """Plain calls of ``op`` ("infer", "train", "backward"; group and instance norm's
    forward is "train") on arrays of fewer elements take one compiled call (the fast path,
    _kernels/fastpath.pxi) on the threads threads_for gives. The fast path never streams
    and runs the plane family's threads on the whole array together, so it stops where
    the full path would do otherwise even in float64: from the op's streaming threshold,
    or where the arrays pass half the cache (plane_group). Below that both run the same
    kernels on the same schedule, and the fast path skips the Python checks: 5-20% faster
    from 2 to 16 MiB on a 2-core Xeon (2026-12-07; the limit was STREAM_MIN_BYTES // 8,
    where group norm took 1.5x the time at 2 MiB as just below it)."""
    cache = cache_bytes()
    stream = max(STREAM_MIN_BYTES, int(cache * STREAM_CACHE_SHARE[op]))
    return min(stream, cache // 2 // OP_ARRAYS[op]) // 8


def threads(view: ChannelView) -> int:
    """The OpenMP threads an op on ``view`` uses: 1 below MIN_PARALLEL_SIZE elements."""
    return threads_for(view.size)


def threads_for(size: int) -> int:
    """The OpenMP threads an op on ``size`` elements uses."""
    return 1 if size < MIN_PARALLEL_SIZE else get_num_threads()


# Products (convolutions, their gradients) with fewer multiply-adds run on the calling
# thread: the matrix-product kernels' own threshold (CYBN_GEMM_MIN_PARALLEL in gemm.h)
MIN_PARALLEL_MADDS = 1 << 20


def threads_for_product(madds: int) -> int:
    """The OpenMP threads a product of ``madds`` multiply-adds uses: by the work, not by the
    output's size (a convolution's output of 100K elements at batch 1 can take 100M
    multiply-adds)."""
    return 1 if madds < MIN_PARALLEL_MADDS else get_num_threads()


def streaming(view: ChannelView, itemsize: int, op: str) -> bool:
    """Whether the elementwise pass of ``op`` ("infer", "train", "backward") streams."""
    run = view.inner * itemsize if view.family == "plane" else math.inf
    return streams(view.size * itemsize, run, op)


def streams(nbytes: int, run_bytes: float, op: str) -> bool:
    """Whether an output of ``nbytes``, written in contiguous runs of ``run_bytes``, streams."""
    if run_bytes < STREAM_MIN_RUN:
        return False
    threshold = max(STREAM_MIN_BYTES, int(cache_bytes() * STREAM_CACHE_SHARE[op]))
    return nbytes >= threshold


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def sysfs_cache_bytes() -> int:
    """The size of the largest cache level Linux reports for CPU 0, or 0."""
    best_level, best_size = 0, 0
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(index, "level")) as f:
                level = int(f.read())
            with open(os.path.join(index, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        unit = _SIZE_UNITS.get(text[-1:])
        size = int(text[:-1]) * unit if unit else int(text or 0)
        if level > best_level:
            best_level, best_size = level, size
    return best_size


@functools.lru_cache(maxsize=1)
def cache_bytes() -> int:
    """The last-level cache one core sees (Linux sysfs; else sysconf), or 8 MiB when the
    system does not say. sysfs is preferred: it gives the cache of one core complex, where
    some C libraries report the whole socket's."""
    try:
        size = sysfs_cache_bytes()
    except (OSError, ValueError):
        size = 0
    if size <= 0:
        try:
            size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        except (ValueError, OSError, AttributeError):
            size = 0
    return size if size and size > 0 else 8 << 20


def plane_group(view: ChannelView, itemsize: int, arrays: int, threads: int) -> int:
    """The plane family's schedule: 0 when each thread owns whole channels (reduce, then
    write each channel while its data is in cache), else the number of channels all threads
    work on together. ``arrays`` is how many full-size arrays the op reads (1 or 2).

    Owning channels pays only when the arrays do not fit the cache: on arrays that do, the
    whole array done cooperatively was 1.1-1.5x faster (both at 1 and 2 threads)."""
    slab = view.count * itemsize * arrays  # bytes of one channel
    half_cache = cache_bytes() // 2
    if slab * view.channels <= half_cache:
        return view.channels
    if view.channels >= 4 * threads and slab * threads <= half_cache:
        return 0
    return max(1, min(view.channels, half_cache // max(1, slab)))


# fast_max_size of each op, worked out once (the calls read it: 0.7 us to work out)
FAST_MAX_SIZE = {op: fast_max_size(op) for op in OP_ARRAYS}
