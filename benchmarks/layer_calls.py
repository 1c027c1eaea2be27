"""Per-layer call cost of the bench models' layers in inference, at batch 1 (where a
layer's call is almost all overhead: checks, allocation, dispatch) and batch 64: each layer
of each model of ``python -m cybn bench --models`` called on its own input, eval mode,
against the same PyTorch module (``torch.inference_mode()``), interleaved medians in
microseconds. The sum over a model's layers is its forward without the model's own loop.

    python benchmarks/layer_calls.py [repeats]      (CYBN_ISA=avx2 for the other variant)
"""

import sys

import numpy as np

import cybn
from cybn import _kernels
from cybn.benchmark import interleaved_medians
from cybn.benchmark.models import MODELS, to_torch
from cybn.nn import Sequential


def main(repeats: int = 201) -> None:
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    print(f"# layer calls: cybn {cybn.__version__} ({_kernels.ISA}), torch {torch.__version__}, "
          f"{cybn.get_num_threads()} threads, float32, inference, median us of {repeats}")
    print(f"{'model':<20} {'layer':<18} {'batch':>5} {'cybn us':>9} {'torch us':>9} "
          f"{'cybn/torch':>10}")
    for name, layout, build, shape in MODELS:
        model = build(np.random.default_rng(1))
        for batch in (1, 64):
            x = np.random.default_rng(0).standard_normal((batch,) + shape[1:]).astype(
                np.float32)
            model.eval()
            tm, tx = to_torch(model, x, torch)
            layers = list(model) if isinstance(model, Sequential) else [model]
            total = {"cybn": 0.0, "torch": 0.0}
            h, th = x, tx
            for layer, tlayer in zip(layers, tm):
                with torch.inference_mode():
                    med = interleaved_medians({
                        "cybn": lambda: layer(h),
                        "torch": lambda: tlayer(th)}, repeats)
                    th = tlayer(th)
                h = layer(h)
                for k in total:
                    total[k] += med[k]
                print(f"{name:<20} {type(layer).__name__:<18} {batch:>5} "
                      f"{med['cybn'] * 1e6:>9.1f} {med['torch'] * 1e6:>9.1f} "
                      f"{med['cybn'] / med['torch']:>10.2f}", flush=True)
            print(f"{name:<20} {'all layers':<18} {batch:>5} {total['cybn'] * 1e6:>9.1f} "
                  f"{total['torch'] * 1e6:>9.1f} {total['cybn'] / total['torch']:>10.2f}",
                  flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
