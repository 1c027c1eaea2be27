"""One training step (forward, backward, SGD) of the small CNN of the whole-network benchmark -- Conv 3->32 3x3
pad 1, BN, ReLU, MaxPool 2, Conv 32->64, BN, ReLU, MaxPool 2, Linear; batch 64 of 3x32x32
float32 -- in cybn (plain and with cybn.fuse) and in PyTorch eager, interleaved medians, then
cybn's time per layer.

    python benchmarks/train_step.py [repeats]

NumPy's BLAS runs on one thread, as in cybn.fit; OpenMP and PyTorch use cybn's thread count.
"""

import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import cybn
from cybn.benchmark import interleaved_medians


def cybn_model(rng, fused: bool):
    m = cybn.Sequential(
        cybn.Conv2d(3, 32, 3, padding=1, rng=rng), cybn.BatchNorm2d(32), cybn.ReLU(),
        cybn.MaxPool2d(2), cybn.Conv2d(32, 64, 3, padding=1, rng=rng), cybn.BatchNorm2d(64),
        cybn.ReLU(), cybn.MaxPool2d(2), cybn.Flatten(), cybn.Linear(64 * 8 * 8, 10, rng=rng))
    return cybn.fuse(m) if fused else m


def per_layer(model, X, y, reps: int = 10) -> None:
    fwd, bwd = np.zeros(len(model)), np.zeros(len(model))
    for _ in range(reps):
        h = X
        for i, layer in enumerate(model):
            t = time.perf_counter()
            h = layer(h)
            fwd[i] += time.perf_counter() - t
        _, g = cybn.cross_entropy(h, y)
        for i in reversed(range(len(model))):
            t = time.perf_counter()
            g = model[i].backward(g)
            bwd[i] += time.perf_counter() - t
    total = fwd.sum() + bwd.sum()
    for i, layer in enumerate(model):
        print(f"  {i} {type(layer).__name__:<12} forward {fwd[i] / reps * 1e3:6.2f} ms  "
              f"backward {bwd[i] / reps * 1e3:6.2f} ms  {100 * (fwd[i] + bwd[i]) / total:5.1f}%")


def main(repeats: int = 15) -> None:
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    plain, fused = cybn_model(rng, False), cybn_model(rng, True)
    opts = {id(m): cybn.SGD(m.parameters(), lr=0.01) for m in (plain, fused)}

    def step(m):
        out = m(X)
        _, g = cybn.cross_entropy(out, y)
        opts[id(m)].zero_grad()
        m.backward_parameters(g)  # as fit: no gradient for the data
        opts[id(m)].step()

    tm = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4096, 10))
    topt = torch.optim.SGD(tm.parameters(), lr=0.01)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tm(tX), ty).backward()
        topt.step()

    with threadpool_limits(limits=1, user_api="blas"):
        med = interleaved_medians({"cybn": lambda: step(plain), "cybn fused": lambda: step(fused),
                                   "torch": torch_step}, repeats)
        print(", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items())
              + f"; cybn / torch {med['cybn'] / med['torch']:.2f}, "
              f"fused / torch {med['cybn fused'] / med['torch']:.2f}")
        per_layer(plain, X, y)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
