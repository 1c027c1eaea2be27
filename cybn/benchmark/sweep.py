"""The size sweep: every normalization op, in each layout, at float32 inputs of 16 KiB to
64 MiB in steps of 2x (from inside the L1/L2 caches to well beyond the last-level cache),
against what a PyTorch user calls: ``torch.nn.functional``'s functions for the forwards
and autograd's ``backward()`` for the backwards, allocating their outputs as cybn's public
functions do. Each series reports the geometric mean and the worst ratio over the sweep, so
no single shape can land where one contender happens to fall off a cliff.

Ratios are PyTorch's time over cybn's (above 1: cybn is faster).
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops as F
from .timing import interleaved_medians, print_header, suite_start

SIZES = [1 << k for k in range(14, 27)]  # bytes of the float32 input: 16 KiB .. 64 MiB
CHANNELS = 64  # images: (4, 64, H, W) with H * W growing with the size
FEATURES = 512  # 2-D batch norm: (N, 512)
WIDTH = 768  # layer and RMS norm: (rows, 768), a transformer's width
GROUPS = 32

# (op, layouts): the series of the sweep
SERIES = [
    ("bn_infer", ("NCHW", "NHWC", "NC")),
    ("bn_train", ("NCHW", "NHWC", "NC")),
    ("bn_backward", ("NCHW", "NHWC", "NC")),
    ("bn_relu_step", ("NCHW", "NHWC")),
    ("layer_norm", ("rows",)),
    ("layer_norm_backward", ("rows",)),
    ("rms_norm", ("rows",)),
    ("rms_norm_backward", ("rows",)),
    ("group_norm", ("NCHW", "NHWC")),
    ("group_norm_backward", ("NCHW", "NHWC")),
    ("instance_norm", ("NCHW", "NHWC")),
    ("instance_norm_backward", ("NCHW", "NHWC")),
]


def logical_shape(layout: str, nbytes: int) -> tuple:
    """The (channels-first) shape of ``nbytes`` of float32 for a layout."""
    n = nbytes // 4
    if layout == "NC":
        return (n // FEATURES, FEATURES)
    if layout == "rows":
        return (max(1, round(n / WIDTH)), WIDTH)
    pixels = n // (4 * CHANNELS)
    e = pixels.bit_length() - 1
    return (4, CHANNELS, 1 << ((e + 1) // 2), 1 << (e // 2))


def _data(layout: str, nbytes: int) -> tuple:
    """(x, dy, channel axis) in the layout's memory order, and the torch-side permutation
    that views the same memory as a channels-first tensor (None for 2-D)."""
    shape = logical_shape(layout, nbytes)
    rng = np.random.default_rng(nbytes)
    x = rng.standard_normal(shape, dtype=np.float32) + 0.5
    dy = rng.standard_normal(shape, dtype=np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        dy = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        return x, dy, -1, (0, 3, 1, 2)
    return x, dy, (-1 if layout == "rows" else 1), None


def contenders(op: str, layout: str, nbytes: int, torch) -> dict:
    """{"cybn": callable, "torch": callable} for one point of the sweep."""
    x, dy, axis, perm = _data(layout, nbytes)
    C = x.shape[axis]
    w = np.linspace(0.5, 1.5, C, dtype=np.float32)
    b = np.linspace(-0.5, 0.5, C, dtype=np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)

    def tensor(a, grad=False):
        t = torch.from_numpy(a)
        if perm is not None and a.ndim == 4:
            t = t.permute(*perm)  # channels-last memory seen as NCHW, as PyTorch keeps it
        return t.requires_grad_(grad)

    tx, tdy = tensor(x), tensor(dy)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    tf = torch.nn.functional

    def autograd(forward):
        """Autograd's backward of forward(x, w, b), dy given: x.grad, w.grad, b.grad."""
        gx, gw, gb = tensor(x, True), tw.clone().requires_grad_(), tb.clone().requires_grad_()
        y = forward(gx, gw, gb)

        def run():
            gx.grad = gw.grad = gb.grad = None  # no accumulation into earlier gradients
            y.backward(tdy, retain_graph=True)
        return run

    if op == "bn_infer":
        return {"cybn": lambda: F.batch_norm_infer(x, rm, rv, w, b, axis=axis),
                "torch": lambda: tf.batch_norm(tx, trm, trv, tw, tb, training=False)}
    if op == "bn_train":
        return {"cybn": lambda: F.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                                   axis=axis),
                "torch": lambda: tf.batch_norm(tx, trm, trv, tw, tb, training=True)}
    if op == "bn_backward":
        _, mean, invstd = F.batch_norm_train(x, w, b, axis=axis)
        return {"cybn": lambda: F.batch_norm_backward(dy, x, w, mean, invstd, axis=axis),
                "torch": autograd(lambda gx, gw, gb: tf.batch_norm(
                    gx, None, None, gw, gb, training=True))}
    if op == "bn_relu_step":  # training forward and backward of relu(BN(x))
        def cybn_step():
            y, mean, invstd = F.batch_norm_train(x, w, b, axis=axis, activation="relu")
            F.batch_norm_backward(dy, x, w, mean, invstd, axis=axis, activation="relu",
                                  bias=b)

        gx, gw, gb = tensor(x, True), tw.clone().requires_grad_(), tb.clone().requires_grad_()

        def torch_step():
            gx.grad = gw.grad = gb.grad = None
            y = tf.relu(tf.batch_norm(gx, None, None, gw, gb, training=True))
            y.backward(tdy)
        return {"cybn": cybn_step, "torch": torch_step}
    if op.startswith(("layer_norm", "rms_norm")):
        rms = op.startswith("rms")
        if rms:
            y, invrms = F.rms_norm(x, WIDTH, w, eps=1e-6)
            fwd = lambda: F.rms_norm(x, WIDTH, w, eps=1e-6)  # noqa: E731
            bwd = lambda: F.rms_norm_backward(dy, x, w, invrms, WIDTH)  # noqa: E731
            tfwd = lambda gx, gw, gb: tf.rms_norm(gx, (WIDTH,), gw, eps=1e-6)  # noqa: E731
        else:
            y, mean, invstd = F.layer_norm(x, WIDTH, w, b)
            fwd = lambda: F.layer_norm(x, WIDTH, w, b)  # noqa: E731
            bwd = lambda: F.layer_norm_backward(dy, x, w, mean, invstd, WIDTH)  # noqa: E731
            tfwd = lambda gx, gw, gb: tf.layer_norm(gx, (WIDTH,), gw, gb)  # noqa: E731
        if op.endswith("backward"):
            return {"cybn": bwd, "torch": autograd(tfwd)}
        return {"cybn": fwd, "torch": lambda: tfwd(tx, tw, tb)}
    groups = C if op.startswith("instance") else GROUPS
    y, mean, invstd = F.group_norm(x, groups, w, b, axis=axis)
    if op.startswith("instance"):
        fwd = lambda: F.instance_norm(x, w, b, axis=axis)  # noqa: E731
        bwd = lambda: F.instance_norm_backward(dy, x, w, mean, invstd, axis=axis)  # noqa: E731
        tfwd = lambda gx, gw, gb: tf.instance_norm(gx, weight=gw, bias=gb)  # noqa: E731
    else:
        fwd = lambda: F.group_norm(x, groups, w, b, axis=axis)  # noqa: E731
        bwd = lambda: F.group_norm_backward(dy, x, groups, w, mean, invstd,  # noqa: E731
                                            axis=axis)
        tfwd = lambda gx, gw, gb: tf.group_norm(gx, groups, gw, gb)  # noqa: E731
    if op.endswith("backward"):
        return {"cybn": bwd, "torch": autograd(tfwd)}
    return {"cybn": fwd, "torch": lambda: tfwd(tx, tw, tb)}


