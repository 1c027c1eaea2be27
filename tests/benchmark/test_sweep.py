"""The size sweep: the shapes it times, and (where PyTorch is installed) a one-size run of
every series end to end, with contenders that compute the same thing."""

import json

import numpy as np
import pytest

from cybn.benchmark import sweep


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NC", "rows"])
def test_sweep_sizes_double_from_16_kib_to_64_mib(layout):
    assert sweep.SIZES[0] == 16 * 1024 and sweep.SIZES[-1] == 64 * 1024 * 1024
    assert all(b == 2 * a for a, b in zip(sweep.SIZES, sweep.SIZES[1:]))
    for nbytes in sweep.SIZES:
        shape = sweep.logical_shape(layout, nbytes)
        got = 4 * int(np.prod(shape))
        if layout == "rows":  # whole rows of 768: within half a row of the size
            assert abs(got - nbytes) <= 4 * sweep.WIDTH // 2
        else:
            assert got == nbytes


def test_sweep_contenders_compute_the_same():
    torch = pytest.importorskip("torch")
    for op, layouts in sweep.SERIES:
        for layout in layouts:
            fns = sweep.contenders(op, layout, 1 << 14, torch)
            ours, theirs = fns["cybn"](), fns["torch"]()
            if op in ("bn_infer", "bn_train", "layer_norm", "rms_norm", "group_norm",
                      "instance_norm"):
                y = ours[0] if isinstance(ours, tuple) else ours
                t = theirs.detach()
                if layout == "NHWC":  # the channels-last memory seen as NCHW
                    t = t.permute(0, 2, 3, 1)
                np.testing.assert_allclose(y, t.numpy(), rtol=1e-4, atol=1e-4, err_msg=op)


def test_sweep_runs_and_reports(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setattr(sweep, "SIZES", [1 << 14, 1 << 15])
    result = sweep.sweep_suite(repeats=2, verbose=False, series=["bn_infer", "rms_norm"])
    assert [(r["op"], r["layout"]) for r in result["rows"]] == [
        ("bn_infer", "NCHW"), ("bn_infer", "NHWC"), ("bn_infer", "NC"), ("rms_norm", "rows")]
    for r in result["rows"]:
        ratios = [p["ratio"] for p in r["points"]]
        assert r["worst"] == min(ratios)
        assert np.isclose(r["geomean"], np.exp(np.mean(np.log(ratios))))
    json.dumps(result)
    assert sweep.sweep_markdown(result).count("\n") == len(result["rows"]) + 1
