# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# cybn's compiled kernels, common part: what every kernel file below relies on (imports, the
# SIMD declarations, block sizes, and how the two view families are cut into blocks).
# Each instruction-set variant (baseline.pyx, avx2.pyx, avx512.pyx) includes kernels.pxi,
# which lists every kernel file in order (this one first).
#
# Every layout reaches these kernels as a C-contiguous view (outer, C, inner) of the input,
# in one of two families:
#
#   plane family  x[outer, C, inner] (channels-first: N, C, H*W; chosen in ops/_layout.py for
#                 inner >= 32 and for small arrays). Channel c's data is `outer` contiguous
#                 runs ("planes") of `inner` elements; reductions cut each plane into blocks
#                 of about PLANE_BLOCK elements: parts of a plane, or groups of whole planes
#                 when planes are short (see plane_blocks).
#   row family    x[rows, L], L = k * C * inner with inner small (channels-last: inner == 1).
#                 Column j holds channel (j // inner) % C. Reductions cut the rows into
#                 blocks of ROW_BLOCK rows and vectorize across the columns.
#
# Determinism: reductions cut the blocks into at most MAX_CHUNKS chunks with bounds that
# depend on the shape only, never on the thread count. A chunk merges its blocks in order
# into one partial result; the partials are merged in chunk order. Which thread computes a
# chunk, and whether a thread owns whole channels (plane "owner" schedule) or threads share
# a group of channels ("cooperative" schedule), does not change any bit: any thread count and
# any schedule give bitwise identical results. Setup compiles with -ffp-contract=off, so
# every instruction-set variant gives the same bits too.
#
# Arithmetic: per-channel values, block merges (Chan's formula) and long sums are double.
# Per-element work of float32 data runs in float32 SIMD (simd_f32.h): float accumulators
# over short runs flushed into double, and the double mean split into two floats
# m_hi + m_lo so that x - m_hi is exact for data near the mean (the low part is subtracted
# next, or folded into the bias). float64 data is computed in double throughout.
#
# Streaming (non-temporal) stores: elementwise passes take a `streaming` flag; the caller
# sets it for outputs much larger than the cache (they skip the read-for-ownership of each
# output line). Each run that streamed ends with a store fence.
#
# Arguments are marked IN (read) or OUT (written); work space is allocated inside (malloc,
# O(MAX_CHUNKS * C) or O(MAX_CHUNKS * L) doubles), and running out of it raises MemoryError.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, erf, exp, isfinite, sqrt, tanh
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from cybn._openmp cimport CYBN_OPENMP_ENABLED

OPENMP_ENABLED = bool(CYBN_OPENMP_ENABLED)

