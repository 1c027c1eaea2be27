"""Data-parallel batch norm across processes: SyncBatchNorm over a communicator.

Each process holds a shard of the batch. SyncBatchNorm gathers every shard's (count, mean,
M2) and merges them in rank order (:func:`cybn.merge_stats`), so every process normalizes
with the same, exact statistics of the whole batch; its backward gathers the shards'
gradient sums the same way. Sums over processes are always taken in rank order from gathered
values, never with the transport's own reduction, so every rank gets the same bits whatever
MPI's algorithm.

The communicator is anything with ``rank``, ``size``, ``allgather(array) -> (size, ...)
array`` and ``broadcast(array, root)`` (in place): :class:`MPIComm` wraps an mpi4py
communicator (mpi4py is imported only when one is made; ``pip install "cybn[mpi]"``);
:class:`ThreadComm` runs "ranks" as threads of one process, for tests and experiments.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np

from . import nn
from . import ops as F
from ._validate import as_data
from .nn.batchnorm import CONVENTION_DEFAULT, _BatchNorm
from .nn.module import grad_output

__all__ = ["MPIComm", "ThreadComm", "SyncBatchNorm", "convert_sync_batchnorm",
           "broadcast_parameters", "allreduce_gradients", "allreduce_sum"]


class MPIComm:
    """The communicator adapter over mpi4py (``comm=None``: ``MPI.COMM_WORLD``)."""

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("cybn.distributed.MPIComm needs mpi4py: pip install "
                              "\"cybn[mpi]\" (or mpi4py built against your cluster's MPI)"
                              ) from None
        self.comm = MPI.COMM_WORLD if comm is None else comm

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def allgather(self, arr: np.ndarray) -> np.ndarray:
        """Every rank's array of this shape and dtype, stacked in rank order."""
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.size,) + arr.shape, dtype=arr.dtype)
        self.comm.Allgather(arr, out)
        return out

    def broadcast(self, arr: np.ndarray, root: int = 0) -> None:
        """Overwrite arr (C-contiguous) with root's, on every rank."""
        self.comm.Bcast(arr, root=root)


class ThreadComm:
    """A communicator whose ranks are threads of this process (``ThreadComm.group(n)``
    makes one per rank, each used by its own thread): the same interface as
    :class:`MPIComm`, for tests."""

    def __init__(self, rank: int, shared: dict):
        self.rank, self._shared = rank, shared
        self.size = shared["size"]

    @classmethod
    def group(cls, size: int) -> list:
        shared = {"size": size, "barrier": threading.Barrier(size), "slots": [None] * size}
        return [cls(r, shared) for r in range(size)]

    def _exchange(self, arr: np.ndarray) -> list:
        """Every rank's copy of its array (copied before the others read it)."""
        barrier, slots = self._shared["barrier"], self._shared["slots"]
        slots[self.rank] = np.array(arr, copy=True)
        barrier.wait()
        values = list(slots)
        barrier.wait()  # nobody writes the slots again before everyone has read them
        return values

    def allgather(self, arr: np.ndarray) -> np.ndarray:
        return np.stack(self._exchange(np.asarray(arr)))

    def broadcast(self, arr: np.ndarray, root: int = 0) -> None:
        arr[...] = self._exchange(arr)[root]


def allreduce_sum(comm, arr: np.ndarray) -> np.ndarray:
    """The sum over ranks, added in rank order (the same bits on every rank)."""
    gathered = comm.allgather(np.ascontiguousarray(arr))
    total = gathered[0].copy()
    for part in gathered[1:]:
        total += part
    return total


def _gather_stats(comm, count: int, mean: np.ndarray, m2: np.ndarray) -> tuple:
    """Every rank's (count, mean, M2) merged in rank order: the same on every rank."""
    counts = comm.allgather(np.array([count], dtype=np.float64))[:, 0]
    return F.merge_stats(counts, comm.allgather(mean), comm.allgather(m2))


_DTYPE_CODES = {np.dtype(np.float32): 1.0, np.dtype(np.float64): 2.0, np.dtype(np.float16): 3.0}
_HEADER_DIMS = 8  # dimensions a shape header carries (rank-5 inputs and a few more)


