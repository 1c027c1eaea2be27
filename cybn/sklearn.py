"""scikit-learn estimators on cybn: a per-channel standardizer and batch-normalized networks.

* :class:`ChannelScaler`: a transformer that standardizes each channel of arrays of any
  rank (2-D: each feature, as scikit-learn's ``StandardScaler``), with exact streaming
  statistics (``partial_fit``), ``inverse_transform``, float32 kept float32, ``set_output``
  and feature names for 2-D input.
* :class:`BNMLPClassifier`, :class:`BNMLPRegressor`: multi-layer perceptrons with a
  batch-norm layer after each hidden linear layer, with the parameters of scikit-learn's
  ``MLPClassifier``/``MLPRegressor`` where they mean the same, or any cybn model (a CNN for
  image arrays) through ``model=``.

Each passes scikit-learn's own estimator checks (``parametrize_with_checks``, in the test
suite). scikit-learn is imported by this module only: ``pip install "cybn[sklearn]"``.
"""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np
from sklearn.base import (BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, RegressorMixin,
                          TransformerMixin)
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import nn
from .ops.batchnorm import batch_norm_infer
from .ops.stats import batch_norm_stats, merge_stats
from .train import SGD, Adam, _one_blas_thread, cross_entropy, mse_loss

__all__ = ["ChannelScaler", "BNMLPClassifier", "BNMLPRegressor"]

_TINY = 1e-300  # an eps that leaves running_var = 1.0 exactly 1.0 (the affine pass's divisor)


def _check_choice(value, name: str, choices: tuple):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value, name: str, low: float, high: float = np.inf, *,
                 low_ok: bool = True, high_ok: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (np.isfinite(v) and (v > low or (low_ok and v == low))
            and (v < high or (high_ok and v == high))):
        raise ValueError(f"{name} must be in {'[' if low_ok else '('}{low:g}, {high:g}"
                         f"{']' if high_ok else ')'}, got {value!r}")
    return v


