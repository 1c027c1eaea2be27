"""The batch-norm, normalization, fused, variant, half-precision and thread suites: each
times cybn against what a user would call instead (a parallel copy as the memory yardstick,
NumPy, PyTorch's public API when installed) on the same arrays, interleaved, medians."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import _kernels, ops as F
from .._openmp import get_num_threads, set_num_threads
from .report import OPS, format_row, summary
from .timing import (cpu_model, interleaved_medians, median_time, print_header, suite_start,
                     warm_up)


# The shape suite: (shape in channels-first order). Each runs as NCHW (axis 1) and as the
# channels-last transpose (axis -1).
SUITE = [
    (32, 64, 56, 56),
    (16, 128, 28, 28),
    (256, 64, 56, 56),
    (8, 256, 14, 14),
    (128, 512, 7, 7),
    (64, 3, 224, 224),
    (1, 32, 512, 512),
    (2048, 512),
    (4096, 1024),
    (9, 17, 31, 29),
    (7, 33, 17, 19),
    (2, 3, 4, 4),
]


QUICK_SUITE = [(32, 64, 56, 56), (128, 512, 7, 7), (4096, 1024), (7, 33, 17, 19), (2, 3, 4, 4)]




def numpy_reference(op, x, axis, w, b, rm, rv, dy, mean, invstd, eps=1e-5):
    """Straightforward NumPy batch norm, the way one writes it without a library."""
    red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1
    if op == "infer":
        return (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + eps) * w.reshape(shape) \
            + b.reshape(shape)
    if op == "train":
        mu = x.mean(axis=red, keepdims=True)
        var = x.var(axis=red, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    n = x.size // x.shape[axis]
    dbias = dy.sum(axis=red, keepdims=True)
    dweight = (dy * xhat).sum(axis=red, keepdims=True)
    return (dy - dbias / n - xhat * dweight / n) * (w.reshape(shape) * invstd.reshape(shape))


def torch_runner(op, x, axis, w, b, rm, rv, dy, mean, invstd):
    """A callable timing PyTorch's CPU kernel for op, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    tx = torch.from_numpy(x)
    tdy = torch.from_numpy(dy)
    if x.ndim > 2 and axis != 1:  # channels-last: the same memory as a channels_last tensor
        perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        tx, tdy = tx.permute(*perm), tdy.permute(*perm)
    elif x.ndim == 2 and axis != 1:
        return None
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    tmean, tinv = torch.from_numpy(mean.astype(x.dtype)), torch.from_numpy(invstd.astype(x.dtype))
    # Forward ops write into preallocated tensors (native_batch_norm.out): PyTorch's own
    # allocation of a large output page-faults, which would cost it up to milliseconds a call.
    native_out = torch.ops.aten.native_batch_norm.out
    out = torch.empty_like(tx)
    save_mean, save_invstd = tw.new_empty(tw.shape), tw.new_empty(tw.shape)
    if op in ("infer", "train"):
        training = op == "train"
        return lambda: native_out(tx, tw, tb, trm, trv, training, 0.1, 1e-5, out=out,
                                  save_mean=save_mean, save_invstd=save_invstd)
    bwd = torch.ops.aten.native_batch_norm_backward
    return lambda: bwd(tdy, tx, tw, trm, trv, tmean, tinv, True, 1e-5, [True, True, True])


