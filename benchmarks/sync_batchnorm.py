"""SyncBatchNorm against local BatchNorm2d, per layer, forward + backward, on MPI ranks.

    mpiexec -n 2 python -m mpi4py benchmarks/sync_batchnorm.py [N C H W] [repeats]

Each rank holds a float32 (16, 64, 28, 28) shard by default and runs OMP_NUM_THREADS threads
(set it to cores / ranks). Prints, on rank 0, the median time of one training forward +
backward of SyncBatchNorm and of BatchNorm2d on the same shard (interleaved), their ratio,
and the time of the collectives alone (the four allgathers of a SyncBatchNorm step).
"""

import sys
import time

import numpy as np

import cybn
from cybn.distributed import MPIComm, allreduce_sum


def median_ms(fn, comm, repeats):
    times = []
    for _ in range(repeats):
        comm.comm.Barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    comm = MPIComm()
    args = [int(a) for a in sys.argv[1:]]
    shape = tuple(args[:4]) if len(args) >= 4 else (16, 64, 28, 28)
    repeats = args[4] if len(args) >= 5 else 51
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    sync = cybn.SyncBatchNorm(shape[1], comm=comm)
    local = cybn.BatchNorm2d(shape[1])
    C = shape[1]

    def step(layer):
        layer(x)
        layer.backward(dy)

    def collectives():
        comm.allgather(np.zeros(3))
        comm.allgather(np.zeros(1))
        comm.allgather(np.zeros(C))
        comm.allgather(np.zeros(C))
        allreduce_sum(comm, np.zeros(C))
        allreduce_sum(comm, np.zeros(C))

    for _ in range(5):
        step(sync)
        step(local)
    t_sync, t_local, t_comm = [], [], []
    for _ in range(3):  # interleaved rounds
        t_sync.append(median_ms(lambda: step(sync), comm, repeats))
        t_local.append(median_ms(lambda: step(local), comm, repeats))
        t_comm.append(median_ms(collectives, comm, repeats))
    if comm.rank == 0:
        s, loc, c = np.median(t_sync), np.median(t_local), np.median(t_comm)
        print(f"ranks {comm.size}, shard {shape} float32, {cybn.get_num_threads()} threads/rank: "
              f"SyncBatchNorm {s:.3f} ms, BatchNorm2d {loc:.3f} ms, ratio {s / loc:.2f}, "
              f"collectives {c:.3f} ms")


if __name__ == "__main__":
    main()