# ----------------------------------------------------------------------------- transformer
class ChannelScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardize each channel: ``(x - mean) / std`` with per-channel statistics over every
    other axis (2-D input: per feature, as ``StandardScaler``).

    Parameters
    ----------
    axis : int
        The channel axis of the arrays (1: (N, C, ...); -1: channels-last). 2-D input has its
        features along axis 1 whatever ``axis`` says about higher ranks.
    with_mean, with_std : bool
        Center, and scale to unit variance (a constant channel keeps scale 1).
    copy : bool
        False transforms a float32/float64 C-contiguous writeable input in place.

    Attributes
    ----------
    mean_, var_, scale_ : ndarray (C,), float64
        Per-channel mean, biased variance and the divisor used (sqrt(var), 1 where var is 0).
    n_samples_seen_ : int
        Values per channel seen (samples times the other axes' sizes).
    n_features_in_ : int
        Channels (2-D: features). ``feature_names_in_`` for 2-D input with column names.

    The statistics are exact over every batch given to ``partial_fit``: each batch's
    (count, mean, M2) in float64, merged with Chan et al.'s formula (``cybn.merge_stats``),
    so streaming gives the one-pass result to within rounding. The transform runs cybn's
    compiled affine pass in the input's dtype (float32 stays float32; other numbers become
    float64).
    """

    def __init__(self, axis: int = 1, with_mean: bool = True, with_std: bool = True,
                 copy: bool = True):
        self.axis = axis
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _validate(self, X, reset: bool):
        """(X checked, its channel axis). 2-D X goes through scikit-learn's validation
        (feature names, n_features_in_); higher ranks count channels along ``axis``."""
        ndim = getattr(X, "ndim", None)
        if ndim is None:
            ndim = np.asarray(X).ndim
        if ndim <= 2:  # (feature names come from the original, a data frame say)
            return validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                                 copy=False), 1
        X = check_array(X, dtype=[np.float64, np.float32], allow_nd=True, copy=False)
        axis = self.axis
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral) \
                or not -X.ndim <= axis < X.ndim or axis % X.ndim == 0:
            raise ValueError(f"axis must be a channel axis of X (not the sample axis 0), got "
                             f"{self.axis!r} for X of shape {X.shape}")
        axis = int(axis) % X.ndim
        if reset:
            self.n_features_in_ = X.shape[axis]
            self.__dict__.pop("feature_names_in_", None)
        elif hasattr(self, "mean_") and X.shape[axis] != self.mean_.shape[0]:
            raise ValueError(f"X has {X.shape[axis]} channels along axis {axis}, but "
                             f"ChannelScaler was fitted with {self.mean_.shape[0]}")
        return X, axis

    def fit(self, X, y=None):
        """Compute the per-channel statistics of X (forgetting earlier ones)."""
        for name in ("mean_", "var_", "scale_", "n_samples_seen_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(X, y)

    def partial_fit(self, X, y=None):
        """Merge X's per-channel statistics into those seen so far."""
        first = not hasattr(self, "mean_")
        X, axis = self._validate(X, reset=first)
        count, mean, m2 = batch_norm_stats(X, axis=axis)
        if not first:
            count, mean, m2 = merge_stats([self.n_samples_seen_, count],
                                          np.stack([self.mean_, mean]),
                                          np.stack([self._m2, m2]))
        self._m2 = m2
        self.n_samples_seen_ = int(count)
        self.n_features_in_ = X.shape[axis]
        var = m2 / max(count, 1)
        self.mean_ = mean
        self.var_ = var
        self.scale_ = np.where(var > 0, np.sqrt(var), 1.0)
        return self

    def _affine(self, X, shift, multiplier, offset):
        """X * multiplier + offset after subtracting shift, in X's dtype, per channel."""
        X, axis = self._validate(X, reset=False)
        in_place = (not self.copy and X.flags.c_contiguous and X.flags.writeable)
        ones = np.ones(X.shape[axis])
        return batch_norm_infer(X, shift, ones, multiplier, offset, eps=_TINY, axis=axis,
                                out=X if in_place else None)

    def transform(self, X, copy=None):
        """``(X - mean_) / scale_`` per channel (as configured by with_mean, with_std)."""
        check_is_fitted(self)
        shift = self.mean_ if self.with_mean else np.zeros_like(self.mean_)
        mult = 1.0 / self.scale_ if self.with_std else np.ones_like(self.scale_)
        return self._affine(X, shift, mult, np.zeros_like(self.mean_))

    def inverse_transform(self, X, copy=None):
        """``X * scale_ + mean_`` per channel: the inverse of :meth:`transform`."""
        check_is_fitted(self)
        mult = self.scale_ if self.with_std else np.ones_like(self.scale_)
        offset = self.mean_ if self.with_mean else np.zeros_like(self.mean_)
        return self._affine(X, np.zeros_like(self.mean_), mult, offset)


# ----------------------------------------------------------------------------- networks
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "logistic": nn.Sigmoid,
                "identity": nn.Identity}


