# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
# The kernels compiled for the 'avx2' instruction set (flags in setup.py). cybn._kernels picks
# one variant at import time; every variant is built from the same sources (kernels.pxi).

ISA = "avx2"

include "kernels.pxi"