def run(shapes=None, dtypes=("float32",), layouts=("NCHW", "NHWC"), repeats: int = 15,
        torch: bool = True, numpy_ref: bool = True, verbose: bool = True) -> dict:
    """Time every op on every shape, layout and dtype; return a JSON-ready dict."""
    shapes = SUITE if shapes is None else shapes
    threads, torch_mod, meta = suite_start(torch, repeats)
    torch = torch_mod is not None
    rows = []
    rng = np.random.default_rng(0)
    if verbose:
        print_header("batch norm", meta, f"numpy {np.__version__}, torch {meta['torch']}", [
            ("shape", -20), ("layout", -6), ("dtype", -7), ("op", -8), ("cybn ms", 8),
            ("copy ms", 8), ("x copy", 7), ("numpy ms", 9), ("torch ms", 9), ("speed-up", 8)])
    for base in shapes:
        for layout in layouts:
            if len(base) == 2 and layout == "NHWC":
                continue
            if layout == "NHWC":
                shape, axis = (base[0],) + base[2:] + (base[1],), -1
            else:
                shape, axis = base, 1
            for dtype in dtypes:
                x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
                dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
                C = shape[axis]
                w = rng.standard_normal(C).astype(dtype)
                b = rng.standard_normal(C).astype(dtype)
                rm = np.zeros(C, dtype=dtype)
                rv = np.ones(C, dtype=dtype)
                out = np.empty_like(x)
                _, mean, invstd = F.batch_norm_train(x, w, b, axis=axis)
                flat_x, flat_out = x.reshape(-1), out.reshape(-1)
                for op in OPS:
                    if op == "infer":
                        fn = lambda: F.batch_norm_infer(x, rm, rv, w, b, axis=axis,  # noqa: E731
                                                        out=out)
                    elif op == "train":
                        fn = lambda: F.batch_norm_train(x, w, b, axis=axis, out=out)  # noqa: E731
                    else:
                        fn = lambda: F.batch_norm_backward(  # noqa: E731
                            dy, x, w, mean, invstd, axis=axis, out=out)
                    contenders = {
                        "copy": lambda: _kernels.parallel_copy(flat_x, flat_out, threads),
                        "cybn": fn,
                    }
                    runner = torch_runner(op, x, axis, w, b, rm, rv, dy, mean, invstd) \
                        if torch else None
                    if runner is not None:
                        contenders["torch"] = runner
                    med = interleaved_medians(contenders, repeats)
                    t_cybn, copy_t, t_torch = med["cybn"], med["copy"], med.get("torch")
                    t_np = (median_time(lambda: numpy_reference(op, x, axis, w, b, rm, rv, dy,
                                                                mean, invstd), max(3, repeats // 3),
                                        warmup=1) if numpy_ref else None)
                    row = {
                        "shape": list(shape), "layout": layout if len(shape) > 2 else "NC",
                        "dtype": dtype, "op": op, "cybn_ms": t_cybn * 1e3,
                        "copy_ms": copy_t * 1e3, "ratio_to_copy": t_cybn / copy_t,
                        "numpy_ms": None if t_np is None else t_np * 1e3,
                        "torch_ms": None if t_torch is None else t_torch * 1e3,
                        "speedup_vs_torch": None if t_torch is None else t_torch / t_cybn,
                    }
                    rows.append(row)
                    if verbose:
                        print(format_row(row), flush=True)
    result = {"meta": meta, "rows": rows}
    if verbose:
        print(summary(result))
    return result


# Arrays of 10 MB or more (float32), few channels included: thread scaling cases.
SCALING_SUITE = [((32, 64, 56, 56), 1), ((32, 56, 56, 64), -1), ((64, 1, 224, 224), 1),
                 ((64, 2, 224, 224), 1), ((64, 3, 224, 224), 1), ((64, 224, 224, 3), -1),
                 ((4096, 1024), 1)]


def thread_scaling(threads=(1, 2), repeats: int = 9, dtype: str = "float32") -> dict:
    """Time each op at each thread count on SCALING_SUITE; speed-up relative to 1 thread."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    rng = np.random.default_rng(2)
    rows = []
    warm_up(max(threads))
    print(f"# thread scaling, {dtype}, {cpu_model()}, median of {repeats}")
    print(f"{'shape':<18} {'axis':>4} {'op':<8} " + " ".join(f"{f'{n} thr ms':>9}"
                                                           for n in threads) + "  speed-up")
    for shape, axis in SCALING_SUITE:
        x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        out = np.empty_like(x)
        C = shape[axis]
        rm, rv = np.zeros(C), np.ones(C)
        _, mean, invstd = F.batch_norm_train(x, axis=axis)
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        ops = {
            "copy": lambda: _kernels.parallel_copy(flat_x, flat_out, get_num_threads()),
            "infer": lambda: F.batch_norm_infer(x, rm, rv, axis=axis, out=out),
            "train": lambda: F.batch_norm_train(x, axis=axis, out=out),
            "backward": lambda: F.batch_norm_backward(dy, x, None, mean, invstd, axis=axis,
                                                      out=out),
        }
        for op, fn in ops.items():
            times = []
            for n in threads:
                with threadpool_limits(limits=n, user_api="openmp"):
                    times.append(median_time(fn, repeats))
            row = {"shape": list(shape), "axis": axis, "op": op, "dtype": dtype,
                   "ms": {n: t * 1e3 for n, t in zip(threads, times)},
                   "speedup": times[0] / times[-1]}
            rows.append(row)
            print(f"{'x'.join(map(str, shape)):<18} {axis:>4} {op:<8} "
                  + " ".join(f"{t * 1e3:>9.3f}" for t in times) + f"  {row['speedup']:.2f}x",
                  flush=True)
    return {"threads": list(threads), "rows": rows}


def python_threads(n_threads: int = 4, repeats: int = 5) -> dict:
    """Time n_threads Python threads each running batch_norm_train on its own array (one
    OpenMP thread each) against the same calls one after another; the same for NumPy's
    np.multiply, which also releases the GIL, as the yardstick of what the machine allows.
    """
    import threading

    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((16, 32, 64, 64), dtype=np.float32) for _ in range(n_threads)]
    outs = [np.empty_like(a) for a in arrays]
    contenders = {
        "cybn.batch_norm_train": lambda i: F.batch_norm_train(arrays[i], out=outs[i]),
        "np.multiply": lambda i: np.multiply(arrays[i], 2.0, out=outs[i]),
    }
    result: dict[str, Any] = {"python_threads": n_threads}
    for name, call in contenders.items():
        def job(i):
            set_num_threads(1)  # OpenMP's thread count is per calling thread
            for _ in range(8):
                call(i)

        def serial():
            for i in range(n_threads):
                job(i)

        def threaded():
            ts = [threading.Thread(target=job, args=(i,)) for i in range(n_threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        before = get_num_threads()
        try:
            t_serial = median_time(serial, repeats, warmup=1)
            t_threads = median_time(threaded, repeats, warmup=1)
        finally:
            set_num_threads(before)
        result[name] = {"serial_ms": t_serial * 1e3, "threaded_ms": t_threads * 1e3,
                        "speedup": t_serial / t_threads}
        print(f"# {n_threads} Python threads x 8 calls of {name} on (16,32,64,64) float32: "
              f"serial {t_serial * 1e3:.1f} ms, threaded {t_threads * 1e3:.1f} ms, "
              f"speed-up {t_serial / t_threads:.2f}x")
    return result


# The normalization suite: (name, shape, layout, argument). Layer and RMS norm normalize
# the last axis; group norm has 32 groups; instance norm one group per channel.
NORM_SUITE = [
    ("layer", (8192, 1024), "NC", 1024),
    ("layer", (64, 197, 768), "NLC", 768),
    ("rms", (8192, 1024), "NC", 1024),
    ("rms", (64, 197, 768), "NLC", 768),
    ("group", (32, 64, 56, 56), "NCHW", 32),
    ("group", (32, 56, 56, 64), "NHWC", 32),
    ("group", (8, 256, 28, 28), "NCHW", 32),
    ("group", (8, 28, 28, 256), "NHWC", 32),
    ("instance", (16, 64, 64, 64), "NCHW", None),
    ("instance", (16, 64, 64, 64), "NHWC", None),
]


def norm_contenders(kind, x, layout, arg, dy, torch_mod):
    """(cybn forward, cybn backward, torch forward, torch backward) callables for one case;
    PyTorch's are its ATen kernels with preallocated outputs where it has them (instance
    norm: PyTorch runs it as batch norm over (1, N*C, ...), timed that way)."""
    axis = -1 if layout in ("NHWC",) else 1
    out = np.empty_like(x)
    if kind in ("layer", "rms"):
        D = x.shape[-1]
        w = np.linspace(0.5, 1.5, D).astype(x.dtype)
        b = np.linspace(-0.5, 0.5, D).astype(x.dtype)
        if kind == "layer":
            _, mean, invstd = F.layer_norm(x, D, w, b)
            fwd = lambda: F.layer_norm(x, D, w, b, out=out)  # noqa: E731
            bwd = lambda: F.layer_norm_backward(dy, x, w, mean, invstd, D, out=out)  # noqa: E731
        else:
            _, invrms = F.rms_norm(x, D, w, eps=1e-6)
            fwd = lambda: F.rms_norm(x, D, w, eps=1e-6, out=out)  # noqa: E731
            bwd = lambda: F.rms_norm_backward(dy, x, w, invrms, D, out=out)  # noqa: E731
    else:
        C = x.shape[axis]
        G = C if kind == "instance" else arg
        w = np.linspace(0.5, 1.5, C).astype(x.dtype)
        b = np.linspace(-0.5, 0.5, C).astype(x.dtype)
        _, mean, invstd = F.group_norm(x, G, w, b, axis=axis)
        fwd = lambda: F.group_norm(x, G, w, b, axis=axis, out=out)  # noqa: E731
        bwd = lambda: F.group_norm_backward(dy, x, G, w, mean, invstd, axis=axis,  # noqa: E731
                                            out=out)
        if kind == "instance":
            fwd = lambda: F.instance_norm(x, w, b, axis=axis, out=out)  # noqa: E731
            bwd = lambda: F.instance_norm_backward(dy, x, w, mean, invstd,  # noqa: E731
                                                   axis=axis, out=out)
    if torch_mod is None:
        return fwd, bwd, None, None
    torch, aten = torch_mod, torch_mod.ops.aten
    tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    tout = torch.empty_like(tx)
    if kind == "layer":
        D = x.shape[-1]
        tmean, trstd = tx.new_empty(x.shape[:-1] + (1,)), tx.new_empty(x.shape[:-1] + (1,))
        _, m, r = aten.native_layer_norm(tx, [D], tw, tb, 1e-5)
        gx, gw, gb = torch.empty_like(tx), torch.empty_like(tw), torch.empty_like(tb)
        tfwd = lambda: aten.native_layer_norm.out(tx, [D], tw, tb, 1e-5, out0=tout,  # noqa: E731
                                                  out1=tmean, out2=trstd)
        tbwd = lambda: aten.native_layer_norm_backward.out(  # noqa: E731
            tdy, tx, [D], m, r, tw, tb, [True, True, True], out0=gx, out1=gw, out2=gb)
        return fwd, bwd, tfwd, tbwd
    if kind == "rms":
        D = x.shape[-1]
        tfwd = lambda: aten._fused_rms_norm(tx, [D], tw, 1e-6)  # noqa: E731
        # PyTorch has no CPU kernel for the RMS norm backward: autograd runs the composite
        gx, gw = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)
        ty = torch.nn.functional.rms_norm(gx, [D], gw, 1e-6)
        tbwd = lambda: torch.autograd.grad(ty, [gx, gw], tdy, retain_graph=True)  # noqa: E731
        return fwd, bwd, tfwd, tbwd
    if axis == -1:  # the same memory as a channels_last tensor
        perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        tx, tdy, tout = tx.permute(*perm), tdy.permute(*perm), tout.permute(*perm)
    N, C = tx.shape[0], tx.shape[1]
    HxW = x.size // (N * C)
    if kind == "group":
        G = arg
        tmean, trstd = tx.new_empty((N, G)), tx.new_empty((N, G))
        _, m, r = aten.native_group_norm(tx, tw, tb, N, C, HxW, G, 1e-5)
        gx = torch.empty_like(tx)
        gw, gb = torch.empty_like(tw), torch.empty_like(tb)
        tfwd = lambda: aten.native_group_norm.out(tx, tw, tb, N, C, HxW, G, 1e-5,  # noqa: E731
                                                  out0=tout, out1=tmean, out2=trstd)
        tbwd = lambda: aten.native_group_norm_backward.out(  # noqa: E731
            tdy, tx, m, r, tw, N, C, HxW, G, [True, True, True], out0=gx, out1=gw, out2=gb)
        return fwd, bwd, tfwd, tbwd
    # instance norm: PyTorch reshapes to (1, N*C, ...) and runs batch norm
    shape1 = (1, N * C) + tuple(tx.shape[2:])
    bx, bdy = tx.reshape(shape1), tdy.reshape(shape1)
    bout = torch.empty_like(bx)
    bw, bb = tw.repeat(N), tb.repeat(N)
    sm, si = bw.new_empty(bw.shape), bw.new_empty(bw.shape)
    _, m, r = aten.native_batch_norm(bx, bw, bb, None, None, True, 0.1, 1e-5)
    tfwd = lambda: aten.native_batch_norm.out(bx, bw, bb, None, None, True, 0.1, 1e-5,  # noqa: E731
                                              out=bout, save_mean=sm, save_invstd=si)
    tbwd = lambda: aten.native_batch_norm_backward(bdy, bx, bw, None, None, m, r,  # noqa: E731
                                                   True, 1e-5, [True, True, True])
    return fwd, bwd, tfwd, tbwd


def norm_suite(repeats: int = 15, dtype: str = "float32", torch: bool = True,
               verbose: bool = True, suite=None) -> dict:
    """Time layer, group, instance and RMS norm (forward with batch statistics, backward)
    against PyTorch on ``suite`` (NORM_SUITE); a JSON-ready dict."""
    threads, torch_mod, meta = suite_start(torch, repeats)
    rng = np.random.default_rng(0)
    rows = []
    if verbose:
        print_header("norms", meta, f"torch {meta['torch']}, {dtype}", [
            ("norm", -9), ("shape", -16), ("layout", -6), ("op", -8), ("cybn ms", 8),
            ("copy ms", 8), ("torch ms", 9), ("speed-up", 8)])
    for kind, shape, layout, arg in NORM_SUITE if suite is None else suite:
        if kind == "instance" and layout == "NHWC":
            shape = (shape[0],) + shape[2:] + (shape[1],)
        x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        flat_x, flat_out = x.reshape(-1), np.empty(x.size, dtype=x.dtype)
        fwd, bwd, tfwd, tbwd = norm_contenders(kind, x, layout, arg, dy, torch_mod)
        for op, fn, tfn in (("forward", fwd, tfwd), ("backward", bwd, tbwd)):
            contenders = {"copy": lambda: _kernels.parallel_copy(flat_x, flat_out, threads),
                          "cybn": fn}
            if tfn is not None:
                contenders["torch"] = tfn
            med = interleaved_medians(contenders, repeats)
            t_torch = med.get("torch")
            row = {"norm": kind, "shape": list(shape), "layout": layout, "dtype": dtype,
                   "op": op, "cybn_ms": med["cybn"] * 1e3, "copy_ms": med["copy"] * 1e3,
                   "torch_ms": None if t_torch is None else t_torch * 1e3,
                   "speedup_vs_torch": None if t_torch is None else t_torch / med["cybn"]}
            rows.append(row)
            if verbose:
                sp = "-" if t_torch is None else f"{row['speedup_vs_torch']:.2f}"
                tt = "-" if t_torch is None else f"{row['torch_ms']:.3f}"
                print(f"{kind:<9} {'x'.join(map(str, shape)):<16} {layout:<6} {op:<8} "
                      f"{row['cybn_ms']:>8.3f} {row['copy_ms']:>8.3f} {tt:>9} {sp:>8}",
                      flush=True)
    result = {"meta": meta, "rows": rows}
    speedups = [r["speedup_vs_torch"] for r in rows if r["speedup_vs_torch"]]
    if verbose and speedups:
        print(f"# geometric-mean speed-up over PyTorch {np.exp(np.mean(np.log(speedups))):.2f}x"
              f" (min {min(speedups):.2f}x, max {max(speedups):.2f}x, {len(speedups)} cases)")
    return result


# The fused-op suite: batch norm + ReLU and batch norm + residual add + ReLU on a ResNet
# activation, each layout.
FUSED_SUITE = [((32, 64, 56, 56), "NCHW"), ((32, 56, 56, 64), "NHWC")]


def fused_contenders(kind, op, x, r, dy, axis, torch_mod):
    """({name: callable}, (fused result, two-op result)) for one case: cybn's fused op, cybn's
    batch norm followed by NumPy's in-place ufuncs (the two-op path), PyTorch's ATen batch
    norm followed by its in-place add_ / relu_ (backward: threshold_backward, then the batch
    norm backward). The two cybn results are the arrays the callables write (y, or dx)."""
    C = x.shape[axis]
    w = np.linspace(0.5, 1.5, C)
    b = np.linspace(-0.5, 0.5, C)
    rm, rv = np.linspace(-0.1, 0.1, C), np.linspace(0.9, 1.1, C)
    res = r if kind == "bn_add_relu" else None
    y = np.empty_like(x)
    g = np.empty_like(x)
    out2 = np.empty_like(x)
    mask = np.empty(x.shape, dtype=bool)
    y_fused, mean, invstd = F.batch_norm_train(x, w, b, axis=axis, activation="relu",
                                               residual=res)
    if op == "train":
        def fused():
            F.batch_norm_train(x, w, b, axis=axis, activation="relu", residual=res, out=y)

        def two_op():
            F.batch_norm_train(x, w, b, axis=axis, out=out2)
            if res is not None:
                np.add(out2, res, out=out2)
            np.maximum(out2, 0, out=out2)
    elif op == "infer":
        def fused():
            F.batch_norm_infer(x, rm, rv, w, b, axis=axis, activation="relu", residual=res,
                               out=y)

        def two_op():
            F.batch_norm_infer(x, rm, rv, w, b, axis=axis, out=out2)
            if res is not None:
                np.add(out2, res, out=out2)
            np.maximum(out2, 0, out=out2)
    else:
        def fused():
            F.batch_norm_backward(dy, x, w, mean, invstd, axis=axis, activation="relu", bias=b,
                                  residual=res, out=y)

        def two_op():
            np.greater(y_fused, 0, out=mask)
            np.multiply(dy, mask, out=g)  # the ReLU's backward (g is also d_residual)
            F.batch_norm_backward(g, x, w, mean, invstd, axis=axis, out=out2)
    contenders = {"fused": fused, "two_op": two_op}
    if torch_mod is None:
        return contenders, (y, out2)
    torch, aten = torch_mod, torch_mod.ops.aten
    perm = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
    tx, tr, tdy = (torch.from_numpy(a) for a in (x, r, dy))
    ty = torch.from_numpy(y_fused.copy())
    tout = torch.empty_like(tx)
    if axis != 1:  # the same memory as channels_last tensors
        tx, tr, tdy, ty, tout = (t.permute(*perm) for t in (tx, tr, tdy, ty, tout))
    tw, tb = torch.from_numpy(w.astype(x.dtype)), torch.from_numpy(b.astype(x.dtype))
    trm, trv = torch.from_numpy(rm.astype(x.dtype)), torch.from_numpy(rv.astype(x.dtype))
    sm, si = tw.new_empty(tw.shape), tw.new_empty(tw.shape)
    tmean = torch.from_numpy(mean.astype(x.dtype))
    tinv = torch.from_numpy(invstd.astype(x.dtype))
    if op in ("train", "infer"):
        training = op == "train"

        def torch_fn():
            aten.native_batch_norm.out(tx, tw, tb, trm, trv, training, 0.0, 1e-5, out=tout,
                                       save_mean=sm, save_invstd=si)
            if res is not None:
                tout.add_(tr)
            tout.relu_()
    else:
        def torch_fn():
            tg = aten.threshold_backward(tdy, ty, 0)
            aten.native_batch_norm_backward(tg, tx, tw, trm, trv, tmean, tinv, True, 1e-5,
                                            [True, True, True])
    contenders["torch"] = torch_fn
    return contenders, (y, out2)


def fused_suite(repeats: int = 15, dtype: str = "float32", torch: bool = True,
                verbose: bool = True, suite=None) -> dict:
    """Time the fused ops against cybn's two-op path and PyTorch; a JSON-ready dict."""
    threads, torch_mod, meta = suite_start(torch, repeats)
    rng = np.random.default_rng(0)
    rows = []
    if verbose:
        print_header("fused", meta, f"torch {meta['torch']}, {dtype}", [
            ("op", -12), ("layout", -6), ("pass", -8), ("fused ms", 9), ("2-op ms", 8),
            ("torch ms", 9), ("2-op/fused", 10), ("torch/fused", 11)])
    for shape, layout in FUSED_SUITE if suite is None else suite:
        axis = -1 if layout == "NHWC" else 1
        x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        r = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        for kind in ("bn_relu", "bn_add_relu"):
            for op in ("train", "backward", "infer"):
                contenders, _ = fused_contenders(kind, op, x, r, dy, axis, torch_mod)
                med = interleaved_medians(contenders, repeats)
                t_torch = med.get("torch")
                row = {"op": kind, "shape": list(shape), "layout": layout, "dtype": dtype,
                       "pass": op, "fused_ms": med["fused"] * 1e3,
                       "two_op_ms": med["two_op"] * 1e3,
                       "torch_ms": None if t_torch is None else t_torch * 1e3,
                       "speedup_vs_two_op": med["two_op"] / med["fused"],
                       "speedup_vs_torch": None if t_torch is None else t_torch / med["fused"]}
                rows.append(row)
                if verbose:
                    tt = "-" if t_torch is None else f"{row['torch_ms']:.3f}"
                    sp = "-" if t_torch is None else f"{row['speedup_vs_torch']:.2f}"
                    print(f"{kind:<12} {layout:<6} {op:<8} {row['fused_ms']:>9.3f} "
                          f"{row['two_op_ms']:>8.3f} {tt:>9} {row['speedup_vs_two_op']:>10.2f} "
                          f"{sp:>11}", flush=True)
    return {"meta": meta, "rows": rows}