class _BNMLP(BaseEstimator):
    """The networks' shared fitting loop (see BNMLPClassifier)."""

    _loss = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, batch_norm=True,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, model=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.batch_norm = batch_norm
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.model = model

    # -- checks
    def _check_params(self) -> list:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        for s in sizes:
            _check_int(s, "hidden_layer_sizes entries", 1)
        _check_choice(self.activation, "activation", tuple(_ACTIVATIONS))
        _check_choice(self.solver, "solver", ("adam", "sgd"))
        _check_float(self.alpha, "alpha", 0.0)
        if self.batch_size != "auto":
            _check_int(self.batch_size, "batch_size", 2)
        _check_float(self.learning_rate_init, "learning_rate_init", 0.0, low_ok=False)
        _check_int(self.max_iter, "max_iter", 1)
        _check_float(self.tol, "tol", 0.0)
        _check_float(self.momentum, "momentum", 0.0, 1.0, high_ok=True)
        _check_float(self.validation_fraction, "validation_fraction", 0.0, 1.0, low_ok=False)
        _check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        if self.model is not None and not callable(self.model):
            raise ValueError(f"model must be None or a callable (n_features, n_outputs, seed) "
                             f"-> cybn Module, got {type(self.model).__name__}")
        return sizes

    def _validate_X(self, X, reset: bool):
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                          allow_nd=self.model is not None)
        return np.ascontiguousarray(X)

    # -- the network
    def _build(self, n_features: int, n_outputs: int, dtype, seed: int):
        if self.model is not None:
            net = self.model(n_features, n_outputs, seed)
            if not isinstance(net, nn.Module):
                raise TypeError(f"model must return a cybn Module, got {type(net).__name__}")
            return net
        layers, width = [], n_features
        rng = np.random.default_rng(seed)
        for size in self._sizes:
            layers.append(nn.Linear(width, size, rng=rng, dtype=dtype))
            if self.batch_norm:
                layers.append(nn.BatchNorm1d(size, dtype=dtype))
            layers.append(_ACTIVATIONS[self.activation]())
            width = size
        layers.append(nn.Linear(width, n_outputs, rng=rng, dtype=dtype))
        for layer in layers:  # scikit-learn's L2 penalty: weights only
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                layer.bias.decay = False
        return nn.Sequential(*layers)

    def _optimizer(self, batch: int):
        # scikit-learn adds alpha / 2 * ||W||^2 / batch to each batch's loss
        decay = float(self.alpha) / batch
        params = self.model_.parameters()
        if self.solver == "adam":
            return Adam(params, lr=self.learning_rate_init, weight_decay=decay)
        return SGD(params, lr=self.learning_rate_init, momentum=self.momentum,
                   weight_decay=decay)

    def _prepare(self, X, y, incremental: bool, classes=None):
        """Checked data, a built (or kept) model and optimizer; returns (X, targets)."""
        self._sizes = self._check_params()
        keep = hasattr(self, "model_") and (incremental or self.warm_start)
        X, y = self._validate_xy(X, y, reset=not keep, classes=classes,
                                 incremental=incremental)
        if X.shape[0] < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 samples (batch norm "
                             f"takes statistics over a batch), got {X.shape[0]} sample")
        if keep and X.dtype != self._dtype:
            X = X.astype(self._dtype)
        if not keep:
            self._dtype = X.dtype
            self._rs = check_random_state(self.random_state)
            seed = int(self._rs.randint(np.iinfo(np.int32).max))
            self.model_ = self._build(X.shape[1], self._n_outputs, X.dtype, seed)
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = None if not self.early_stopping else -np.inf
            self._no_improvement = 0
            self._opt = None
        elif not hasattr(self, "_rs"):
            self._rs = check_random_state(self.random_state)
        return X, y

    def _batch(self, n: int) -> int:
        return min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

    def _epoch(self, X, T, batch: int, order_rng) -> float:
        model, opt = self.model_, self._opt
        n = len(X)
        order = order_rng.permutation(n) if self.shuffle else np.arange(n)
        total, seen = 0.0, 0
        model.train()
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            if len(idx) < 2:  # batch norm needs two values per channel
                continue
            out = model(X[idx])
            value, grad = self._loss(out, T[idx])
            opt.zero_grad()
            model.backward_parameters(grad)
            opt.step()
            total += float(value) * len(idx)
            seen += len(idx)
            self.t_ += len(idx)
        return total / max(seen, 1)

    def _fit(self, X, y, incremental: bool, classes=None):
        X, T = self._prepare(X, y, incremental, classes)
        batch = self._batch(len(X))
        if self._opt is None or not (incremental or self.warm_start):
            self._opt = self._optimizer(batch)
        early = self.early_stopping and not incremental
        Xv = Tv = yv = None
        if early:
            stratify = self._stratify(T)
            X, Xv, T, Tv = train_test_split(X, T, test_size=self.validation_fraction,
                                            random_state=self._rs.randint(2 ** 31 - 1),
                                            stratify=stratify)
            yv = self._decode(Tv)
            if len(X) < 2:
                raise ValueError("early_stopping leaves fewer than 2 training samples")
            batch = self._batch(len(X))
        order_rng = np.random.default_rng(self._rs.randint(2 ** 31 - 1))
        epochs = 1 if incremental else self.max_iter
        best_state = None
        with _one_blas_thread(), np.errstate(over="ignore", invalid="ignore"):
            for _ in range(epochs):
                start = time.perf_counter()
                loss = self._epoch(X, T, batch, order_rng)
                self.n_iter_ += 1
                self.loss_curve_.append(loss)
                if not np.isfinite(loss):
                    raise ValueError(f"{type(self).__name__}: the training loss became {loss} "
                                     f"at iteration {self.n_iter_}; lower learning_rate_init")
                if early:
                    score = self._score_model(Xv, yv)
                    self.validation_scores_.append(score)
                    improved = score > self.best_validation_score_ + self.tol
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        best_state = self.model_.state_dict()
                else:
                    improved = loss < self.best_loss_ - self.tol
                    self.best_loss_ = min(self.best_loss_, loss)
                self._no_improvement = 0 if improved else self._no_improvement + 1
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {loss:.8f} "
                          f"({time.perf_counter() - start:.3f} s)")
                if incremental:
                    break
                if self._no_improvement >= self.n_iter_no_change:
                    if self.verbose:
                        print(f"No improvement over {self.n_iter_no_change} iterations: "
                              f"stopping")
                    break
            else:
                if not incremental:
                    warnings.warn(f"{type(self).__name__}: maximum iterations "
                                  f"({self.max_iter}) reached and the optimization has not "
                                  f"converged yet", ConvergenceWarning)
        if best_state is not None:
            self.model_.load_state_dict(best_state)
        self.model_.eval()
        return self

    def _score_model(self, X, y) -> float:
        return float(self.score(X, y))

    def _outputs(self, X):
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if X.dtype != self._dtype:
            X = X.astype(self._dtype)
        model = self.model_
        model.eval()
        with _one_blas_thread():
            out = [model(X[i:i + 512]) for i in range(0, len(X), 512)]
        return np.concatenate(out).astype(np.float64) if out else np.empty((0, self._n_outputs))

    def fit(self, X, y):
        """Train the network on (X, y) for up to max_iter epochs (see the class)."""
        return self._fit(X, y, incremental=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class BNMLPClassifier(ClassifierMixin, _BNMLP):
    """A multi-layer perceptron classifier with batch normalization after each hidden
    linear layer, trained with cybn (softmax cross-entropy, mini-batches).

    Parameters
    ----------
    hidden_layer_sizes : tuple of int
        Widths of the hidden layers: ``Linear -> BatchNorm1d -> activation`` each.
    activation : "relu", "tanh", "logistic" or "identity"
    batch_norm : bool
        False gives the same network without batch norm.
    solver : "adam" or "sgd" (with ``momentum``)
    alpha : float
        L2 penalty on the weights, as scikit-learn's (``alpha / 2 * ||W||^2`` per batch,
        divided by the batch size): weight decay ``alpha / batch_size``.
    batch_size : int or "auto" (``min(200, n_samples)``)
        A last batch of one sample is skipped (batch norm needs two).
    learning_rate_init, max_iter, shuffle, random_state, tol, verbose : as MLPClassifier's
    warm_start, early_stopping, validation_fraction, n_iter_no_change : as MLPClassifier's
        Training stops when the training loss (or, with ``early_stopping``, the accuracy
        on a stratified ``validation_fraction`` held out, whose best epoch's weights are
        restored) has not improved by ``tol`` for ``n_iter_no_change`` epochs; a
        ConvergenceWarning at ``max_iter``.
    momentum : float
        SGD's momentum.
    model : callable, optional
        ``model(n_features, n_outputs, seed) -> cybn Module`` replaces the MLP: any cybn
        network mapping X (which may then have any rank, e.g. (N, C, H, W) images) to
        ``n_outputs`` logits. The other parameters but the network's still apply.

    Attributes
    ----------
    classes_, n_features_in_, model_ (the trained cybn model, in eval mode), loss_curve_,
    n_iter_, t_ (samples seen), best_loss_, validation_scores_, best_validation_score_.
    """

    _loss = staticmethod(cross_entropy)

    def _validate_xy(self, X, y, reset: bool, classes, incremental: bool):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             f"y is None")
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32],
                             allow_nd=self.model is not None)
        X = np.ascontiguousarray(X)
        check_classification_targets(y)
        if reset:
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to "
                                     "partial_fit")
                self._encoder = LabelEncoder().fit(np.asarray(classes))
            else:
                self._encoder = LabelEncoder().fit(y)
            self.classes_ = self._encoder.classes_
            if len(self.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, "
                                 f"got 1 class: {self.classes_[0]!r}")
            self._n_outputs = len(self.classes_)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the classes of the first "
                             f"call, {self.classes_!r}")
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if len(unseen):
            raise ValueError(f"y holds labels {unseen!r} that are not in classes_ "
                             f"{self.classes_!r}")
        return X, self._encoder.transform(y).astype(np.int64)

    def _stratify(self, T):
        """T where a stratified split can keep every class on both sides, else None."""
        counts = np.bincount(T)
        classes = int(np.count_nonzero(counts))
        n_test = int(np.ceil(self.validation_fraction * len(T)))
        if counts[counts > 0].min() >= 2 and classes <= n_test <= len(T) - classes:
            return T
        return None

    def _decode(self, T):
        return self.classes_[T]

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y); ``classes`` (every label) is needed on the first call."""
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes): the softmax of the logits."""
        z = self._outputs(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """Log class probabilities (the log-softmax of the logits)."""
        z = self._outputs(X)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X):
        """The most probable class of each sample."""
        index = np.argmax(self._outputs(X), axis=1)
        return self.classes_[index]


