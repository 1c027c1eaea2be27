"""Regression tests for defects found by hostile use: aliasing between the arrays
one call reads and writes, strided per-channel arrays, odd inputs that were silently
accepted. Each asserts either the right answer or an error before anything is written."""

import os

import numpy as np
import pytest

import cybn

SHAPES = [((2, 3, 4, 4), 1),        # compiled fast path
          ((4, 3, 64, 64), 1),      # plane family, full path
          ((64, 9, 3), 2)]          # row family


def snapshot(*arrays):
    return [a.copy() for a in arrays]


def assert_unchanged(arrays, before):
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
def test_train_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(0)
    C = shape[axis]
    n = int(np.prod(shape))
    pool = rng.standard_normal(n + 4 * C).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    out = pool[:n].reshape(shape)
    args = {"weight": rng.uniform(0.5, 2, C).astype(np.float32),
            "bias": rng.standard_normal(C).astype(np.float32),
            "running_mean": np.zeros(C, np.float32), "running_var": np.ones(C, np.float32)}
    args[name] = pool[n - C // 2 - 1: n - C // 2 - 1 + C]  # straddles the end of out
    before = snapshot(pool, x, *args.values())
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_train(x, axis=axis, out=out, **args)
    assert_unchanged([pool, x, *args.values()], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
def test_infer_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(1)
    C = shape[axis]
    n = int(np.prod(shape))
    pool = rng.uniform(0.5, 2, n + 4 * C)
    x = rng.standard_normal(shape)
    out = pool[:n].reshape(shape)
    args = {"running_mean": np.zeros(C), "running_var": np.ones(C),
            "weight": np.ones(C), "bias": np.zeros(C)}
    args[name] = pool[:C]
    before = snapshot(pool, x)
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_infer(x, axis=axis, out=out, **args)
    assert_unchanged([pool, x], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("name", ["mean", "invstd", "weight"])
def test_backward_out_overlapping_a_per_channel_array_is_rejected(shape, axis, name):
    rng = np.random.default_rng(2)
    C = shape[axis]
    n = int(np.prod(shape))
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    pool = rng.uniform(0.5, 2, n)
    out = pool.reshape(shape)
    args = {"weight": np.ones(C), "mean": mean, "invstd": invstd}
    pool[:C] = args[name]
    args[name] = pool[:C]
    before = snapshot(pool, x, dy)
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        cybn.batch_norm_backward(dy, x, args["weight"], args["mean"], args["invstd"],
                                 axis=axis, out=out)
    assert_unchanged([pool, x, dy], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_in_place_training_with_running_mean_inside_x_is_rejected(shape, axis):
    rng = np.random.default_rng(3)
    C = shape[axis]
    x = rng.standard_normal(shape)
    rm = x.reshape(-1)[:C]
    rv = np.ones(C)
    before = snapshot(x, rv)
    with pytest.raises(ValueError, match="out overlaps running_mean"):
        cybn.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis, out=x)
    assert_unchanged([x, rv], before)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_running_buffers_are_updated_like_contiguous_ones(shape, axis, dtype):
    rng = np.random.default_rng(4)
    C = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    y_ref, m_ref, i_ref = cybn.batch_norm_train(
        x, running_mean=(rm_ref := np.zeros(C, dtype)), running_var=(rv_ref := np.ones(C, dtype)),
        axis=axis)
    for strided in ("mean", "var", "both"):
        big_m = np.full(2 * C, 7, dtype)
        big_v = np.full(3 * C, 7, dtype)
        rm = big_m[::2] if strided in ("mean", "both") else big_m[:C]
        rv = big_v[::3] if strided in ("var", "both") else big_v[:C]
        rm[...] = 0
        rv[...] = 1
        y, m, i = cybn.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis,
                                        out=np.empty_like(x))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(rm, rm_ref)
        np.testing.assert_array_equal(rv, rv_ref)
        # the gaps between the strided elements are not touched
        if strided in ("mean", "both"):
            assert np.all(big_m[1::2] == 7)
        if strided in ("var", "both"):
            assert np.all(big_v[1::3] == 7) and np.all(big_v[2::3] == 7)


@pytest.mark.parametrize("shape,axis", SHAPES + [((300, 7), 1)])
def test_float64_statistics_near_the_overflow_limit(shape, axis):
    """A constant channel of 1e200 has variance exactly 0 (the first merge used to square
    the whole mean: NaN); a channel of +-1e308 gets a finite mean."""
    x = np.full(shape, 1e200)
    b = np.arange(shape[axis], dtype=np.float64)
    y, mean, invstd = cybn.batch_norm_train(x, bias=b, axis=axis)
    np.testing.assert_array_equal(mean, 1e200)
    np.testing.assert_array_equal(invstd, 1 / np.sqrt(1e-5))
    np.testing.assert_array_equal(cybn.moments(x, axis=axis)[1], 0.0)
    y_last = np.moveaxis(y, axis, -1)
    np.testing.assert_array_equal(y_last, np.broadcast_to(b, y_last.shape))
    x = np.full(shape, 1e308)
    x.reshape(-1)[::2] = -1e308
    _, mean, invstd = cybn.batch_norm_train(x, axis=axis)
    assert np.all(np.isfinite(mean)) and np.all(np.abs(mean) <= 1e308)


@pytest.mark.parametrize("shape,axis", SHAPES + [((300, 7), 1)])
def test_float32_spread_beyond_1e19_keeps_a_finite_variance(shape, axis):
    """Float32 deviations above ~1e19 square past FLT_MAX in float accumulators."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 1e20).astype(np.float32)
    _, _, invstd = cybn.batch_norm_train(x, axis=axis)
    axes = tuple(i for i in range(x.ndim) if i != axis)
    expected = 1 / np.sqrt(x.astype(np.float64).var(axis=axes) + 1e-5)
    np.testing.assert_allclose(invstd, expected, rtol=1e-6)


def test_masked_arrays_are_rejected_not_silently_unmasked():
    x = np.ma.masked_array(np.random.default_rng(6).standard_normal((8, 3)),
                           mask=np.zeros((8, 3), bool))
    x.mask[0, 0] = True
    with pytest.raises(TypeError, match="x is a masked array"):
        cybn.batch_norm_train(x)
    with pytest.raises(TypeError, match="weight is a masked array"):
        cybn.batch_norm_train(x.data, weight=np.ma.masked_array(np.ones(3)))
    rm = np.ma.masked_array(np.zeros(3))
    with pytest.raises(TypeError, match="running_mean is a masked array"):
        cybn.batch_norm_train(x.data, running_mean=rm, running_var=np.ones(3))
    with pytest.raises(TypeError, match="x is a masked array"):
        cybn.batch_norm_infer(x, np.zeros(3), np.ones(3))


@pytest.mark.parametrize("make", [lambda: cybn.BatchNorm1d(3), lambda: cybn.Linear(3, 2),
                                  lambda: cybn.ReLU(), lambda: cybn.SiLU(),
                                  lambda: cybn.Sequential(cybn.Linear(3, 3),
                                                          cybn.BatchNorm1d(3))])
def test_layers_refuse_masked_arrays_through_forward_too(make):
    """layer(x) and layer.forward(x) alike, before anything changes (running statistics)."""
    layer = make()
    x = np.ma.masked_array(np.ones((8, 3), np.float32), mask=np.zeros((8, 3), bool))
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    for call in (layer, layer.forward):
        with pytest.raises(TypeError, match="x is a masked array"):
            call(x)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="x is a masked array"):
        cybn.Residual(cybn.BatchNorm1d(3), activation=None).forward(x)


@pytest.mark.parametrize("bad", ["False", 0, 1, None, np.array([True])])
def test_training_flag_must_be_a_bool(bad):
    x = np.random.default_rng(7).standard_normal((8, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="training must be True or False"):
        cybn.batch_norm(x, rm, rv, training=bad)
    np.testing.assert_array_equal(rm, 0)
    _, m, i = cybn.batch_norm_train(x)
    with pytest.raises(TypeError, match="training must be True or False"):
        cybn.batch_norm_backward(x, x, None, m, i, training=bad)
    # NumPy bools are bools
    y = cybn.batch_norm(x, rm, rv, training=np.bool_(False))
    np.testing.assert_array_equal(y, cybn.batch_norm_infer(x, rm, rv))


@pytest.mark.parametrize("name", ["x", "weight", "running_mean", "out"])
def test_a_wrong_dtype_is_a_type_error_for_every_argument(name):
    x = np.ones((4, 3))
    args = dict(x=x, weight=None, running_mean=np.zeros(3), running_var=np.ones(3), out=None)
    bad = {"x": np.ones((4, 3), np.int32), "weight": np.ones(3, np.int32),
           "running_mean": np.zeros(3, np.int64), "out": np.ones((4, 3), np.float32)}[name]
    args[name] = bad
    with pytest.raises(TypeError, match=f"{name} must have dtype"):
        cybn.batch_norm_train(args.pop("x"), **args)


# ---------------------------------------------------------------------------------------
# Ghost batch norm: the degenerate-batch policy per ghost batch, everything checked before
# anything is written.
# ---------------------------------------------------------------------------------------

def ghost_inputs(n=6, C=3, dtype=np.float32):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, C)).astype(dtype), np.zeros(C, dtype), np.ones(C, dtype)


def test_ghost_batches_of_one_value_follow_raise_before_anything_is_written():
    x, rm, rv = ghost_inputs()
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="one value per channel"):
        cybn.batch_norm_ghost(x, ghost_batch_size=1, running_mean=rm, running_var=rv,
                              out=out, running_variance="biased")
    assert (out == 7.0).all() and (rm == 0).all() and (rv == 1).all()


def test_ghost_batches_of_one_value_use_running_statistics():
    x, rm, rv = ghost_inputs()
    rm[:] = [0.5, -1.0, 2.0]
    rv[:] = [4.0, 1.0, 0.25]
    before = rm.copy(), rv.copy()
    y, mean, invstd = cybn.batch_norm_ghost(x, ghost_batch_size=1, running_mean=rm,
                                            running_var=rv, on_degenerate="use_running")
    expected = (x.astype(np.float64) - before[0]) / np.sqrt(before[1] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rm, before[0])  # nothing to learn from one value
    np.testing.assert_array_equal(rv, before[1])


def test_ghost_batches_of_one_value_skip_the_update():
    x, rm, rv = ghost_inputs()
    y, _, _ = cybn.batch_norm_ghost(x, ghost_batch_size=1, running_mean=rm, running_var=rv,
                                    on_degenerate="skip_update", running_variance="biased")
    assert (rm == 0).all() and (rv == 1).all()
    np.testing.assert_array_equal(y, np.zeros_like(x))  # x - mean of one value


def test_ghost_use_running_without_running_statistics_writes_nothing():
    x, _, _ = ghost_inputs(n=5)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="needs running_mean"):
        cybn.batch_norm_ghost(x, ghost_batch_size=2, on_degenerate="use_running", out=out)
    assert (out == 7.0).all()


def test_ghost_layer_of_single_value_batches_follows_its_policy():
    x, _, _ = ghost_inputs()
    layer = cybn.BatchNorm1d(3, ghost_batch_size=1, on_degenerate="use_running")
    layer.running_mean[:] = 1.0
    y = layer(x)
    np.testing.assert_allclose(y, (x - 1.0) / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)
    assert (layer.running_mean == 1.0).all() and int(layer.num_batches_tracked) == 0
    dx = layer.backward(np.ones_like(x))  # the inference gradient: weight * invstd
    np.testing.assert_allclose(dx, np.full_like(x, 1 / np.sqrt(1 + 1e-5)), rtol=1e-6)


def ghost_backward_args(n=5, C=3):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, C, 4)).astype(np.float32)
    y, mean, invstd = cybn.batch_norm_ghost(x, ghost_batch_size=2)
    return rng.standard_normal(x.shape).astype(np.float32), x, mean, invstd


@pytest.mark.parametrize("change", [
    {"weight": np.ones(2)}, {"weight": np.ones(4)}, {"mean": "short"}, {"invstd": "short"},
    {"training": [False]}, {"training": "False"}, {"training": [True, True, "no"]},
    {"bias": np.zeros(1)}, {"axis": 0}, {"ghost_batch_size": 2.5},
])
def test_ghost_backward_checks_everything_before_writing_out(change):
    dy, x, mean, invstd = ghost_backward_args()
    kwargs = dict(ghost_batch_size=2, out=np.full_like(x, 7.0))
    args = [dy, x, None, mean, invstd]
    for key, value in change.items():
        if key == "weight":
            args[2] = value
        elif value == "short" and key in ("mean", "invstd"):
            args[3 if key == "mean" else 4] = (mean if key == "mean" else invstd)[:, :2]
        else:
            kwargs[key] = value
    before = [a.copy() for a in args if isinstance(a, np.ndarray)]
    with pytest.raises((TypeError, ValueError)):
        cybn.batch_norm_ghost_backward(*args, **kwargs)
    assert (kwargs["out"] == 7.0).all()
    for a, b in zip([a for a in args if isinstance(a, np.ndarray)], before):
        np.testing.assert_array_equal(a, b)


def test_ghost_backward_kernel_path_equals_per_batch_backward():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3, 40)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = np.array([0.5, 1.5, -2.0], np.float32)
    _, mean, invstd = cybn.batch_norm_ghost(x, w, ghost_batch_size=4)
    dx, dw, db = cybn.batch_norm_ghost_backward(dy, x, w, mean, invstd, ghost_batch_size=4)
    for g in range(2):
        s = slice(4 * g, 4 * g + 4)
        ref = cybn.batch_norm_backward(dy[s], x[s], w, mean[g], invstd[g])
        np.testing.assert_array_equal(dx[s], ref[0])


# ---------------------------------------------------------------------------------------
# Options a path cannot honour are refused; masked statistics with garbage under the mask.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [{"renorm": True}, {"ghost_batch_size": 2}])
def test_batchnorm_layer_refuses_a_mask_it_would_ignore(option):
    layer = cybn.BatchNorm1d(3, **option)
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="mask="):
        layer(x, mask=np.ones(8, bool))
    assert (layer.running_mean == 0).all()


@pytest.mark.parametrize("garbage", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape,axis", [((6, 3), 1), ((4, 3, 40), 1)])
def test_masked_backward_ignores_garbage_under_the_mask_where_dy_is_zero(garbage, shape,
                                                                        axis):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    mask = np.ones(shape[:axis] + shape[axis + 1:], bool)
    mask[1] = False
    x_bad = x.copy()
    x_bad[1] = garbage
    dy = rng.standard_normal(shape)
    dy[1] = 0.0
    w = np.array([0.5, 1.0, 2.0])
    _, mean, invstd = cybn.batch_norm_train(x_bad, w, mask=mask, axis=axis)
    dx, dw, db = cybn.batch_norm_backward(dy, x_bad, w, mean, invstd, mask=mask, axis=axis)
    # the reference: the same batch without the padded sample
    keep = np.arange(shape[0]) != 1
    _, m2, i2 = cybn.batch_norm_train(x[keep], w, axis=axis)
    rdx, rdw, rdb = cybn.batch_norm_backward(dy[keep], x[keep], w, m2, i2, axis=axis)
    np.testing.assert_allclose(dx[keep], rdx, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(dx[1], 0.0)
    np.testing.assert_allclose(dw, rdw, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(db, rdb, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Importers: nothing silently dropped, clear errors.
# ---------------------------------------------------------------------------------------

def flax_variables(C=3):
    return ({"scale": np.full(C, 2.0, np.float32), "bias": np.ones(C, np.float32)},
            {"mean": np.zeros(C, np.float32), "var": np.ones(C, np.float32)})


@pytest.mark.parametrize("wrap", ["nested", "misnamed"])
def test_from_flax_refuses_params_it_would_drop(wrap):
    params, stats = flax_variables()
    bad = {"BatchNorm_0": params} if wrap == "nested" else {"gamma": params["scale"],
                                                            "beta": params["bias"]}
    with pytest.raises(ValueError, match="params holds"):
        cybn.from_flax(bad, stats, ndim=2)
    with pytest.raises(ValueError, match="batch_stats holds"):
        cybn.from_flax(params, {"BatchNorm_0": stats, **stats}, ndim=2)
    layer = cybn.from_flax({}, stats, ndim=2)  # use_scale=False, use_bias=False is fine
    assert layer.weight is None and layer.bias is None


def test_from_onnx_refuses_an_int_and_keeps_the_descriptor_open(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "not_a_model"
    path.write_bytes(b"\x00" * 16)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match="model must be"):
            cybn.from_onnx(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # neither read nor closed
    finally:
        os.close(fd)


def onnx_node_model(inputs=("X", "scale", "B", "mean", "var"), attrs=None):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    C = 3
    inits = [numpy_helper.from_array(np.full(C, v, np.float32), name)
             for name, v in (("scale", 2.0), ("B", 0.5), ("mean", 0.1), ("var", 4.0))]
    node = helper.make_node("BatchNormalization", list(inputs), ["Y"], name="bn",
                            **(attrs or {}))
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, C])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, C])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), onnx


def test_from_onnx_without_momentum_takes_the_onnx_default():
    model, _ = onnx_node_model()
    layer = cybn.from_onnx(model)
    assert layer.momentum == 0.9 and layer.eps == 1e-5
    layer.train()
    x = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], np.float32)
    layer(x)  # running = 0.9 * running + 0.1 * batch (population variance)
    np.testing.assert_allclose(layer.running_mean, 0.9 * 0.1 + 0.1 * 1.0, rtol=1e-6)
    np.testing.assert_allclose(layer.running_var, 0.9 * 4.0 + 0.1 * 1.0, rtol=1e-6)


def test_from_onnx_names_a_node_with_too_few_inputs():
    model, _ = onnx_node_model(inputs=("X", "scale", "B"))
    with pytest.raises(ValueError, match="needs 5"):
        cybn.from_onnx(model)


@pytest.mark.parametrize("call,match", [
    (lambda: cybn.from_keras(None, ndim=2), "weights must be"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=2, momentum="abc"), "momentum"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=2, momentum=True), "momentum"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=2, epsilon=None), "epsilon"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=4, axis=5), "out of range"),
    (lambda: cybn.from_keras([np.ones(3)] * 4, ndim=4, axis=-5), "out of range"),
])
def test_from_keras_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------
# Renorm schedule, running moments, state dicts, deploy, layers with empty batches.
# ---------------------------------------------------------------------------------------

def test_renorm_schedule_with_unbounded_limits_has_no_nan():
    s = cybn.RenormSchedule(rmax=np.inf, dmax=np.inf, warmup=10, rmax_steps=20, dmax_steps=20)
    assert s(0) == (1.0, 0.0) and s(9) == (1.0, 0.0)
    assert s(15) == (np.inf, np.inf) and s(25) == (np.inf, np.inf)
    finite = cybn.RenormSchedule(rmax=3.0, dmax=5.0, warmup=10, rmax_steps=20, dmax_steps=30)
    assert finite(15) == (2.0, 1.25) and finite(40) == (3.0, 5.0)


@pytest.mark.parametrize("kwargs", [{"rmax": "3"}, {"dmax": None}, {"rmax": True},
                                    {"warmup": 2.5}, {"rmax": 0.5}, {"rmax_steps": -1}])
def test_renorm_schedule_errors_name_the_argument(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cybn.RenormSchedule(**kwargs)


def test_running_moments_after_only_empty_batches_has_no_mean():
    rm = cybn.RunningMoments()
    rm.update(np.zeros((0, 3), np.float32))
    assert rm.count == 0 and np.isnan(rm.mean).all() and np.isnan(rm.var()).all()


def test_load_state_dict_names_a_ragged_value():
    layer = cybn.Linear(2, 2)
    state = layer.state_dict()
    state["weight"] = [[1.0, 2.0], [3.0]]
    with pytest.raises(ValueError, match="state_dict\\['weight'\\]"):
        layer.load_state_dict(state)


@pytest.mark.parametrize("value", [5.0, "5", None])
def test_layer_norm_names_normalized_shape(value):
    with pytest.raises(ValueError, match="normalized_shape"):
        cybn.LayerNorm(value)


@pytest.mark.parametrize("fn", ["insert_batchnorm", "recalibrate"])
def test_deploy_batch_size_must_be_an_int(fn):
    model = cybn.Sequential(cybn.Linear(3, 4), cybn.BatchNorm1d(4), cybn.ReLU())
    X = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        getattr(cybn, fn)(model, X, batch_size=2.5)


def test_fold_batchnorm_takes_sync_batchnorm():
    from cybn.distributed import ThreadComm, convert_sync_batchnorm

    model = cybn.Sequential(cybn.Linear(3, 4), cybn.BatchNorm1d(4))
    model[1].running_mean[:] = [0.1, 0.2, 0.3, 0.4]
    sync = convert_sync_batchnorm(model, ThreadComm.group(1)[0]).eval()
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    folded = cybn.fold_batchnorm(sync)
    assert len(folded) == 1  # folded into the Linear layer
    np.testing.assert_allclose(folded(X), sync(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,shape", [
    (lambda: cybn.Conv2d(3, 4, 3, padding=1), (0, 3, 5, 5)),
    (lambda: cybn.Conv2d(3, 4, 3, channels_last=True), (0, 5, 5, 3)),
    (lambda: cybn.Conv2d(4, 4, 3, groups=4), (0, 4, 5, 5)),
    (lambda: cybn.Linear(3, 4), (0, 3)),
    (lambda: cybn.Flatten(), (0, 3, 2)),
])
def test_empty_batches_give_empty_outputs_and_zero_gradients(layer, shape):
    m = layer()
    y = m(np.zeros(shape, np.float32))
    assert y.shape[0] == 0
    dx = m.backward(np.zeros(y.shape, np.float32))
    assert dx.shape == shape
    for p in m.parameters():
        np.testing.assert_array_equal(p.grad, 0.0)
