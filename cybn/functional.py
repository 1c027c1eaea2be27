"""The functional API under its familiar name (like ``torch.nn.functional``): every op of
:mod:`cybn.ops`, e.g. ``cybn.functional.batch_norm_train``. See :mod:`cybn.ops` for the
conventions they share."""

from .ops import *  # noqa: F401,F403
from .ops import __all__  # noqa: F401
