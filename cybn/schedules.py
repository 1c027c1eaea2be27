"""Learning-rate schedules for cybn's optimizers (:class:`cybn.SGD`, :class:`cybn.Adam`).

A schedule holds the optimizer's learning rate at construction as its base and sets
``optimizer.lr`` to the formula's value at each step: ``step()`` once per epoch (what
:func:`cybn.fit` does with ``schedule=``), or once per mini-batch in a hand-written loop
with the lengths counted in batches. The formulas are PyTorch's closed forms:

* :class:`StepLR`: ``base * gamma ** (t // step_size)``;
* :class:`CosineLR`: ``min_lr + (base - min_lr) * (1 + cos(pi * t / t_max)) / 2`` up to
  ``t_max``, then ``min_lr``;
* :class:`LinearWarmup`: ``base * (start_factor + (1 - start_factor) * t / warmup)`` for
  ``t < warmup``, then the schedule given as ``then`` (counted from the end of the warm-up),
  or the base.

``lr_at(t)`` gives the value at any step without changing anything.
"""

from __future__ import annotations

import math

from .train import _count, _number

__all__ = ["StepLR", "CosineLR", "LinearWarmup"]


class _Schedule:
    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr") or not hasattr(optimizer, "step"):
            raise TypeError(f"optimizer must be a cybn optimizer (SGD, Adam), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.t = 0

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one step (an epoch, or a batch) and set the optimizer's learning rate;
        returns it."""
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
        return self.optimizer.lr

    def get_last_lr(self) -> float:
        """The learning rate of the current step."""
        return self.lr_at(self.t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_lr={self.base_lr:g}, t={self.t})"


class StepLR(_Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        self.step_size = _count(step_size, "step_size", 1)
        self.gamma = _number(gamma, "gamma", low=0.0, low_ok=False)

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineLR(_Schedule):
    """Cosine annealing from the base learning rate to ``min_lr`` over ``t_max`` steps (then
    ``min_lr``), PyTorch's ``CosineAnnealingLR`` closed form without restarts."""

    def __init__(self, optimizer, t_max: int, min_lr: float = 0.0):
        super().__init__(optimizer)
        self.t_max = _count(t_max, "t_max", 1)
        self.min_lr = _number(min_lr, "min_lr", low=0.0, low_ok=True)

    def lr_at(self, t: int) -> float:
        t = min(t, self.t_max)
        return self.min_lr + (self.base_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * t / self.t_max)) / 2.0


class LinearWarmup(_Schedule):
    """A linear warm-up from ``start_factor * base`` to the base over ``warmup`` steps, then
    ``then`` (another schedule over the same optimizer, its step 0 the warm-up's end)."""

    def __init__(self, optimizer, warmup: int, start_factor: float = 0.1, then=None):
        super().__init__(optimizer)
        self.warmup = _count(warmup, "warmup", 1)
        self.start_factor = _number(start_factor, "start_factor", low=0.0, low_ok=False,
                                    high=1.0, high_ok=True)
        if then is not None and (not isinstance(then, _Schedule)
                                 or then.optimizer is not optimizer):
            raise ValueError("then must be a schedule over the same optimizer")
        self.then = then
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t: int) -> float:
        if t < self.warmup:
            return self.base_lr * (self.start_factor
                                   + (1.0 - self.start_factor) * t / self.warmup)
        if self.then is None:
            return self.base_lr
        return self.then.lr_at(t - self.warmup)

    def step(self) -> float:
        lr = super().step()
        if self.then is not None:
            self.then.t = max(self.t - self.warmup, 0)
        return lr
