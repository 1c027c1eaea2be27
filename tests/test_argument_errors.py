"""Bad input: a clear error naming the argument, and every array passed in left unchanged."""

import numpy as np
import pytest

import cybn


@pytest.fixture
def arrays(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    return {
        "x": x,
        "dy": rng.standard_normal((4, 3, 5)).astype(np.float32),
        "w": rng.standard_normal(3),
        "b": rng.standard_normal(3),
        "rm": rng.standard_normal(3),
        "rv": rng.uniform(1, 2, 3),
        "mean": rng.standard_normal(3),
        "invstd": rng.uniform(1, 2, 3),
        "out": np.zeros_like(x),
    }


def snapshot(arrays):
    return {k: np.copy(v) for k, v in arrays.items()}


def assert_unchanged(arrays, before):
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")


def call_train(a, **kw):
    args = dict(running_mean=a["rm"], running_var=a["rv"], out=a["out"])
    args.update(kw)
    x = args.pop("x", a["x"])
    return cybn.batch_norm_train(x, args.pop("weight", a["w"]), args.pop("bias", a["b"]), **args)


BAD_TRAIN = [
    (dict(x=np.ones((4, 3), dtype=np.int64)), TypeError, "x must have dtype"),
    (dict(x=np.ones((4, 3), dtype=bool)), TypeError, "x must have dtype"),
    (dict(x=np.ones((4, 3), dtype=np.complex128)), TypeError, "x must have dtype"),
    (dict(x=np.ones((4, 3), dtype=object)), TypeError, "x must have dtype"),
    (dict(x=np.ones((4, 3), dtype=np.longdouble)), TypeError, "x must have dtype"),
    (dict(x=np.float32(3.0)), ValueError, "at least 2 dimensions"),
    (dict(x=np.ones(5, dtype=np.float32)), ValueError, "at least 2 dimensions"),
    (dict(axis=3), ValueError, "axis 3 is out of range"),
    (dict(axis=-4), ValueError, "out of range"),
    (dict(axis=1.0), TypeError, "axis must be an integer"),
    (dict(axis="1"), TypeError, "axis must be an integer"),
    (dict(weight=np.ones(4)), ValueError, "weight must have shape \\(3,\\)"),
    (dict(weight=np.ones(3, dtype=np.int32)), TypeError, "weight must have dtype"),
    (dict(bias=np.ones((3, 1))), ValueError, "bias must have shape"),
    (dict(running_mean=np.ones(2)), ValueError, "running_mean must have shape"),
    (dict(running_var=np.ones(3, dtype=np.int64)), TypeError, "running_var must have dtype"),
    (dict(running_var=None), ValueError, "running_mean was given without running_var"),
    (dict(running_mean=None), ValueError, "running_var was given without running_mean"),
    (dict(running_mean=[0.0, 0.0, 0.0]), ValueError, "running_mean must be a NumPy array"),
    (dict(out=np.zeros((4, 3, 5))), TypeError, "out must have dtype float32"),
    (dict(out=np.zeros((4, 3, 6), dtype=np.float32)), ValueError, "out must have shape"),
    (dict(out=[0.0]), ValueError, "out must be a NumPy array"),
    (dict(eps=0.0), ValueError, "eps must be positive"),
    (dict(eps=-1e-5), ValueError, "eps must be positive"),
    (dict(eps=float("nan")), ValueError, "eps must be positive"),
    (dict(eps="1e-5"), TypeError, "eps must be"),
    (dict(momentum=1.5), ValueError, "momentum must be in \\[0, 1\\]"),
    (dict(momentum=-0.1), ValueError, "momentum must be in"),
    (dict(momentum=float("nan")), ValueError, "momentum must be in"),
    (dict(momentum="0.1"), TypeError, "momentum must be"),  # None: the convention's default
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_TRAIN)
def test_train_rejects_bad_input_and_changes_nothing(arrays, kwargs, exc, match):
    before = snapshot(arrays)
    with pytest.raises(exc, match=match):
        call_train(arrays, **kwargs)
    assert_unchanged(arrays, before)


def test_read_only_out_and_running_stats(arrays):
    before = snapshot(arrays)
    ro = np.zeros_like(arrays["x"])
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        call_train(arrays, out=ro)
    rm = arrays["rm"].copy()
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        call_train(arrays, running_mean=rm)
    assert_unchanged(arrays, before)


def test_one_value_per_channel_in_training(arrays):
    before = snapshot(arrays)
    for x in (np.ones((1, 3), dtype=np.float32), np.ones((1, 3, 1, 1), dtype=np.float32)):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            cybn.batch_norm_train(x, running_mean=arrays["rm"], running_var=arrays["rv"])
    assert_unchanged(arrays, before)
    # inference with one value per channel is fine
    y = cybn.batch_norm_infer(np.ones((1, 3)), arrays["rm"], arrays["rv"])
    assert y.shape == (1, 3)


def test_partial_overlap_of_out_is_rejected(rng):
    base = rng.standard_normal((5, 3, 4))
    x = base[:4]
    before = base.copy()
    with pytest.raises(ValueError, match="out overlaps x"):
        cybn.batch_norm_train(x, out=base[1:])
    with pytest.raises(ValueError, match="out overlaps x"):
        cybn.batch_norm_infer(x, np.zeros(3), np.ones(3), out=base[1:])
    dy = rng.standard_normal((4, 3, 4))
    with pytest.raises(ValueError, match="out overlaps"):
        cybn.batch_norm_backward(dy, x, None, np.zeros(3), np.ones(3), out=base[1:])
    # a reversed view of x is the same memory but not the same elements: rejected
    with pytest.raises(ValueError, match="out overlaps x"):
        cybn.batch_norm_train(x, out=x[::-1])
    np.testing.assert_array_equal(base, before)


def test_infer_errors(arrays):
    before = snapshot(arrays)
    x = arrays["x"]
    with pytest.raises(ValueError, match="running_mean is required"):
        cybn.batch_norm_infer(x, None, arrays["rv"])
    with pytest.raises(ValueError, match="running_var must have shape"):
        cybn.batch_norm_infer(x, arrays["rm"], np.ones(5))
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        cybn.batch_norm(x, None, None, training=False)
    with pytest.raises(TypeError, match="x must have dtype"):
        cybn.batch_norm_infer(x.astype(np.int32), arrays["rm"], arrays["rv"])
    assert_unchanged(arrays, before)


def test_backward_errors(arrays):
    before = snapshot(arrays)
    a = arrays
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        cybn.batch_norm_backward(a["dy"][:2], a["x"], a["w"], a["mean"], a["invstd"])
    with pytest.raises(ValueError, match="dy must have the dtype of x"):
        cybn.batch_norm_backward(a["dy"].astype(np.float64), a["x"], a["w"], a["mean"],
                                 a["invstd"])
    with pytest.raises(ValueError, match="mean must have shape"):
        cybn.batch_norm_backward(a["dy"], a["x"], a["w"], a["mean"][:2], a["invstd"])
    with pytest.raises(ValueError, match="invstd is required"):
        cybn.batch_norm_backward(a["dy"], a["x"], a["w"], a["mean"], None)
    with pytest.raises(ValueError, match="weight must have shape"):
        cybn.batch_norm_backward(a["dy"], a["x"], np.ones(2), a["mean"], a["invstd"])
    with pytest.raises(TypeError, match="out must have dtype"):
        cybn.batch_norm_backward(a["dy"], a["x"], a["w"], a["mean"], a["invstd"],
                                 out=np.zeros((4, 3, 5)))
    assert_unchanged(arrays, before)


def test_moments_errors():
    with pytest.raises(ValueError, match="ddof"):
        cybn.moments(np.ones((3, 2)), ddof=-1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        cybn.moments(np.ones(3))


def test_thread_count_errors():
    with pytest.raises(ValueError, match="between 1 and"):
        cybn.set_num_threads(0)
    with pytest.raises(TypeError):
        cybn.set_num_threads(1.5)
