"""cybn's matrix-product kernels against NumPy's BLAS and torch.mm, one thread each and all
threads, float32: the products of the bench models (a linear layer's 64x784 @ 784x512, a small
convolution's 16384x144 @ 144x16, ...) and a sweep of square sizes from in-cache (64) to
beyond it (2048). GFLOP/s of each (interleaved medians), and the ratio to each contender.

    python benchmarks/matmul.py [repeats]          (CYBN_ISA=avx2 for the other variant)
"""

import sys

import numpy as np
from threadpoolctl import threadpool_limits

import cybn
from cybn import _kernels
from cybn.benchmark import interleaved_medians

SHAPES = [(64, 784, 512), (64, 512, 512), (64, 512, 10), (16384, 144, 16), (4096, 144, 32),
          (3136, 576, 64), (256, 2304, 256), (784, 1152, 128)] + \
    [(n, n, n) for n in (64, 128, 256, 512, 1024, 2048)]


def main(repeats: int = 9) -> None:
    import torch

    rng = np.random.default_rng(0)
    all_threads = cybn.get_num_threads()
    print(f"# matmul: cybn {cybn.__version__} ({_kernels.ISA}), torch {torch.__version__}, "
          f"float32, GFLOP/s, median of {repeats}")
    print(f"{'M x K x N':<18} {'thr':>3} {'cybn':>7} {'numpy':>7} {'torch':>7} "
          f"{'cybn/numpy':>10} {'cybn/torch':>10}")
    worst = {}
    for threads in (1, all_threads):
        torch.set_num_threads(threads)
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            with threadpool_limits(threads, user_api="blas"):
                med = interleaved_medians({
                    "cybn": lambda: _kernels.matmul(a, b, out, False, threads),
                    "numpy": lambda: np.matmul(a, b),
                    "torch": lambda: torch.mm(ta, tb)}, repeats)
            gf = {name: 2 * m * k * n / t / 1e9 for name, t in med.items()}
            r_np, r_t = gf["cybn"] / gf["numpy"], gf["cybn"] / gf["torch"]
            worst[threads] = min(worst.get(threads, (9, 9))[0], r_np), \
                min(worst.get(threads, (9, 9))[1], r_t)
            print(f"{f'{m}x{k}x{n}':<18} {threads:>3} {gf['cybn']:>7.1f} {gf['numpy']:>7.1f} "
                  f"{gf['torch']:>7.1f} {r_np:>10.2f} {r_t:>10.2f}", flush=True)
    for threads, (w_np, w_t) in worst.items():
        print(f"# {threads} thread(s): worst cybn/numpy {w_np:.2f}, worst cybn/torch {w_t:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
