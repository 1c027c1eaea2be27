import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cybn


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request, monkeypatch):
    """Run the test body under 1 and under 2 OpenMP threads, small arrays included."""
    import cybn.functional

    monkeypatch.setattr(cybn.functional, "MIN_PARALLEL_SIZE", 0)
    with threadpool_limits(limits=request.param, user_api="openmp"):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype):
    """Relative tolerance for comparing against the float64 reference."""
    return 2e-6 if np.dtype(dtype) == np.float32 else 1e-12


def assert_close(got, ref, dtype, scale=None):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape
    scale = max(1.0, float(np.max(np.abs(ref)))) if scale is None else scale
    err = np.max(np.abs(got - ref)) / scale if ref.size else 0.0
    assert err <= tolerance(dtype), f"max relative error {err:.3e}"
