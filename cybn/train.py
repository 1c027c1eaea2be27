"""A minimal, autograd-free training helper: losses, optimizers, fit / evaluate / predict.

Losses return ``(loss, dloss)``: the mean loss and its gradient with respect to the
prediction, ready for ``model.backward``.

Weight decay: the optimizers apply ``weight_decay`` to every parameter whose ``decay``
attribute is True. BatchNorm layers create their weight and bias with ``decay=False``
(decaying the scale towards 0 works against the normalization), which differs from
PyTorch's default of decaying every parameter; set ``param.decay = True`` to get
PyTorch's behaviour.
"""

from __future__ import annotations

import math
import numbers
import sys
import time

import numpy as np

from ._validate import numeric_array

__all__ = ["cross_entropy", "mse_loss", "SGD", "Adam", "fit", "evaluate", "predict",
           "clip_grad_norm"]


def cross_entropy(logits, targets):
    """Mean softmax cross-entropy over the batch.

    Parameters
    ----------
    logits : ndarray (N, K)
    targets : ndarray (N,) of integer class indices in [0, K)

    Returns
    -------
    loss : float
    dlogits : ndarray (N, K), logits' dtype
        ``(softmax(logits) - onehot(targets)) / N``.
    """
    logits = numeric_array(logits, "logits")
    targets = numeric_array(targets, "targets")
    if logits.ndim != 2 or logits.dtype.kind != "f":
        raise ValueError(f"logits must be a floating-point array of shape (N, K), got "
                         f"{logits.dtype} of shape {logits.shape}")
    if targets.shape != (logits.shape[0],) or targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer class indices of shape ({logits.shape[0]},) "
                         f"(one per row of logits), got {targets.dtype} array of shape "
                         f"{targets.shape}")
    n, k = logits.shape
    if n and (targets.min() < 0 or targets.max() >= k):
        raise ValueError(f"targets must lie in [0, {k}) (the columns of logits), got values "
                         f"in [{targets.min()}, {targets.max()}]")
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable: exp of values <= 0
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, targets]))
    grad = exp / total
    grad[rows, targets] -= 1
    grad /= n
    return loss, grad.astype(logits.dtype, copy=False)


def mse_loss(pred, target):
    """Mean squared error ``mean((pred - target)**2)`` and its gradient
    ``2 * (pred - target) / pred.size``."""
    pred = numeric_array(pred, "pred")
    target = numeric_array(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"target must have the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target
    loss = float(np.mean(diff.astype(np.float64) ** 2))
    return loss, (2.0 / max(diff.size, 1) * diff).astype(pred.dtype, copy=False)


def _number(value, name: str, *, low: float, low_ok: bool, high: float = math.inf,
            high_ok: bool = False) -> float:
    """A finite real number (not a bool or a string) in the given range, as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    inside = ((v > low or (low_ok and v == low)) and (v < high or (high_ok and v == high)))
    if not math.isfinite(v) or not inside:
        lo = "[" if low_ok else "("
        hi = "]" if high_ok else ")"
        raise ValueError(f"{name} must be finite and in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return v


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


class _Optimizer:
    def __init__(self, params, lr: float, weight_decay: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: pass model.parameters()")
        self.lr = _number(lr, "lr", low=0.0, low_ok=False)
        self.weight_decay = _number(weight_decay, "weight_decay", low=0.0, low_ok=True)
        # One work array per parameter, reused every step: no allocations in step().
        self._work = [np.empty_like(p.data) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def _grad(self, p, work):
        """The gradient with weight decay added (written into ``work``), or p.grad itself."""
        if self.weight_decay and getattr(p, "decay", True):
            np.multiply(p.data, self.weight_decay, out=work)
            work += p.grad
            return work
        return p.grad


class SGD(_Optimizer):
    """Stochastic gradient descent with PyTorch's update rule (no dampening).

    ``g = grad + weight_decay * p``; with momentum ``buf = momentum * buf + g`` (``buf = g``
    on the first step) and ``g = buf``, or ``g + momentum * buf`` with nesterov;
    ``p -= lr * g``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, lr, weight_decay)
        momentum = _number(momentum, "momentum", low=0.0, low_ok=True)
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs a positive momentum")
        self.momentum = momentum
        self.nesterov = nesterov
        self._buffers: list[np.ndarray | None] = [None] * len(self.params)

    def step(self) -> None:
        for i, (p, work) in enumerate(zip(self.params, self._work)):
            if not p.requires_grad:
                continue
            g = self._grad(p, work)
            if self.momentum:
                buf = self._buffers[i]
                if buf is None:
                    buf = self._buffers[i] = np.array(g, copy=True)
                else:
                    buf *= self.momentum
                    buf += g
                if self.nesterov:  # g + momentum * buf, in work
                    if g is not work:
                        np.copyto(work, g)
                    work += self.momentum * buf
                    g = work
                else:
                    g = buf
            np.multiply(g, self.lr, out=work, casting="unsafe")
            p.data -= work