def geomean(values) -> float:
    return float(math.exp(np.mean(np.log(values))))


def sweep_suite(repeats: int = 7, verbose: bool = True, series=None) -> dict:
    """Runs the sweep (``series``: a subset of SERIES' op names); returns the result with
    per-series times, ratios, geometric mean and worst ratio."""
    _, torch, meta = suite_start(True, repeats)
    if torch is None:
        raise ImportError("the sweep compares against PyTorch: pip install torch")
    chosen = [(op, layouts) for op, layouts in SERIES if series is None or op in series]
    if verbose:
        print_header("size sweep, PyTorch's time / cybn's", meta,
                     "float32, 16 KiB to 64 MiB, PyTorch's functional API and autograd",
                     [("op", -22), ("layout", -6), ("geomean", 8), ("worst", 7),
                      ("at bytes", 10)])
    # PyTorch's first calls in a process pay its one-time set-up (thread pool, dispatch
    # caches) for milliseconds: run every series' smallest point before any timing
    for op, layouts in chosen:
        for layout in layouts:
            for fn in contenders(op, layout, SIZES[0], torch).values():
                for _ in range(20):
                    fn()
    rows = []
    for op, layouts in chosen:
        for layout in layouts:
            points = []
            for nbytes in SIZES:
                fns = contenders(op, layout, nbytes, torch)
                # blocks of 2 calls: many alternations, so that the machine's drift
                # (this VM's speed moves by 2x within minutes) reaches both contenders
                t = interleaved_medians(fns, repeats, block=2)
                points.append({"bytes": nbytes, "shape": list(logical_shape(layout, nbytes)),
                               "cybn_s": t["cybn"], "torch_s": t["torch"],
                               "ratio": t["torch"] / t["cybn"]})
            ratios = [p["ratio"] for p in points]
            worst = min(points, key=lambda p: p["ratio"])
            row = {"op": op, "layout": layout, "points": points, "geomean": geomean(ratios),
                   "worst": worst["ratio"], "worst_bytes": worst["bytes"]}
            rows.append(row)
            if verbose:
                print(f"{op:<22} {layout:<6} {row['geomean']:8.2f} {row['worst']:7.2f} "
                      f"{worst['bytes']:>10}", flush=True)
    return {"meta": meta, "sizes": SIZES, "rows": rows}


def sweep_markdown(result) -> str:
    lines = ["| op | layout | geometric mean | worst | worst at |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        kib = r["worst_bytes"] // 1024
        at = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        lines.append(f"| {r['op']} | {r['layout']} | {r['geomean']:.2f} | {r['worst']:.2f} | "
                     f"{at} |")
    return "\n".join(lines)


def sweep_plot(result, path: str) -> bool:
    """One panel per op: PyTorch's time / cybn's against the input's size, a line per
    layout. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ops = list(dict.fromkeys(r["op"] for r in result["rows"]))
    cols = 4
    fig, axes = plt.subplots(-(-len(ops) // cols), cols, figsize=(4 * cols, 2.8 * -(-len(ops)
                                                                                   // cols)),
                             sharex=True, squeeze=False)
    for ax, op in zip(axes.flat, ops):
        for r in (r for r in result["rows"] if r["op"] == op):
            sizes = [p["bytes"] / 2**20 for p in r["points"]]
            ax.plot(sizes, [p["ratio"] for p in r["points"]], marker="o", ms=3,
                    label=r["layout"])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.95, color="red", lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_title(op, fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    meta = result["meta"]
    fig.suptitle(f"PyTorch time / cybn time (above 1: cybn faster) against input MiB; "
                 f"{meta['cpu']}, {meta['kernel_variant']}, {meta['threads']} threads, "
                 f"{meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