# The variants suite: batch renormalization and ghost batch norm (ghost batches of a quarter
# of the batch) against plain batch norm on the same data, training forward and backward.
VARIANTS_SUITE = [((32, 64, 56, 56), "NCHW"), ((32, 56, 56, 64), "NHWC"),
                  ((16, 128, 28, 28), "NCHW"), ((16, 28, 28, 128), "NHWC"),
                  ((128, 512, 7, 7), "NCHW"), ((2048, 512), "NC")]


def variants_suite(repeats: int = 15, verbose: bool = True, suite=None) -> dict:
    """Time batch_norm_renorm and batch_norm_ghost (and their backwards) against
    batch_norm_train / batch_norm_backward; a JSON-ready dict."""
    threads, _, meta = suite_start(False, repeats)
    rng = np.random.default_rng(0)
    rows = []
    if verbose:
        print_header("variants", meta, "float32", [
            ("shape", -18), ("layout", -6), ("pass", -8), ("plain ms", 9), ("renorm ms", 10),
            ("ghost ms", 9), ("renorm/plain", 12), ("ghost/plain", 11)])
    for shape, layout in VARIANTS_SUITE if suite is None else suite:
        axis = -1 if layout == "NHWC" else 1
        C = shape[axis]
        g = max(shape[0] // 4, 2)
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        w, b = np.linspace(0.5, 1.5, C), np.linspace(-0.5, 0.5, C)
        rm, rv = np.zeros(C), np.ones(C)
        y = np.empty_like(x)
        dx = np.empty_like(x)
        _, mean, invstd = F.batch_norm_train(x, w, b, axis=axis)
        _, _, _, r, d = F.batch_norm_renorm(x, w, b, running_mean=rm.copy(),
                                            running_var=rv.copy(), axis=axis)
        _, gmean, ginvstd = F.batch_norm_ghost(x, w, b, ghost_batch_size=g, axis=axis)
        passes = {
            "forward": {
                "plain": lambda: F.batch_norm_train(x, w, b, running_mean=rm, running_var=rv,
                                                    axis=axis, out=y),
                "renorm": lambda: F.batch_norm_renorm(x, w, b, running_mean=rm,
                                                      running_var=rv, axis=axis, out=y),
                "ghost": lambda: F.batch_norm_ghost(x, w, b, ghost_batch_size=g,
                                                    running_mean=rm, running_var=rv,
                                                    axis=axis, out=y)},
            "backward": {
                "plain": lambda: F.batch_norm_backward(dy, x, w, mean, invstd, axis=axis,
                                                       out=dx),
                "renorm": lambda: F.batch_norm_renorm_backward(dy, x, w, mean, invstd, r, d,
                                                               axis=axis, out=dx),
                "ghost": lambda: F.batch_norm_ghost_backward(dy, x, w, gmean, ginvstd,
                                                             ghost_batch_size=g, axis=axis,
                                                             out=dx)}}
        for name, fns in passes.items():
            med = interleaved_medians(fns, repeats)
            row = {"shape": list(shape), "layout": layout, "pass": name, "ghost_batch_size": g,
                   "plain_ms": med["plain"] * 1e3, "renorm_ms": med["renorm"] * 1e3,
                   "ghost_ms": med["ghost"] * 1e3,
                   "renorm_over_plain": med["renorm"] / med["plain"],
                   "ghost_over_plain": med["ghost"] / med["plain"]}
            rows.append(row)
            if verbose:
                print(f"{'x'.join(map(str, shape)):<18} {layout:<6} {name:<8} "
                      f"{row['plain_ms']:>9.3f} {row['renorm_ms']:>10.3f} "
                      f"{row['ghost_ms']:>9.3f} {row['renorm_over_plain']:>12.2f} "
                      f"{row['ghost_over_plain']:>11.2f}", flush=True)
    return {"meta": meta, "rows": rows}


# The half-precision suite: arrays of 25.7 and 103 MB in float32, both layouts.
HALF_SUITE = [((32, 64, 56, 56), "NCHW"), ((32, 56, 56, 64), "NHWC"),
              ((64, 128, 56, 56), "NCHW"), ((64, 56, 56, 128), "NHWC")]


def half_suite(repeats: int = 15, verbose: bool = True, suite=None) -> dict:
    """Time batch norm on float16 and bfloat16 data (bfloat16 needs ml_dtypes) against the
    same op on float32 data; a JSON-ready dict."""
    from .._validate import resolve_dtype

    dtypes: list[np.dtype] = [np.dtype(np.float32), np.dtype(np.float16)]
    try:
        dtypes.append(resolve_dtype("bfloat16"))
    except ImportError:
        pass
    threads, _, meta = suite_start(False, repeats)
    del meta["torch"]
    meta["dtypes"] = [d.name for d in dtypes]
    rng = np.random.default_rng(0)
    rows = []
    if verbose:
        print_header("half", meta, " ".join(d.name for d in dtypes), [
            ("shape", -16), ("layout", -6), ("op", -9)] + [(d.name + " ms", 13) for d in dtypes]
            + [("f32/" + d.name, 13) for d in dtypes[1:]])
    for shape, layout in HALF_SUITE if suite is None else suite:
        axis = -1 if layout == "NHWC" else 1
        C = shape[axis]
        w, b = np.linspace(0.5, 1.5, C), np.linspace(-0.5, 0.5, C)
        rm, rv = np.linspace(-0.1, 0.1, C), np.linspace(0.9, 1.1, C)
        x32 = rng.standard_normal(shape, dtype=np.float32)
        dy32 = rng.standard_normal(shape, dtype=np.float32)
        arrays = {}
        for d in dtypes:
            x, dy = x32.astype(d), dy32.astype(d)
            _, mean, invstd = F.batch_norm_train(x, w, b, axis=axis)
            arrays[d.name] = (x, dy, np.empty_like(x), mean, invstd)
        for op in ("train", "infer", "backward"):
            fns = {}
            for name, (x, dy, out, mean, invstd) in arrays.items():
                if op == "train":
                    fns[name] = functools.partial(F.batch_norm_train, x, w, b, axis=axis,
                                                  out=out)
                elif op == "infer":
                    fns[name] = functools.partial(F.batch_norm_infer, x, rm, rv, w, b,
                                                  axis=axis, out=out)
                else:
                    fns[name] = functools.partial(F.batch_norm_backward, dy, x, w, mean,
                                                  invstd, axis=axis, out=out)
            med = interleaved_medians(fns, repeats)
            ms = {k: v * 1e3 for k, v in med.items()}
            speedup = {k: med["float32"] / v for k, v in med.items() if k != "float32"}
            rows.append({"shape": list(shape), "layout": layout, "op": op, "ms": ms,
                         "speedup_vs_float32": speedup})
            if verbose:
                print(f"{'x'.join(map(str, shape)):<16} {layout:<6} {op:<9} " + " ".join(
                    f"{ms[d.name]:>13.3f}" for d in dtypes) + " " + " ".join(
                    f"{speedup[d.name]:>13.2f}" for d in dtypes[1:]), flush=True)
    return {"meta": meta, "rows": rows}
