"""Demo smoke test on a tiny budget (needs scikit-learn, from the demo extra)."""

import pytest

pytest.importorskip("sklearn")


def test_demo_runs_and_reports(tmp_path):
    from cybn import demo

    results = demo.run(epochs=2, limit=200, plot_path=None, verbose=False)
    assert len(results) == 8
    assert {(r["model"], r["batchnorm"], r["lr_name"]) for r in results} == {
        (m, bn, lr) for m in ("MLP", "CNN") for bn in (False, True) for lr in ("1x", "10x")}
    for r in results:
        assert len(r["val_acc"]) <= 2
        assert 0.0 <= r["final_val_acc"] <= 1.0
    # better than chance (10 classes) with BatchNorm after two epochs
    assert max(r["final_val_acc"] for r in results if r["batchnorm"]) > 0.3
    table = demo.markdown(results)
    assert table.count("\n") == 9
    assert "fewer epochs" in demo.conclusion(results)
    if demo.plot(results, str(tmp_path / "p.png")):
        assert (tmp_path / "p.png").stat().st_size > 1000
