"""Concurrency, memory use, property tests against the reference, and (slow) huge arrays."""

import gc
import os
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import assert_close, stat_rtol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cybn
import reference as ref


def all_ops(x, dy, axis):
    C = x.shape[axis]
    rm, rv = np.zeros(C), np.ones(C)
    y, mean, invstd = cybn.batch_norm_train(x, axis=axis, running_mean=rm, running_var=rv)
    dx, dw, db = cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=axis)
    yi = cybn.batch_norm_infer(x, rm, rv, axis=axis)
    return [y, mean, invstd, rm, rv, dx, dw, db, yi]


def test_python_threads_give_the_same_bits_as_serial_calls(monkeypatch):
    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)
    rng = np.random.default_rng(9)
    inputs = [((rng.standard_normal((8, 16, 30, 30)) + i).astype(np.float32), 1)
              if i % 2 == 0 else
              ((rng.standard_normal((8, 30, 30, 16)) - i).astype(np.float32), -1)
              for i in range(4)]
    dys = [np.ones_like(x) * 0.5 + x * 0.1 for x, _ in inputs]
    serial = [all_ops(x, dy, axis) for (x, axis), dy in zip(inputs, dys)]
    results = [None] * 4

    def work(i):
        x, axis = inputs[i]
        for _ in range(3):
            results[i] = all_ops(x, dys[i], axis)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_repeated_calls_give_the_same_bits():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 7, 33, 9)).astype(np.float32)
    first = all_ops(x, x, 1)
    for _ in range(5):
        for a, b in zip(all_ops(x, x, 1), first):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("axis", [1, -1])
def test_no_memory_growth_and_no_large_temporaries(axis):
    rng = np.random.default_rng(11)
    shape = (8, 16, 24, 24) if axis == 1 else (8, 24, 24, 16)
    x = rng.standard_normal(shape).astype(np.float32)
    out = np.empty_like(x)
    C = shape[axis]
    rm, rv, w = np.zeros(C), np.ones(C), np.ones(C)
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)

    def calls():
        cybn.batch_norm_train(x, w, w, running_mean=rm, running_var=rv, axis=axis, out=out)
        cybn.batch_norm_infer(x, rm, rv, w, w, axis=axis, out=out)
        cybn.batch_norm_backward(x, x, w, mean, invstd, axis=axis, out=out)
        cybn.moments(x, axis=axis)

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    for _ in range(100):
        calls()
    # C-level memory too (kernel scratch is malloc'ed). Not under AddressSanitizer, whose
    # quarantine keeps freed memory resident by design (.ci/sanitize).
    under_asan = "libasan" in os.environ.get("LD_PRELOAD", "")
    if os.path.exists("/proc/self/statm") and not under_asan:
        before = rss()
        for _ in range(10_000):
            calls()
        assert rss() - before < 4 * 2**20, "resident memory grows over 10,000 calls of each op"
    tracemalloc.start()
    try:
        calls()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(200):
            calls()
        gc.collect()  # count only what survives a collection
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        calls()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < 64 * 1024, "Python-level memory grows with calls"
    # with out=, nothing near the array's size is allocated (no full-size temporary)
    assert peak - base < x.nbytes // 4, (peak - base, x.nbytes)


