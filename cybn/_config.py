"""Build and runtime configuration, for ``cybn.show_config()`` and ``python -m cybn info``."""

from __future__ import annotations

import platform

import numpy as np

from . import _kernels, _openmp


def config() -> dict:
    """Version, OpenMP, threads, kernel variant, compiler flags and NumPy version, as a dict."""
    from . import __version__

    try:
        from . import _build_config as build
    except ImportError:  # built by a tool that did not run setup.py's recorder
        build = None  # type: ignore[assignment]
    variant_flags = getattr(build, "VARIANT_CFLAGS", {})
    return {
        "version": __version__,
        "openmp_enabled": bool(_kernels.OPENMP_ENABLED),
        "num_threads": _openmp.get_num_threads(),
        "num_procs": _openmp.get_num_procs(),
        "kernel_variant": _kernels.ISA,
        "variants_available": _kernels.available_variants(),
        "compiler": getattr(build, "COMPILER", "unknown"),
        "compile_flags": variant_flags.get(_kernels.ISA, []),
        "openmp_flags": getattr(build, "OPENMP_CFLAGS", []),
        "cython_version": getattr(build, "CYTHON_VERSION", "unknown"),
        "numpy_version": np.__version__,
        "numpy_build_version": getattr(build, "NUMPY_BUILD_VERSION", "unknown"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def show_config() -> None:
    """Print cybn's version, whether OpenMP is enabled, the current thread count, the kernel
    variant in use, the compiler flags it was built with and the NumPy version."""
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value) or "(none)"
        print(f"{key:<{width}}  {value}")
