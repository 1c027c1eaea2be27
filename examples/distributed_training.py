"""Data-parallel training with SyncBatchNorm over MPI: the demo's CNN on scikit-learn's
digits, each rank taking its share of every mini-batch.

    mpiexec -n 2 python -m mpi4py examples/distributed_training.py [epochs]
    python examples/distributed_training.py [epochs]          # one process, for comparison

Set OMP_NUM_THREADS to the cores divided by the ranks. Rank 0 prints one line per epoch
(training loss and accuracy of the whole batch, validation accuracy) and the time; the table
is the same, to rounding, on any number of ranks, because SyncBatchNorm normalizes with the
statistics of the whole mini-batch and the gradients are summed over the ranks.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import cybn  # noqa: E402
from cybn.demo import load_digits_split  # noqa: E402
from cybn.distributed import ThreadComm, convert_sync_batchnorm  # noqa: E402


def cnn64(seed: int):
    """The demo's CNN (cybn.demo.cnn) in float64, so that any number of ranks gives the same
    table to the digits printed."""
    rng = np.random.default_rng(seed)
    f64 = {"dtype": np.float64}
    return cybn.Sequential(
        cybn.Conv2d(1, 16, 3, padding=1, rng=rng, **f64), cybn.BatchNorm2d(16, **f64),
        cybn.ReLU(), cybn.MaxPool2d(2), cybn.Conv2d(16, 32, 3, padding=1, rng=rng, **f64),
        cybn.BatchNorm2d(32, **f64), cybn.ReLU(), cybn.MaxPool2d(2), cybn.Flatten(),
        cybn.Linear(32 * 2 * 2, 10, rng=rng, **f64))


def make_comm():
    """MPI's world when launched under mpiexec with mpi4py installed, else one rank."""
    if any(k in os.environ for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        from cybn.distributed import MPIComm

        return MPIComm()
    return ThreadComm.group(1)[0]


def main(epochs: int = 5, comm=None, verbose: bool = True) -> list:
    comm = make_comm() if comm is None else comm
    Xtr, ytr, Xva, yva = load_digits_split(0)
    # whole mini-batches only: fit skips a last batch smaller than the number of ranks,
    # which would make the runs on different numbers of ranks differ
    n = len(Xtr) // 64 * 64
    Xtr, ytr, Xva = Xtr[:n].astype(np.float64), ytr[:n], Xva.astype(np.float64)
    model = convert_sync_batchnorm(cnn64(seed=0), comm)
    opt = cybn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    history = cybn.fit(model, Xtr, ytr, optimizer=opt, epochs=epochs, batch_size=64,
                       validation_data=(Xva, yva), seed=0, progress=False, comm=comm)
    elapsed = time.perf_counter() - start
    rows = [(e + 1, history["loss"][e], history["accuracy"][e], history["val_accuracy"][e])
            for e in range(epochs)]
    if verbose and comm.rank == 0:
        print(f"ranks {comm.size}, {len(Xtr)} training images, batch 64, "
              f"{cybn.get_num_threads()} OpenMP threads per rank")
        print("epoch  train loss  train acc  val acc")
        for e, loss, acc, val in rows:
            print(f"{e:5d}  {loss:10.6f}  {acc:9.4f}  {val:7.4f}")
        print(f"{elapsed:.2f} s")
    return rows


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
