"""cybn: Cython + OpenMP batch normalization for NumPy arrays.

Functional ops (:mod:`cybn.ops`, also reachable as :mod:`cybn.functional`), layers
(:mod:`cybn.nn`, also :mod:`cybn.layers`), a training helper (:mod:`cybn.train`), thread
control and build information. Every public name is re-exported here (``cybn.BatchNorm2d``,
``cybn.batch_norm_train``, ...).
"""

__version__ = "0.1.0"

from . import (callbacks, convert, deploy, distributed, functional, interop, layers,
               model_file, models, nn, onnx_export, onnx_import, ops, schedules, train)
from ._config import show_config
from ._openmp import MAX_THREADS, get_num_threads, set_num_threads
from .convert import from_torch
from .deploy import fold_batchnorm, fuse, insert_batchnorm, recalibrate
from .distributed import SyncBatchNorm
from .interop import from_flax, from_keras, from_onnx
from .model_file import load, save
from .onnx_export import to_onnx
from .onnx_import import from_onnx_model
from .nn import *  # noqa: F401,F403  (Parameter, Module, BatchNorm1d, ...)
from .ops import *  # noqa: F401,F403  (batch_norm_train, ..., moments)
from .train import *  # noqa: F401,F403  (cross_entropy, mse_loss, SGD, Adam, fit, ...)
from .schedules import *  # noqa: F401,F403  (StepLR, CosineLR, LinearWarmup)
from .callbacks import *  # noqa: F401,F403  (EarlyStopping, Checkpoint)

__all__ = [
    "__version__",
    "MAX_THREADS",
    "get_num_threads",
    "set_num_threads",
    "show_config",
    *ops.__all__,
    *nn.__all__,
    *train.__all__,
    *schedules.__all__,
    *callbacks.__all__,
    *deploy.__all__,
    *interop.__all__,
    *convert.__all__,
    *onnx_export.__all__,
    *onnx_import.__all__,
    "save",
    "load",
    "SyncBatchNorm",
]