def _dtype_code(dtype) -> float:
    return _DTYPE_CODES.get(dtype, 4.0 if dtype.name == "bfloat16" else 0.0)


def agree(comm, what: str, values, error: Exception | None = None) -> None:
    """One collective that makes a local problem, or a disagreement between ranks, an error
    on every rank: each rank sends whether its own arguments passed its checks (``error``
    None) and ``values`` (numbers that must be equal on every rank); every rank then raises
    the same ValueError if any rank failed or the values differ, rather than one rank
    raising alone while the others wait forever in the next collective."""
    local = np.asarray(values, dtype=np.float64).ravel()
    every = comm.allgather(np.concatenate([[0.0 if error is None else 1.0], local]))
    failed = [r for r, h in enumerate(every) if h[0] != 0.0]
    if not failed and (every[1:] == every[0]).all():
        return
    if failed:
        message = (f"{what}: the arguments of rank(s) {failed} were rejected there; every "
                   f"rank raises")
    else:
        differ = [r for r in range(len(every)) if not (every[r] == every[0]).all()]
        message = (f"{what}: the ranks disagree (rank(s) {differ} differ from rank 0: "
                   f"{[h[1:].tolist() for h in every]})")
    raise ValueError(message) from error


def _input_header(x: np.ndarray, axis: int | None) -> list:
    """[channel count (-1 unknown), dtype code, ndim] of a rank's input."""
    return [-1 if axis is None else x.shape[axis], _dtype_code(x.dtype), x.ndim]


@dataclass(frozen=True)
class SyncSaved:
    """What a SyncBatchNorm training forward keeps for its backward."""

    x: np.ndarray
    mean: np.ndarray     # the whole batch's, float64 (C,)
    invstd: np.ndarray
    axis: int
    total: int           # values per channel over every rank


