"""Demo: what batch normalization does to training, measured on handwritten digits.

Trains an MLP and a small CNN on scikit-learn's bundled 8x8 digits (no download), each with
and without BatchNorm, at a normal learning rate (SGD, momentum 0.9, lr 0.05) and at 10
times it, all from one seed. It prints a table (epochs to 95% validation accuracy, final
validation accuracy, time per epoch, divergence), saves a plot of validation accuracy per
epoch, and says in one line what the table shows.

Needs the ``demo`` extra: ``pip install "cybn[demo]"`` (scikit-learn, matplotlib, tqdm).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .layers import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU,
                     Sequential)
from .train import SGD, fit

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


def run(epochs: int = 20, base_lr: float = 0.05, seed: int = 0, batch_size: int = 64,
        plot_path: str | None = "demo_convergence.png", verbose: bool = True,
        limit: int | None = None) -> list:
    """Train the eight configurations; return one result dict each."""
    Xtr, ytr, Xva, yva = load_digits_split(seed)
    if limit:
        Xtr, ytr, Xva, yva = Xtr[:limit], ytr[:limit], Xva[:limit], yva[:limit]
    results = []
    for arch, build in (("MLP", mlp), ("CNN", cnn)):
        for lr_name, lr in (("1x", base_lr), ("10x", 10 * base_lr)):
            for bn in (False, True):
                model = build(bn, seed)
                opt = SGD(model.parameters(), lr=lr, momentum=0.9)
                start = time.perf_counter()
                with np.errstate(over="ignore", invalid="ignore"):
                    hist = fit(model, Xtr, ytr, optimizer=opt, epochs=epochs,
                               batch_size=batch_size, validation_data=(Xva, yva), seed=seed,
                               progress=False)
                elapsed = time.perf_counter() - start
                acc = [a if a is not None and np.isfinite(a) else 0.0
                       for a in hist["val_accuracy"]]
                reached = next((i + 1 for i, a in enumerate(acc) if a >= TARGET), None)
                # Diverged: the loss blew up (NaN/inf), or training ended at chance level
                # (validation accuracy <= 2x the 10% of guessing): the network collapsed.
                diverged = (hist["diverged"] or not np.isfinite(hist["loss"][-1])
                            or (bool(acc) and acc[-1] <= CHANCE_LIMIT))
                res = {"model": arch, "batchnorm": bn, "lr": lr, "lr_name": lr_name,
                       "epochs_to_95": reached, "final_val_acc": acc[-1] if acc else 0.0,
                       "best_val_acc": max(acc) if acc else 0.0,
                       "sec_per_epoch": elapsed / max(len(acc), 1), "diverged": diverged,
                       "val_acc": acc}
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


HEADER = (f"{'model':<5} {'BN':<4} {'lr':>6} {'epochs to 95%':>14} {'final val acc':>14} "
          f"{'s/epoch':>8} {'diverged':>9}")


def format_row(r) -> str:
    if r is None:
        return HEADER
    reached = "-" if r["epochs_to_95"] is None else str(r["epochs_to_95"])
    return (f"{r['model']:<5} {'yes' if r['batchnorm'] else 'no':<4} {r['lr']:>6.2f} "
            f"{reached:>14} {r['final_val_acc']:>14.3f} {r['sec_per_epoch']:>8.3f} "
            f"{'yes' if r['diverged'] else 'no':>9}")


def markdown(results) -> str:
    lines = ["| model | BatchNorm | lr | epochs to 95% val acc | final val acc | s / epoch | "
             "diverged |", "|---|---|---|---|---|---|---|"]
    for r in results:
        reached = "not reached" if r["epochs_to_95"] is None else str(r["epochs_to_95"])
        lines.append(f"| {r['model']} | {'yes' if r['batchnorm'] else 'no'} | {r['lr']:.2f} | "
                     f"{reached} | {r['final_val_acc']:.3f} | {r['sec_per_epoch']:.3f} | "
                     f"{'yes' if r['diverged'] else 'no'} |")
    return "\n".join(lines)


def conclusion(results) -> str:
    """One line summarizing the measured effect of BatchNorm."""
    def epochs(r):
        return r["epochs_to_95"] if r["epochs_to_95"] is not None else float("inf")

    faster = sum(1 for a in results if a["batchnorm"] for b in results
                 if not b["batchnorm"] and b["model"] == a["model"] and b["lr"] == a["lr"]
                 and epochs(a) < epochs(b))
    pairs = sum(1 for r in results if r["batchnorm"])
    high = [r for r in results if r["lr_name"] == "10x"]
    bn_high = np.mean([r["final_val_acc"] for r in high if r["batchnorm"]])
    plain_high = np.mean([r["final_val_acc"] for r in high if not r["batchnorm"]])
    div_plain = sum(r["diverged"] for r in high if not r["batchnorm"])
    div_bn = sum(r["diverged"] for r in high if r["batchnorm"])
    return (f"BatchNorm reached 95% validation accuracy in fewer epochs in {faster} of {pairs} "
            f"model/learning-rate pairs; at 10x the learning rate it averaged {bn_high:.3f} final "
            f"validation accuracy against {plain_high:.3f} without it ({div_bn} vs {div_plain} "
            f"runs diverged).")


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
                label += " (diverged)"
            ax.plot(np.arange(1, len(r["val_acc"]) + 1), r["val_acc"], style, color=color,
                    marker="o" if r["batchnorm"] else "x", ms=3, label=label)
        ax.axhline(TARGET, color="gray", lw=0.8, ls=":")
        ax.set_title(f"{arch} on sklearn digits")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("validation accuracy")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="demo_convergence.png", help="where to save the plot")
    p.add_argument("--markdown", help="also write the table as Markdown to this path")
    args = p.parse_args(argv)
    print(HEADER)
    start = time.perf_counter()
    results = run(args.epochs, args.lr, args.seed, plot_path=args.plot)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results) + "\n")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0
