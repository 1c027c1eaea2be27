"""Per-channel statistics of an array, and the primitives of batch norm over shards (data
in several processes): each shard's (count, mean, M2), merged exactly in a fixed order
(conventions: :mod:`cybn.ops`)."""

from __future__ import annotations

import numpy as np

from .. import _kernels
from .._validate import as_data, check_ddof, describe
from . import _schedule
from ._bn import channel_moments
from ._layout import channel_view

__all__ = ["moments", "batch_norm_stats", "merge_stats", "RunningMoments"]


def moments(x, *, axis: int = 1, ddof=0):
    """Per-channel mean and variance over every axis but ``axis``.

    Parameters
    ----------
    x : ndarray, float32, float64, float16 or bfloat16, ndim >= 2
    axis : int
        Channel axis.
    ddof : non-negative number
        The variance divides by ``count - ddof`` (0: biased, 1: unbiased).

    Returns
    -------
    mean, var : ndarray (C,), float64
        NaN for channels with no values (and var NaN where ``count <= ddof``).
    """
    x = as_data(x, "x", half=True)
    view = channel_view(x, axis)
    ddof = check_ddof(ddof)
    C = view.channels
    if view.size == 0:
        return np.full(C, np.nan), np.full(C, np.nan)
    mean, m2 = channel_moments(view, x, _schedule.threads(view))
    denom = view.count - ddof
    var = m2 / denom if denom > 0 else np.full(C, np.nan)
    return mean, var


def batch_norm_stats(x, *, axis: int = 1) -> tuple:
    """Per-channel count, mean and M2 (sum of squared deviations) of one shard of a batch.

    The unit of batch statistics over shards (data-parallel training): each process computes
    its shard's statistics, :func:`merge_stats` combines them exactly, and
    :func:`batch_norm_train` normalizes with the result (``stats=``).

    Parameters
    ----------
    x : ndarray, float32, float64, float16 or bfloat16, ndim >= 2
        The shard; channel axis ``axis``. It may be empty (no samples).
    axis : int
        Channel axis.

    Returns
    -------
    count : int
        Values per channel (``x.size // C``).
    mean, m2 : ndarray (C,), float64
        Zeros for an empty shard. ``m2 / count`` is the biased variance.
    """
    x = as_data(x, "x", half=True)
    view = channel_view(x, axis)
    if view.size == 0:
        return 0, np.zeros(view.channels), np.zeros(view.channels)
    mean, m2 = channel_moments(view, x, _schedule.threads(view))
    return int(view.count), mean, m2


def _stats_rows(v, name: str, W: int, C: int | None) -> np.ndarray:
    """A (W, C) float64 array of per-partial statistics (a sequence of (C,) arrays too)."""
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers, got {describe(v)}") from None
    if arr.ndim != 2 or arr.shape[0] != W or (C is not None and arr.shape[1] != C):
        want = f"({W}, C)" if C is None else f"({W}, {C}) (C as in means)"
        raise ValueError(f"{name} must have shape {want} (one row per entry of counts), got "
                         f"shape {arr.shape}")
    return np.ascontiguousarray(arr)


def merge_stats(counts, means, m2s) -> tuple:
    """Merge W partial statistics (as from :func:`batch_norm_stats`) into those of the
    union, with Chan et al.'s pairwise formula in row order.

    Partials with count 0 are skipped. The order is fixed, so every process that merges the
    same rows gets the same bits; the result equals the statistics of the concatenated data
    to within rounding (float64, no cancellation on data far from zero).

    Parameters
    ----------
    counts : sequence of W ints >= 0
    means, m2s : arrays of shape (W, C)

    Returns
    -------
    count : int
    mean, m2 : ndarray (C,), float64
        Zeros when every count is 0.
    """
    try:
        c = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"counts must be numbers, got {describe(counts)}") from None
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a nonempty 1-D sequence, got shape {c.shape}")
    if not (np.all(np.isfinite(c)) and np.all(c >= 0) and np.all(c == np.floor(c))):
        raise ValueError(f"counts must be non-negative integers, got {np.asarray(counts)}")
    W = c.size
    mu = _stats_rows(means, "means", W, None)
    m2 = _stats_rows(m2s, "m2s", W, mu.shape[1])
    mean = np.empty(mu.shape[1])
    out_m2 = np.empty(mu.shape[1])
    total = _kernels.merge_stats_rows(np.ascontiguousarray(c), mu, m2, mean, out_m2)
    return int(total), mean, out_m2


class RunningMoments:
    """Exact per-channel mean and variance of a stream of batches (or of shards).

    Each :meth:`update` merges the batch's (count, mean, M2) with Chan's formula in double,
    so the result is the statistics of all the data seen, to rounding, whatever the batch
    sizes (not an average of per-batch statistics).

    Parameters
    ----------
    axis : int
        Channel axis of the batches.

    Examples
    --------
    >>> rm = RunningMoments(axis=1)
    >>> for xb in batches:            # doctest: +SKIP
    ...     rm.update(xb)
    >>> rm.mean, rm.var()             # doctest: +SKIP
    """

    def __init__(self, axis: int = 1):
        self.axis = axis
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def _fold(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = np.zeros(len(mean)), np.zeros(len(mean))
        elif len(mean) != len(self._mean):
            raise ValueError(f"a batch with {len(mean)} channels after {len(self._mean)}")
        total, self._mean, self._m2 = merge_stats([self.count, count],
                                                  np.stack([self._mean, mean]),
                                                  np.stack([self._m2, m2]))
        self.count = total

    def update(self, x) -> "RunningMoments":
        """Add a batch (channel axis ``axis``)."""
        self._fold(*batch_norm_stats(x, axis=self.axis))
        return self

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Add what another accumulator has seen (``other`` is unchanged)."""
        if other._mean is not None and other._m2 is not None:
            self._fold(other.count, other._mean, other._m2)
        return self

    def stats(self) -> tuple:
        """(count, mean, M2) of everything seen, as :func:`batch_norm_stats` gives them."""
        mean, m2 = self._require()
        return self.count, mean.copy(), m2.copy()

    def _require(self) -> tuple:
        if self._mean is None or self._m2 is None:
            raise ValueError("RunningMoments has seen no data")
        return self._mean, self._m2

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean (float64); NaN after only empty batches (no values yet), as the
        batch statistics of an empty batch."""
        mean = self._require()[0]
        return mean.copy() if self.count else np.full(len(mean), np.nan)

    def var(self, ddof: int = 0) -> np.ndarray:
        """Per-channel variance dividing by ``count - ddof`` (NaN where that is <= 0)."""
        m2 = self._require()[1]
        denom = self.count - check_ddof(ddof)
        return m2 / denom if denom > 0 else np.full(len(m2), np.nan)
