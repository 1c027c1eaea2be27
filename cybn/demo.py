"""Demo: what batch normalization does to training, measured on handwritten digits.

Trains an MLP and a small CNN on scikit-learn's bundled 8x8 digits (no download), each with
and without BatchNorm, at a normal learning rate (SGD, momentum 0.9, lr 0.05) and at 10
times it, each configuration with 3 seeds (initialization and batch order). Every run uses
early stopping on the validation accuracy (patience 5, the best epoch's weights restored:
:class:`cybn.EarlyStopping`), as a user would, so a run that peaks and then degrades keeps
its peak; ``--no-early-stopping`` trains every epoch and shows the late collapse at the high
learning rate. It prints a table (median epochs to 95% validation accuracy, final validation
accuracy as mean and min-max over seeds, time per epoch, diverged runs), saves a plot of
validation accuracy per epoch (mean, with the min-max band), and says in one line only what
held for every seed. The same seeds give the same numbers whatever the thread settings.

Needs the ``demo`` extra: ``pip install "cybn[demo]"`` (scikit-learn, matplotlib, tqdm).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .nn import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU,
                 Sequential)
from .callbacks import EarlyStopping
from .train import SGD, evaluate, fit

TARGET = 0.95
CHANCE_LIMIT = 0.2


def load_digits_split(seed: int = 0):
    """Digits scaled to [0, 1], split 75/25 into train and validation, NCHW (N, 1, 8, 8)."""
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit('the demo needs scikit-learn: pip install "cybn[demo]" '
                         '(in a checkout: pip install -e ".[demo]")') from err
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(X))
    split = int(0.75 * len(X))
    tr, va = order[:split], order[split:]
    return X[tr], y[tr], X[va], y[va]


def mlp(bn: bool, seed: int):
    rng = np.random.default_rng(seed)
    layers = [Flatten(), Linear(64, 128, rng=rng)]
    layers += [BatchNorm1d(128)] if bn else []
    layers += [ReLU(), Linear(128, 64, rng=rng)]
    layers += [BatchNorm1d(64)] if bn else []
    layers += [ReLU(), Linear(64, 10, rng=rng)]
    return Sequential(*layers)


def cnn(bn: bool, seed: int):
    rng = np.random.default_rng(seed)
    layers: list[Module] = [Conv2d(1, 16, 3, padding=1, rng=rng)]
    layers += [BatchNorm2d(16)] if bn else []
    layers += [ReLU(), MaxPool2d(2), Conv2d(16, 32, 3, padding=1, rng=rng)]
    layers += [BatchNorm2d(32)] if bn else []
    layers += [ReLU(), MaxPool2d(2), Flatten(), Linear(32 * 2 * 2, 10, rng=rng)]
    return Sequential(*layers)


def train_one(arch: str, bn: bool, lr: float, seed: int, data, epochs: int,
              batch_size: int, early_stopping: bool = True) -> dict:
    """One training run: validation accuracy per epoch, epochs to TARGET, divergence. With
    early stopping the final accuracy is the restored best epoch's, and the curve keeps that
    value after the stop."""
    Xtr, ytr, Xva, yva = data
    model = (mlp if arch == "MLP" else cnn)(bn, seed)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9)
    stopper = [EarlyStopping("val_accuracy", patience=5)] if early_stopping else []
    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):
        hist = fit(model, Xtr, ytr, optimizer=opt, epochs=epochs, batch_size=batch_size,
                   validation_data=(Xva, yva), seed=seed, progress=False, callbacks=stopper)
        final = evaluate(model, Xva, yva)[1] if hist["stopped_early"] else None
    elapsed = time.perf_counter() - start
    acc = [a if a is not None and np.isfinite(a) else 0.0 for a in hist["val_accuracy"]]
    if final is None:
        final = acc[-1] if acc else 0.0
    # a diverged run stays where it ended, an early-stopped one at its restored best
    acc += [final if hist["stopped_early"] else (acc[-1] if acc else 0.0)] * (epochs - len(acc))
    reached = next((i + 1 for i, a in enumerate(acc) if a >= TARGET), None)
    # Diverged: the loss blew up (NaN/inf), or training ended at chance level (validation
    # accuracy <= 2x the 10% of guessing): the network collapsed.
    diverged = (hist["diverged"] or not np.isfinite(hist["loss"][-1])
                or final <= CHANCE_LIMIT)
    return {"seed": seed, "val_acc": acc, "epochs_to_95": reached,
            "final_val_acc": float(final), "diverged": bool(diverged),
            "stopped_at": len(hist["val_accuracy"]) if hist["stopped_early"] else None,
            "sec_per_epoch": elapsed / max(len(hist["val_accuracy"]), 1)}


def run(epochs: int = 20, base_lr: float = 0.05, seeds=(0, 1, 2), batch_size: int = 64,
        plot_path: str | None = "demo_convergence.png", verbose: bool = True,
        limit: int | None = None, early_stopping: bool = True) -> list:
    """Train the eight configurations, each once per seed (model initialization and batch
    order; the train/validation split is fixed); return one result dict per configuration
    with the per-seed runs and their summary (mean, min, max over seeds)."""
    data = load_digits_split(0)
    if limit:
        data = tuple(a[:limit] for a in data)
    results = []
    for arch in ("MLP", "CNN"):
        for lr_name, lr in (("1x", base_lr), ("10x", 10 * base_lr)):
            for bn in (False, True):
                runs = [train_one(arch, bn, lr, seed, data, epochs, batch_size,
                                  early_stopping) for seed in seeds]
                curves = np.array([r["val_acc"] for r in runs])
                finals = np.array([r["final_val_acc"] for r in runs])
                reached = [r["epochs_to_95"] for r in runs]
                res = {"model": arch, "batchnorm": bn, "lr": lr, "lr_name": lr_name,
                       "runs": runs, "seeds": list(seeds),
                       "final_val_acc": float(finals.mean()),
                       "final_val_acc_min": float(finals.min()),
                       "final_val_acc_max": float(finals.max()),
                       "epochs_to_95": (None if None in reached
                                        else float(np.median(reached))),
                       "reached_95": sum(r is not None for r in reached),
                       "diverged": sum(r["diverged"] for r in runs),
                       "sec_per_epoch": float(np.mean([r["sec_per_epoch"] for r in runs])),
                       "val_acc": curves.mean(axis=0).tolist(),
                       "val_acc_lo": curves.min(axis=0).tolist(),
                       "val_acc_hi": curves.max(axis=0).tolist()}
                results.append(res)
                if verbose:
                    print(format_row(res), flush=True)
    if plot_path:
        plotted = plot(results, plot_path)
        if verbose:
            print(f"plot: {plot_path}" if plotted else "matplotlib not installed: no plot")
    if verbose:
        print(conclusion(results))
    return results


HEADER = (f"{'model':<5} {'BN':<4} {'lr':>6} {'epochs to 95%':>14} "
          f"{'final val acc: mean (min-max)':>30} {'s/epoch':>8} {'diverged':>9}")


def _reached(r) -> str:
    """Median epochs to 95% over the seeds, or how many seeds got there."""
    n = len(r["runs"])
    if r["epochs_to_95"] is not None:
        return f"{r['epochs_to_95']:g}"
    return f"{r['reached_95']}/{n} seeds" if r["reached_95"] else "never"


def format_row(r) -> str:
    if r is None:
        return HEADER
    acc = (f"{r['final_val_acc']:.3f} ({r['final_val_acc_min']:.3f}-"
           f"{r['final_val_acc_max']:.3f})")
    return (f"{r['model']:<5} {'yes' if r['batchnorm'] else 'no':<4} {r['lr']:>6.2f} "
            f"{_reached(r):>14} {acc:>30} {r['sec_per_epoch']:>8.3f} "
            f"{str(r['diverged']) + '/' + str(len(r['runs'])):>9}")


def markdown(results) -> str:
    lines = ["| model | BatchNorm | lr | epochs to 95% val acc (median over seeds) | "
             "final val acc, mean (min-max) | s / epoch | diverged runs |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {'yes' if r['batchnorm'] else 'no'} | {r['lr']:.2f} | "
                     f"{_reached(r)} | {r['final_val_acc']:.3f} ({r['final_val_acc_min']:.3f}"
                     f"-{r['final_val_acc_max']:.3f}) | {r['sec_per_epoch']:.3f} | "
                     f"{r['diverged']}/{len(r['runs'])} |")
    return "\n".join(lines)


def conclusion(results) -> str:
    """One line saying only what held for every seed."""
    def epochs(run):
        return run["epochs_to_95"] if run["epochs_to_95"] is not None else float("inf")

    pairs = [(a, b) for a in results if a["batchnorm"] for b in results
             if not b["batchnorm"] and b["model"] == a["model"] and b["lr"] == a["lr"]]
    nseeds = len(results[0]["runs"])
    faster = sum(all(epochs(x) < epochs(y) for x, y in zip(a["runs"], b["runs"]))
                 for a, b in pairs)
    high = [(a, b) for a, b in pairs if a["lr_name"] == "10x"]
    better_high = sum(all(x["final_val_acc"] > y["final_val_acc"]
                          for x, y in zip(a["runs"], b["runs"])) for a, b in high)
    div_bn = sum(a["diverged"] for a, _ in high)
    div_plain = sum(b["diverged"] for _, b in high)
    runs_high = nseeds * len(high)
    return (f"Over {nseeds} seeds: BatchNorm reached 95% validation accuracy in fewer epochs "
            f"for every seed in {faster} of {len(pairs)} model/learning-rate pairs; at 10x the "
            f"learning rate it ended with higher validation accuracy for every seed in "
            f"{better_high} of {len(high)} models, and {div_bn} of {runs_high} runs with "
            f"BatchNorm diverged against {div_plain} of {runs_high} without.")


def plot(results, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, arch in zip(axes, ("MLP", "CNN")):
        for r in results:
            if r["model"] != arch:
                continue
            style = "-" if r["batchnorm"] else "--"
            color = "tab:blue" if r["lr_name"] == "1x" else "tab:red"
            label = f"{'BN' if r['batchnorm'] else 'no BN'}, lr {r['lr']:.2f}"
            if r["diverged"]:
                label += f" ({r['diverged']}/{len(r['runs'])} diverged)"
            epochs = np.arange(1, len(r["val_acc"]) + 1)
            ax.plot(epochs, r["val_acc"], style, color=color,
                    marker="o" if r["batchnorm"] else "x", ms=3, label=label)
            ax.fill_between(epochs, r["val_acc_lo"], r["val_acc_hi"], color=color,
                            alpha=0.12 if r["batchnorm"] else 0.06, lw=0)
        ax.axhline(TARGET, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{arch} on sklearn digits")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(f"validation accuracy (mean, band: min-max over "
                       f"{len(results[0]['runs'])} seeds)")
    axes[0].set_ylim(0, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cybn demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05, help="the normal learning rate")
    p.add_argument("--seeds", type=int, default=3,
                   help="runs per configuration (seeds 0..N-1 for initialization and order)")
    p.add_argument("--plot", default="demo_convergence.png", help="where to save the plot")
    p.add_argument("--markdown", help="also write the table as Markdown to this path")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false",
                   help="train every epoch (shows the late collapse at the high rate)")
    args = p.parse_args(argv)
    print(HEADER)
    start = time.perf_counter()
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be at least 1")
    results = run(args.epochs, args.lr, tuple(range(args.seeds)), plot_path=args.plot,
                  early_stopping=args.early_stopping)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results) + "\n")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0