cdef extern from "simd_f32.h" nogil:
    void cybn_split(double m, float* hi, float* lo)
    void cybn_f32_max_tap(const float* x, float* y, unsigned char* a, Py_ssize_t C,
                          unsigned char t)
    void cybn_f32_max_tap_back(const float* g, const unsigned char* a, float* dx,
                               Py_ssize_t C, unsigned char t)
    void cybn_store_fence()
    void cybn_f32_block_moments(const float* p, Py_ssize_t n, Py_ssize_t nplanes,
                                Py_ssize_t stride, double* mean, double* m2)
    void cybn_f32_row_grad_sums(const float* dy, const float* x, const float* w,
                                Py_ssize_t n, float mh, float ml, double* a, double* b)
    void cybn_f32_rows_grad_apply(const float* dy, const float* x, float* dx,
                                  Py_ssize_t nrows, Py_ssize_t n, const float* w,
                                  const float* mh, const float* ml, const float* inv,
                                  const float* k, double* col_xhat, double* col_dy)
    void cybn_f32_block_grad_sums(const float* g, const float* x, Py_ssize_t n,
                                  Py_ssize_t nplanes, Py_ssize_t stride, Py_ssize_t gstride,
                                  float mh, float ml, double* sum_dy, double* sum_dy_xmu)
    void cybn_f32_grad_apply(const float* g, const float* x, float* dx, Py_ssize_t n,
                             float mh, float k1, float k2, float k3, int nt)
    void cybn_f32_rows_moments(const float* x, Py_ssize_t nr, Py_ssize_t L, double* mean,
                               double* m2, const float* next, Py_ssize_t next_rows)
    void cybn_f32_rows_grad_sums(const float* g, const float* x, Py_ssize_t nr, Py_ssize_t L,
                                 const float* hi, const float* lo, double* sum_dy,
                                 double* sum_dy_xmu, float* scratch)
    # the flat functions: n elements from the pointers given, the first at tile index k0
    void cybn_f32_flat_grad_apply(const float* g, const float* x, float* dx, Py_ssize_t n,
                                  Py_ssize_t k0, Py_ssize_t W, const float* hi,
                                  const float* k1, const float* k2, const float* k3, int nt)
    # any element kind (KIND_*): float32 data as is, float16 / bfloat16 converted in registers
    enum:
        KIND_F32 "CYBN_KIND_F32"
        KIND_F16 "CYBN_KIND_F16"
        KIND_BF16 "CYBN_KIND_BF16"
    void cybn_block_grad_sums(const void* g, const void* x, Py_ssize_t n, Py_ssize_t nplanes,
                              Py_ssize_t stride, Py_ssize_t gstride, float mh, float ml,
                              double* sum_dy, double* sum_dy_xmu, int kind)
    void cybn_rows_grad_sums(const void* g, const void* x, Py_ssize_t nr, Py_ssize_t L,
                             const float* hi, const float* lo, double* sum_dy,
                             double* sum_dy_xmu, float* scratch, int kind)
    void cybn_grad_apply_k(const void* g, const void* x, void* dx, Py_ssize_t n, float mh,
                           float k1, float k2, float k3, int nt, float s, float o, int relu,
                           int kind)
    void cybn_flat_grad_apply_k(const void* g, const void* x, void* dx, Py_ssize_t n,
                                Py_ssize_t k0, Py_ssize_t W, const float* hi, const float* k1,
                                const float* k2, const float* k3, int nt, const float* s,
                                const float* o, int relu, int kind)
    # half precision, exactly: the affine value as x * S + T with split S, T (see simd_f32.h)
    void cybn_affine_d(const void* x, void* y, Py_ssize_t n, double m, double s, double o,
                       const void* r, int ep, int kind)
    void cybn_relu_mask_d(const void* dy, const void* x, const void* r, void* g, Py_ssize_t n,
                          double m, double s, double o, int ep, int kind)
    void cybn_relu_grad_apply_d(const void* g, const void* x, void* dx, Py_ssize_t n, float mh,
                                float k1, float k2, float k3, double m, double s, double o,
                                int kind)
    void cybn_exact_coef(double m, double s, double o, float* sh, float* sl, float* th,
                         float* tl)
    void cybn_flat_affine_d(const void* x, void* y, Py_ssize_t n, Py_ssize_t k0, Py_ssize_t W,
                            const float* xt, const void* r, int ep, int kind)
    void cybn_flat_relu_mask_d(const void* dy, const void* x, const void* r, float* g,
                               Py_ssize_t n, Py_ssize_t k0, Py_ssize_t W, const float* xt,
                               int ep, int kind)
    void cybn_flat_relu_grad_apply_d(const void* g, const void* x, void* dx, Py_ssize_t n,
                                     Py_ssize_t k0, Py_ssize_t W, const float* hi,
                                     const float* k1, const float* k2, const float* k3,
                                     const float* xt, int kind)
    # fused ReLU / residual (see simd_f32.h)
    enum:
        EP_RESIDUAL "CYBN_EP_RESIDUAL"
        EP_RELU "CYBN_EP_RELU"
    void cybn_f32_affine_ep(const float* x, float* y, Py_ssize_t n, float mh, float scale,
                            float offset, int nt, const float* r, int ep)
    void cybn_f32_flat_affine_ep(const float* x, float* y, Py_ssize_t n, Py_ssize_t k0,
                                 Py_ssize_t W, const float* hi, const float* scale,
                                 const float* offset, int nt, const float* r, int ep)
    void cybn_f32_relu_mask(const float* dy, const float* x, const float* r, float* g,
                            Py_ssize_t n, float mh, float s, float o, int ep)
    void cybn_f32_flat_relu_mask(const float* dy, const float* x, const float* r, float* g,
                                 Py_ssize_t n, Py_ssize_t k0, Py_ssize_t W, const float* hi,
                                 const float* s, const float* o, int ep)
    void cybn_f32_relu_grad_apply(const float* g, const float* x, float* dx, Py_ssize_t n,
                                  float mh, float k1, float k2, float k3, int nt, float s,
                                  float o)
    void cybn_f32_flat_relu_grad_apply(const float* g, const float* x, float* dx,
                                       Py_ssize_t n, Py_ssize_t k0, Py_ssize_t W,
                                       const float* hi, const float* k1, const float* k2,
                                       const float* k3, int nt, const float* s, const float* o)

