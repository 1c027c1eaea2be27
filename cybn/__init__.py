"""cybn: Cython + OpenMP batch normalization for NumPy arrays.

Functional ops (:mod:`cybn.functional`), thread control and build information.
"""

__version__ = "0.1.0"

from ._config import show_config
from ._openmp import get_num_threads, set_num_threads
from .functional import (
    batch_norm,
    batch_norm_backward,
    batch_norm_infer,
    batch_norm_train,
    moments,
)

__all__ = [
    "__version__",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_infer",
    "batch_norm_train",
    "moments",
    "get_num_threads",
    "set_num_threads",
    "show_config",
]
