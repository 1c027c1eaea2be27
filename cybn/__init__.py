"""cybn: Cython + OpenMP batch normalization for NumPy arrays.

Functional ops (:mod:`cybn.functional`), layers (:mod:`cybn.layers`), a training helper
(:mod:`cybn.train`), thread control and build information.
"""

__version__ = "0.1.0"

from . import functional, layers, train
from ._config import show_config
from ._openmp import MAX_THREADS, get_num_threads, set_num_threads
from .functional import *  # noqa: F401,F403  (batch_norm_train, ..., moments)
from .layers import *  # noqa: F401,F403  (Parameter, Module, BatchNorm1d, ...)
from .train import *  # noqa: F401,F403  (cross_entropy, mse_loss, SGD, Adam, fit, ...)

__all__ = [
    "__version__",
    "MAX_THREADS",
    "get_num_threads",
    "set_num_threads",
    "show_config",
    *functional.__all__,
    *layers.__all__,
    *train.__all__,
]
