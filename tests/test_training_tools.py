"""Learning-rate schedules against their formulas, gradient clipping against known norms,
early stopping (the restored weights are the best epoch's), checkpoints that load, and
fit's checks of these arguments before any step."""

import math

import numpy as np
import pytest

import cybn


def _opt(lr=1.0):
    return cybn.SGD([cybn.Parameter(np.zeros(3, np.float32))], lr=lr)


def _run(schedule, steps):
    lrs = [schedule.optimizer.lr]
    for _ in range(steps):
        lrs.append(schedule.step())
    return lrs


def test_step_lr_formula():
    opt = _opt(0.8)
    lrs = _run(cybn.StepLR(opt, step_size=3, gamma=0.5), 7)
    np.testing.assert_allclose(lrs, [0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2], rtol=1e-15)
    assert opt.lr == lrs[-1]


def test_cosine_formula_and_floor():
    opt = _opt(1.0)
    sched = cybn.CosineLR(opt, t_max=4, min_lr=0.1)
    lrs = _run(sched, 6)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * min(t, 4) / 4)) / 2 for t in range(7)]
    np.testing.assert_allclose(lrs, want, rtol=1e-15)
    assert lrs[2] == pytest.approx(0.55) and lrs[4:] == [0.1, 0.1, 0.1]
    assert sched.lr_at(2) == lrs[2] and sched.t == 6  # lr_at changes nothing


def test_linear_warmup_then_cosine():
    opt = _opt(2.0)
    sched = cybn.LinearWarmup(opt, warmup=4, start_factor=0.25, then=cybn.CosineLR(opt, 2))
    assert opt.lr == 0.5  # the first epoch already runs at the warm-up's start
    lrs = _run(sched, 7)
    np.testing.assert_allclose(lrs, [0.5, 0.875, 1.25, 1.625, 2.0, 1.0, 0.0, 0.0], atol=1e-15)
    assert sched.get_last_lr() == lrs[-1]
    plain = cybn.LinearWarmup(_opt(1.0), warmup=2, start_factor=0.5)
    assert _run(plain, 3) == [0.5, 0.75, 1.0, 1.0]


def test_schedule_arguments_are_checked():
    opt = _opt()
    for bad in (lambda: cybn.StepLR(opt, 0), lambda: cybn.StepLR(opt, 2, gamma=-1),
                lambda: cybn.CosineLR(opt, 0), lambda: cybn.CosineLR(opt, 3, min_lr=-1),
                lambda: cybn.LinearWarmup(opt, 0),
                lambda: cybn.LinearWarmup(opt, 2, start_factor=1.5),
                lambda: cybn.LinearWarmup(opt, 2, then=cybn.StepLR(_opt(), 2))):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError, match="optimizer"):
        cybn.StepLR("sgd", 2)
    assert opt.lr == 1.0


def test_clip_grad_norm_known_values():
    a, b = cybn.Parameter(np.zeros(1, np.float32)), cybn.Parameter(np.zeros(1, np.float64))
    a.grad[:], b.grad[:] = 3.0, 4.0
    assert cybn.clip_grad_norm([a, b], 10.0) == 5.0
    assert a.grad[0] == 3.0 and b.grad[0] == 4.0  # below the limit: unchanged
    assert cybn.clip_grad_norm([a, b], 4.0) == 5.0  # a mild clip: factor 0.8
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [2.4, 3.2], rtol=1e-6)
    a.grad[:], b.grad[:] = 3.0, 4.0
    assert cybn.clip_grad_norm([a, b], 1.0) == 5.0
    factor = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [3 * factor, 4 * factor], rtol=1e-7)
    a.grad[:] = np.nan
    b.grad[:] = 4.0
    assert math.isnan(cybn.clip_grad_norm([a, b], 1.0)) and b.grad[0] == 4.0
    frozen = cybn.Parameter(np.zeros(1))
    frozen.grad[:], frozen.requires_grad = 100.0, False
    b.grad[:] = 2.0
    assert cybn.clip_grad_norm([b, frozen], 1.0) == 2.0 and frozen.grad[0] == 100.0
    with pytest.raises(ValueError, match="max_norm"):
        cybn.clip_grad_norm([b], 0.0)


