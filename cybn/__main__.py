"""Command line: ``python -m cybn info | check | bench | demo``."""

from __future__ import annotations

import argparse
import sys


def self_check(seed: int = 0) -> bool:
    """Compare every op against a float64 NumPy computation on random data; print a line each."""
    import numpy as np

    from . import ops as F

    rng = np.random.default_rng(seed)
    ok = True
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        for axis, shape in ((1, (8, 16, 9, 11)), (-1, (8, 9, 11, 16))):
            x = rng.standard_normal(shape).astype(dtype) * 3 + 5
            w = rng.standard_normal(16)
            b = rng.standard_normal(16)
            dy = rng.standard_normal(shape).astype(dtype)
            red = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
            xd = x.astype(np.float64)
            mu = xd.mean(axis=red, keepdims=True)
            var = xd.var(axis=red, keepdims=True)
            bshape = [1] * x.ndim
            bshape[axis] = 16
            wb, bb = w.reshape(bshape), b.reshape(bshape)
            xhat = (xd - mu) / np.sqrt(var + 1e-5)
            y_ref = xhat * wb + bb
            g = dy.astype(np.float64) * wb
            dx_ref = (g - g.mean(axis=red, keepdims=True)
                      - xhat * (g * xhat).mean(axis=red, keepdims=True)) / np.sqrt(var + 1e-5)
            y, mean, invstd = F.batch_norm_train(x, w, b, axis=axis)
            dx, _, _ = F.batch_norm_backward(dy, x, w, mean, invstd, axis=axis)
            yi = F.batch_norm_infer(x, mu.ravel(), var.ravel(), w, b, axis=axis)
            for name, got, ref in (("train", y, y_ref), ("infer", yi, y_ref),
                                   ("backward", dx, dx_ref)):
                err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
                good = err < tol
                ok &= good
                print(f"  {'ok ' if good else 'BAD'} {name:<8} {np.dtype(dtype).name:<7} "
                      f"axis={axis:<2} max rel error {err:.1e}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cybn", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="print version, OpenMP, threads, build flags; run a self-check")
    sub.add_parser("check", help="compare every op against a float64 reference")
    sub.add_parser("bench", help="time cybn against copy, NumPy and PyTorch (see --help)",
                   add_help=False)
    sub.add_parser("demo", help="train MLP and CNN on digits with/without BatchNorm (see --help)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if args.command == "bench":
        from .benchmark.cli import main as bench_main

        return bench_main(rest)
    if args.command in (None, "info"):
        from . import show_config

        show_config()
        print("self-check:")
        return 0 if self_check() else 1
    if args.command == "check":
        return 0 if self_check() else 1
    parser.error(f"unknown command {args.command!r}")
    return 2


def run(argv=None) -> int:
    """main() for the command line: output piped into a reader that stops early (``| head``)
    ends the command quietly, as other Unix tools do."""
    import os

    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader is gone: send what is left in Python's buffers nowhere, and exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(run())
