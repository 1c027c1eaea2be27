"""Whole networks against PyTorch: a training step (forward, cross-entropy, backward, SGD)
and an inference forward, same weights, same thread count, interleaved medians. The job
behind ``python -m cybn bench --models``.

Each cybn model is translated into the same PyTorch model (weights copied; a channels-last
cybn model becomes a PyTorch model in ``torch.channels_last`` memory format) and the two
outputs are checked to agree before anything is timed. The cybn step is the one ``fit``
runs: the first layer computes no input gradient (``backward_parameters``), as PyTorch
does for inputs that do not require grad.
"""

from __future__ import annotations

import numpy as np

from .. import demo
from ..deploy import fold_batchnorm, fuse
from ..nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten,
                 Linear, MaxPool2d, Module, ReLU, Residual, Sequential)
from ..nn.module import Identity
from ..train import SGD, cross_entropy
from .report import markdown, number
from .timing import interleaved_medians, print_header, suite_start


def small_cnn(channels_last: bool, rng) -> Sequential:
    """The 32x32 CNN of the whole-network benchmark: Conv 3->32, BN, ReLU, MaxPool 2,
    Conv 32->64, BN, ReLU, MaxPool 2, Linear 4096->10."""
    cl = channels_last
    return Sequential(
        Conv2d(3, 32, 3, padding=1, channels_last=cl, rng=rng), BatchNorm2d(32, channels_last=cl),
        ReLU(), MaxPool2d(2, channels_last=cl),
        Conv2d(32, 64, 3, padding=1, channels_last=cl, rng=rng),
        BatchNorm2d(64, channels_last=cl), ReLU(), MaxPool2d(2, channels_last=cl), Flatten(),
        Linear(64 * 8 * 8, 10, rng=rng))


def wide_mlp(rng) -> Sequential:
    """MLP 784-512-512-10 with BatchNorm1d."""
    return Sequential(Linear(784, 512, rng=rng), BatchNorm1d(512), ReLU(),
                      Linear(512, 512, rng=rng), BatchNorm1d(512), ReLU(),
                      Linear(512, 10, rng=rng))


def small_resnet(rng) -> Sequential:
    """A stem and two residual blocks (the second halves the resolution, with a 1x1
    projection shortcut), global average pooling and a linear head; 3x32x32 inputs."""
    def block(cin, cout, stride):
        body = Sequential(Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng),
                          BatchNorm2d(cout), ReLU(),
                          Conv2d(cout, cout, 3, padding=1, bias=False, rng=rng),
                          BatchNorm2d(cout))
        shortcut = None if stride == 1 and cin == cout else Sequential(
            Conv2d(cin, cout, 1, stride=stride, bias=False, rng=rng), BatchNorm2d(cout))
        return Residual(body, shortcut)

    return Sequential(Conv2d(3, 16, 3, padding=1, bias=False, rng=rng), BatchNorm2d(16), ReLU(),
                      block(16, 16, 1), block(16, 32, 2), AdaptiveAvgPool2d(1), Flatten(),
                      Linear(32, 10, rng=rng))


# (name, layout, builder(rng), input shape of one batch in the model's own layout)
MODELS = [
    ("demo MLP (BN)", "-", lambda rng: demo.mlp(True, 0), (64, 1, 8, 8)),
    ("demo CNN (BN)", "NCHW", lambda rng: demo.cnn(True, 0), (64, 1, 8, 8)),
    ("MLP 784-512-512-10", "-", wide_mlp, (64, 784)),
    ("CNN 32x32", "NCHW", lambda rng: small_cnn(False, rng), (64, 3, 32, 32)),
    ("CNN 32x32", "NHWC", lambda rng: small_cnn(True, rng), (64, 32, 32, 3)),
    ("ResNet (2 blocks)", "NCHW", small_resnet, (64, 3, 32, 32)),
]


