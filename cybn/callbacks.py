"""Callbacks for :func:`cybn.fit`: early stopping with best-weight restore, and checkpoints.

``fit(..., callbacks=[...])`` calls ``on_train_begin(model)`` before the first epoch,
``on_epoch_end(epoch, logs, model)`` after each (``logs``: that epoch's ``loss``,
``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``; a True return stops training), and
``on_train_end(model)`` at the end, diverged or not. Any object with these methods works.
"""

from __future__ import annotations

import math
import os

from .train import _count, _number

__all__ = ["EarlyStopping", "Checkpoint"]

_MONITORS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _monitor(monitor, mode) -> tuple:
    if monitor not in _MONITORS:
        raise ValueError(f"monitor must be one of {_MONITORS}, got {monitor!r}")
    if mode == "auto":
        mode = "max" if monitor.endswith("accuracy") else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return monitor, mode


def _value(logs: dict, monitor: str) -> float:
    value = logs.get(monitor)
    if value is None:
        need = "validation_data" if monitor.startswith("val_") else "a classification loss"
        raise ValueError(f"the monitored {monitor!r} is not computed: fit needs {need}")
    return float(value)


class _Monitor:
    def __init__(self, monitor, mode, min_delta):
        self.monitor, self.mode = _monitor(monitor, mode)
        self.min_delta = _number(min_delta, "min_delta", low=0.0, low_ok=True)
        self.best = None
        self.best_epoch = None

    def improved(self, value: float) -> bool:
        """Whether value beats the best so far by more than min_delta (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs, and (``restore_best``) put back the parameters and buffers of the best epoch.

    Parameters
    ----------
    monitor : "val_loss" (default), "val_accuracy", "loss" or "accuracy"
    patience : int >= 1
        Epochs without improvement before stopping.
    min_delta : float >= 0
    mode : "auto" (min for losses, max for accuracies), "min" or "max"
    restore_best : bool
        At the end of training (stopped early or not), load the state (``state_dict``:
        parameters, running statistics) of the best epoch.

    After fit: ``best`` (the best value), ``best_epoch`` (0-based), ``stopped_epoch`` (the
    epoch it stopped after, or None).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True):
        super().__init__(monitor, mode, min_delta)
        self.patience = _count(patience, "patience", 1)
        self.restore_best = bool(restore_best)
        self._best_state = None
        self.stopped_epoch = None
        self._wait = 0

    def on_train_begin(self, model) -> None:
        self.best = self.best_epoch = self._best_state = self.stopped_epoch = None
        self._wait = 0

    def on_epoch_end(self, epoch: int, logs: dict, model) -> bool:
        value = _value(logs, self.monitor)
        if self.improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self._best_state = model.state_dict()  # copies
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, model) -> None:
        if self.restore_best and self._best_state is not None:
            model.load_state_dict(self._best_state)

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta:g}, mode={self.mode!r}, "
                f"restore_best={self.restore_best})")


class Checkpoint(_Monitor):
    """Write the model to a file (:func:`cybn.save`) after epochs.

    Parameters
    ----------
    path : str or path-like
        May hold ``{epoch}`` (1-based), e.g. ``"ckpt-{epoch:03d}.safetensors"``.
    monitor, mode, min_delta : as :class:`EarlyStopping`; used with ``best_only``.
    best_only : bool
        Write only when ``monitor`` improves (default); False writes after every epoch.

    After fit: ``saved``, the paths written, in order. With ``fit(..., comm=)`` only rank 0
    writes.
    """

    rank_zero_only = True

    def __init__(self, path, monitor: str = "val_loss", best_only: bool = True,
                 mode: str = "auto", min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = os.fspath(path)
        self.best_only = bool(best_only)
        self.saved: list = []
        try:
            self.path.format(epoch=1)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"path may hold only {{epoch}} fields, got {self.path!r} "
                             f"({err})") from None

    def on_train_begin(self, model) -> None:
        self.best = self.best_epoch = None
        self.saved = []

    def on_epoch_end(self, epoch: int, logs: dict, model) -> bool:
        if self.best_only:
            value = _value(logs, self.monitor)
            if not self.improved(value):
                return False
            self.best, self.best_epoch = value, epoch
        from .model_file import save

        path = self.path.format(epoch=epoch + 1)
        save(model, path)
        self.saved.append(path)
        return False

    def on_train_end(self, model) -> None:
        return None
