"""The benchmark runs end to end on a tiny suite and reports consistent figures."""

import json

import numpy as np

from cybn.benchmark import report, suites


def test_bench_runs_and_reports(tmp_path, capsys):
    result = suites.run([(4, 3, 6, 6), (64, 8)], dtypes=("float32", "float64"), repeats=2,
                       torch=False, verbose=True)
    rows = result["rows"]
    # 2 layouts for the 4-D shape, 1 for the 2-D one; 2 dtypes; 3 ops
    assert len(rows) == (2 + 1) * 2 * 3
    for r in rows:
        assert r["cybn_ms"] > 0 and r["copy_ms"] > 0
        assert abs(r["ratio_to_copy"] - r["cybn_ms"] / r["copy_ms"]) < 1e-9
        assert r["torch_ms"] is None and r["numpy_ms"] > 0
    assert result["meta"]["threads"] >= 1
    json.dumps(result)
    table = report.markdown_table(result)
    assert table.count("\n") == len(rows) + 1
    assert "float32" in capsys.readouterr().out


def test_norm_suite_runs_and_reports(capsys):
    suite = [("layer", (16, 8), "NC", 8), ("rms", (4, 3, 8), "NLC", 8),
             ("group", (2, 4, 3, 3), "NCHW", 2), ("group", (2, 3, 3, 4), "NHWC", 2),
             ("instance", (2, 4, 5, 5), "NCHW", None), ("instance", (2, 4, 5, 5), "NHWC", None)]
    result = suites.norm_suite(repeats=2, torch=False, suite=suite)
    rows = result["rows"]
    assert [(r["norm"], r["op"]) for r in rows[:2]] == [("layer", "forward"), ("layer", "backward")]
    assert len(rows) == 2 * len(suite)
    assert rows[-1]["shape"] == [2, 5, 5, 4]  # instance NHWC: the channels-last transpose
    for r in rows:
        assert r["cybn_ms"] > 0 and r["copy_ms"] > 0 and r["torch_ms"] is None
    json.dumps(result)
    assert report.norms_markdown(result).count("\n") == len(rows) + 1
    assert "instance" in capsys.readouterr().out


def test_fused_suite_contenders_compute_the_same_thing(capsys):
    suite = [((4, 8, 6, 6), "NCHW"), ((4, 6, 6, 8), "NHWC")]
    result = suites.fused_suite(repeats=2, torch=False, suite=suite)
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3
    assert {(r["op"], r["pass"]) for r in rows} == {
        (k, p) for k in ("bn_relu", "bn_add_relu") for p in ("train", "backward", "infer")}
    for r in rows:
        assert r["fused_ms"] > 0 and r["two_op_ms"] > 0 and r["torch_ms"] is None
    json.dumps(result)
    assert report.fused_markdown(result).count("\n") == len(rows) + 1
    assert "bn_add_relu" in capsys.readouterr().out
    # the fused and the two-op contenders compute the same arrays (y, or dx)
    rng = np.random.default_rng(0)
    for shape, axis in (((4, 8, 6, 6), 1), ((4, 6, 6, 8), -1)):
        x, r, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
        for kind in ("bn_relu", "bn_add_relu"):
            for op in ("train", "infer", "backward"):
                fns, (fused_out, two_op_out) = suites.fused_contenders(kind, op, x, r, dy,
                                                                       axis, None)
                fns["fused"]()
                fns["two_op"]()
                np.testing.assert_array_equal(fused_out, two_op_out)
                assert fused_out.any()


def test_half_suite_runs_and_reports(capsys):
    suite = [((4, 8, 6, 6), "NCHW"), ((4, 6, 6, 8), "NHWC")]
    result = suites.half_suite(repeats=2, suite=suite)
    rows = result["rows"]
    assert len(rows) == 2 * 3
    assert result["meta"]["dtypes"][:2] == ["float32", "float16"]
    for r in rows:
        assert set(r["ms"]) == set(result["meta"]["dtypes"])
        assert all(v > 0 for v in r["speedup_vs_float32"].values())
    json.dumps(result)
    assert report.half_markdown(result).count("\n") == len(rows) + 1
    assert "float16" in capsys.readouterr().out


def test_variants_suite_runs_and_reports(capsys):
    result = suites.variants_suite(repeats=2, suite=[((8, 3, 4, 4), "NCHW"), ((8, 4, 4, 3), "NHWC"),
                                                    ((16, 5), "NC")])
    rows = result["rows"]
    assert [(r["layout"], r["pass"]) for r in rows] == [
        (lay, p) for lay in ("NCHW", "NHWC", "NC") for p in ("forward", "backward")]
    for r in rows:
        assert r["plain_ms"] > 0 and r["renorm_ms"] > 0 and r["ghost_ms"] > 0
        assert abs(r["ghost_over_plain"] - r["ghost_ms"] / r["plain_ms"]) < 1e-9
        assert r["ghost_batch_size"] in (2, 4)
    json.dumps(result)
    assert report.variants_markdown(result).count("\n") == len(rows) + 1
    assert "renorm" in capsys.readouterr().out
