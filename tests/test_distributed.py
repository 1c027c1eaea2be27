"""SyncBatchNorm and data-parallel helpers: thread "ranks" in-process (ThreadComm), and real
MPI ranks launched with mpiexec as a subprocess (never pytest under MPI), against single-
process batch norm on the concatenated batch."""

import copy
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cybn
from cybn.distributed import (ThreadComm, allreduce_gradients, allreduce_sum,
                              broadcast_parameters, convert_sync_batchnorm)


def run_ranks(size, fn):
    """fn(comm) on `size` threads, one ThreadComm each: (results, errors) in rank order."""
    comms = ThreadComm.group(size)
    results, errors = [None] * size, [None] * size

    def work(r):
        try:
            results[r] = fn(comms[r])
        except Exception as err:  # noqa: BLE001 - returned to the test
            errors[r] = err

    threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results, errors


def shards(x, sizes):
    bounds = np.cumsum([0] + list(sizes))
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("sizes", [(6, 6), (5, 1, 0, 6), (1, 11), (4, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batchnorm_equals_batchnorm_on_the_whole_batch(sizes, channels_last, dtype):
    rng = np.random.default_rng(0)
    shape = (12, 6, 5, 4) if channels_last else (12, 4, 6, 5)
    x = (rng.standard_normal(shape) * 2 + 50).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ref = cybn.BatchNorm2d(4, channels_last=channels_last, dtype=dtype)
    ref.weight.data[...] = [0.5, 1.0, 1.5, 2.0]
    y0 = ref(x)
    dx0 = ref.backward(dy)

    def rank(comm):
        layer = cybn.SyncBatchNorm(4, channels_last=channels_last, dtype=dtype, comm=comm)
        layer.weight.data[...] = [0.5, 1.0, 1.5, 2.0]
        xs, dys = shards(x, sizes)[comm.rank], shards(dy, sizes)[comm.rank]
        y = layer(xs)
        dx = layer.backward(dys)
        allreduce_gradients(layer, comm)
        return y, dx, layer.weight.grad.copy(), layer.bias.grad.copy(), layer.state_dict()

    results, errors = run_ranks(len(sizes), rank)
    assert errors == [None] * len(sizes)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    y = np.concatenate([r[0] for r in results])
    dx = np.concatenate([r[1] for r in results])
    close = 1e-12 if dtype == np.float64 else 4e-7  # float32: a few ulps of the largest
    np.testing.assert_allclose(y, y0, rtol=0, atol=close * np.abs(y0).max())
    np.testing.assert_allclose(dx, dx0, rtol=0, atol=close * np.abs(dx0).max())
    for r in results:
        np.testing.assert_allclose(r[2], ref.weight.grad, rtol=tol, atol=tol)
        np.testing.assert_allclose(r[3], ref.bias.grad, rtol=tol, atol=tol)
        for key, value in ref.state_dict().items():
            np.testing.assert_allclose(r[4][key], value, rtol=tol)
    # every rank holds the same bits
    for r in results[1:]:
        for key in r[4]:
            np.testing.assert_array_equal(r[4][key], results[0][4][key])
        np.testing.assert_array_equal(r[2], results[0][2])


def test_eval_mode_needs_no_communication_and_matches_batchnorm():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)

    def rank(comm):
        layer = cybn.SyncBatchNorm(3, comm=comm)
        layer.running_mean[...] = [1, 2, 3]
        layer.eval()
        y = layer(x)
        return y, layer.backward(np.ones_like(y))

    results, errors = run_ranks(2, rank)
    assert errors == [None, None]
    bn = cybn.BatchNorm2d(3)
    bn.running_mean[...] = [1, 2, 3]
    bn.eval()
    np.testing.assert_array_equal(results[0][0], bn(x))
    np.testing.assert_array_equal(results[1][1], bn.backward(np.ones_like(x)))


def test_mismatched_ranks_raise_on_every_rank():
    def rank(comm):
        layer = cybn.SyncBatchNorm(3 if comm.rank == 0 else 4, comm=comm)
        layer(np.ones((2, layer.num_features, 4, 4), np.float32))

    results, errors = run_ranks(2, rank)
    assert all(isinstance(e, ValueError) and "disagree" in str(e) for e in errors)


def test_convert_broadcast_and_allreduce():
    rng = np.random.default_rng(2)
    model = cybn.Sequential(cybn.Conv2d(2, 3, 3, padding=1, rng=rng), cybn.BatchNorm2d(3),
                            cybn.ReLU(), cybn.Residual(cybn.Sequential(
                                cybn.Conv2d(3, 3, 1, rng=rng), cybn.BatchNorm2d(3))))

    def rank(comm):
        local = convert_sync_batchnorm(model, comm)
        if comm.rank == 1:  # a different start, overwritten by rank 0's
            for p in local.parameters():
                p.data[...] = 7
        broadcast_parameters(local, comm)
        g = allreduce_sum(comm, np.full(3, comm.rank + 1.0))
        return local, g

    results, errors = run_ranks(2, rank)
    assert errors == [None, None]
    for local, g in results:
        assert isinstance(local[1], cybn.SyncBatchNorm)
        assert isinstance(local[3].body[1], cybn.SyncBatchNorm)
        assert list(local.state_dict()) == list(model.state_dict())
        for (k, a), b in zip(local.state_dict().items(), model.state_dict().values()):
            np.testing.assert_array_equal(a, b, err_msg=k)
        np.testing.assert_array_equal(g, [3.0, 3.0, 3.0])
    assert isinstance(model[1], cybn.BatchNorm2d) and type(model[1]) is not cybn.SyncBatchNorm


MPI_SCRIPT = r"""
import sys
import numpy as np
import cybn
from cybn.distributed import MPIComm, allreduce_gradients
comm = MPIComm()
assert comm.size == int(sys.argv[1]), f"world size {comm.size}, expected {sys.argv[1]}"
rng = np.random.default_rng(0)
x = (rng.standard_normal((13, 4, 6, 6)) * 2 + 30)
dy = rng.standard_normal(x.shape)
bounds = np.linspace(0, 13, comm.size + 1).astype(int)
xs, dys = x[bounds[comm.rank]:bounds[comm.rank + 1]], dy[bounds[comm.rank]:bounds[comm.rank + 1]]
layer = cybn.SyncBatchNorm(4, dtype=np.float64, comm=comm)
y = layer(xs)
dx = layer.backward(dys)
allreduce_gradients(layer, comm)
ref = cybn.BatchNorm2d(4, dtype=np.float64)
y0, dx0 = ref(x), None
dx0 = ref.backward(dy)
sl = slice(bounds[comm.rank], bounds[comm.rank + 1])
np.testing.assert_allclose(y, y0[sl], rtol=0, atol=1e-12)
np.testing.assert_allclose(dx, dx0[sl], rtol=0, atol=1e-12)
np.testing.assert_allclose(layer.weight.grad, ref.weight.grad, rtol=1e-12)
np.testing.assert_allclose(layer.running_var, ref.running_var, rtol=1e-13)
every = comm.allgather(layer.running_var)
assert (every == every[0]).all()
print("ok", flush=True)
"""


def mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("no mpiexec")
    return exe


@pytest.mark.parametrize("ranks", [2, 4])
def test_sync_batchnorm_over_mpi(tmp_path, ranks):
    script = tmp_path / "sync.py"
    script.write_text(MPI_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py",
                           str(script), str(ranks)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok") == ranks  # (the ranks' lines may interleave)


def test_a_raising_rank_does_not_hang_the_others(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import cybn
        from cybn.distributed import MPIComm
        comm = MPIComm()
        layer = cybn.SyncBatchNorm(3 if comm.rank == 0 else 5, comm=comm)
        layer(np.ones((2, layer.num_features, 3, 3), np.float32))
    """))
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    assert "disagree" in done.stderr


def small_model(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return cybn.Sequential(cybn.Conv2d(1, 4, 3, padding=1, dtype=dtype, rng=rng),
                           cybn.BatchNorm2d(4, dtype=dtype), cybn.ReLU(), cybn.Flatten(),
                           cybn.Linear(4 * 6 * 6, 3, dtype=dtype, rng=rng))


@pytest.mark.parametrize("ranks", [2, 3, 4])  # 3: shards of 7, 7 and 6 (uneven weights)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_data_parallel_fit_matches_one_process(ranks, dtype):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((100, 1, 6, 6)).astype(dtype)
    y = rng.integers(0, 3, 100)
    single = small_model(dtype)
    h1 = cybn.fit(single, X, y, optimizer=cybn.SGD(single.parameters(), lr=0.1, momentum=0.9),
                  epochs=4, batch_size=20, seed=0, progress=False)

    def rank(comm):
        model = convert_sync_batchnorm(small_model(dtype, seed=comm.rank), comm)
        h = cybn.fit(model, X, y, optimizer=cybn.SGD(model.parameters(), lr=0.1, momentum=0.9),
                     epochs=4, batch_size=20, seed=0, progress=False, comm=comm)
        return model.state_dict(), h

    results, errors = run_ranks(ranks, rank)
    assert errors == [None] * ranks
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for state, h in results:  # 20 steps; rank 1.. started from other weights (broadcast)
        for key, value in single.state_dict().items():
            np.testing.assert_allclose(state[key], value, rtol=tol, atol=tol, err_msg=key)
        np.testing.assert_allclose(h["loss"], h1["loss"], rtol=tol)
        assert h["accuracy"] == h1["accuracy"]
    for state, _ in results[1:]:  # the same bits on every rank
        for key in state:
            np.testing.assert_array_equal(state[key], results[0][0][key])


def test_recalibrate_across_ranks_equals_one_process():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((50, 1, 6, 6))
    single = cybn.recalibrate(small_model(np.float64), X, batch_size=8)

    def rank(comm):
        model = small_model(np.float64)
        part = np.array_split(X, comm.size)[comm.rank]
        return cybn.recalibrate(model, part, batch_size=8, comm=comm)

    results, errors = run_ranks(3, rank)
    assert errors == [None] * 3
    for model in results:
        np.testing.assert_allclose(model[1].running_mean, single[1].running_mean, rtol=1e-12)
        np.testing.assert_allclose(model[1].running_var, single[1].running_var, rtol=1e-12)


def test_distributed_example_prints_the_one_process_table():
    pytest.importorskip("sklearn")
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    sys.path.insert(0, os.path.join(root, "examples"))
    import distributed_training

    rows = distributed_training.main(epochs=2, verbose=False)
    want = [f"{e:5d}  {loss:10.6f}  {acc:9.4f}  {val:7.4f}" for e, loss, acc, val in rows]
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                           os.path.join(root, "examples", "distributed_training.py"), "2"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ranks 2")
    assert lines[2:4] == want


def test_sync_batchnorm_keeps_conventions_flags_and_freezing():
    """A Keras-convention, beta-only BatchNorm converted to SyncBatchNorm on 2 ranks gives
    one process's outputs and running statistics; a frozen one stays frozen."""
    x = np.random.default_rng(8).standard_normal((8, 3, 4, 4))
    model = cybn.Sequential(cybn.BatchNorm2d(3, convention="keras", scale=False,
                                             dtype=np.float64))
    model[0].bias.data[:] = [0.5, -1, 2]
    single = copy.deepcopy(model)
    y_single = single(x)

    def rank(comm):
        sync = convert_sync_batchnorm(model, comm)
        assert sync[0].convention == "keras" and sync[0].weight is None
        y = sync(x[4 * comm.rank:4 * comm.rank + 4])
        return y, sync[0].running_var.copy()

    results, errors = run_ranks(2, rank)
    assert errors == [None, None]
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y_single, atol=1e-12)
    for _, rv in results:
        np.testing.assert_allclose(rv, single[0].running_var, rtol=1e-12)
    model[0].freeze()
    frozen = convert_sync_batchnorm(model, ThreadComm.group(1)[0])
    assert frozen[0].frozen
    np.testing.assert_allclose(frozen(x), cybn.batch_norm_infer(
        x, model[0].running_mean, model[0].running_var, None, model[0].bias.data, eps=1e-3))


@pytest.mark.parametrize("bad", ["channels", "rank", "dtype", "ints"])
def test_one_rank_with_a_bad_input_raises_on_every_rank(bad):
    def rank(comm):
        layer = cybn.SyncBatchNorm(3, comm=comm)
        x = np.ones((4, 3, 5, 5), np.float32)
        if comm.rank == 1:
            x = {"channels": np.ones((4, 4, 5, 5), np.float32),
                 "rank": np.ones((4, 3, 5), np.float32),
                 "dtype": np.ones((4, 3, 5, 5), np.float64),
                 "ints": np.ones((4, 3, 5, 5), np.int32)}[bad]
        return layer(x)

    _, errors = run_ranks(3, rank)
    assert all(isinstance(e, ValueError) for e in errors), errors
    assert len({str(e) for e in errors}) == 1  # the same message on every rank


def test_one_rank_with_a_bad_dy_raises_on_every_rank():
    def rank(comm):
        layer = cybn.SyncBatchNorm(3, comm=comm)
        x = np.random.default_rng(comm.rank).standard_normal((4, 3, 5, 5)).astype(np.float32)
        layer(x)
        dy = np.ones((4, 3, 5, 6) if comm.rank == 0 else x.shape, np.float32)
        try:
            layer.backward(dy)
        except ValueError as err:
            # the saved forward survives: the corrected call works on every rank
            return str(err), layer.backward(np.ones(x.shape, np.float32)).shape
        return None

    results, errors = run_ranks(2, rank)
    assert errors == [None, None], errors
    assert all(r is not None and r[1] == (4, 3, 5, 5) for r in results), results
    assert results[0][0] == results[1][0]


def test_data_parallel_fit_with_fewer_samples_than_ranks_raises_on_every_rank():
    X = np.random.default_rng(0).standard_normal((20, 1, 6, 6)).astype(np.float32)
    y = np.zeros(20, np.int64)

    def rank(comm):
        model = convert_sync_batchnorm(small_model(np.float32), comm)
        return cybn.fit(model, X, y, epochs=1, batch_size=2, progress=False, comm=comm)

    _, errors = run_ranks(3, rank)
    assert all(isinstance(e, ValueError) for e in errors), errors


def test_data_parallel_fit_with_one_rank_s_bad_labels_raises_on_every_rank():
    X = np.random.default_rng(0).standard_normal((20, 1, 6, 6)).astype(np.float32)

    def rank(comm):
        model = convert_sync_batchnorm(small_model(np.float32), comm)
        y = np.zeros(20, np.int64) if comm.rank == 0 else np.zeros((20, 3), np.int64)
        before = model[1].running_mean.copy()
        try:
            cybn.fit(model, X, y, epochs=1, batch_size=10, progress=False, comm=comm)
        finally:
            np.testing.assert_array_equal(model[1].running_mean, before)

    _, errors = run_ranks(2, rank)
    assert all(isinstance(e, ValueError) for e in errors), errors


def test_one_rank_s_bad_input_raises_on_every_rank_over_mpi(tmp_path):
    script = tmp_path / "bad_shape.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import cybn
        from cybn.distributed import MPIComm
        comm = MPIComm()
        layer = cybn.SyncBatchNorm(3, comm=comm)
        C = 3 if comm.rank == 0 else 4
        try:
            layer(np.ones((2, C, 3, 3), np.float32))
        except ValueError as err:
            print("raised", comm.rank, flush=True)
    """))
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("raised") == 2


def test_cross_rank_sums_are_added_in_rank_order():
    # float64 values whose sum depends on the order: rank order gives (1e16 + 1) - 1e16 = 0,
    # any other order after rank 0 gives (1e16 - 1e16) + 1 = 1
    values = [1e16, 1.0, -1e16]

    def rank(comm):
        return allreduce_sum(comm, np.array([values[comm.rank]]))[0]

    results, errors = run_ranks(3, rank)
    assert errors == [None] * 3 and results == [0.0, 0.0, 0.0]
