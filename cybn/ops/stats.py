"""Per-channel statistics of an array (conventions: :mod:`cybn.ops`)."""

from __future__ import annotations

import numpy as np

from .._validate import as_data, channel_view, check_ddof
from . import _schedule
from ._run import channel_moments

__all__ = ["moments"]


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
