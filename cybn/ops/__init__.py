"""cybn's operations as functions of NumPy arrays: batch normalization (:mod:`.batchnorm`),
layer, group, instance and RMS normalization (:mod:`.norms`) and per-channel statistics
(:mod:`.stats`).

Conventions shared by every function here
-----------------------------------------
* ``axis`` is the channel axis: ``1`` for channels-first (NC, NCL, NCHW, NCDHW), ``-1`` for
  channels-last (NLC, NHWC, NDHWC); any rank >= 2 and any axis work. Statistics run over
  every other axis, ``count = x.size // C`` values per channel.
* ``x`` is float32 or float64 (other NumPy dtypes raise TypeError; lists are converted).
  Outputs (``y``, ``dx``, ``dweight``, ``dbias``) have x's dtype. Batch statistics
  (``mean``, ``invstd``, ``var``) are float64 whatever x's dtype: they are what
  :func:`batch_norm_backward` takes, and float64 keeps it exact on data far from zero.
* Per-channel arrays (weight, bias, running statistics) have shape ``(C,)`` and may be
  float32 or float64 independently of x.
* Training normalizes with the biased batch variance. Running statistics, when given, are
  updated in place: ``running = (1 - momentum) * running + momentum * batch``, with the
  unbiased variance ``var * n / (n - 1)`` for ``running_var`` (PyTorch's convention; the
  other frameworks' with ``convention=``, see :mod:`.conventions`).
* ``out=`` may be a preallocated array of x's shape and dtype, or x itself (in place).
* Arguments are all checked before anything runs: an error leaves every array unchanged.
* Threads: OpenMP's current maximum (``OMP_NUM_THREADS``, ``threadpoolctl``,
  :func:`cybn.set_num_threads`). Results are bitwise identical for any thread count.
"""

from . import batchnorm, conventions, norms, stats, variants
from .conventions import CONVENTIONS, Convention
from .batchnorm import *  # noqa: F401,F403
from .norms import *  # noqa: F401,F403
from .stats import *  # noqa: F401,F403
from .variants import *  # noqa: F401,F403

__all__ = [*batchnorm.__all__, *stats.__all__, *norms.__all__, *variants.__all__,
           "CONVENTIONS", "Convention"]