@st.composite
def problems(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 1.0, -300.0, 1e4]))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    step = draw(st.sampled_from([1, 2, -1]))
    rng = np.random.default_rng(seed)
    big = list(shape)
    big[0] *= abs(step)
    x = (rng.standard_normal(big) * scale + offset).astype(dtype)[::step]
    return x, axis, rng


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_every_op_matches_reference(problem):
    x, axis, rng = problem
    C = x.shape[axis]
    n = x.size // C
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    m, v = cybn.moments(x, axis=axis)
    m_ref, v_ref = ref.moments(x, axis=axis)
    # float32 data is summed in float32 over short runs: errors of about 1e-8 standard
    # deviations (stat_rtol); float64 data in double.
    spread = stat_rtol(x.dtype, 0.0) * float(np.sqrt(np.max(v_ref)))
    np.testing.assert_allclose(m, m_ref, rtol=1e-12, atol=1e-12 * np.max(np.abs(m_ref)) + spread)
    # A constant channel (the reference gives exactly 0 only then) has variance exactly 0.
    constant = v_ref == 0
    assert np.all(v[constant] == 0)
    # Data far from zero is ill-conditioned in any precision: float64 rounding of
    # x - mean alone costs eps64 * |x| / std, so tolerances grow with that ratio.
    cond = 1.0
    if not constant.all():
        cond = float(np.max(np.abs(x)) / np.sqrt(np.min(v_ref[~constant])))
        np.testing.assert_allclose(v[~constant], v_ref[~constant],
                                   rtol=stat_rtol(x.dtype, 1e-9) + 1e-15 * cond, atol=1e-20)
    yi = cybn.batch_norm_infer(x, m_ref, v_ref + 1.0, w, b, axis=axis)
    assert_close(yi, ref.infer(x, m_ref, v_ref + 1.0, w, b, axis=axis), x.dtype)
    if n < 2:
        with pytest.raises(ValueError):
            cybn.batch_norm_train(x, w, b, axis=axis)
        return
    y, mean, invstd = cybn.batch_norm_train(x, w, b, axis=axis, eps=1e-3)
    y_ref, _, invstd_ref, _ = ref.train(x, w, b, eps=1e-3, axis=axis)
    tol = (2e-6 if x.dtype == np.float32 else 1e-12) + 1e-15 * cond
    scale = max(1.0, float(np.max(np.abs(y_ref))))
    assert np.max(np.abs(y - y_ref)) / scale <= tol
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    dx, dw, db = cybn.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, w, mean, invstd, axis=axis)
    # float32 sums the terms of dx = k1 * dy + k2 * (x - mean) + k3 in float32: its error is
    # an ulp of the largest term (about |weight * invstd * dy|), which dx itself may be far
    # below when the terms cancel.
    shape_c = [1] * x.ndim
    shape_c[axis] = C
    term = np.abs(dy * (w * invstd).reshape(shape_c)) if x.dtype == np.float32 else 0.0
    scale = max(1.0, float(np.max(np.abs(dx_ref))), float(np.max(term)))
    assert np.max(np.abs(dx - dx_ref)) / scale <= tol
    assert_close(db, db_ref, x.dtype, scale=max(1.0, float(np.abs(dy).sum())))


