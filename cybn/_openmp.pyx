# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
"""Thread-count helpers over OpenMP, with a serial fallback when the build has no OpenMP."""

from cybn._openmp cimport CYBN_OPENMP_ENABLED, omp_get_max_threads, omp_set_num_threads, omp_get_num_procs

from cython.parallel cimport prange

import os
import warnings

OPENMP_ENABLED = bool(CYBN_OPENMP_ENABLED)

# The most threads a kernel call uses. OpenMP runtimes accept far more and then fail inside
# the next parallel region (libgomp aborts at tens of thousands of threads; 2**16 crashed).
MAX_THREADS = 1024

# True in a process made by fork() from one that had imported cybn. GNU OpenMP's thread pool
# does not survive fork: a parallel region in the child waits forever for the parent's
# threads. Such a child therefore runs every kernel on its calling thread (as PyTorch does);
# processes started with "spawn" or "forkserver" are not affected.
_forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_num_threads():
    """Number of threads the next kernel call will use (OpenMP's current maximum).

    It follows ``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits(n, user_api="openmp")``
    and :func:`set_num_threads`, capped at ``MAX_THREADS`` (1024). Always 1 when cybn was
    built without OpenMP, and in a process forked from one that had imported cybn (OpenMP
    threads do not survive fork; use the "spawn" or "forkserver" start method for
    multithreaded workers).
    """
    if _forked:
        return 1
    return int(min(omp_get_max_threads(), MAX_THREADS))


def set_num_threads(n):
    """Set the number of threads the kernels use, through ``omp_set_num_threads``.

    Like any OpenMP setting it applies to calls made from the calling Python thread.
    Results do not depend on the thread count: any setting gives bitwise equal outputs.

    Parameters
    ----------
    n : int
        Number of threads, from 1 to ``MAX_THREADS`` (1024).

    Raises
    ------
    TypeError
        If n is not an integer.
    ValueError
        If n is below 1 or above ``MAX_THREADS``.

    Warns
    -----
    RuntimeWarning
        When n > 1 in a forked child process, where kernels run on one thread.
    """
    import operator

    if isinstance(n, bool):
        raise TypeError(f"n must be a positive integer, got {n!r}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}") from None
    if count < 1 or count > MAX_THREADS:
        raise ValueError(f"n must be between 1 and {MAX_THREADS} (cybn.MAX_THREADS), "
                         f"got {count}")
    if _forked and count > 1:
        warnings.warn("cybn runs on one thread in a forked child process (OpenMP threads do "
                      "not survive fork); use the 'spawn' or 'forkserver' start method for "
                      "multithreaded workers", RuntimeWarning, stacklevel=2)
    omp_set_num_threads(<int>count)


def get_num_procs():
    """Number of processors OpenMP sees (1 when built without OpenMP)."""
    return int(omp_get_num_procs())


cdef void _call_task(list tasks, list errors, Py_ssize_t i) noexcept:
    try:
        tasks[i]()
    except BaseException as error:  # kept and raised on the calling thread
        errors[i] = error


def run_tasks(list tasks, int num_threads):
    """Call each of ``tasks`` (callables without arguments) on OpenMP's threads, at most
    ``num_threads`` of them, each task on one thread. A thread holds the GIL only to start
    its task, so tasks that release it (NumPy's matrix products) run in parallel, on the
    same threads as the kernels (no second pool to compete with OpenMP's for the cores).
    Tasks must write disjoint outputs. The first exception, in task order, is raised after
    every task has run."""
    cdef Py_ssize_t i, n = len(tasks)
    errors = [None] * n
    if n == 0:
        return
    if num_threads <= 1 or n == 1 or _forked:
        for i in range(n):
            _call_task(tasks, errors, i)
    else:
        with nogil:
            for i in prange(n, schedule='dynamic', num_threads=num_threads):
                with gil:
                    _call_task(tasks, errors, i)
    for error in errors:
        if error is not None:
            raise error
