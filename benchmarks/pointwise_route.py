"""The two routes of a channels-first 1x1 convolution in whole torchvision models, in one
process, interleaved: the planes (one product per sample, ``cybn.nn.conv.POINTWISE_PLANES``
on) against the channels-last product with a transpose on each side (off), with PyTorch
eager beside them. Inference on the folded model, or a training step of the fused one.
Needs PyTorch and torchvision.

    python benchmarks/pointwise_route.py [infer|train] [model] [batch] [repeats]
    e.g.  python benchmarks/pointwise_route.py infer mobilenet_v2 1 15
"""

import sys
import warnings

import numpy as np

import cybn
from cybn.benchmark import interleaved_medians
from cybn.nn import conv

from torchvision_models import import_models, inputs


def main(mode="infer", name="mobilenet_v2", n=1, repeats=15):
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    torch.manual_seed(0)
    tm = getattr(import_models(), name)()
    x, tx = inputs(torch, n, False)
    if mode == "infer":
        tm.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cybn.fold_batchnorm(cybn.from_torch(tm).eval())

        def step():
            model(x)

        def torch_step():
            with torch.inference_mode():
                tm(tx)
    else:
        tm.train()
        for m in tm.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model = cybn.fuse(cybn.from_torch(tm)).train()
        dy = np.random.default_rng(1).standard_normal(model(x).shape).astype(np.float32)
        tdy = torch.from_numpy(dy)

        def step():
            model.zero_grad()
            model(x)
            model.backward_parameters(dy)

        def torch_step():
            tm.zero_grad()
            tm(tx).backward(tdy)

    def route(flag):
        def run():
            conv.POINTWISE_PLANES = flag
            step()
        return run

    try:
        med = interleaved_medians({"transposes": route(False), "planes": route(True),
                                   "torch": torch_step}, repeats, block=3)
    finally:
        conv.POINTWISE_PLANES = True
    print(f"# {mode} {name} NCHW batch {n}, {cybn.get_num_threads()} threads, median ms of "
          f"{repeats}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "infer", a[1] if len(a) > 1 else "mobilenet_v2",
         int(a[2]) if len(a) > 2 else 1, int(a[3]) if len(a) > 3 else 15)
