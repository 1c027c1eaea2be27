"""Demo smoke test on a tiny budget (needs scikit-learn, from the demo extra)."""

import pytest

pytest.importorskip("sklearn")


def test_demo_runs_and_reports(tmp_path):
    from cybn import demo

    results = demo.run(epochs=2, seeds=(0, 1), limit=200, plot_path=None, verbose=False)
    assert len(results) == 8
    assert {(r["model"], r["batchnorm"], r["lr_name"]) for r in results} == {
        (m, bn, lr) for m in ("MLP", "CNN") for bn in (False, True) for lr in ("1x", "10x")}
    for r in results:
        assert len(r["val_acc"]) == 2 and [run["seed"] for run in r["runs"]] == [0, 1]
        finals = [run["final_val_acc"] for run in r["runs"]]
        assert r["final_val_acc"] == pytest.approx(sum(finals) / 2)
        assert r["final_val_acc_min"] == min(finals) and r["final_val_acc_max"] == max(finals)
        assert all(lo <= m <= hi for lo, m, hi in zip(r["val_acc_lo"], r["val_acc"],
                                                      r["val_acc_hi"]))
        assert 0.0 <= r["final_val_acc"] <= 1.0
    # better than chance (10 classes) with BatchNorm after two epochs
    assert max(r["final_val_acc"] for r in results if r["batchnorm"]) > 0.3
    table = demo.markdown(results)
    assert table.count("\n") == 9
    assert "for every seed" in demo.conclusion(results)
    if demo.plot(results, str(tmp_path / "p.png")):
        assert (tmp_path / "p.png").stat().st_size > 1000


def test_conclusion_counts_only_what_holds_for_every_seed():
    from cybn import demo

    def config(model, bn, lr_name, finals, reached):
        runs = [{"final_val_acc": f, "epochs_to_95": e, "diverged": f < 0.2}
                for f, e in zip(finals, reached)]
        return {"model": model, "batchnorm": bn, "lr": 0.05 if lr_name == "1x" else 0.5,
                "lr_name": lr_name, "runs": runs, "diverged": sum(r["diverged"] for r in runs)}

    results = [config("MLP", False, "1x", [0.97, 0.97], [5, 5]),
               config("MLP", True, "1x", [0.98, 0.98], [2, 6]),      # faster in one seed only
               config("MLP", False, "10x", [0.1, 0.9], [None, None]),
               config("MLP", True, "10x", [0.9, 0.95], [3, 3]),      # better in both seeds
               config("CNN", False, "1x", [0.99, 0.99], [4, 4]),
               config("CNN", True, "1x", [0.99, 0.99], [2, 3]),      # faster in both
               config("CNN", False, "10x", [0.5, 0.1], [None, None]),
               config("CNN", True, "10x", [0.1, 0.9], [None, 4])]    # worse in one seed
    line = demo.conclusion(results)
    assert "fewer epochs for every seed in 2 of 4" in line
    assert "for every seed in 1 of 2 models" in line
    assert "1 of 4 runs with BatchNorm diverged against 2 of 4 without" in line
