"""Print the README's benchmark tables (Markdown) from the JSON the benchmark writes.

    python -m cybn bench --repeats 15 --dtype float32,float64 --json bench.json
    python -m cybn bench --scaling 1,2 --json scaling.json
    python benchmarks/readme_tables.py bench.json [scaling.json] [--plot docs/benchmark.png]
"""

import argparse
import json

import numpy as np


def summary(result) -> str:
    lines = ["| dtype | op | geometric mean PyTorch / cybn | min | max |",
             "|---|---|---|---|---|"]
    for dtype in ("float32", "float64"):
        for op in ("infer", "train", "backward"):
            sp = [r["speedup_vs_torch"] for r in result["rows"]
                  if r["dtype"] == dtype and r["op"] == op and r["speedup_vs_torch"]]
            if sp:
                gm = float(np.exp(np.mean(np.log(sp))))
                lines.append(f"| {dtype} | {op} | {gm:.2f} | {min(sp):.2f} | {max(sp):.2f} |")
    return "\n".join(lines)


def cases(result, dtype: str = "float32") -> str:
    lines = ["| shape | layout | op | cybn ms | copy ms | cybn / copy | NumPy ms | PyTorch ms | "
             "PyTorch / cybn |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["dtype"] != dtype:
            continue
        torch = f"{r['torch_ms']:.3f}" if r["torch_ms"] else "-"
        speedup = f"**{r['speedup_vs_torch']:.2f}**" if r["speedup_vs_torch"] else "-"
        numpy = f"{r['numpy_ms']:.2f}" if r["numpy_ms"] else "-"
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['layout']} | {r['op']} | "
                     f"{r['cybn_ms']:.3f} | {r['copy_ms']:.3f} | {r['ratio_to_copy']:.2f} | "
                     f"{numpy} | {torch} | {speedup} |")
    return "\n".join(lines)


def scaling(result) -> str:
    threads = result["threads"]
    lines = ["| shape | channel axis | op | " + " | ".join(f"{n} thread{'s' * (n > 1)} ms"
                                                      for n in threads) + " | speed-up |",
             "|---|---|---|" + "---|" * len(threads) + "---|"]
    for r in result["rows"]:
        times = " | ".join(f"{r['ms'][str(n)]:.3f}" for n in threads)
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['axis']} | {r['op']} | {times} | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench_json")
    p.add_argument("scaling_json", nargs="?")
    p.add_argument("--plot", help="also write the float32 bar chart here")
    args = p.parse_args()
    with open(args.bench_json) as f:
        result = json.load(f)
    print(summary(result), end="\n\n")
    print(cases(result), end="\n\n")
    if args.scaling_json:
        with open(args.scaling_json) as f:
            print(scaling(json.load(f)))
    if args.plot:
        from cybn.benchmark import report

        float32 = dict(result, rows=[r for r in result["rows"] if r["dtype"] == "float32"])
        report.plot(float32, args.plot)


if __name__ == "__main__":
    main()
