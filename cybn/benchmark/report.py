"""Reports of the suites' results: one-line summaries, Markdown tables and the bar chart."""

from __future__ import annotations

from typing import Any

import numpy as np

OPS = ("infer", "train", "backward")  # the batch-norm suite's ops, in table order


def format_row(r) -> str:
    def f(v, width, digits=3):
        return f"{v:>{width}.{digits}f}" if v is not None else f"{'-':>{width}}"

    shape = "x".join(str(s) for s in r["shape"])
    return (f"{shape:<20} {r['layout']:<6} {r['dtype']:<7} {r['op']:<8} {f(r['cybn_ms'], 8)} "
            f"{f(r['copy_ms'], 8)} {f(r['ratio_to_copy'], 7, 2)} {f(r['numpy_ms'], 9, 2)} "
            f"{f(r['torch_ms'], 9)} {f(r['speedup_vs_torch'], 8, 2)}")


def summary(result) -> str:
    """Geometric-mean speed-up over PyTorch per op and dtype."""
    lines = []
    for dtype in sorted({r["dtype"] for r in result["rows"]}):
        for op in OPS:
            sp = [r["speedup_vs_torch"] for r in result["rows"]
                  if r["op"] == op and r["dtype"] == dtype and r["speedup_vs_torch"]]
            if sp:
                gm = float(np.exp(np.mean(np.log(sp))))
                lines.append(f"# {dtype} {op}: geometric-mean speed-up over PyTorch {gm:.2f}x "
                             f"(min {min(sp):.2f}x, max {max(sp):.2f}x, {len(sp)} cases)")
    return "\n".join(lines)


def number(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(rows, columns) -> str:
    """A Markdown table: ``columns`` is a list of (heading, function of a row -> text)."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def _shape_text(r) -> str:
    return "x".join(map(str, r["shape"]))


def markdown_table(result) -> str:
    return markdown(result["rows"], [
        ("shape", _shape_text), ("layout", lambda r: r["layout"]),
        ("dtype", lambda r: r["dtype"]), ("op", lambda r: r["op"]),
        ("cybn ms", lambda r: number(r["cybn_ms"])), ("copy ms", lambda r: number(r["copy_ms"])),
        ("cybn / copy", lambda r: number(r["ratio_to_copy"], 2)),
        ("NumPy ms", lambda r: number(r["numpy_ms"], 2)),
        ("PyTorch ms", lambda r: number(r["torch_ms"])),
        ("PyTorch / cybn", lambda r: number(r["speedup_vs_torch"], 2))])


def plot(result, path: str) -> bool:
    """Bar chart of the ratio to copy per case (matplotlib optional). True if written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    labels = [f"{'x'.join(map(str, r['shape']))} {r['layout']} {r['dtype']} {r['op']}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.25 * len(rows) + 1.5))
    pos = np.arange(len(rows))
    ax.barh(pos - 0.2, [r["ratio_to_copy"] for r in rows], height=0.4, label="cybn")
    torch_ratio = [(r["torch_ms"] / r["copy_ms"]) if r["torch_ms"] else 0 for r in rows]
    if any(torch_ratio):
        ax.barh(pos + 0.2, torch_ratio, height=0.4, label="PyTorch")
    ax.set_yticks(pos, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("time / parallel copy time (lower is better)")
    m = result["meta"]
    ax.set_title(f"cybn {m['cybn']} vs PyTorch {m['torch']}, {m['threads']} threads, {m['date']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def norms_markdown(result) -> str:
    return markdown(result["rows"], [
        ("norm", lambda r: r["norm"]), ("shape", _shape_text), ("layout", lambda r: r["layout"]),
        ("op", lambda r: r["op"]), ("cybn ms", lambda r: number(r["cybn_ms"])),
        ("copy ms", lambda r: number(r["copy_ms"])),
        ("PyTorch ms", lambda r: number(r["torch_ms"])),
        ("PyTorch / cybn", lambda r: number(r["speedup_vs_torch"], 2))])


def fused_markdown(result) -> str:
    return markdown(result["rows"], [
        ("op", lambda r: r["op"].replace("_", "+").replace("bn", "BN")),
        ("shape", _shape_text), ("layout", lambda r: r["layout"]), ("pass", lambda r: r["pass"]),
        ("fused ms", lambda r: number(r["fused_ms"])),
        ("two-op ms", lambda r: number(r["two_op_ms"])),
        ("PyTorch ms", lambda r: number(r["torch_ms"])),
        ("two-op / fused", lambda r: number(r["speedup_vs_two_op"], 2)),
        ("PyTorch / fused", lambda r: number(r["speedup_vs_torch"], 2))])


def variants_markdown(result) -> str:
    return markdown(result["rows"], [
        ("shape", _shape_text), ("layout", lambda r: r["layout"]), ("pass", lambda r: r["pass"]),
        ("plain BN ms", lambda r: number(r["plain_ms"])),
        ("renorm ms", lambda r: number(r["renorm_ms"])),
        ("ghost ms (N/4)", lambda r: number(r["ghost_ms"])),
        ("renorm / plain", lambda r: number(r["renorm_over_plain"], 2)),
        ("ghost / plain", lambda r: number(r["ghost_over_plain"], 2))])


def half_markdown(result) -> str:
    names = result["meta"]["dtypes"]
    columns: list[tuple[str, Any]] = [("shape", _shape_text), ("layout", lambda r: r["layout"]),
                                      ("op", lambda r: r["op"])]
    columns += [(f"{n} ms", lambda r, n=n: number(r["ms"][n])) for n in names]
    columns += [(f"float32 / {n}", lambda r, n=n: number(r["speedup_vs_float32"][n], 2))
                for n in names[1:]]
    return markdown(result["rows"], columns)
