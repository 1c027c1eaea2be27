"""A torchvision ResNet-18 converted once, then served with cybn alone: the networks
guide's worked example.

    python examples/serve_resnet18.py convert resnet18.npz   # needs torch and torchvision
    python examples/serve_resnet18.py serve resnet18.npz     # cybn and NumPy only

``convert`` saves the torchvision model's state_dict as NumPy arrays (np.savez: no pickle,
so loading it runs no code). Its keys are the ones :func:`cybn.models.resnet18` builds, so
``serve`` rebuilds the network with cybn, loads the arrays as they are, folds the batch
norms into the convolutions (ReLU and the residual adds go into their epilogues) and runs
inference, without importing PyTorch. A trained checkpoint
(``torchvision.models.resnet18(weights="DEFAULT")``, downloaded by torchvision) converts the
same way; this example uses random weights so that it runs offline.
"""

from __future__ import annotations

import sys
import time
import types
import warnings

import numpy as np

import cybn


def convert(path: str) -> None:
    """torchvision's ResNet-18 (random weights, seed 0) saved as NumPy arrays."""
    import torch

    try:
        import torchvision.models as models
    except RuntimeError:  # a torchvision wheel whose compiled operators do not match torch:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:  # its model
            del sys.modules[name]  # definitions load without its meta registrations
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("skipped")
        import torchvision.models as models
    torch.manual_seed(0)
    model = models.resnet18()
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})


def load(path: str, channels_last: bool = True) -> cybn.Sequential:
    """The served model: ResNet-18 with the saved weights, folded, in eval mode."""
    model = cybn.models.resnet18(channels_last=channels_last)
    with np.load(path) as state:
        model.load_state_dict(dict(state))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every BatchNorm folds: a warning would say which not
        return cybn.fold_batchnorm(model)


def serve(path: str, batch: int = 1, repeats: int = 20) -> dict:
    """Loads the model and times inference on random images (median ms)."""
    model = load(path)
    x = np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)
    logits = model(x)  # warm-up: the first call maps the memory it uses
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return {"logits": logits, "ms": 1e3 * float(np.median(times)),
            "classes": logits.argmax(axis=1)}


if __name__ == "__main__":
    action, file = sys.argv[1], sys.argv[2]
    if action == "convert":
        convert(file)
        print(f"saved {file}")
    else:
        result = serve(file)
        print(f"ResNet-18, batch 1, 224x224 channels-last, {cybn.get_num_threads()} threads: "
              f"{result['ms']:.1f} ms (median of 20); predicted class {result['classes'][0]}; "
              f"PyTorch imported: {'torch' in sys.modules}")
