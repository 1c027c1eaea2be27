"""Insert batch norm into a trained network, fine-tune it at a high learning rate, fold it
back for inference: the README's worked example.

    python examples/insert_and_fold.py            # about half a minute on 2 cores

A small convolutional network without batch norm is trained on scikit-learn's digits; a
BatchNorm2d is inserted after each convolution (the same function: the accuracy does not
move), the network is fine-tuned at a learning rate the plain network does not survive, and
the BatchNorm layers are folded back into the convolutions (again the same function, at the
inference cost of the network without them). Needs scikit-learn (pip install "cybn[demo]").
"""

from __future__ import annotations

import copy
import sys

import numpy as np
from threadpoolctl import threadpool_limits

import cybn
from cybn.benchmark import interleaved_medians
from cybn.demo import load_digits_split


def plain_net(seed: int) -> cybn.Sequential:
    rng = np.random.default_rng(seed)
    return cybn.Sequential(
        cybn.Conv2d(1, 16, 3, padding=1, rng=rng), cybn.ReLU(),
        cybn.Conv2d(16, 32, 3, padding=1, rng=rng), cybn.ReLU(), cybn.MaxPool2d(2),
        cybn.Flatten(), cybn.Linear(32 * 4 * 4, 10, rng=rng))


def accuracy(model, X, y) -> float:
    return cybn.evaluate(model.eval(), X, y)[1]


def main(epochs: int = 2, finetune_epochs: int = 5, high_lr: float = 0.3) -> dict:
    Xtr, ytr, Xva, yva = load_digits_split(0)
    fig = {}
    model = plain_net(0)
    cybn.fit(model, Xtr, ytr, optimizer=cybn.SGD(model.parameters(), lr=0.05, momentum=0.9),
             epochs=epochs, batch_size=64, seed=0, progress=False)
    fig["trained, no BN"] = accuracy(model, Xva, yva)

    with_bn = cybn.insert_batchnorm(model, Xtr, after=(cybn.Conv2d,))
    fig["after inserting BN"] = accuracy(with_bn, Xva, yva)

    for name, net in (("fine-tuned at high lr, no BN", copy.deepcopy(model)),
                      ("fine-tuned at high lr, with BN", with_bn)):
        history = cybn.fit(net, Xtr, ytr,
                           optimizer=cybn.SGD(net.parameters(), lr=high_lr, momentum=0.9),
                           epochs=finetune_epochs, batch_size=64, seed=1, progress=False)
        diverged = not np.isfinite(history["loss"][-1])
        fig[name] = float("nan") if diverged else accuracy(net, Xva, yva)

    folded = cybn.fold_batchnorm(with_bn.eval())
    fig["folded back"] = accuracy(folded, Xva, yva)
    fig["max |folded - unfolded| logits"] = float(np.abs(folded(Xva) - with_bn(Xva)).max())
    with threadpool_limits(limits=1, user_api="blas"):  # as cybn.predict runs the layers
        times = interleaved_medians({"with BN": lambda: with_bn(Xva),
                                     "folded": lambda: folded(Xva)}, 15)
    fig["inference ms, with BN"] = times["with BN"] * 1e3
    fig["inference ms, folded"] = times["folded"] * 1e3
    return fig


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]] + [float(a) for a in sys.argv[3:4]]
    for key, value in main(*args).items():
        print(f"{key:<34} {value:.4g}")
