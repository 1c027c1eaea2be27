"""cybn: Cython + OpenMP batch normalization for NumPy arrays.

Functional ops (:mod:`cybn.functional`), layers (:mod:`cybn.layers`), a training helper
(:mod:`cybn.train`), thread control and build information.
"""

__version__ = "0.1.0"

from ._config import show_config
from ._openmp import get_num_threads, set_num_threads
from .layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    Parameter,
    ReLU,
    Sequential,
)
from .train import SGD, Adam, cross_entropy, evaluate, fit, mse_loss, predict
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
    "Parameter",
    "Module",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Linear",
    "Conv2d",
    "ReLU",
    "Dropout",
    "MaxPool2d",
    "Flatten",
    "Sequential",
    "cross_entropy",
    "mse_loss",
    "SGD",
    "Adam",
    "fit",
    "evaluate",
    "predict",
]
