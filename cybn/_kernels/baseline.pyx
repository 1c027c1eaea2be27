# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
# The kernels compiled for the 'baseline' instruction set (flags in setup.py). cybn._kernels picks
# one variant at import time; every variant is built from the same sources, included here.

ISA = "baseline"

include "common.pxi"
include "stats.pxi"
include "apply.pxi"
include "grad.pxi"
include "conv.pxi"
include "fastpath.pxi"
