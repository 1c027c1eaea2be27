"""Layers keep their scratch arrays (column matrices, ReLU masks, max-pool index maps)
between training steps: the results are bitwise those of fresh layers, arrays handed to the
caller are never reused, eval mode allocates (so threads may share a model for inference),
and copies leave the scratch out."""

import copy
import threading

import numpy as np
import pytest

import cybn


def net(channels_last: bool) -> cybn.Sequential:
    rng = np.random.default_rng(0)
    cl = channels_last
    return cybn.Sequential(
        cybn.Conv2d(3, 8, 3, padding=1, channels_last=cl, rng=rng),
        cybn.BatchNorm2d(8, channels_last=cl), cybn.ReLU(), cybn.MaxPool2d(2, channels_last=cl),
        cybn.Conv2d(8, 8, 3, padding=1, channels_last=cl, rng=rng), cybn.ReLU(),
        cybn.Flatten(), cybn.Linear(8 * 4 * 4, 5, rng=rng))


def batches(channels_last: bool, n: int = 3, batch: int = 6):
    rng = np.random.default_rng(1)
    shape = (batch, 8, 8, 3) if channels_last else (batch, 3, 8, 8)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_steps_reusing_scratch_equal_fresh_layers(channels_last):
    model = net(channels_last)
    kept_outputs, kept_grads = [], []
    for x in batches(channels_last):
        fresh = copy.deepcopy(model)  # no scratch: every buffer allocated anew
        y = model(x)
        dy = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
        model.zero_grad()
        dx = model.backward(dy)
        y_fresh = fresh(x)
        fresh.zero_grad()
        dx_fresh = fresh.backward(dy)
        np.testing.assert_array_equal(y, y_fresh)
        np.testing.assert_array_equal(dx, dx_fresh)
        for p, q in zip(model.parameters(), fresh.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad)
        kept_outputs.append((y, y.copy()))
        kept_grads.append((dx, dx.copy()))
        for p in model.parameters():  # a step, so the next batch sees new weights
            p.data -= 0.1 * p.grad
    for arr, snapshot in kept_outputs + kept_grads:  # nothing handed out was reused
        np.testing.assert_array_equal(arr, snapshot)
    conv = model[0]  # stride 1: windows read where they lie, the flipped-weight dx
    assert "_workspaces" not in conv.__dict__
    assert "_workspaces" not in copy.deepcopy(conv).__dict__


def test_large_channels_first_planes_keep_no_column_matrix():
    conv = cybn.Conv2d(3, 4, 3, padding=1, rng=0)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    conv(x)
    conv.backward(np.ones((2, 4, 16, 16), np.float32))
    assert "_workspaces" not in conv.__dict__


def test_scratch_follows_a_new_shape():
    conv = cybn.Conv2d(3, 4, 3, stride=2, padding=1, channels_last=True, rng=0)
    for shape in [(2, 6, 6, 3), (3, 5, 7, 3), (2, 6, 6, 3)]:
        x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
        y = conv(x)
        ref = cybn.Conv2d(3, 4, 3, stride=2, padding=1, channels_last=True, rng=0)
        np.testing.assert_array_equal(y, ref(x))
        dx = conv.backward(np.ones_like(y))  # strided: dx from the columns' gradient
        ref(x)
        np.testing.assert_array_equal(dx, ref.backward(np.ones_like(y)))
        assert conv.__dict__["_workspaces"]["dcols"].shape == (y.shape[0] * y.shape[1]
                                                               * y.shape[2], 27)


def test_eval_mode_allocates_so_threads_can_share_a_model():
    model = net(False).eval()
    xs = batches(False, n=8, batch=16)
    expected = [model(x) for x in xs]
    assert all("_workspaces" not in m.__dict__ for m in model.modules())
    results = [None] * len(xs)

    def infer(i):
        for _ in range(5):
            results[i] = model(xs[i])

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
