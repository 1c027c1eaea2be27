"""OpenMP is on, thread settings are honoured, and results do not depend on the thread count."""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import cybn
from cybn import _kernels


def test_openmp_is_enabled_in_this_build():
    """Fails on purpose for a serial build (CYBN_DISABLE_OPENMP=1 or no compiler support)."""
    assert _kernels.OPENMP_ENABLED, "cybn was built without OpenMP"
    from cybn._config import config

    assert config()["openmp_enabled"]
    assert any(pool["user_api"] == "openmp" for pool in threadpool_info())


needs_openmp = pytest.mark.skipif(not _kernels.OPENMP_ENABLED,
                                  reason="serial build: one thread whatever the setting")


@needs_openmp
def test_threadpoolctl_and_set_num_threads_are_honoured():
    with threadpool_limits(limits=1, user_api="openmp"):
        assert cybn.get_num_threads() == 1
    with threadpool_limits(limits=3, user_api="openmp"):
        assert cybn.get_num_threads() == 3
    old = cybn.get_num_threads()
    try:
        cybn.set_num_threads(2)
        assert cybn.get_num_threads() == 2
    finally:
        cybn.set_num_threads(old)


# Shapes that take every kernel path: plane family with many and with few channels, several
# blocks per plane, N = 1 (work split over channel ranges); row family.
SHAPES = [((8, 64, 40, 40), 1), ((1, 64, 40, 40), 1), ((3, 3, 100, 90), 1), ((2, 1, 9000), 1),
          ((9, 40, 40, 3), -1),
          ((300, 257), 1), ((5, 7, 9, 13), 2)]


def run_all(x, dy, axis):
    C = x.shape[axis]
    rm, rv = np.linspace(-1, 1, C), np.linspace(0.5, 2, C)
    y, mean, invstd = cybn.batch_norm_train(x, axis=axis, running_mean=rm, running_var=rv)
    yi = cybn.batch_norm_infer(x, rm, rv, axis=axis)
    dx, dw, db = cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=axis)
    dxe, _, _ = cybn.batch_norm_backward(dy, x, None, mean, invstd, training=False, axis=axis)
    m, v = cybn.moments(x, axis=axis)
    return [y, mean, invstd, rm, rv, yi, dx, dw, db, dxe, m, v]


@pytest.fixture
def always_parallel(monkeypatch):
    """Use OpenMP's threads even for the small arrays below the serial threshold."""
    from cybn.ops import _schedule

    monkeypatch.setattr(_schedule, "MIN_PARALLEL_SIZE", 0)


@needs_openmp
def test_small_arrays_run_on_the_calling_thread_only(monkeypatch):
    from cybn.ops import _schedule as S
    from cybn.ops._layout import ChannelView

    small = ChannelView.of((2, 3, 4, 4), 1)
    big = ChannelView.of((64, 64, 32, 32), 1)
    with threadpool_limits(limits=2, user_api="openmp"):
        assert S.threads(small) == 1
        assert S.threads(big) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_bitwise_identical_for_any_thread_count(shape, axis, dtype, always_parallel):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for n in (1, 2, 3, 4, 1):
        with threadpool_limits(limits=n, user_api="openmp"):
            results.append(run_all(x, dy, axis))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_instruction_set_variant_gives_the_same_bits(dtype):
    import importlib

    rng = np.random.default_rng(3)
    variants = _kernels.available_variants()
    # the widest variant is chosen unless CYBN_ISA forces one
    assert _kernels.ISA == (os.environ.get("CYBN_ISA") or variants[0])
    for shape, axis in SHAPES[:4]:
        x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
        outs = []
        for isa in variants:
            mod = importlib.import_module(f"cybn._kernels.{isa}")
            from cybn.ops._layout import ChannelView

            view = ChannelView.of(x.shape, axis % x.ndim)
            xk = view.kernel_view(x)
            C = view.channels
            mean, m2 = np.empty(C), np.empty(C)
            y = np.empty_like(xk)
            if view.family == "plane":
                mod.plane_moments(xk, mean, m2, 2)
                scale = 1 / np.sqrt(m2 / view.count + 1e-5)
                mod.plane_infer(xk, mean, scale, np.zeros(C), y, xk, 0, False, 2)
            else:
                mod.row_moments(xk, C, view.inner, mean, m2, 2)
                scale = 1 / np.sqrt(m2 / view.count + 1e-5)
                mod.row_infer(xk, C, view.inner, mean, scale, np.zeros(C), y, xk, 0, True, 2)
            outs.append((mean, m2, y))
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                np.testing.assert_array_equal(a, b)


