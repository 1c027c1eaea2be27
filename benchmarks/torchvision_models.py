"""torchvision's ResNet-18 and MobileNetV2 (random weights, eval mode, 224x224 inputs)
converted with cybn.from_torch, as built and after cybn.fold_batchnorm, against PyTorch
eager (``torch.inference_mode()``; ``torch.channels_last`` memory format for NHWC), same
thread count, interleaved medians in milliseconds. Needs PyTorch and torchvision.

    python benchmarks/torchvision_models.py [batches] [repeats]   e.g. 1,8,32 7
"""

import sys
import types
import warnings

import numpy as np

import cybn
from cybn import _kernels
from cybn.benchmark import interleaved_medians


def import_models():
    """torchvision.models; its pure-Python definitions also where its compiled operators do
    not match the installed torch (a CUDA wheel beside a CPU torch)."""
    try:
        import torchvision.models as models
    except RuntimeError:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("skipped")
        import torchvision.models as models
    return models


def main(batches=(1, 8, 32), repeats: int = 7) -> None:
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    models = import_models()
    print(f"# torchvision models: cybn {cybn.__version__} ({_kernels.ISA}), torch "
          f"{torch.__version__}, {cybn.get_num_threads()} threads, float32, inference, "
          f"median ms of {repeats}")
    print("| model | layout | batch | cybn ms | folded ms | PyTorch ms | cybn / PyTorch | "
          "folded / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)
        tm = getattr(models, name)().eval()
        for cl in (False, True):
            cm = cybn.from_torch(tm, channels_last=cl).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                folded = cybn.fold_batchnorm(cm)
            ttm = tm.to(memory_format=torch.channels_last) if cl else tm
            for n in batches:
                x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(
                    np.float32)
                tx = torch.from_numpy(x)
                if cl:
                    tx = tx.contiguous(memory_format=torch.channels_last)
                    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                with torch.inference_mode():
                    ref = ttm(tx).numpy()
                gap = np.abs(folded(x) - ref).max() / np.abs(ref).max()
                if not gap < 1e-4:
                    raise AssertionError(f"{name}: cybn's output differs by {gap:.1e}")

                def torch_call():
                    with torch.inference_mode():
                        ttm(tx)

                med = interleaved_medians({"cybn": lambda: cm(x), "folded": lambda: folded(x),
                                           "torch": torch_call}, repeats)
                print(f"| {name} | {'NHWC' if cl else 'NCHW'} | {n} | {med['cybn'] * 1e3:.1f} "
                      f"| {med['folded'] * 1e3:.1f} | {med['torch'] * 1e3:.1f} | "
                      f"{med['cybn'] / med['torch']:.2f} | {med['folded'] / med['torch']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(tuple(int(b) for b in args[0].split(",")) if args else (1, 8, 32),
         int(args[1]) if len(args) > 1 else 7)
