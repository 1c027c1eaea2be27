# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
# The kernels compiled for the 'avx2' instruction set (flags in setup.py). cybn._kernels picks
# one variant at import time; all variants share one source, _kernels_impl.pxi.

ISA = "avx2"

include "_kernels_impl.pxi"
include "_fastpath.pxi"
