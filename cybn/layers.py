"""The layers under the name of cybn's first version: every layer of :mod:`cybn.nn`, e.g.
``cybn.layers.BatchNorm2d``."""

from .nn import *  # noqa: F401,F403
from .nn import __all__  # noqa: F401
