"""``python -m cybn bench``: cybn against a parallel copy (memory speed), NumPy and, if installed,
PyTorch.

Every contender runs in the same process on the same arrays. cybn, the copy and PyTorch are
timed in alternating blocks of calls (each block's first call untimed), and the figure
reported is the median over all blocks. Machines are noisy, so read the ratios (to the copy,
and PyTorch / cybn) rather than absolute times."""

from __future__ import annotations

import json

from .layers import layers_markdown, layers_suite
from .models import models_markdown, models_suite
from .report import (fused_markdown, half_markdown, markdown_table, norms_markdown, plot,
                     variants_markdown)
from .suites import (QUICK_SUITE, SUITE, fused_suite, half_suite, norm_suite, python_threads,
                     run, thread_scaling, variants_suite)
from .sweep import SERIES, sweep_markdown, sweep_plot, sweep_suite



def main(argv=None) -> int:
    import argparse

    def choices(allowed):
        def parse(text):
            items = tuple(t.strip() for t in text.split(","))
            bad = [t for t in items if t not in allowed]
            if bad or not items:
                raise argparse.ArgumentTypeError(
                    f"{', '.join(bad) or repr(text)} not in {', '.join(allowed)}")
            return items
        return parse

    def counts(text):
        try:
            items = tuple(int(t) for t in text.split(","))
        except ValueError:
            items = ()
        if not items or min(items) < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        return items

    def positive(text):
        value = counts(text)
        if len(value) != 1:
            raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
        return value[0]

    p = argparse.ArgumentParser(prog="python -m cybn bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a four-shape subset")
    p.add_argument("--dtype", default=("float32",), type=choices(("float32", "float64")),
                   help="comma-separated: float32,float64")
    p.add_argument("--layouts", default=("NCHW", "NHWC"), type=choices(("NCHW", "NHWC")),
                   help="comma-separated: NCHW,NHWC")
    p.add_argument("--repeats", type=positive, default=15)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-numpy", action="store_true")
    p.add_argument("--json", help="write the results as JSON to this path")
    p.add_argument("--markdown", help="write a Markdown table to this path")
    p.add_argument("--plot", help="write a bar chart PNG to this path (needs matplotlib)")
    p.add_argument("--python-threads", action="store_true",
                   help="only time 4 Python threads against serial calls (GIL release)")
    p.add_argument("--norms", action="store_true",
                   help="only the layer/group/instance/RMS norm suite against PyTorch")
    p.add_argument("--half", action="store_true",
                   help="only float16 / bfloat16 data against float32 (bfloat16 needs ml_dtypes)")
    p.add_argument("--fused", action="store_true",
                   help="only the fused BN+ReLU / BN+add+ReLU suite against the two-op paths")
    p.add_argument("--variants", action="store_true",
                   help="only batch renormalization and ghost batch norm against plain BN")
    p.add_argument("--models", action="store_true",
                   help="only whole networks (MLPs, CNNs in both layouts, a ResNet): a training "
                        "step and an inference forward against PyTorch")
    p.add_argument("--layers", action="store_true",
                   help="only single layers (the bench models' products; 3x3, 1x1, strided "
                        "and depthwise convolutions, both layouts) against PyTorch's modules: "
                        "forward, backward, weight gradient")
    p.add_argument("--sweep", action="store_true",
                   help="only the size sweep: every norm op and layout at 16 KiB to 64 MiB in "
                        "steps of 2x against PyTorch's functional API and autograd (geometric "
                        "mean and worst ratio per series; --plot draws the curves)")
    p.add_argument("--ops", type=choices(tuple(op for op, _ in SERIES)),
                   help="with --sweep: only these ops, comma-separated")
    p.add_argument("--scaling", metavar="N,N,...", type=counts,
                   help="only time thread scaling at these OpenMP thread counts, e.g. 1,2")
    args = p.parse_args(argv)
    if args.python_threads:
        python_threads()
        return 0
    # the one-suite flags: how each runs, and its Markdown table
    suites = {
        "norms": (lambda: norm_suite(repeats=args.repeats, dtype=args.dtype[0],
                                     torch=not args.no_torch), norms_markdown),
        "half": (lambda: half_suite(repeats=args.repeats), half_markdown),
        "fused": (lambda: fused_suite(repeats=args.repeats, dtype=args.dtype[0],
                                      torch=not args.no_torch), fused_markdown),
        "variants": (lambda: variants_suite(repeats=args.repeats), variants_markdown),
        "models": (lambda: models_suite(repeats=args.repeats), models_markdown),
        "layers": (lambda: layers_suite(repeats=args.repeats), layers_markdown),
        "scaling": (lambda: thread_scaling(args.scaling, repeats=args.repeats,
                                           dtype=args.dtype[0]), None),
        "sweep": (lambda: sweep_suite(repeats=args.repeats, series=args.ops), sweep_markdown),
    }
    chosen = next((name for name in suites if getattr(args, name)), None)
    if chosen is not None:
        suite, table = suites[chosen]
        result = suite()
        if chosen == "sweep" and args.plot and not sweep_plot(result, args.plot):
            print("matplotlib is not installed: no plot written")
    else:
        result = run(QUICK_SUITE if args.quick else SUITE, dtypes=args.dtype,
                     layouts=args.layouts, repeats=args.repeats,
                     torch=not args.no_torch, numpy_ref=not args.no_numpy)
        table = markdown_table
        if args.plot and not plot(result, args.plot):
            print("matplotlib is not installed: no plot written")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown and table is not None:
        with open(args.markdown, "w") as f:
            f.write(table(result) + "\n")
    return 0
