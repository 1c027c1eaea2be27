"""MaxPool2d (2x2, stride 2) forward and forward + backward against PyTorch's max_pool2d on a
float32 (64, 32, 32, 32) activation in both layouts (the same memory for both libraries),
interleaved medians, OpenMP/PyTorch threads as set in the environment.

    python benchmarks/max_pool.py [repeats]
"""

import sys

import numpy as np

import cybn
from cybn.benchmark import interleaved_medians


def main(repeats: int = 15) -> None:
    import torch

    torch.set_num_threads(cybn.get_num_threads())
    x = np.random.default_rng(0).standard_normal((64, 32, 32, 32)).astype(np.float32)
    for channels_last in (False, True):
        layer = cybn.MaxPool2d(2, channels_last=channels_last)
        t = torch.from_numpy(x.copy())
        if channels_last:  # x read as (N, H, W, C): a channels_last (N, C, H, W) tensor
            t = t.permute(0, 3, 1, 2)
        t.requires_grad_(True)

        def cybn_step():
            y = layer(x)
            layer.backward(np.ones_like(y))

        def cybn_forward():
            layer(x)
            layer._take_saved()

        def torch_step():
            y = torch.nn.functional.max_pool2d(t, 2)
            y.backward(torch.ones_like(y))

        def torch_forward():
            with torch.no_grad():
                torch.nn.functional.max_pool2d(t, 2)

        med = interleaved_medians({"cybn forward": cybn_forward, "torch forward": torch_forward,
                                   "cybn fwd+bwd": cybn_step, "torch fwd+bwd": torch_step},
                                  repeats)
        print(("NHWC" if channels_last else "NCHW") + ", "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