cdef extern from "half.h" nogil:
    # half-precision storage: 16-bit words, converted to float32 for the work (half.h)
    ctypedef struct cybn_f16:
        unsigned short bits
    ctypedef struct cybn_bf16:
        unsigned short bits
    enum:
        HALF_F16 "CYBN_HALF_F16"
        HALF_BF16 "CYBN_HALF_BF16"
    void cybn_half_load(const void* src, float* dst, Py_ssize_t n, int kind)
    void cybn_half_store(const float* src, void* dst, Py_ssize_t n, int kind)

# The element types of the batch norm kernels: float32 and float64 data worked on directly,
# float16 and bfloat16 data converted run by run into float32 scratch.
ctypedef fused storage:
    float
    double
    cybn_f16
    cybn_bf16


cdef inline void half_load(const storage* src, float* dst, Py_ssize_t n) noexcept nogil:
    """dst[0:n] = src[0:n] as float32 (half-precision storage only)."""
    if storage is cybn_f16:
        cybn_half_load(src, dst, n, HALF_F16)
    elif storage is cybn_bf16:
        cybn_half_load(src, dst, n, HALF_BF16)


cdef inline int kind_of(const storage* p) noexcept nogil:
    """The SIMD kernels' element kind of float32 / float16 / bfloat16 data."""
    if storage is cybn_f16:
        return KIND_F16
    elif storage is cybn_bf16:
        return KIND_BF16
    return KIND_F32


cdef inline void half_store(const float* src, storage* dst, Py_ssize_t n) noexcept nogil:
    """dst[0:n] = src[0:n] rounded to nearest even (half-precision storage only)."""
    if storage is cybn_f16:
        cybn_half_store(src, dst, n, HALF_F16)
    elif storage is cybn_bf16:
        cybn_half_store(src, dst, n, HALF_BF16)


def half_from_float(const float[::1] src,         # IN  (n,)
                    unsigned short[::1] dst,      # OUT (n,) float16 (kind 0) or bfloat16 words
                    int kind):
    """The kernels' float32 -> half conversion (for tests)."""
    need_len("dst", dst.shape[0], src.shape[0])
    need(kind == 0 or kind == 1, "kind must be 0 or 1")
    if src.shape[0]:
        cybn_half_store(&src[0], &dst[0], src.shape[0], kind)


def half_to_float(const unsigned short[::1] src,  # IN  (n,) float16 (kind 0) or bfloat16 words
                  float[::1] dst,                 # OUT (n,)
                  int kind):
    """The kernels' half -> float32 conversion (for tests)."""
    need_len("dst", dst.shape[0], src.shape[0])
    need(kind == 0 or kind == 1, "kind must be 0 or 1")
    if src.shape[0]:
        cybn_half_load(&src[0], &dst[0], src.shape[0], kind)


