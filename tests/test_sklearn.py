"""cybn.sklearn: scikit-learn's own estimator checks, the scaler against the float64
reference (any rank, streaming), the networks' learning, reproducibility, warm starts,
early stopping, custom models and pipelines."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_diabetes, load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cybn  # noqa: E402
from cybn.sklearn import BNMLPClassifier, BNMLPRegressor, ChannelScaler  # noqa: E402


@parametrize_with_checks([ChannelScaler(), ChannelScaler(axis=-1, with_mean=False),
                          BNMLPClassifier(hidden_layer_sizes=(32,), max_iter=100),
                          BNMLPClassifier(hidden_layer_sizes=(16, 16), solver="sgd",
                                          learning_rate_init=0.05, early_stopping=True,
                                          max_iter=60),
                          BNMLPRegressor(hidden_layer_sizes=(32,), max_iter=100)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("shape,axis", [((6, 4, 5, 3), 1), ((6, 5, 3, 4), -1), ((40, 7), 1),
                                        ((5, 3, 9), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaler_against_float64_reference_any_rank(shape, axis, dtype):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    X.reshape(-1)[:: 7] = 100.0  # one channel may be constant in small shapes: scale 1
    scaler = ChannelScaler(axis=axis).fit(X)
    ax = 1 if X.ndim == 2 else axis % X.ndim
    red = tuple(i for i in range(X.ndim) if i != ax)
    X64 = X.astype(np.float64)
    mean, var = X64.mean(axis=red), X64.var(axis=red)
    np.testing.assert_allclose(scaler.mean_, mean, rtol=1e-13)
    np.testing.assert_allclose(scaler.var_, var, rtol=1e-7 if dtype == np.float32 else 1e-12,
                               atol=1e-12)
    shape_c = [1] * X.ndim
    shape_c[ax] = -1
    want = (X64 - mean.reshape(shape_c)) / np.where(var > 0, np.sqrt(var), 1).reshape(shape_c)
    got = scaler.transform(X)
    assert got.dtype == dtype and got.shape == X.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    back = scaler.inverse_transform(got)
    np.testing.assert_allclose(back, X, rtol=tol * 10, atol=tol * 100)


def test_scaler_streaming_equals_one_pass():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((101, 3, 4, 4)) * 2 + 1e4  # far from zero: no cancellation
    whole = ChannelScaler().fit(X)
    stream = ChannelScaler()
    for start in range(0, 101, 17):
        stream.partial_fit(X[start:start + 17])
    assert stream.n_samples_seen_ == whole.n_samples_seen_ == 101 * 16
    np.testing.assert_allclose(stream.mean_, whole.mean_, rtol=1e-15)
    np.testing.assert_allclose(stream.var_, whole.var_, rtol=1e-11)
    with pytest.raises(ValueError, match="channels"):
        stream.partial_fit(X[:, :2])
    flat = ChannelScaler().fit(X[:, :, 0, 0])
    with pytest.raises(ValueError, match="features"):
        flat.partial_fit(X[:, :2, 0, 0])


def test_scaler_options_in_place_and_feature_names():
    X = np.random.default_rng(2).standard_normal((20, 3)).astype(np.float32) * 5 + 2
    s = ChannelScaler(with_std=False).fit(X)
    np.testing.assert_allclose(s.transform(X), X - X.mean(axis=0), atol=1e-5)
    Y = X.copy()
    out = ChannelScaler(copy=False).fit(Y).transform(Y)
    assert out is Y or np.shares_memory(out, Y)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    s = ChannelScaler().set_output(transform="pandas").fit(frame)
    result = s.transform(frame)
    assert list(result.columns) == ["a", "b", "c"]
    assert list(s.get_feature_names_out()) == ["a", "b", "c"]


def _digits(n=None):
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    return X[:n], y[:n]


def test_classifier_learns_digits_reproducibly():
    X, y = _digits()
    clf = BNMLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0)
    clf.fit(X[:1400], y[:1400])
    assert clf.score(X[1400:], y[1400:]) > 0.9  # MLPClassifier, same settings: 0.899
    proba = clf.predict_proba(X[1400:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X[1400:]))
    again = BNMLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0)
    np.testing.assert_array_equal(again.fit(X[:1400], y[:1400]).predict_proba(X[1400:]),
                                  proba)
    assert clf.n_iter_ == len(clf.loss_curve_) and clf.model_.training is False
    assert isinstance(clf.model_[1], cybn.BatchNorm1d)


def test_warm_start_partial_fit_and_early_stopping():
    X, y = _digits(600)
    clf = BNMLPClassifier(hidden_layer_sizes=(32,), max_iter=3, warm_start=True,
                          random_state=1)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    first = clf.model_
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert clf.model_ is first and clf.n_iter_ == 6
    inc = BNMLPClassifier(hidden_layer_sizes=(32,), random_state=1)
    with pytest.raises(ValueError, match="classes"):
        inc.partial_fit(X, y)
    inc.partial_fit(X[:300], y[:300], classes=np.arange(10))
    inc.partial_fit(X[300:], y[300:])
    assert inc.n_iter_ == 2 and inc.t_ == 600
    es = BNMLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3,
                         max_iter=200, learning_rate_init=0.05, tol=0.0,
                         random_state=0).fit(X, y)
    scores = es.validation_scores_
    assert es.best_validation_score_ == max(scores) and es.n_iter_ < 200
    # with tol 0: stopped 3 epochs after the first best one, whose weights are back
    assert es.n_iter_ == int(np.argmax(scores)) + 1 + 3


def test_custom_model_on_image_arrays_and_pipeline():
    X, y = _digits(500)
    images = X.reshape(-1, 1, 8, 8)

    def cnn(n_features, n_outputs, seed):
        rng = np.random.default_rng(seed)
        return cybn.Sequential(cybn.Conv2d(n_features, 8, 3, padding=1, rng=rng),
                               cybn.BatchNorm2d(8), cybn.ReLU(), cybn.MaxPool2d(2),
                               cybn.Flatten(), cybn.Linear(8 * 16, n_outputs, rng=rng))

    clf = BNMLPClassifier(model=cnn, max_iter=15, learning_rate_init=0.01, random_state=0)
    clf.fit(images[:400], y[:400])
    assert isinstance(clf.model_[0], cybn.Conv2d) and clf.score(images[400:], y[400:]) > 0.8
    pipe = make_pipeline(ChannelScaler(), BNMLPClassifier(max_iter=60, random_state=0))
    search = GridSearchCV(pipe, {"bnmlpclassifier__hidden_layer_sizes": [(16,), (48,)]},
                          cv=2).fit(X, y)
    assert search.best_score_ > 0.8


def test_regressor_diabetes_and_multi_output():
    X, y = load_diabetes(return_X_y=True)
    Xs = ChannelScaler().fit_transform(X)
    ys = (y - y.mean()) / y.std()
    reg = BNMLPRegressor(hidden_layer_sizes=(32,), max_iter=200, alpha=1e-2,
                         early_stopping=True, random_state=0)
    reg.fit(Xs[:350], ys[:350])
    assert reg.score(Xs[350:], ys[350:]) > 0.3 and reg.predict(Xs[:3]).shape == (3,)
    Y = np.stack([ys, -2 * ys], axis=1)
    multi = BNMLPRegressor(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(Xs, Y)
    assert multi.predict(Xs[:4]).shape == (4, 2) and multi.n_outputs_ == 2


def test_alpha_is_scikit_learns_penalty():
    X, y = _digits(100)
    clf = BNMLPClassifier(hidden_layer_sizes=(8,), alpha=0.5, batch_size=25, max_iter=1)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert clf._opt.weight_decay == pytest.approx(0.5 / 25)
    assert [p.decay for p in clf.model_.parameters()] == [True, False, False, False, True,
                                                          False]


@pytest.mark.parametrize("param,value", [("hidden_layer_sizes", (0,)), ("activation", "elu"),
                                         ("solver", "lbfgs"), ("alpha", -1.0),
                                         ("batch_size", 1), ("learning_rate_init", 0.0),
                                         ("max_iter", 0), ("validation_fraction", 1.0),
                                         ("n_iter_no_change", 0), ("momentum", 2.0),
                                         ("model", 3)])
def test_bad_parameters_name_themselves_at_fit(param, value):
    X, y = _digits(50)
    clf = BNMLPClassifier(**{param: value})
    with pytest.raises(ValueError, match=param):
        clf.fit(X, y)
    assert not hasattr(clf, "model_")
