"""torchvision's ResNet-18, MobileNetV2, SqueezeNet 1.1 and ShuffleNetV2 x1.0 (random
weights, 224x224 inputs) converted with cybn.from_torch, against PyTorch eager on the same
thread count; interleaved medians in milliseconds. Needs PyTorch and torchvision.

Inference (``infer``): cybn as converted, after ``cybn.fuse`` and after
``cybn.fold_batchnorm``, against PyTorch eager in ``torch.inference_mode()``.
Training step (``train``): forward and backward with a fixed output gradient (every
parameter gradient and the input's not computed: the input is data), on the ``cybn.fuse``d
model, against PyTorch eager's forward and ``backward`` with gradients zeroed first on both
sides; no optimizer step on either side. NHWC rows use the ``torch.channels_last`` memory
format. Dropout is set to p=0 for the training step. Outputs are checked to agree (1e-4 of their scale) before timing.

    python benchmarks/torchvision_models.py [infer|train|both] [batches] [repeats] [models]
    e.g.  python benchmarks/torchvision_models.py both 1,8,32 5 resnet18,mobilenet_v2
"""

import sys
import types
import warnings

import numpy as np

import cybn
from cybn import _kernels
from cybn.benchmark import interleaved_medians

MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x1_0")


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


def inputs(torch, n: int, cl: bool) -> tuple:
    x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
    tx = torch.from_numpy(x)
    if cl:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), \
            tx.contiguous(memory_format=torch.channels_last)
    return x, tx


def check(name: str, got, ref, rtol: float = 1e-4) -> None:
    gap = np.abs(got - ref).max() / np.abs(ref).max()
    if not gap < rtol:
        raise AssertionError(f"{name}: cybn's output differs from PyTorch's by {gap:.1e}")


def infer_rows(torch, name, tm, cl, batches, repeats):
    cm = cybn.from_torch(tm, channels_last=cl).eval()
    fused = cybn.fuse(cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folded = cybn.fold_batchnorm(cm)
    for n in batches:
        x, tx = inputs(torch, n, cl)
        with torch.inference_mode():
            ref = tm(tx).numpy()
        check(name, folded(x), ref)

        def torch_call():
            with torch.inference_mode():
                tm(tx)

        med = interleaved_medians({"cybn": lambda: cm(x), "fused": lambda: fused(x),
                                   "folded": lambda: folded(x), "torch": torch_call}, repeats)
        t = med["torch"]
        print(f"| {name} | {'NHWC' if cl else 'NCHW'} | {n} | {med['cybn'] * 1e3:.1f} | "
              f"{med['fused'] * 1e3:.1f} | {med['folded'] * 1e3:.1f} | {t * 1e3:.1f} | "
              f"{med['cybn'] / t:.2f} | {med['fused'] / t:.2f} | {med['folded'] / t:.2f} |",
              flush=True)


def train_rows(torch, name, tm, cl, batches, repeats):
    tm.train()
    for m in tm.modules():  # the same function on both sides: no random dropout masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    fused = cybn.fuse(cybn.from_torch(tm, channels_last=cl)).train()
    for n in batches:
        x, tx = inputs(torch, n, cl)
        y = fused(x)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32) / y.size
        tdy = torch.from_numpy(dy)
        tm.zero_grad()
        ty = tm(tx)
        check(name, y, ty.detach().numpy())
        ty.backward(tdy)
        fused.zero_grad()
        fused.backward_parameters(dy)
        # the classifier's weight gradient, within 1e-3 (the first layer's is ill-conditioned
        # in float32 at batch 1: PyTorch's own NCHW and NHWC runs differ by 2% on
        # ShuffleNetV2; the classifier's by up to 1.2e-4 on MobileNetV2 at batch 32)
        w = list(tm.parameters())[-2]
        check(name + " gradient", list(fused.parameters())[-2].grad, w.grad.numpy(), 1e-3)

        def cybn_step():
            fused.zero_grad()
            fused(x)
            fused.backward_parameters(dy)

        def torch_step():
            tm.zero_grad()
            tm(tx).backward(tdy)

        med = interleaved_medians({"cybn": cybn_step, "torch": torch_step}, repeats)
        print(f"| {name} | {'NHWC' if cl else 'NCHW'} | {n} | {med['cybn'] * 1e3:.1f} | "
              f"{med['torch'] * 1e3:.1f} | {med['cybn'] / med['torch']:.2f} |", flush=True)


def main(mode="both", batches=(1, 8, 32), repeats: int = 5, names=MODELS) -> None:
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    models = import_models()
    head = (f"cybn {cybn.__version__} ({_kernels.ISA}), torch {torch.__version__}, "
            f"{cybn.get_num_threads()} threads, float32, 224x224, median ms of {repeats}")
    for kind in ("infer", "train") if mode == "both" else (mode,):
        if kind == "infer":
            print(f"# inference: {head}")
            print("| model | layout | batch | cybn ms | fused ms | folded ms | PyTorch ms | "
                  "cybn / PyTorch | fused / PyTorch | folded / PyTorch |")
            print("|---|---|---|---|---|---|---|---|---|---|")
        else:
            print(f"# training step (forward + backward, fused model): {head}")
            print("| model | layout | batch | cybn ms | PyTorch ms | cybn / PyTorch |")
            print("|---|---|---|---|---|---|")
        for name in names:
            for cl in (False, True):
                torch.manual_seed(0)
                tm = getattr(models, name)().eval()
                if cl:
                    tm = tm.to(memory_format=torch.channels_last)
                rows = infer_rows if kind == "infer" else train_rows
                rows(torch, name, tm, cl, batches, repeats)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "both",
         tuple(int(b) for b in args[1].split(",")) if len(args) > 1 else (1, 8, 32),
         int(args[2]) if len(args) > 2 else 5,
         tuple(args[3].split(",")) if len(args) > 3 else MODELS)