class _Fake:
    """A model stand-in: state is one number."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"v": self.value}

    def load_state_dict(self, state):
        self.value = state["v"]


def test_early_stopping_patience_and_restore():
    es = cybn.EarlyStopping(monitor="val_loss", patience=3, min_delta=0.05)
    model = _Fake()
    es.on_train_begin(model)
    stops = []
    for epoch, v in enumerate([5.0, 4.0, 3.97, 4.5, 3.96, 3.99]):
        model.value = epoch
        stops.append(es.on_epoch_end(epoch, {"val_loss": v}, model))
        if stops[-1]:
            break
    # 3.97 and 3.96 do not beat 4.0 by more than 0.05: three epochs without improvement
    assert stops == [False, False, False, False, True]
    assert es.best == 4.0 and es.best_epoch == 1 and es.stopped_epoch == 4
    es.on_train_end(model)
    assert model.value == 1
    flat = cybn.EarlyStopping(monitor="loss", patience=1)  # an equal value is no improvement
    flat.on_train_begin(model)
    assert not flat.on_epoch_end(0, {"loss": 1.0}, model)
    assert flat.on_epoch_end(1, {"loss": 1.0}, model) and flat.best_epoch == 0
    acc = cybn.EarlyStopping(monitor="accuracy", patience=1)
    acc.on_train_begin(model)
    assert not acc.on_epoch_end(0, {"accuracy": 0.5}, model)
    assert acc.on_epoch_end(1, {"accuracy": 0.4}, model) and acc.mode == "max"
    for bad in (dict(monitor="val_f1"), dict(patience=0), dict(mode="up"),
                dict(min_delta=-1)):
        with pytest.raises(ValueError):
            cybn.EarlyStopping(**bad)


def _digits():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((240, 8)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    return X[:160], y[:160], X[160:], y[160:]


def _mlp():
    return cybn.Sequential(cybn.Linear(8, 32, rng=1), cybn.BatchNorm1d(32), cybn.ReLU(),
                           cybn.Linear(32, 3, rng=2))


def test_fit_restores_the_best_epoch_and_records_lr():
    X, y, Xv, yv = _digits()
    model = _mlp()
    opt = cybn.SGD(model.parameters(), lr=2.0, momentum=0.9)  # high: validation loss wanders
    sched = cybn.StepLR(opt, step_size=2, gamma=0.5)
    es = cybn.EarlyStopping(patience=2)
    hist = cybn.fit(model, X, y, optimizer=opt, epochs=30, batch_size=16,
                    validation_data=(Xv, yv), schedule=sched, callbacks=[es], progress=False)
    n = len(hist["loss"])
    assert hist["lr"] == [2.0 * 0.5 ** (e // 2) for e in range(n)]
    best = int(np.argmin(hist["val_loss"]))
    assert es.best_epoch == best and es.best == hist["val_loss"][best]
    if hist["stopped_early"]:
        assert n == best + 3 and es.stopped_epoch == n - 1
    assert cybn.evaluate(model, Xv, yv)[0] == hist["val_loss"][best]


def test_checkpoints_hold_the_epochs_models(tmp_path):
    pytest.importorskip("safetensors")
    X, y, Xv, yv = _digits()
    model = _mlp()
    every = cybn.Checkpoint(tmp_path / "e{epoch:02d}.safetensors", best_only=False)
    best = cybn.Checkpoint(tmp_path / "best.safetensors", monitor="val_accuracy")
    hist = cybn.fit(model, X, y, epochs=4, batch_size=16, validation_data=(Xv, yv),
                    callbacks=[every, best], progress=False)
    assert [p.rsplit("/", 1)[-1] for p in every.saved] == [f"e0{i}.safetensors"
                                                           for i in range(1, 5)]
    last = cybn.load(every.saved[-1])
    assert cybn.evaluate(last, Xv, yv)[0] == hist["val_loss"][-1]
    improved = [i for i, a in enumerate(hist["val_accuracy"])
                if a > max(hist["val_accuracy"][:i], default=-1)]
    assert len(best.saved) == len(improved) and best.best_epoch == improved[-1]
    assert cybn.evaluate(cybn.load(best.saved[-1]), Xv, yv)[1] == max(hist["val_accuracy"])


def test_fit_checks_these_arguments_before_any_step():
    X, y, Xv, yv = _digits()
    model = _mlp()
    before = model.state_dict()
    opt = cybn.SGD(model.parameters(), lr=0.1)
    cases = [
        (dict(schedule=cybn.StepLR(opt, 2)), "optimizer"),
        (dict(optimizer=cybn.SGD(model.parameters(), lr=0.1), schedule=cybn.StepLR(opt, 2)),
         "schedule"),
        (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
        (dict(callbacks=[object()]), "on_train_begin"),
        (dict(callbacks=[cybn.EarlyStopping()]), "validation_data"),
        (dict(callbacks=[cybn.EarlyStopping("accuracy")], loss="mse"), "classification"),
    ]
    targets = np.eye(3, dtype=np.float32)[y]  # for the mse case
    for kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            cybn.fit(model, X, targets if "loss" in kwargs else y, epochs=2, progress=False,
                     **kwargs)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_clipping_in_fit_bounds_every_step():
    X, y, _, _ = _digits()
    norms = []

    class Spy(cybn.SGD):
        def step(self):
            norms.append(math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2))
                                       for p in self.params)))
            super().step()

    model = _mlp()
    cybn.fit(model, X, y, optimizer=Spy(model.parameters(), lr=0.1), epochs=2, batch_size=16,
             clip_grad_norm=0.05, progress=False)
    assert len(norms) == 20 and max(norms) <= 0.05 * (1 + 1e-5)
