# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
# Every kernel source, grouped by op, in dependency order: the one include list. Each
# instruction-set variant (baseline.pyx, avx2.pyx, avx512.pyx) includes this file.

include "common.pxi"       # imports, SIMD declarations, half-precision storage, block layouts
include "checks.pxi"       # the argument checks of every entry point
include "bn_stats.pxi"     # batch-norm statistics: moments, merges, running update, masks
include "bn_forward.pxi"   # batch-norm forward: affine passes, training forward, ghost batches
include "bn_backward.pxi"  # batch-norm backward: gradient sums and passes, masks, ghosts
include "bn_entries.pxi"   # their entry points, float and half (rendered from a template)
include "norms.pxi"        # group, instance, layer and RMS norm
include "gemm.pxi"         # matrix products (Linear, convolutions)
include "conv.pxi"         # depthwise convolution, im2col / col2im
include "pool.pxi"         # max and average pooling
include "activation.pxi"   # ReLU
include "channels.pxi"     # channel routing: concatenation, split, shuffle
include "fastpath.pxi"     # one compiled call for small batch-norm arrays