cdef enum:
    LANES = 16            # independent accumulators in a double block reduction
    PLANE_BLOCK = 4096    # elements per reduction block in the plane family (fits L1)
    ROW_BLOCK = 32        # rows per reduction block in the row family
    MAX_CHUNKS = 16       # reductions run as at most this many independent chunks
    ELEMENT_ITEM = 65536  # elements per work item of the row family's elementwise passes

# the fused epilogue bits, for the Python side
EP_RESIDUAL_BIT = EP_RESIDUAL
EP_RELU_BIT = EP_RELU


cdef inline Py_ssize_t chunk_start(Py_ssize_t n, Py_ssize_t nchunks,
                                   Py_ssize_t i) noexcept nogil:
    """First index of chunk i when [0, n) is cut into nchunks near-equal chunks."""
    return (n * i) // nchunks


# ---------------------------------------------------------------------------------------
# Plane family: x[outer, C, inner]; channel c is the planes x[o, c, :].
#
# Two schedules, the same bits:
#   owner        (group == 0) a thread owns whole channels and runs reduce -> coefficients
#                -> elementwise on one channel while its data is still in cache;
#   cooperative  (group > 0) channels are taken `group` at a time; all threads share the
#                reduction of a group (work items = (chunk, channel)), then its elementwise
#                pass (work items = (plane, block)).
# ---------------------------------------------------------------------------------------

cdef struct PlaneBlocks:
    # How a channel's data x[:, c, :] is cut into reduction blocks of about PLANE_BLOCK
    # elements: parts of one plane (inner >= PLANE_BLOCK; per_plane blocks per plane), or
    # groups of whole planes (planes blocks of `planes` planes each).
    Py_ssize_t per_plane
    Py_ssize_t planes
    Py_ssize_t count     # blocks per channel


cdef inline PlaneBlocks plane_blocks(Py_ssize_t outer, Py_ssize_t inner) noexcept nogil:
    cdef PlaneBlocks b
    if inner >= PLANE_BLOCK:
        b.per_plane = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
        b.planes = 1
        b.count = outer * b.per_plane
    else:
        b.per_plane = 1
        b.planes = PLANE_BLOCK // inner
        b.count = (outer + b.planes - 1) // b.planes
    return b


cdef inline Py_ssize_t block_span(PlaneBlocks b, Py_ssize_t outer, Py_ssize_t C,
                                  Py_ssize_t inner, Py_ssize_t q, Py_ssize_t c,
                                  Py_ssize_t* length, Py_ssize_t* nplanes) noexcept nogil:
    """Offset of block q of channel c; its run length and number of runs (planes)."""
    cdef Py_ssize_t o, start
    if b.planes == 1:
        o = q // b.per_plane
        start = (q % b.per_plane) * PLANE_BLOCK
        length[0] = min(<Py_ssize_t>PLANE_BLOCK, inner - start)
        nplanes[0] = 1
        return (o * C + c) * inner + start
    o = q * b.planes
    length[0] = inner
    nplanes[0] = min(b.planes, outer - o)
    return (o * C + c) * inner


# ---------------------------------------------------------------------------------------
# Row family: x[rows, L]; column j belongs to channel (j // inner) % C.
# Reductions: blocks of ROW_BLOCK rows, per-column results, chunks merged in order, then
# columns folded into channels in column order. Elementwise passes: one flat loop over a
# range of elements with per-column constants tiled so that a vector never wraps.
# ---------------------------------------------------------------------------------------

cdef enum:
    ROW_GROUP = 4         # rows folded into the column accumulators per update
    ROW_RUN = 512         # float64 elementwise: coefficients tiled over runs this long


cdef inline Py_ssize_t tile_period(Py_ssize_t L) noexcept nogil:
    """Smallest multiple of L that is a multiple of 8 and at least 64: the period, in
    elements, of the float32 elementwise constants."""
    cdef Py_ssize_t W = L
    while W % 8 != 0:
        W += L
    while W < 64:
        W *= 2
    return W


