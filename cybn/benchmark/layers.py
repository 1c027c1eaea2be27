"""``python -m cybn bench --layers``: single layers against PyTorch's modules, the products of
the bench models and a sweep of convolutions (3x3, 1x1, strided and depthwise; 8x8 to 56x56
maps, 16 to 256 channels; both layouts): forward, the input and weight gradients together
(``backward``) and the weight gradient alone (``backward_parameters``, as for a first
layer), each timed in interleaved blocks with PyTorch's module doing the same work."""

from __future__ import annotations

import numpy as np

from ..nn import Conv2d, Linear
from .report import markdown, number
from .timing import interleaved_medians, print_header, suite_start

# (name, layout, make(rng) -> cybn layer, input shape, forward multiply-adds)
LINEARS = [(64, 784, 512), (64, 512, 512), (64, 512, 10), (256, 1024, 1024)]
# (batch, in, out, kernel, stride, map size, groups)
CONVS = [
    (64, 3, 32, 3, 1, 32, 1), (64, 16, 16, 3, 1, 32, 1), (64, 32, 64, 3, 1, 16, 1),
    (32, 64, 64, 3, 1, 56, 1), (64, 64, 128, 3, 2, 16, 1), (16, 128, 128, 3, 1, 14, 1),
    (16, 256, 256, 3, 1, 8, 1), (32, 64, 256, 1, 1, 28, 1), (32, 256, 64, 1, 1, 28, 1),
    (32, 64, 128, 1, 2, 28, 1), (32, 64, 64, 3, 1, 56, 64), (32, 256, 256, 3, 1, 14, 256),
]
PASSES = ("forward", "backward", "weights")


def layer_cases() -> list:
    """(name, layout, make, shape, macs) of every layer in the suite."""
    cases = []
    for n, i, o in LINEARS:
        cases.append((f"Linear {i}-{o} batch {n}", "-",
                      lambda rng, i=i, o=o: Linear(i, o, rng=rng), (n, i), n * i * o))
    for n, cin, cout, k, s, size, g in CONVS:
        ho = (size + 2 * (k // 2) - k) // s + 1
        macs = n * cout * ho * ho * cin // g * k * k
        kind = "depthwise " if g > 1 else ""
        for layout in ("NCHW", "NHWC"):
            shape = (n, size, size, cin) if layout == "NHWC" else (n, cin, size, size)
            cases.append((f"{kind}{k}x{k}/{s} {cin}-{cout} @{size}", layout,
                          lambda rng, a=(cin, cout, k, s, g, layout): Conv2d(
                              a[0], a[1], a[2], stride=a[3], padding=a[2] // 2, groups=a[4],
                              channels_last=a[5] == "NHWC", rng=rng), shape, macs))
    return cases


def _torch_layer(layer, torch):
    """PyTorch's module with the cybn layer's weights."""
    if isinstance(layer, Linear):
        t = torch.nn.Linear(layer.in_features, layer.out_features)
    else:
        t = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                            layer.stride, layer.padding, layer.dilation, layer.groups)
    t.weight.data = torch.from_numpy(np.ascontiguousarray(layer.weight.data))
    t.bias.data = torch.from_numpy(np.ascontiguousarray(layer.bias.data))
    return t


def layers_suite(repeats: int = 15, verbose: bool = True, suite=None) -> dict:
    """Time every layer of ``suite`` (layer_cases()) in cybn and PyTorch: forward, backward
    (input and weight gradients), weights only. A JSON-ready dict."""
    threads, torch, meta = suite_start(True, repeats)
    if torch is None:
        raise RuntimeError("the layers suite needs PyTorch (pip install torch)")
    rows = []
    if verbose:
        print_header("layers", meta, f"torch {meta['torch']}, float32", [
            ("layer", -26), ("layout", -6), ("pass", -8), ("cybn ms", 8), ("torch ms", 9),
            ("GFLOP/s", 8), ("cybn/torch", 10)])
    for name, layout, make, shape, macs in layer_cases() if suite is None else suite:
        rng = np.random.default_rng(0)
        layer = make(np.random.default_rng(1))
        x = rng.standard_normal(shape).astype(np.float32)
        y = layer(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        t = _torch_layer(layer, torch)
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))
                              if layout == "NHWC" else x)
        if layout == "NHWC":
            tx = tx.contiguous(memory_format=torch.channels_last)
            t = t.to(memory_format=torch.channels_last)
        tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2))
                               if layout == "NHWC" else dy)
        with torch.no_grad():
            ty = t(tx).numpy()
        got = y.transpose(0, 3, 1, 2) if layout == "NHWC" else y
        if not np.abs(got - ty).max() < 1e-3 * max(1.0, np.abs(ty).max()):
            raise AssertionError(f"{name} {layout}: PyTorch's module computes another output")
        txg = tx.detach().clone().requires_grad_(True)

        def torch_forward():
            with torch.no_grad():
                t(tx)

        def torch_backward(inputs):
            t.zero_grad()
            t(inputs).backward(tdy)

        def cybn_forward():
            layer(x)

        def cybn_backward():
            layer(x)
            layer.backward(dy)

        def cybn_weights():
            layer(x)
            layer.backward_parameters(dy)

        forward = interleaved_medians({"cybn": cybn_forward, "torch": torch_forward},
                                      repeats)
        backward = interleaved_medians({"cybn": cybn_backward,
                                        "torch": lambda: torch_backward(txg)}, repeats)
        weights = interleaved_medians({"cybn": cybn_weights,
                                       "torch": lambda: torch_backward(tx)}, repeats)
        for kind, med in zip(PASSES, (forward, backward, weights)):
            flops = 2 * macs * (1 if kind == "forward" else 3 if kind == "backward" else 2)
            row = {"layer": name, "layout": layout, "shape": list(shape), "pass": kind,
                   "cybn_ms": med["cybn"] * 1e3, "torch_ms": med["torch"] * 1e3,
                   "cybn_gflops": flops / med["cybn"] / 1e9,
                   "cybn_over_torch": med["cybn"] / med["torch"]}
            rows.append(row)
            if verbose:
                print(f"{name:<26} {layout:<6} {kind:<8} {row['cybn_ms']:>8.3f} "
                      f"{row['torch_ms']:>9.3f} {row['cybn_gflops']:>8.1f} "
                      f"{row['cybn_over_torch']:>10.2f}", flush=True)
    ratios = np.array([r["cybn_over_torch"] for r in rows])
    summary = {"geomean_cybn_over_torch": float(np.exp(np.log(ratios).mean())),
               "worst_cybn_over_torch": float(ratios.max())}
    if verbose:
        print(f"# cybn/torch: geometric mean {summary['geomean_cybn_over_torch']:.2f}, worst "
              f"{summary['worst_cybn_over_torch']:.2f} (forward and backward include the "
              f"forward for cybn and PyTorch alike)")
    return {"meta": meta, "rows": rows, "summary": summary}


def layers_markdown(result) -> str:
    return markdown(result["rows"], [
        ("layer", lambda r: r["layer"]), ("layout", lambda r: r["layout"]),
        ("input", lambda r: "x".join(map(str, r["shape"]))), ("pass", lambda r: r["pass"]),
        ("cybn ms", lambda r: number(r["cybn_ms"])),
        ("PyTorch ms", lambda r: number(r["torch_ms"])),
        ("cybn GFLOP/s", lambda r: number(r["cybn_gflops"], 1)),
        ("cybn / PyTorch", lambda r: number(r["cybn_over_torch"], 2))])
