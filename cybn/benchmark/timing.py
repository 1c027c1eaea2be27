"""Timing: medians of repeated calls, contenders interleaved in blocks, the machine's name,
and the start of a suite (threads, PyTorch when installed, warm-up, the result's metadata)."""

from __future__ import annotations

import datetime
import platform
import time
from typing import Any

import numpy as np

from .. import __version__, _kernels
from .._openmp import get_num_threads


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_medians(fns: dict, repeats: int, block: int = 5) -> dict:
    """Median time of each callable over ``repeats`` calls, taken in rounds: each round
    runs every contender for a block of calls (the block's first call untimed), so each
    timing is in that contender's own steady state (its data as warm as repetition makes
    it) while drift of the machine's speed across rounds reaches every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = -(-repeats // block)
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def warm_up(threads: int, seconds: float = 0.5) -> None:
    """Wake the OpenMP threads and let the CPU clock settle before the first timing."""
    src = np.ones(1 << 24, dtype=np.float32)
    dst = np.empty_like(src)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        _kernels.parallel_copy(src, dst, threads)


def suite_start(torch: bool, repeats: int) -> tuple:
    """(threads, the torch module or None, the metadata of a suite's result) for a suite
    about to run: PyTorch (when asked for and installed) on cybn's thread count, the threads
    and the clock warmed up."""
    threads = get_num_threads()
    torch_mod: Any = None
    if torch:
        try:
            import torch as _torch

            _torch.set_num_threads(threads)
            torch_mod = _torch
        except ImportError:
            torch_mod = None
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads": threads,
            "cybn": __version__, "kernel_variant": _kernels.ISA, "numpy": np.__version__,
            "torch": None if torch_mod is None else torch_mod.__version__, "repeats": repeats}
    warm_up(threads)
    return threads, torch_mod, meta


def print_header(title: str, meta: dict, details: str, columns) -> None:
    """A suite's two header lines: what ran where (``# title: cybn ..., details, median
    of N``) and its column names, ``columns`` as (name, width) pairs, the first ones
    left-aligned while the width is negative."""
    print(f"# {title}: cybn {meta['cybn']} ({meta['kernel_variant']}), {meta['cpu']}, "
          f"{meta['threads']} threads, {details}, median of {meta['repeats']}")
    print(" ".join(f"{name:<{-width}}" if width < 0 else f"{name:>{width}}"
                   for name, width in columns))