def test_cybn_isa_forces_a_variant_and_rejects_unknown_names(monkeypatch):
    for isa in _kernels.available_variants():
        monkeypatch.setenv("CYBN_ISA", isa)
        assert _kernels.select_variant().ISA == isa
    monkeypatch.setenv("CYBN_ISA", "sse9")
    with pytest.raises(ImportError, match="CYBN_ISA must be one of"):
        _kernels.select_variant()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_schedule_and_streaming_stores_do_not_change_bits(shape, axis, dtype, always_parallel,
                                                          monkeypatch):
    """Owner / cooperative plane schedules (any group size) and streaming stores on or off
    give the same bits, so their size thresholds are free to tune."""
    from cybn.ops import _schedule as S

    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    settings = [(lambda *a: 0, 1 << 60, 1 << 60),            # owner, no streaming
                (lambda *a: 1, 0, 0),                        # one channel at a time, streaming
                (lambda *a: max(1, C // 3), 0, 1 << 60),
                (lambda *a: C, 1 << 60, 0)]                  # whole array cooperative
    results = []
    for group, stream_bytes, stream_run in settings:
        monkeypatch.setattr(S, "plane_group", group)
        monkeypatch.setattr(S, "STREAM_MIN_BYTES", stream_bytes)
        share = 0 if stream_bytes == 0 else 1
        monkeypatch.setattr(S, "STREAM_CACHE_SHARE", dict.fromkeys(S.STREAM_CACHE_SHARE, share))
        monkeypatch.setattr(S, "STREAM_MIN_RUN", stream_run)
        monkeypatch.setattr(S, "FAST_MAX_SIZE", dict.fromkeys(S.FAST_MAX_SIZE, 0))  # full path
        with threadpool_limits(limits=2, user_api="openmp"):
            results.append(run_all(x, dy, axis))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_plane_schedule_policy(monkeypatch):
    """Arrays that fit half the cache: all threads on the whole array; larger arrays with many
    channels whose slabs fit: threads own channels; few channels or huge ones: cooperative
    groups that fit half the cache."""
    from cybn.ops import _schedule as S
    from cybn.ops._layout import ChannelView

    monkeypatch.setattr(S, "cache_bytes", lambda: 32 << 20)
    assert S.plane_group(ChannelView.of((8, 256, 14, 14), 1), 4, 2, 2) == 256
    assert S.plane_group(ChannelView.of((128, 512, 7, 7), 1), 4, 2, 2) == 0

    assert S.plane_group(ChannelView.of((32, 64, 56, 56), 1), 4, 1, 2) == 0
    assert S.plane_group(ChannelView.of((64, 3, 224, 224), 1), 4, 1, 2) >= 1
    huge = ChannelView.of((4096, 16, 64, 64), 1)
    assert S.plane_group(huge, 4, 2, 2) == 1


def test_streaming_policy():
    """Streaming stores only for outputs beyond the op's share of the cache, never for short
    plane runs; backward (two inputs competing for the cache) streams earliest."""
    from cybn.ops import _schedule as S
    from cybn.ops._layout import ChannelView

    cache = S.cache_bytes()
    assert cache >= 1 << 20
    big = ChannelView.of((64, cache // 4096 + 1, 32, 32), 1)   # > cache in float32
    small = ChannelView.of((2048, 512), 1)                     # exactly 4 MiB in float32
    short_runs = ChannelView.of((cache // 1024, 64, 16, 16), 1)  # 1 KiB planes
    for op in ("infer", "train", "backward"):
        assert S.streaming(big, 4, op)
        assert not S.streaming(short_runs, 4, op)
    if cache >= 16 << 20:
        assert not S.streaming(small, 4, "infer")
    mid = ChannelView.of((cache // 4 // 2048, 512), 1)         # a quarter of the cache
    assert S.streaming(mid, 4, "backward") or S.STREAM_MIN_BYTES > cache // 4
    assert not S.streaming(mid, 4, "infer")


def test_fast_path_stops_where_the_full_path_would_stream_or_own_channels(monkeypatch):
    """The one-call fast path never streams and runs the plane family's threads on the
    whole array: its limit is the op's streaming threshold or half the cache (a quarter
    for backward's two arrays), whichever comes first, counted in float64 bytes."""
    from cybn.ops import _schedule as S
    from cybn.ops._layout import ChannelView

    for cache, limits in [(32 << 20, {"infer": 16 << 20, "train": (32 << 20) // 3,
                                      "backward": int((32 << 20) / 5)}),
                          (8 << 20, {"infer": 4 << 20, "train": 4 << 20,
                                     "backward": 2 << 20})]:
        monkeypatch.setattr(S, "cache_bytes", lambda: cache)
        for op, limit in limits.items():
            n = S.fast_max_size(op)
            assert n == limit // 8
            below = ChannelView.of((n // 1024 - 1, 64, 4, 4), 1)  # float64, just below
            assert not S.streaming(below, 8, op)
            assert S.plane_group(below, 8, S.OP_ARRAYS[op], 2) == 64


def test_cache_size_from_sysfs(monkeypatch, tmp_path):
    from cybn.ops import _schedule as S

    for i, (level, size) in enumerate([(1, "32K"), (2, "512K"), (3, "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    real_glob = S.glob.glob
    monkeypatch.setattr(S.glob, "glob", lambda pattern: real_glob(str(tmp_path / "index*")))
    assert S.sysfs_cache_bytes() == 32 << 20


def run_python(code: str, env=None, timeout: float = 120):
    """Run code in a fresh interpreter; return its stdout (fails on a nonzero exit)."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, **(env or {}))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    assert done.returncode == 0, done.stderr
    return done.stdout


FORK_SCRIPT = """
import multiprocessing as mp, numpy as np, cybn
def work(seed):
    x = np.random.default_rng(seed).random((4, 8, 64, 128)).astype(np.float32)
    y, mean, invstd = cybn.batch_norm_train(x)
    return cybn.get_num_threads(), float(mean.sum())
if __name__ == "__main__":
    cybn.set_num_threads(2)
    x = np.random.default_rng(0).random((4, 8, 64, 128)).astype(np.float32)
    cybn.batch_norm_train(x)  # starts OpenMP's threads in the parent
    expected = [float(cybn.batch_norm_train(
        np.random.default_rng(s).random((4, 8, 64, 128)).astype(np.float32))[1].sum())
        for s in range(4)]
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(work, range(4))
    assert [t for t, _ in got] == [1] * 4, got
    assert [m for _, m in got] == expected, (got, expected)
    print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_fork_after_a_parallel_call_does_not_hang():
    """A child forked after OpenMP's threads started runs on one thread, same bits."""
    assert run_python(FORK_SCRIPT, timeout=120).strip() == "ok"


def test_thread_count_bounds():
    old = cybn.get_num_threads()
    for bad in (0, -1, cybn.MAX_THREADS + 1, 40000, 2 ** 40):
        with pytest.raises(ValueError, match=f"n must be between 1 and {cybn.MAX_THREADS}"):
            cybn.set_num_threads(bad)
        assert cybn.get_num_threads() == old


def test_huge_omp_num_threads_is_capped_not_a_crash():
    code = ("import numpy as np, cybn\n"
            "x = np.random.default_rng(0).random((64, 16, 32, 32)).astype(np.float32)\n"
            "y, m, i = cybn.batch_norm_train(x)\n"
            "print(cybn.get_num_threads(), float(m.sum()))\n")
    threads, total = run_python(code, env={"OMP_NUM_THREADS": "40000"}).split()
    assert int(threads) == cybn.MAX_THREADS
    _, m, _ = cybn.batch_norm_train(
        np.random.default_rng(0).random((64, 16, 32, 32)).astype(np.float32))
    assert float(total) == float(m.sum())


VARIANT_SCRIPT = r"""
import sys
import numpy as np
import cybn
rng = np.random.default_rng(4)
out = {}
cases = [((6, 40, 30, 30), 1), ((6, 30, 30, 40), -1), ((50, 8, 9), -1), ((4, 72, 33), 1),
         ((300, 257), 1), ((2, 3, 4, 4), 1), ((4000, 9), 1)]
for i, (shape, axis) in enumerate(cases):
    for dtype in (np.float32, np.float64):
        x = (1e3 + rng.standard_normal(shape) * 2).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        key = f"{i}{np.dtype(dtype).char}"
        y, mean, invstd = cybn.batch_norm_train(x, axis=axis)
        out[key + "bn"] = y
        out[key + "bnm"] = mean
        out[key + "bnb"] = cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=axis)[0]
        out[key + "bni"] = cybn.batch_norm_infer(x, mean, 1 / invstd ** 2, axis=axis)
        if x.ndim > 2:
            y, mean, invstd = cybn.instance_norm(x, axis=axis)
            out[key + "in"] = y
            out[key + "inb"] = cybn.instance_norm_backward(dy, x, None, mean, invstd,
                                                           axis=axis)[0]
        y, mean, invstd = cybn.layer_norm(x, shape[-1])
        out[key + "ln"] = y
        out[key + "lnb"] = cybn.layer_norm_backward(dy, x, None, mean, invstd, shape[-1])[0]
        out[key + "rms"] = cybn.rms_norm(x, shape[-1])[0]
try:
    import ml_dtypes
    halves = (np.float16, ml_dtypes.bfloat16)
except ImportError:
    halves = (np.float16,)
for i, (shape, axis) in enumerate(cases):
    # fused BN + add + ReLU in every dtype; half precision stored as its 16-bit words
    for dtype in (np.float32, np.float64) + halves:
        x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
        r = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        key = f"{i}{np.dtype(dtype).name}"
        bits = (lambda a: a.view(np.uint16)) if x.itemsize == 2 else (lambda a: a)
        y, mean, invstd = cybn.batch_norm_train(x, axis=axis, activation="relu", residual=r)
        out[key + "fused"] = bits(y)
        g = cybn.batch_norm_backward(dy, x, None, mean, invstd, axis=axis, activation="relu",
                                     residual=r)
        out[key + "fused dx"], out[key + "fused dw"] = bits(g[0]), g[1]
        out[key + "fused dr"] = bits(g[3])
        if x.itemsize == 2:
            out[key + "half bn"] = bits(cybn.batch_norm_train(x, axis=axis)[0])
            out[key + "half bnb"] = bits(cybn.batch_norm_backward(dy, x, None, mean, invstd,
                                                                  axis=axis)[0])
            out[key + "half var"] = cybn.moments(x, axis=axis)[1]
conv = cybn.Conv2d(16, 16, 3, padding=1, groups=16, channels_last=True, rng=0)
xc = rng.standard_normal((2, 9, 9, 16)).astype(np.float32)
out["depthwise"] = conv(xc)
out["depthwise dx"] = conv.backward(np.ones_like(out["depthwise"]))
conv = cybn.Conv2d(16, 16, 3, padding=1, stride=(1, 2), groups=16, rng=0)
out["depthwise nchw"] = conv(np.ascontiguousarray(xc.transpose(0, 3, 1, 2)))
out["depthwise nchw dx"] = conv.backward(np.ones_like(out["depthwise nchw"]))
np.savez(sys.argv[1], **out)
"""


def test_every_variant_gives_the_same_bits_for_every_op(tmp_path):
    """Each available instruction-set variant (CYBN_ISA) on the public ops, offset data,
    both families, short rows, the fast path and the other norms: the same bits."""
    import subprocess
    import sys

    variants = _kernels.available_variants()
    results = []
    for isa in variants:
        path = tmp_path / f"{isa}.npz"
        env = dict(os.environ, CYBN_ISA=isa, OMP_NUM_THREADS="2")
        subprocess.run([sys.executable, "-c", VARIANT_SCRIPT, str(path)], env=env, check=True)
        results.append(np.load(path))
    for isa, other in zip(variants[1:], results[1:]):
        for key in results[0].files:
            np.testing.assert_array_equal(other[key], results[0][key],
                                          err_msg=f"{isa} vs {variants[0]}: {key}")