cdef inline Py_ssize_t row_group(Py_ssize_t L) noexcept nogil:
    """Rows the float64 elementwise row kernels treat as one flat run."""
    return max(<Py_ssize_t>1, <Py_ssize_t>ROW_RUN // L)


# ---------------------------------------------------------------------------------------
# Samples: the per-sample norms (group, instance) run a family's kernel on each sample
# x[n] of an array (N, size), with per-(sample, channel) results. Samples are spread over
# the threads, one parallel region for all (with a passive OpenMP wait policy every region
# costs a wake-up of each thread), unless there are too few samples to share evenly: then
# they run one after another, each with all threads. The bits are the same either way (a
# kernel's result never depends on its thread count).
# ---------------------------------------------------------------------------------------

cdef enum:
    SAMPLE_SPLIT = 65536  # samples with fewer elements are always spread over the threads


cdef inline int sample_threads(Py_ssize_t N, Py_ssize_t size, int num_threads,
                               int* inside) noexcept nogil:
    """Threads across samples (returned) and inside each sample (*inside): one of them is 1."""
    if N > 1 and num_threads > 1 and (size < SAMPLE_SPLIT or N >= 4 * num_threads
                                      or (N >= num_threads and N % num_threads == 0)):
        inside[0] = 1
        return num_threads
    inside[0] = num_threads
    return 1


cdef inline void column_table(double* dst, const double* per_channel, Py_ssize_t W,
                              Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner) noexcept nogil:
    """dst[i] = per_channel[the channel of column i] for the W columns of a row-family
    table (rows of L = k * C * inner columns)."""
    cdef Py_ssize_t i = 0, c = 0, j, n
    while i < W:  # one channel's run of inner columns at a time (rows are whole runs)
        n = min(inner, W - i)
        for j in range(i, i + n):
            dst[j] = per_channel[c]
        i += n
        c = c + 1 if c + 1 < C else 0


cdef inline void affine_tiles(float* ft, Py_ssize_t P, Py_ssize_t C, Py_ssize_t inner,
                              const double* shift, const double* scale,
                              const double* offset) noexcept nogil:
    """The float32 tiles of the affine (x - shift) * scale + offset over P columns of a
    row-family table (rows are whole channel runs): hi of the split shift, scale, and
    offset - lo * scale, 3 arrays of P floats. Worked out once per channel run (per
    column, the split took 3 us of a 4 us call on (6, 48, 4, 5))."""
    cdef Py_ssize_t i = 0, c = 0, j, n
    cdef float hi, lo, s, o
    while i < P:
        n = min(inner, P - i)
        cybn_split(shift[c], &hi, &lo)
        s = <float>scale[c]
        o = <float>(offset[c] - <double>lo * scale[c])
        for j in range(i, i + n):
            ft[j] = hi
            ft[P + j] = s
            ft[2 * P + j] = o
        i += n
        c = c + 1 if c + 1 < C else 0


cdef inline void exact_tiles(float* xt, Py_ssize_t W, Py_ssize_t L, Py_ssize_t C,
                             Py_ssize_t inner, const double* shift, const double* scale,
                             const double* offset) noexcept nogil:
    """The tiles of the exact half-precision affine value (simd_f32.h): S_hi, S_lo, T_hi,
    T_lo of each column's channel, 4 arrays of W + 8 floats."""
    cdef Py_ssize_t i = 0, c = 0, j, n, P = W + 8
    while i < P:  # one channel's run at a time, its coefficients worked out once
        n = min(inner, P - i)
        cybn_exact_coef(shift[c], scale[c], offset[c], &xt[i], &xt[P + i], &xt[2 * P + i],
                        &xt[3 * P + i])
        for j in range(i + 1, i + n):
            xt[j] = xt[i]
            xt[P + j] = xt[P + i]
            xt[2 * P + j] = xt[2 * P + i]
            xt[3 * P + j] = xt[3 * P + i]
        i += n
        c = c + 1 if c + 1 < C else 0
