"""Channel routing (the copies under Concat, ChannelSlice, ChannelShuffle and ShuffleNetV2's
units) against NumPy's and PyTorch's, a sweep of map sizes from in-cache to beyond it, both
layouts, float32; interleaved medians in microseconds. PyTorch is optional: its columns
are left out without it.

Cases: ``concat`` joins two halves along the channel axis (``np.concatenate``,
``torch.cat``); ``concat+shuffle`` joins them and shuffles the channels in 2 groups, as a
ShuffleNetV2 unit does (NumPy: concatenate, then the reshape-swapaxes copy; PyTorch:
``torch.cat`` then ``torch.nn.functional.channel_shuffle``; cybn: one interleaving copy).
PyTorch's channels-last rows use the ``channels_last`` memory format.

    python benchmarks/channel_routing.py [repeats]
"""

import sys

import numpy as np

import cybn
from cybn.benchmark import interleaved_medians
from cybn.ops import channels

# (N, C, H, W) of the two halves, ShuffleNetV2 x1.0's stages at batch 1 and 8, and larger
SHAPES = [(1, 58, 28, 28), (1, 116, 14, 14), (1, 232, 7, 7), (8, 58, 28, 28),
          (8, 116, 14, 14), (8, 232, 7, 7), (8, 64, 56, 56), (32, 64, 56, 56)]


def numpy_shuffle(x: np.ndarray, groups: int, axis: int) -> np.ndarray:
    C = x.shape[axis]
    v = x.reshape(x.shape[:axis] + (groups, C // groups) + x.shape[axis + 1:])
    return np.ascontiguousarray(np.swapaxes(v, axis, axis + 1)).reshape(x.shape)


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(cybn.get_num_threads())
    return torch


def contenders(torch, a: np.ndarray, b: np.ndarray, channels_last: bool) -> dict:
    axis = 3 if channels_last else 1
    cases = {
        "concat": {"cybn": lambda: channels.concat([a, b], axis),
                   "numpy": lambda: np.concatenate([a, b], axis=axis)},
        "concat+shuffle": {
            "cybn": lambda: channels.concat([a, b], axis, interleave=True),
            "numpy": lambda: numpy_shuffle(np.concatenate([a, b], axis=axis), 2, axis)},
    }
    if torch is not None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ta, tb = (torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, 3, 1) if channels_last
                                                        else v)).contiguous(memory_format=fmt)
                  for v in (a, b))
        shuffle = torch.nn.functional.channel_shuffle
        cases["concat"]["torch"] = lambda: torch.cat([ta, tb], 1)
        cases["concat+shuffle"]["torch"] = lambda: shuffle(torch.cat([ta, tb], 1), 2)
    return cases


def main(repeats: int = 15) -> None:
    torch = torch_or_none()
    print(f"# channel routing: cybn ({cybn._kernels.ISA}), {cybn.get_num_threads()} threads, "
          f"float32, median us of {repeats}"
          + ("" if torch is None else f"; torch {torch.__version__}"))
    print("| case | layout | halves (N, C, H, W) | MiB out | cybn us | NumPy us | PyTorch us |"
          " NumPy / cybn | PyTorch / cybn |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for n, c, h, w in SHAPES:
        for channels_last in (False, True):
            rng = np.random.default_rng(0)
            shape = (n, h, w, c) if channels_last else (n, c, h, w)
            a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
            for case, funcs in contenders(torch, a, b, channels_last).items():
                med = interleaved_medians(funcs, repeats)
                t_torch = med.get("torch")
                ratio_torch = "" if t_torch is None else f"{t_torch / med['cybn']:.2f}"
                for name in ("numpy", "torch"):
                    if name in med:
                        key = (case, name)
                        worst[key] = min(worst.get(key, np.inf), med[name] / med["cybn"])
                print(f"| {case} | {'NHWC' if channels_last else 'NCHW'} | {(n, c, h, w)} | "
                      f"{2 * a.nbytes / 2**20:.2f} | {med['cybn'] * 1e6:.1f} | "
                      f"{med['numpy'] * 1e6:.1f} | "
                      + ("" if t_torch is None else f"{t_torch * 1e6:.1f}")
                      + f" | {med['numpy'] / med['cybn']:.2f} | {ratio_torch} |")
    for (case, name), ratio in sorted(worst.items()):
        print(f"# worst {name} / cybn, {case}: {ratio:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
