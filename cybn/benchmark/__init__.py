"""cybn's benchmark (``python -m cybn bench``): every contender in one process on the same
arrays, interleaved in blocks, medians and ratios; the contender is what a user would call.

Modules: :mod:`.timing` (medians, interleaving, a suite's start), :mod:`.suites` (batch norm,
the other norms, fused ops, variants, half precision, thread scaling), :mod:`.models` (whole
networks against PyTorch), :mod:`.report` (tables, plots), :mod:`.cli` (the command line).
"""

from .cli import main
from .timing import interleaved_medians, median_time

__all__ = ["main", "interleaved_medians", "median_time"]
