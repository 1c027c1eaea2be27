import os
import sys

import numpy as np
import pytest
from hypothesis import settings
from threadpoolctl import threadpool_limits

# tests/ holds the helpers every test file imports (conftest, reference), also from the
# sub-folders that mirror the package (tests/ops, tests/nn, ...)
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
DATA = os.path.join(TESTS, "data")  # fixtures made by tools/fixtures/

# CI runs the property tests on a fixed set of examples (reproducible); locally they explore.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request, monkeypatch):
    """Run the test body under 1 and under 2 OpenMP threads, small arrays included."""
    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)
    with threadpool_limits(limits=request.param, user_api="openmp"):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype):
    """Relative tolerance for comparing against the float64 reference."""
    return 2e-6 if np.dtype(dtype) == np.float32 else 1e-12


def stat_rtol(dtype, float64=1e-13):
    """Relative tolerance of per-channel statistics against the float64 reference: float32
    data is summed in float32 SIMD over short runs flushed into double (relative errors of
    1e-8 typically, up to a few 1e-7 for coarsely quantized data summed over 32-row blocks of
    the channels-last family), float64 data in double throughout."""
    return 5e-7 if np.dtype(dtype) == np.float32 else float64


def assert_close(got, ref, dtype, scale=None):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape
    scale = max(1.0, float(np.max(np.abs(ref)))) if scale is None else scale
    err = np.max(np.abs(got - ref)) / scale if ref.size else 0.0
    assert err <= tolerance(dtype), f"max relative error {err:.3e}"


def numeric_grad(f, a, h=1e-6):
    """Central finite differences of the scalar f() with respect to every element of a
    (perturbed in place and restored)."""
    grad = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + h
        up = f()
        a[i] = old - h
        down = f()
        a[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def bn_case(shape, axis, dtype, seed=0):
    """x (mean 0.5, std 2), per-channel weight and bias (float64), a residual and dy of x's
    shape and dtype: the data of the fused and half-precision tests."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    C = shape[axis]
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    r = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, r, dy
