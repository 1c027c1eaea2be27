"""Layers (:mod:`cybn.nn`): objects that mirror PyTorch's names, shapes and state, without autograd.

Each layer has ``forward(x)`` (also ``layer(x)``), which keeps what its backward needs, and
``backward(dy) -> dx``, which adds the parameter gradients into ``param.grad`` (call
``zero_grad()`` between steps) and returns the gradient with respect to the input. Calls go
forward once, then backward once, in reverse order, as in the CS231n layer pattern.

``state_dict()`` / ``load_state_dict()`` use PyTorch's keys and shapes (``0.weight``,
``1.running_mean``, ``1.num_batches_tracked``, ...), so the state of an equivalent
``torch.nn.Sequential``, converted with ``.numpy()``, loads as-is.

A layer object keeps the activations of its last forward call, so one layer object must not
be used from several threads at once; separate objects (or ``eval()`` inference through
the functional API) may run in parallel.
"""

from . import (activation, batchnorm, branches, conv, dropout, flatten, linear, module,
               normalization, pooling, residual)
from .activation import *  # noqa: F401,F403
from .batchnorm import *  # noqa: F401,F403
from .branches import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .flatten import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .module import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .residual import *  # noqa: F401,F403

__all__ = [
    *module.__all__,
    *batchnorm.__all__,
    *normalization.__all__,
    *linear.__all__,
    *conv.__all__,
    *activation.__all__,
    *dropout.__all__,
    *pooling.__all__,
    *flatten.__all__,
    *residual.__all__,
    *branches.__all__,
]