class SyncBatchNorm(_BatchNorm):
    """Batch normalization whose training statistics are those of the whole batch across
    the ranks of ``comm`` (any rank >= 2 input, channels-first or channels_last).

    Same parameters, state and eval behaviour as :class:`cybn.BatchNorm2d` (inputs of rank
    2 to 5); ``comm`` is a communicator (:class:`MPIComm`, :class:`ThreadComm`). In training
    it computes its shard's (count, mean, M2), gathers every rank's and merges them in rank
    order, normalizes with the result and updates the running statistics with the global
    count, identically on every rank. Its backward gathers the shards' gradient sums, so dx
    is the gradient of the whole batch's normalization; ``weight.grad`` and ``bias.grad``
    get this rank's share, which :func:`allreduce_gradients` sums over the ranks. A shard
    may be empty; the whole batch needs two values per channel.
    """

    ranks = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float | None = None,
                 momentum=CONVENTION_DEFAULT, affine: bool = True,
                 track_running_stats: bool = True, channels_last: bool = False,
                 dtype=np.float32, comm=None, **options):
        if options.get("on_degenerate", "raise") != "raise":
            raise ValueError("SyncBatchNorm: on_degenerate must be 'raise' (the whole batch "
                             "needs two values per channel)")
        if options.get("renorm") or options.get("ghost_batch_size") is not None:
            raise ValueError("SyncBatchNorm has no renorm or ghost batches")
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         channels_last, dtype, **options)
        self.comm = MPIComm() if comm is None else comm

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={self.comm.size}"

    def __deepcopy__(self, memo):
        """A copy with its own arrays over the same communicator (a communicator is a
        connection to the other ranks: copies share it, as convert_sync_batchnorm's do)."""
        memo[id(self.comm)] = self.comm
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        return new

    def forward(self, x, mask=None):
        if mask is not None:
            raise ValueError("SyncBatchNorm has no mask= (masked statistics are per process)")
        x = np.asarray(x)
        if self.track_running_stats and (self.frozen or not self.training):
            return super().forward(x)
        error, axis = None, None
        try:  # this rank's checks, whose result every rank learns before any can raise
            x = as_data(x, "x", half=True)
            axis = self._axis(x)
        except (TypeError, ValueError) as err:
            error = err
        agree(self.comm, "SyncBatchNorm: inputs (channels, dtype code, rank)",
              _input_header(x, axis) if error is None else [-1, -1, -1], error)
        total, mean, m2 = _gather_stats(self.comm, *F.batch_norm_stats(x, axis=axis))
        if total <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{total} over {self.comm.size} ranks")
        update = self.training and self.track_running_stats and not self.frozen
        y, mean, invstd = F.batch_norm_train(
            x, self._gamma(), self._beta(), running_mean=self.running_mean if update else None,
            running_var=self.running_var if update else None,
            momentum=self._batch_weight() if update else 0.0, eps=self.eps, axis=axis,
            running_variance=self.running_variance, stats=(total, mean, m2))
        if update:
            self.num_batches_tracked[...] += 1
        self._cache = SyncSaved(x, mean, invstd, axis, total)
        return y

    def backward(self, dy):
        saved = self.__dict__.get("_cache")
        if not isinstance(saved, SyncSaved):  # an eval-mode forward: BatchNorm's backward
            return super().backward(dy)
        saved = self._take_saved()
        x, mean, invstd, axis, total = saved.x, saved.mean, saved.invstd, saved.axis, saved.total
        error = None
        try:
            dy = grad_output(dy, x.shape, "SyncBatchNorm")
        except (TypeError, ValueError) as err:
            error = err
        try:
            agree(self.comm, "SyncBatchNorm.backward: dy", [0], error)
        except ValueError:
            object.__setattr__(self, "_cache", saved)  # a corrected call may follow
            raise
        w = self._gamma()
        sum_dy, sum_dy_xmu = F.batch_norm_backward_reduce(dy, x, mean, axis=axis)
        g_dy = allreduce_sum(self.comm, sum_dy)
        g_dy_xmu = allreduce_sum(self.comm, sum_dy_xmu)
        dx = F.batch_norm_backward_elemt(dy, x, w, mean, invstd, g_dy, g_dy_xmu, total,
                                         axis=axis)
        if not self.frozen:
            if self.scale:
                self.weight.accumulate((sum_dy_xmu * invstd).astype(self.weight.grad.dtype))
            if self.center:
                self.bias.accumulate(sum_dy.astype(self.bias.grad.dtype))
        return dx


def convert_sync_batchnorm(model, comm=None):
    """A copy of model with every BatchNorm1d/2d/3d (at any depth) replaced by a
    :class:`SyncBatchNorm` over ``comm`` with the same parameters and running statistics
    (state_dict keys unchanged); the given model is not modified."""
    import copy

    comm = MPIComm() if comm is None else comm
    result = copy.deepcopy(model)

    def convert(module):
        for name, child in list(module._modules.items()):
            if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm):
                if child.activation is not None:
                    raise ValueError(f"{name}: SyncBatchNorm has no fused activation; "
                                     f"convert before cybn.fuse")
                config = child._config()
                del config["activation"]
                sync = SyncBatchNorm(comm=comm, **config)
                sync.load_state_dict(child.state_dict())
                if child.frozen:
                    sync.freeze()
                sync.train(child.training)
                module._modules[name] = sync
            else:
                convert(child)

    if isinstance(result, _BatchNorm):
        holder = nn.Sequential(result)
        convert(holder)
        return holder[0]
    convert(result)
    return result


def broadcast_parameters(model, comm, root: int = 0) -> None:
    """Overwrite every parameter and buffer of model with root's (in place), so that the
    ranks start from the same model."""
    for _, value in model._state_items():
        if not value.flags.c_contiguous:
            raise ValueError("broadcast_parameters needs C-contiguous parameters")
        comm.broadcast(value, root)


def allreduce_gradients(model, comm) -> None:
    """Replace every parameter's gradient by its sum over the ranks (added in rank order).
    With each rank's loss weighted by its share of the global batch, the sum is the
    gradient of the global batch's loss."""
    for p in model.parameters():
        p.grad[...] = allreduce_sum(comm, p.grad)
