"""The training helper: hyperparameters and fit inputs are checked up front, before any step."""

import math

import numpy as np
import pytest

import cybn


def model():
    return cybn.Sequential(cybn.Linear(4, 8, rng=0), cybn.BatchNorm1d(8), cybn.ReLU(),
                           cybn.Linear(8, 3, rng=1))


@pytest.mark.parametrize("opt,kwargs,name", [
    (cybn.SGD, dict(lr="0.1"), "lr"), (cybn.SGD, dict(lr=-0.1), "lr"),
    (cybn.SGD, dict(lr=math.nan), "lr"), (cybn.SGD, dict(lr=math.inf), "lr"),
    (cybn.SGD, dict(lr=0.0), "lr"), (cybn.SGD, dict(lr=True), "lr"),
    (cybn.SGD, dict(lr=0.1, momentum=math.nan), "momentum"),
    (cybn.SGD, dict(lr=0.1, momentum=-1), "momentum"),
    (cybn.SGD, dict(lr=0.1, weight_decay=math.inf), "weight_decay"),
    (cybn.Adam, dict(lr=math.nan), "lr"),
    (cybn.Adam, dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (cybn.Adam, dict(betas=(math.nan, 0.9)), r"betas\[0\]"),
    (cybn.Adam, dict(betas=0.9), "betas"),
    (cybn.Adam, dict(eps=0.0), "eps"),
])
def test_optimizer_hyperparameters(opt, kwargs, name):
    kwargs.setdefault("lr", 0.1) if opt is cybn.SGD else None
    with pytest.raises(ValueError, match=f"^{name} must"):
        opt(model().parameters(), **kwargs)


def test_numpy_numbers_are_accepted():
    opt = cybn.SGD(model().parameters(), lr=np.float32(0.5), momentum=np.float64(0.9))
    assert opt.lr == 0.5 and opt.momentum == 0.9


@pytest.mark.parametrize("n,batch_size", [(1, 64), (0, 64), (10, 1), (10, 0), (10, -4)])
def test_fit_without_a_usable_mini_batch_raises(n, batch_size):
    X = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    y = np.zeros(n, np.int64)
    m = model()
    before = [p.data.copy() for p in m.parameters()]
    with pytest.raises(ValueError, match="batch_size"):
        cybn.fit(m, X, y, epochs=1, batch_size=batch_size, progress=False)
    for p, b in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("kwargs,match", [(dict(epochs=-1), "epochs must be at least 0"),
                                          (dict(epochs=2.5), "epochs must be an int"),
                                          (dict(batch_size="8"), "batch_size must be an int")])
def test_fit_counts_are_checked(kwargs, match):
    X = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        cybn.fit(model(), X, np.zeros(8, np.int64), progress=False, **kwargs)


def test_predict_batch_size_is_checked():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        cybn.predict(model(), np.zeros((4, 4), np.float32), batch_size=0)


FIT_SCRIPT = """
import numpy as np, cybn
rng = np.random.default_rng(0)
X = rng.standard_normal((1024, 192)).astype(np.float32)
y = (X[:, :10].sum(axis=1) > 0).astype(np.int64) + 2 * (X[:, 10:20].sum(axis=1) > 0)
model = cybn.Sequential(cybn.Linear(192, 384, rng=1), cybn.BatchNorm1d(384), cybn.ReLU(),
                        cybn.Linear(384, 384, rng=2), cybn.BatchNorm1d(384), cybn.ReLU(),
                        cybn.Linear(384, 4, rng=3))
opt = cybn.SGD(model.parameters(), lr=0.5, momentum=0.9)
h = cybn.fit(model, X, y, optimizer=opt, epochs=3, batch_size=256, seed=0, progress=False,
             validation_data=(X[:300], y[:300]))
print(repr(h["loss"] + h["val_loss"]), repr(cybn.predict(model, X[:5]).tolist()))
"""


def test_fit_gives_the_same_history_for_any_blas_and_openmp_threads():
    """Same seed, same history and predictions, whatever OPENBLAS/OMP thread settings."""
    from test_threads import run_python

    outputs = {run_python(FIT_SCRIPT, env={"OPENBLAS_NUM_THREADS": b, "OMP_NUM_THREADS": o,
                                           "MKL_NUM_THREADS": b})
               for b, o in [("1", "1"), ("2", "2"), ("4", "1")]}
    assert len(outputs) == 1, outputs


def test_fit_with_labels_the_loss_rejects_changes_nothing():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    model = cybn.Sequential(cybn.Linear(4, 5, rng=0), cybn.BatchNorm1d(5), cybn.ReLU(),
                            cybn.Linear(5, 3, rng=1))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="fit"):
        cybn.fit(model, X, np.zeros((16, 3), np.int64), epochs=1, progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


@pytest.mark.parametrize("validation_data", ["X", "triple", "lengths", "labels"])
def test_fit_checks_validation_data_before_training(validation_data):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = cybn.Sequential(cybn.Linear(4, 5, rng=0), cybn.BatchNorm1d(5), cybn.ReLU(),
                            cybn.Linear(5, 3, rng=1))
    state = {k: v.copy() for k, v in model.state_dict().items()}
    bad = {"X": X, "triple": (X, y, y), "lengths": (X, y[:3]),
           "labels": (X, np.zeros((16, 2)))}[validation_data]
    with pytest.raises((TypeError, ValueError), match="validation_data"):
        cybn.fit(model, X, y, epochs=1, progress=False, validation_data=bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_fit_results_do_not_depend_on_the_blas_thread_setting():
    """fit runs every matrix product on one BLAS thread, also those that do not go through
    cybn's own blocks (the grouped convolution's NumPy products): the same bits whatever the
    caller's BLAS setting (OpenBLAS splits its sums by thread count)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(5)
    X = rng.standard_normal((256, 8, 16, 16)).astype(np.float32)
    y = rng.integers(0, 4, 256)

    def train(blas_threads):
        model = cybn.Sequential(cybn.Conv2d(8, 16, 3, padding=1, groups=2, rng=1),
                                cybn.BatchNorm2d(16), cybn.ReLU(), cybn.Flatten(),
                                cybn.Linear(16 * 16 * 16, 4, rng=2))
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            cybn.fit(model, X, y, epochs=1, batch_size=128, shuffle=False, progress=False)
        return model.state_dict()

    one, many = train(1), train(4)
    for key in one:
        np.testing.assert_array_equal(one[key], many[key], err_msg=key)