def available_memory() -> int:
    """Bytes of memory available (Linux /proc/meminfo), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
@pytest.mark.skipif(available_memory() < 12 * 2**30, reason="needs 12 GB of free memory")
def test_array_beyond_2_to_the_31_elements():
    """float32 (2, 2, 2**29 + 3): 2**31 + 12 elements, 8.6 GB; inference in place and moments."""
    n = 2**29 + 3
    x = np.empty((2, 2, n), dtype=np.float32)
    x[:, 0] = 1.0
    x[:, 1] = 3.0
    x[1, 1, -1] = 7.0  # the very last element must be seen
    mean, var = cybn.moments(x, axis=1)
    count = 2 * n
    assert mean[0] == 1.0
    np.testing.assert_allclose(mean[1], (3.0 * (count - 1) + 7.0) / count, rtol=1e-12)
    assert var[0] == 0.0 and var[1] > 0
    cybn.batch_norm_infer(x, np.array([1.0, 3.0]), np.array([0.0, 0.0]), eps=1.0, out=x)
    assert x[1, 1, -1] == 4.0 and x[0, 1, 0] == 0.0 and x[1, 0, -1] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(available_memory() < 12 * 2**30, reason="needs 12 GB of free memory")
def test_training_and_backward_beyond_2_to_the_31_elements():
    """The training forward and the backward (both in place) on 2**31 + 12 float32 elements,
    against closed forms: channel 0 constant, channel 1 all 3.0 but one 7.0 at the very end.
    With dy = x and the batch statistics, dx = (x - mean) * invstd * eps / (var + eps)."""
    n = 2**29 + 3
    count = 2 * n
    x = np.empty((2, 2, n), dtype=np.float32)
    x[:, 0] = 1.0
    x[:, 1] = 3.0
    x[1, 1, -1] = 7.0
    m1 = (3.0 * (count - 1) + 7.0) / count
    var1 = ((count - 1) * (3.0 - m1) ** 2 + (7.0 - m1) ** 2) / count
    eps = 1.0
    _, mean, invstd = cybn.batch_norm_train(x, eps=eps, out=x)
    s1 = 1.0 / np.sqrt(var1 + eps)
    assert mean[0] == 1.0 and invstd[0] == 1.0
    np.testing.assert_allclose([mean[1], invstd[1]], [m1, s1], rtol=1e-9)
    assert x[0, 0, 0] == 0.0 and x[1, 0, -1] == 0.0
    np.testing.assert_allclose([x[1, 1, -1], x[0, 1, 0]], [(7.0 - m1) * s1, (3.0 - m1) * s1],
                               rtol=1e-6)
    # x now holds xhat: mean 0 and variance var1 * s1**2 on channel 1, constant 0 on channel 0
    m_h, v_h = cybn.moments(x)
    s_h = 1.0 / np.sqrt(v_h + eps)
    dx, dweight, dbias = cybn.batch_norm_backward(x, x, None, m_h, s_h, out=x)
    assert dx is x
    np.testing.assert_allclose(dbias, [0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(dweight, [0.0, count * v_h[1] * s_h[1]], rtol=1e-6)
    factor = s_h[1] * eps / (v_h[1] + eps)
    assert x[0, 0, 0] == 0.0 and x[1, 0, -1] == 0.0
    np.testing.assert_allclose([x[1, 1, -1], x[0, 1, 0]],
                               [(7.0 - m1) * s1 * factor, (3.0 - m1) * s1 * factor], rtol=1e-5)


def counting_rate_beside(job, calls: int = 6) -> float:
    """Rate of a Python counting loop while another thread runs job() ``calls`` times,
    relative to the loop's rate alone over the same time."""
    import time

    done = threading.Event()

    def work():
        for _ in range(calls):
            job()
        done.set()

    def count(end):
        n = 0
        while not done.is_set() and time.perf_counter() < end:
            n += 1
        return n

    start = time.perf_counter()
    work()
    duration = time.perf_counter() - start
    done.clear()
    start = time.perf_counter()
    solo_rate = count(start + duration) / (time.perf_counter() - start)
    worker = threading.Thread(target=work)
    start = time.perf_counter()
    worker.start()
    rate = count(float("inf")) / (time.perf_counter() - start)
    worker.join()
    return rate / solo_rate


def test_kernels_release_the_gil():
    """While one Python thread runs kernels, another keeps running Python code.

    Compared under the same conditions with a call that holds the GIL throughout (sorting a
    long list): beside it the counting loop only gets the gaps between calls (measured
    0.1 to 0.35 of its solo rate), beside cybn it keeps most of its rate (0.6 on a loaded
    2-core machine, 0.9 on an idle one).
    """
    import random

    from threadpoolctl import threadpool_limits

    x = np.random.default_rng(13).standard_normal((32, 32, 128, 128)).astype(np.float32)
    out = np.empty_like(x)
    values = [random.random() for _ in range(400_000)]
    with threadpool_limits(limits=1, user_api="openmp"):
        released = counting_rate_beside(lambda: cybn.batch_norm_train(x, out=out))
        held = counting_rate_beside(lambda: sorted(values))
    assert released > held + 0.2 and released > 1.5 * held, (released, held)
