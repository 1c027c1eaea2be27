"""cybn.sklearn's batch-normalized MLPs against scikit-learn's MLPClassifier / MLPRegressor
on scikit-learn's bundled data sets: 5-fold cross-validated accuracy (R^2 for diabetes) and
the fit time per fold.

Each estimator sits in a Pipeline after a standardizer (scikit-learn's StandardScaler for
MLP*, cybn's ChannelScaler for BNMLP*), with the same settings on both sides: one hidden
layer of 100, Adam, batch "auto", max_iter 200, tol 1e-4, n_iter_no_change 10,
random_state 0 for every fold; BNMLP also without batch norm (``batch_norm=False``) to
separate what batch norm does from the implementation; at learning_rate_init 0.001
(scikit-learn's default) and 0.01. Folds are stratified for the classifiers
(``cross_validate`` with ``cv=5``); the estimators run interleaved fold by fold.

    python benchmarks/sklearn_mlp.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cybn import _kernels
from cybn.sklearn import BNMLPClassifier, BNMLPRegressor, ChannelScaler

DATASETS = {"digits": (load_digits, True), "breast_cancer": (load_breast_cancer, True),
            "wine": (load_wine, True), "diabetes": (load_diabetes, False)}


def contenders(classify: bool, lr: float) -> dict:
    common = dict(hidden_layer_sizes=(100,), learning_rate_init=lr, max_iter=200,
                  random_state=0)
    if classify:
        return {"sklearn MLP": lambda: make_pipeline(StandardScaler(), MLPClassifier(**common)),
                "cybn BNMLP": lambda: make_pipeline(ChannelScaler(), BNMLPClassifier(**common)),
                "cybn MLP, no BN": lambda: make_pipeline(
                    ChannelScaler(), BNMLPClassifier(batch_norm=False, **common))}
    return {"sklearn MLP": lambda: make_pipeline(StandardScaler(), MLPRegressor(**common)),
            "cybn BNMLP": lambda: make_pipeline(ChannelScaler(), BNMLPRegressor(**common)),
            "cybn MLP, no BN": lambda: make_pipeline(
                ChannelScaler(), BNMLPRegressor(batch_norm=False, **common))}


def run(lrs=(0.001, 0.01)) -> list:
    rows = []
    for name, (load, classify) in DATASETS.items():
        X, y = load(return_X_y=True)
        X = X.astype(np.float32)
        if not classify:
            y = ((y - y.mean()) / y.std()).astype(np.float32)
        split = (StratifiedKFold(5, shuffle=True, random_state=0) if classify
                 else KFold(5, shuffle=True, random_state=0))
        for lr in lrs:
            makers = contenders(classify, lr)
            scores = {k: [] for k in makers}
            times = {k: [] for k in makers}
            iters = {k: [] for k in makers}
            for train, test in split.split(X, y):
                for key, make in makers.items():  # interleaved, fold by fold
                    est = make()
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        est.fit(X[train], y[train])
                    times[key].append(time.perf_counter() - start)
                    scores[key].append(est.score(X[test], y[test]))
                    iters[key].append(est[-1].n_iter_)
            for key in makers:
                rows.append({"dataset": name, "samples": len(X), "features": X.shape[1],
                             "metric": "accuracy" if classify else "R^2", "lr": lr,
                             "estimator": key, "score": float(np.mean(scores[key])),
                             "score_min": float(np.min(scores[key])),
                             "fit_s": float(np.mean(times[key])),
                             "iterations": float(np.mean(iters[key]))})
                print(f"{name:<14} lr {lr:<6g} {key:<16} {rows[-1]['metric']:<8} "
                      f"{rows[-1]['score']:.4f} (min {rows[-1]['score_min']:.4f})  "
                      f"fit {rows[-1]['fit_s']:.3f} s  {rows[-1]['iterations']:.0f} it",
                      flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the rows and the machine to this path")
    args = p.parse_args(argv)
    machine = {"cpu": platform.processor() or platform.machine(),
               "variant": _kernels.ISA}
    rows = run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