class Adam(_Optimizer):
    """Adam with PyTorch's update rule (L2 weight decay added to the gradient, not AdamW)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair of numbers, got {betas!r}") from None
        self.betas = (_number(b1, "betas[0]", low=0.0, low_ok=True, high=1.0),
                      _number(b2, "betas[1]", low=0.0, low_ok=True, high=1.0))
        self.eps = _number(eps, "eps", low=0.0, low_ok=False)
        self.t = 0
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v, work in zip(self.params, self._m, self._v, self._work):
            if not p.requires_grad:
                continue
            g = self._grad(p, work)
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            np.divide(v, c2, out=work)  # the denominator sqrt(v / c2) + eps, in work
            np.sqrt(work, out=work)
            work += self.eps
            np.divide(m, work, out=work)
            work *= self.lr / c1
            p.data -= work


LOSSES = {"cross_entropy": cross_entropy, "mse": mse_loss, "mse_loss": mse_loss}


def _loss_fn(loss):
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def _is_classification(loss_fn) -> bool:
    return loss_fn is cross_entropy


def _one_blas_thread():
    """The layers' matrix products on one BLAS thread: their results then do not depend on
    the BLAS thread setting of the environment (OpenBLAS splits sums by thread count), and
    BLAS threads do not fight cybn's OpenMP threads for the cores. On a 2-core machine this
    was also the faster setting for the demo's networks."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    return threadpool_limits(limits=1, user_api="blas")


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale the gradients of ``parameters`` in place so that their global L2 norm (over all
    of them, as one vector, summed in float64) is at most ``max_norm``; returns the norm
    before clipping. As PyTorch's ``clip_grad_norm_``: the factor is
    ``max_norm / (norm + 1e-6)``, applied only when below 1. A NaN or infinite norm leaves
    the gradients unchanged (the step then shows the divergence)."""
    max_norm = _number(max_norm, "max_norm", low=0.0, low_ok=False)
    params = [p for p in parameters if getattr(p, "requires_grad", True)]
    total = math.sqrt(sum(float(np.dot(g, g)) for g in
                          (p.grad.reshape(-1).astype(np.float64) for p in params)))
    factor = max_norm / (total + 1e-6)
    if math.isfinite(total) and factor < 1.0:
        for p in params:
            p.grad *= p.grad.dtype.type(factor)
    return total


def predict(model, X, batch_size: int = 256):
    """Model outputs (logits for a classifier) on X in eval mode, batch by batch (the model
    is left in eval mode). Matrix products run on one BLAS thread (see fit)."""
    with _one_blas_thread():
        return _predict(model, X, batch_size)


def _predict(model, X, batch_size: int):
    batch_size = _count(batch_size, "batch_size", 1)
    model.eval()
    X = np.asarray(X)
    outs = [model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0,))


def evaluate(model, X, y, *, loss="cross_entropy", batch_size: int = 256):
    """Mean loss and, for classification, accuracy of the model in eval mode.

    Returns
    -------
    (loss, accuracy) with accuracy None for regression losses.
    """
    fn = _loss_fn(loss)
    with _one_blas_thread():
        out = _predict(model, X, batch_size)
    value, _ = fn(out, y)
    acc = float(np.mean(out.argmax(axis=1) == y)) if _is_classification(fn) else None
    return value, acc


def fit(model, X, y, *, loss="cross_entropy", optimizer=None, epochs: int = 10,
        batch_size: int = 64, validation_data=None, shuffle: bool = True, seed: int = 0,
        progress: bool = True, comm=None, schedule=None, callbacks=None,
        clip_grad_norm: float | None = None):
    """Train ``model`` on (X, y) with mini-batches.

    Parameters
    ----------
    model : Module
    X, y : ndarrays
        Inputs and targets (class indices for cross-entropy).
    loss : "cross_entropy", "mse" or a callable ``(pred, target) -> (loss, dpred)``
    optimizer : SGD or Adam, optional
        Defaults to ``SGD(model.parameters(), lr=0.01, momentum=0.9)``.
    epochs, batch_size : int
        A last batch of a single sample is dropped (BatchNorm needs two values per channel).
    validation_data : (X_val, y_val), optional
    shuffle, seed : the order of samples each epoch comes from ``np.random.default_rng(seed)``,
        so the same seed (and the same model initialization) gives the same result, whatever
        the OpenMP and BLAS thread settings: the layers' matrix products run on one BLAS
        thread during fit, evaluate and predict.
    progress : bool
        A tqdm bar when tqdm is installed, else one line per epoch.

    Before the first step, every argument is checked and the model and the loss are run
    on two samples of X (and of the validation data) in eval mode, nothing trained or
    updated: targets the loss rejects are an error before any parameter or running
    statistic changes.
    comm : communicator, optional
        Data-parallel training over the ranks of ``comm`` (:mod:`cybn.distributed`): every
        rank calls fit with the same X, y, seed and model; rank 0's parameters are broadcast
        first; each global mini-batch of ``batch_size`` samples is cut into one contiguous
        shard per rank (a batch with fewer samples than ranks is skipped); each rank's loss
        is weighted by its shard's share of the batch and the parameter gradients are summed
        over the ranks, so every rank takes the step of the whole batch. Use
        :func:`cybn.distributed.convert_sync_batchnorm` for batch statistics of the whole
        batch. The history is the whole batch's, the same on every rank.

    schedule : a learning-rate schedule, optional
        :class:`cybn.StepLR`, :class:`cybn.CosineLR`, :class:`cybn.LinearWarmup` (built
        over ``optimizer``): ``schedule.step()`` after each epoch.
    callbacks : list, optional
        :class:`cybn.EarlyStopping`, :class:`cybn.Checkpoint` or any object with their
        methods (see :mod:`cybn.callbacks`); a True from ``on_epoch_end`` stops training.
    clip_grad_norm : float > 0, optional
        Clip the gradients' global L2 norm to this value before each step
        (:func:`clip_grad_norm`; after the sum over ranks with ``comm``).

    Returns
    -------
    history : dict of per-epoch lists ``loss``, ``accuracy``, ``val_loss``,
        ``val_accuracy``, ``lr`` (the learning rate of the epoch), ``time`` (seconds), and
        ``diverged`` (True when the training loss became NaN or infinite; training stops
        there) and ``stopped_early`` (True when a callback stopped training).
    """
    if schedule is not None and optimizer is None:
        raise ValueError("schedule needs the optimizer it was built over: pass optimizer=")
    if schedule is not None and getattr(schedule, "optimizer", None) is not optimizer:
        raise ValueError("schedule must be built over the optimizer passed to fit")
    if clip_grad_norm is not None:
        clip_grad_norm = _number(clip_grad_norm, "clip_grad_norm", low=0.0, low_ok=False)
    callbacks = list(callbacks) if callbacks is not None else []
    for cb in callbacks:
        if not all(hasattr(cb, m) for m in ("on_train_begin", "on_epoch_end",
                                            "on_train_end")):
            raise TypeError(f"callbacks: {type(cb).__name__} lacks on_train_begin, "
                            f"on_epoch_end or on_train_end")
    with _one_blas_thread():
        return _fit(model, X, y, loss, optimizer, epochs, batch_size, validation_data,
                    shuffle, seed, progress, comm, schedule, callbacks, clip_grad_norm)


def _pair(X, y, what: str) -> tuple:
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{what}: X and y must be arrays of samples, got shapes {X.shape} and "
                         f"{y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{what}: X and y must have the same length, got {len(X)} and "
                         f"{len(y)}")
    return X, y


def _probe(model, X, y, fn, what: str) -> None:
    """The model and the loss on two samples in eval mode (nothing trained, no running
    statistic moved), so that targets the loss rejects are an error before the first step."""
    was_training = model.training
    model.eval()
    try:
        with _one_blas_thread():
            out = _predict(model, X[:2], 2)
        fn(out, y[:2])
    except (TypeError, ValueError) as err:
        raise type(err)(f"{what}: {err}") from err
    finally:
        model.train(was_training)


def _fit_args(model, X, y, fn, epochs, batch_size, validation_data, comm) -> tuple:
    X, y = _pair(X, y, "fit")
    epochs = _count(epochs, "epochs", 0)
    batch_size = _count(batch_size, "batch_size", 1)
    if min(batch_size, len(X)) < 2:
        raise ValueError(f"fit needs mini-batches of at least 2 samples (batches of one are "
                         f"skipped: BatchNorm needs two values per channel), got {len(X)} "
                         f"samples and batch_size={batch_size}")
    if comm is not None and min(batch_size, len(X)) < comm.size:
        raise ValueError(f"fit over {comm.size} ranks needs mini-batches of at least "
                         f"{comm.size} samples (one shard per rank), got {len(X)} samples and "
                         f"batch_size={batch_size}")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError(f"validation_data must be a pair (X_val, y_val), got "
                            f"{type(validation_data).__name__}")
        validation_data = _pair(*validation_data, "validation_data")
    _probe(model, X, y, fn, "fit (X, y)")
    if validation_data is not None and len(validation_data[0]):
        _probe(model, *validation_data, fn, "validation_data")
    return X, y, epochs, batch_size, validation_data


def _fit(model, X, y, loss, optimizer, epochs, batch_size, validation_data, shuffle, seed,
         progress, comm=None, schedule=None, callbacks=(), clip=None):
    fn = _loss_fn(loss)
    error = None
    try:  # the whole plan checked before any step (with comm, on every rank: see agree)
        X, y, epochs, batch_size, validation_data = _fit_args(
            model, X, y, fn, epochs, batch_size, validation_data, comm)
    except (TypeError, ValueError) as err:
        if comm is None:
            raise
        error = err
    if comm is not None:
        from .distributed import agree

        plan = [-1, -1, -1] if error is not None else [len(X), batch_size, epochs]
        agree(comm, "fit (samples, batch_size, epochs, shuffle)", plan + [bool(shuffle)],
              error)
    if optimizer is None:
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    if comm is not None:
        from .distributed import allreduce_gradients, allreduce_sum, broadcast_parameters

        broadcast_parameters(model, comm)
        progress = progress and comm.rank == 0
    rng = np.random.default_rng(seed)
    classify = _is_classification(fn)
    for cb in callbacks:  # a metric a callback watches must exist, before any step
        watched = getattr(cb, "monitor", None)
        if isinstance(watched, str) and watched.startswith("val_") and validation_data is None:
            raise ValueError(f"callbacks: {type(cb).__name__} monitors {watched!r}, which "
                             f"needs validation_data")
        if isinstance(watched, str) and watched.endswith("accuracy") and not classify:
            raise ValueError(f"callbacks: {type(cb).__name__} monitors {watched!r}, which "
                             f"needs a classification loss")
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "lr": [],
               "time": [], "diverged": False, "stopped_early": False}
    for cb in callbacks:
        cb.on_train_begin(model)
    bar = None
    if progress:
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]

            bar = tqdm(total=epochs, unit="epoch", file=sys.stderr)
        except ImportError:
            bar = None
    n = len(X)
    for epoch in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(n) if shuffle else np.arange(n)
        model.train()
        total, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue
            share = 1.0
            if comm is not None:
                if len(idx) < comm.size:
                    continue
                n_batch = len(idx)
                idx = np.array_split(idx, comm.size)[comm.rank]
                share = len(idx) / n_batch
            xb, yb = X[idx], y[idx]
            out = model(xb)
            value, grad = fn(out, yb)
            optimizer.zero_grad()
            model.backward_parameters(grad * np.asarray(share, dtype=grad.dtype) if share != 1.0
                                      else grad)
            if comm is not None:
                allreduce_gradients(model, comm)
            if clip is not None:
                clip_grad_norm(optimizer.params, clip)
            optimizer.step()
            total += value * len(idx)
            seen += len(idx)
            if classify:
                correct += int(np.sum(out.argmax(axis=1) == yb))
        if comm is not None:
            total, correct, seen = allreduce_sum(comm, np.array([total, correct, seen],
                                                                dtype=np.float64))
            correct, seen = int(correct), int(seen)
        train_loss = total / max(seen, 1)
        history["loss"].append(train_loss)
        history["accuracy"].append(correct / max(seen, 1) if classify else None)
        if validation_data is not None:
            vl, va = evaluate(model, *validation_data, loss=fn)
        else:
            vl, va = None, None
        history["val_loss"].append(vl)
        history["val_accuracy"].append(va)
        history["lr"].append(float(optimizer.lr))
        history["time"].append(time.perf_counter() - start)
        line = f"epoch {epoch + 1}/{epochs} loss {train_loss:.4f}"
        if classify:
            line += f" acc {history['accuracy'][-1]:.3f}"
        if vl is not None:
            line += f" val_loss {vl:.4f}" + (f" val_acc {va:.3f}" if va is not None else "")
        if bar is not None:
            bar.set_postfix_str(line.split(" ", 2)[2])
            bar.update(1)
        elif progress:
            print(line, flush=True)
        if not np.isfinite(train_loss):
            history["diverged"] = True
            break
        logs = {k: history[k][-1] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                            "lr")}
        stop = False
        for cb in callbacks:
            if comm is not None and comm.rank != 0 and getattr(cb, "rank_zero_only", False):
                continue  # one writer of the files (every rank has the same model)
            stop = bool(cb.on_epoch_end(epoch, logs, model)) or stop
        if schedule is not None:
            schedule.step()
        if stop:
            history["stopped_early"] = True
            break
    for cb in callbacks:
        cb.on_train_end(model)
    if bar is not None:
        bar.close()
    return history