def to_torch(model: Module, x: np.ndarray, torch):
    """The PyTorch module computing what ``model`` computes on inputs like ``x`` (weights
    copied), and x as PyTorch wants it (NCHW logical order, channels_last memory format
    for a channels-last model)."""
    nn = torch.nn

    cl = any(getattr(layer, "channels_last", False) for layer in model.modules())

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    def convert(m: Module, h: np.ndarray):
        """(torch module, output of m on h)."""
        out = m(h)
        if isinstance(m, Sequential):
            parts, hh = [], h
            for layer in m:
                t, hh = convert(layer, hh)
                parts.append(t)
            return nn.Sequential(*parts), out
        if isinstance(m, Residual):
            body, _ = convert(m.body, h)
            sc = m._shortcut()
            shortcut = nn.Identity() if sc is None else convert(sc, h)[0]
            return _TorchResidual(torch, body, shortcut, m.activation == "relu"), out
        if isinstance(m, Conv2d):
            t = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                          m.dilation, m.groups, bias=m.bias is not None)
            t.weight.data = tensor(m.weight.data)
            if m.bias is not None:
                t.bias.data = tensor(m.bias.data)
            return t, out
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            cls = nn.BatchNorm1d if isinstance(m, BatchNorm1d) else nn.BatchNorm2d
            t = cls(m.num_features, eps=m.eps, momentum=m.momentum)
            t.weight.data, t.bias.data = tensor(m.weight.data), tensor(m.bias.data)
            t.running_mean.data = tensor(m.running_mean)
            t.running_var.data = tensor(m.running_var)
            return (nn.Sequential(t, nn.ReLU()) if m.activation == "relu" else t), out
        if isinstance(m, Linear):
            t = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            w = m.weight.data
            if cl and h.ndim == 2 and flat_shape:  # cybn flattened (H, W, C), PyTorch (C, H, W)
                hh, ww, c = flat_shape[-1]
                w = w.reshape(-1, hh, ww, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            t.weight.data = tensor(w)
            if m.bias is not None:
                t.bias.data = tensor(m.bias.data)
            return t, out
        simple = {ReLU: nn.ReLU, Identity: nn.Identity}
        if type(m) in simple:
            return simple[type(m)](), out
        if isinstance(m, MaxPool2d):
            return nn.MaxPool2d(m.kernel_size, m.stride), out
        if isinstance(m, AvgPool2d):
            return nn.AvgPool2d(m.kernel_size, m.stride), out
        if isinstance(m, AdaptiveAvgPool2d):
            return nn.AdaptiveAvgPool2d(1), out
        if isinstance(m, Flatten):
            flat_shape.append(h.shape[1:])
            return nn.Flatten(), out
        raise TypeError(f"no PyTorch counterpart for {type(m).__name__}")

    flat_shape: list = []  # the shape each Flatten received
    model.eval()
    tm, _ = convert(model, x)
    tm.eval()
    tx = tensor(x.transpose(0, 3, 1, 2) if cl else x)
    if cl:
        tm = tm.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    return tm, tx


def _TorchResidual(torch, body, shortcut, relu: bool):
    class TorchResidual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            y = self.body(x) + self.shortcut(x)
            return torch.relu(y) if relu else y

    return TorchResidual()


def models_suite(repeats: int = 15, verbose: bool = True, suite=None, fused: bool = True
                 ) -> dict:
    """Time each model of ``suite`` (MODELS) in cybn (as built, and fused: after cybn.fuse
    for the training step, after cybn.fold_batchnorm for inference, where BatchNorm folds
    into the convolutions and Linear layers and their ReLU runs in the products' epilogue)
    and in PyTorch eager (as built: no folding): a training step and an inference forward.
    A JSON-ready dict."""
    threads, torch, meta = suite_start(True, repeats)
    if torch is None:
        raise RuntimeError("the models suite needs PyTorch (pip install torch)")
    rows = []
    if verbose:
        print_header("models", meta, f"torch {meta['torch']}, float32", [
            ("model", -20), ("layout", -6), ("pass", -6), ("cybn ms", 8), ("fused ms", 9),
            ("torch ms", 9), ("cybn/torch", 10), ("fused/torch", 11)])
    for name, layout, build, shape in MODELS if suite is None else suite:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.integers(0, 10, shape[0])
        model = build(np.random.default_rng(1))
        model(x)  # running statistics not at their initial values
        tm, tx = to_torch(model, x, torch)
        ty = torch.from_numpy(y)
        check = np.abs(model(x) - tm(tx).detach().numpy()).max()
        if not check < 1e-3:
            raise AssertionError(f"{name}: PyTorch's copy differs from cybn's model by {check}")
        fused_model = fuse(build(np.random.default_rng(1))) if fused else None
        contenders = {"cybn": model} if fused_model is None else \
            {"cybn": model, "fused": fused_model}
        opts = {k: SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in contenders.items()}
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)

        def cybn_step(k):
            m = contenders[k]
            _, g = cross_entropy(m(x), y)
            opts[k].zero_grad()
            m.backward_parameters(g)
            opts[k].step()

        def torch_step():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(tx), ty).backward()
            topt.step()

        def torch_infer():
            with torch.inference_mode():
                tm(tx)

        for m in contenders.values():
            m.train()
        tm.train()
        step = interleaved_medians({**{k: (lambda k=k: cybn_step(k)) for k in contenders},
                                    "torch": torch_step}, repeats)
        for m in contenders.values():
            m.eval()
        tm.eval()
        if fused_model is not None:  # inference: batch norm folded, ReLUs in the epilogues
            contenders["fused"] = fold_batchnorm(model)
            ref = model(x)
            gap = np.abs(contenders["fused"](x) - ref).max()
            if not gap < 1e-3 * max(1.0, np.abs(ref).max()):
                raise AssertionError(f"{name}: the folded model differs by {gap}")
        infer = interleaved_medians({**{k: (lambda m=m: m(x)) for k, m in contenders.items()},
                                     "torch": torch_infer}, repeats)
        for kind, med in (("train", step), ("infer", infer)):
            row = {"model": name, "layout": layout, "shape": list(shape), "pass": kind,
                   "cybn_ms": med["cybn"] * 1e3, "fused_ms": med.get("fused", np.nan) * 1e3,
                   "torch_ms": med["torch"] * 1e3,
                   "cybn_over_torch": med["cybn"] / med["torch"],
                   "fused_over_torch": med.get("fused", np.nan) / med["torch"]}
            rows.append(row)
            if verbose:
                print(f"{name:<20} {layout:<6} {kind:<6} {row['cybn_ms']:>8.2f} "
                      f"{row['fused_ms']:>9.2f} {row['torch_ms']:>9.2f} "
                      f"{row['cybn_over_torch']:>10.2f} {row['fused_over_torch']:>11.2f}",
                      flush=True)
    return {"meta": meta, "rows": rows}


def models_markdown(result) -> str:
    return markdown(result["rows"], [
        ("model", lambda r: r["model"]), ("layout", lambda r: r["layout"]),
        ("batch", lambda r: "x".join(map(str, r["shape"]))),
        ("pass", lambda r: "training step" if r["pass"] == "train" else "inference"),
        ("cybn ms", lambda r: number(r["cybn_ms"])),
        ("fused ms", lambda r: number(r["fused_ms"])),
        ("PyTorch ms", lambda r: number(r["torch_ms"])),
        ("cybn / PyTorch", lambda r: number(r["cybn_over_torch"], 2)),
        ("fused / PyTorch", lambda r: number(r["fused_over_torch"], 2))])