class BNMLPRegressor(RegressorMixin, _BNMLP):
    """A multi-layer perceptron regressor with batch normalization after each hidden linear
    layer, trained with cybn on the mean squared error; y may have several outputs.

    Same parameters as :class:`BNMLPClassifier` (``early_stopping`` watches R^2 on the
    held-out part); attributes ``n_outputs_``, ``model_``, ``loss_curve_`` (the mean
    squared error per epoch), ``n_iter_``, ``t_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_``.
    """

    _loss = staticmethod(mse_loss)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _validate_xy(self, X, y, reset: bool, classes, incremental: bool):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             f"y is None")
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32],
                             multi_output=True, y_numeric=True,
                             allow_nd=self.model is not None)
        X = np.ascontiguousarray(X)
        T = np.asarray(y, dtype=X.dtype)
        self._y_1d = T.ndim == 1 if reset else self._y_1d
        T = T.reshape(len(T), -1)
        if reset:
            self.n_outputs_ = self._n_outputs = T.shape[1]
        elif T.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {T.shape[1]} outputs, the model was fitted with "
                             f"{self.n_outputs_}")
        return X, np.ascontiguousarray(T)

    def _stratify(self, T):
        return None

    def _decode(self, T):
        return T[:, 0] if self._y_1d else T

    def partial_fit(self, X, y):
        """One epoch over (X, y)."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """The network's outputs, (n_samples,) for 1-D y, else (n_samples, n_outputs)."""
        out = self._outputs(X)
        return out[:, 0] if self._y_1d else out
