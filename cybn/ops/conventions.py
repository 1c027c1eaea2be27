"""The deep learning frameworks' batch-norm conventions, as presets of three knobs.

The frameworks agree on the normalization itself (batch mean and biased batch variance in
training, running statistics at inference) and disagree on the running statistics and the
defaults:

============  ==================  =========================================  ========  =====
convention    running variance    momentum m means                           default   eps
============  ==================  =========================================  ========  =====
torch         unbiased            ``running = (1 - m) * running + m * batch``  0.1     1e-5
keras         biased              ``running = m * running + (1 - m) * batch``  0.99    1e-3
flax          biased              ``running = m * running + (1 - m) * batch``  0.99    1e-5
onnx          biased (population) ``running = m * running + (1 - m) * batch``  0.9     1e-5
tensorflow    unbiased            ``running = m * running + (1 - m) * batch``  0.99    1e-3
============  ==================  =========================================  ========  =====

*unbiased* stores ``var * n / (n - 1)`` (n values per channel in the batch), *biased* stores
``var``. ``tensorflow`` is TensorFlow's fused batch norm (``tf.compat.v1.layers`` /
``tf.nn.fused_batch_norm``); ``keras`` is Keras 3's (and tf.keras 2's) layer; ``onnx`` is
BatchNormalization-15 in training mode; ``flax`` is ``flax.linen.BatchNorm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validate import check_eps, check_momentum

__all__ = ["Convention", "CONVENTIONS", "RUNNING_VARIANCES"]

RUNNING_VARIANCES = ("unbiased", "biased")


@dataclass(frozen=True)
class Convention:
    """One framework's running-statistics rules and defaults (see the module docstring).

    ``momentum_weights`` is ``"new"`` when momentum weighs the batch (PyTorch) and ``"old"``
    when it weighs the running value (everyone else)."""

    name: str
    running_variance: str
    momentum_weights: str
    momentum: float
    eps: float

    def batch_weight(self, momentum: float) -> float:
        """The weight of the batch's statistics in the running update (PyTorch's momentum)
        for ``momentum`` given in this convention."""
        return momentum if self.momentum_weights == "new" else 1.0 - momentum


CONVENTIONS = {c.name: c for c in (
    Convention("torch", "unbiased", "new", 0.1, 1e-5),
    Convention("keras", "biased", "old", 0.99, 1e-3),
    Convention("flax", "biased", "old", 0.99, 1e-5),
    Convention("onnx", "biased", "old", 0.9, 1e-5),
    Convention("tensorflow", "unbiased", "old", 0.99, 1e-3),
)}


def get_convention(convention) -> Convention:
    """The Convention named ``convention`` (None: "torch"); a Convention passes through."""
    if convention is None:
        return CONVENTIONS["torch"]
    if isinstance(convention, Convention):
        return convention
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got "
                         f"{convention!r}")
    return CONVENTIONS[convention]


def check_running_variance(running_variance, convention: Convention) -> bool:
    """True for the unbiased estimator: ``running_variance`` ("unbiased" or "biased"), or
    the convention's when None."""
    if running_variance is None:
        running_variance = convention.running_variance
    if running_variance not in RUNNING_VARIANCES:
        raise ValueError(f"running_variance must be 'unbiased' or 'biased', got "
                         f"{running_variance!r}")
    return running_variance == "unbiased"


def resolve(convention, momentum, eps, running_variance) -> tuple:
    """(batch weight of the running update, eps, unbiased) from the arguments of a training
    call: momentum and eps in the convention's own terms, None for its defaults."""
    conv = get_convention(convention)
    momentum = conv.momentum if momentum is None else check_momentum(momentum)
    eps = conv.eps if eps is None else check_eps(eps)
    return conv.batch_weight(momentum), eps, check_running_variance(running_variance, conv)
