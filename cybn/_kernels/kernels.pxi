# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
# Every kernel source, in dependency order; each instruction-set variant includes this file.

include "common.pxi"
include "checks.pxi"
include "stats.pxi"
include "apply.pxi"
include "grad.pxi"
include "conv.pxi"
include "pool.pxi"
include "activation.pxi"
include "masked.pxi"
include "ghost.pxi"
include "fastpath.pxi"
