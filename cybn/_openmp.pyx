# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
"""Thread-count helpers over OpenMP, with a serial fallback when the build has no OpenMP."""

from cybn._openmp cimport CYBN_OPENMP_ENABLED, omp_get_max_threads, omp_set_num_threads, omp_get_num_procs

OPENMP_ENABLED = bool(CYBN_OPENMP_ENABLED)


def get_num_threads():
    """Number of threads the next kernel call will use (OpenMP's current maximum).

    It follows ``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits(n, user_api="openmp")``
    and :func:`set_num_threads`. Always 1 when cybn was built without OpenMP.
    """
    return int(omp_get_max_threads())


def set_num_threads(n):
    """Set the number of threads the kernels use, through ``omp_set_num_threads``.

    Like any OpenMP setting it applies to calls made from the calling Python thread.
    Results do not depend on the thread count: any setting gives bitwise equal outputs.

    Parameters
    ----------
    n : int
        Number of threads, at least 1.
    """
    import operator

    if isinstance(n, bool):
        raise TypeError(f"n must be a positive integer, got {n!r}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}") from None
    if count < 1:
        raise ValueError(f"n must be a positive integer, got {count}")
    omp_set_num_threads(<int>min(count, 1 << 16))


def get_num_procs():
    """Number of processors OpenMP sees (1 when built without OpenMP)."""
    return int(omp_get_num_procs())
