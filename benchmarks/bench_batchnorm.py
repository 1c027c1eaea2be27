"""Time cybn against a parallel copy, NumPy and PyTorch: the same code as `python -m cybn bench`.

    python benchmarks/bench_batchnorm.py --dtype float32,float64 --json bench.json --plot bench.png

Options: --quick (four shapes), --repeats N, --layouts NCHW,NHWC, --no-torch, --markdown F.
Set the thread count with OMP_NUM_THREADS; install PyTorch with `pip install -e ".[bench]"`.
"""

import sys

from cybn.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
