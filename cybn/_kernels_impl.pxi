# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# cybn's compiled kernels. Included by each instruction-set variant (_kernels_<isa>.pyx).
#
# Every layout reaches these kernels as a C-contiguous view (outer, C, inner) of the input,
# in one of two families:
#
#   plane family  x[outer, C, inner] (channels-first: N, C, H*W; chosen in _validate.py for
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
# Per-element work of float32 data runs in float32 SIMD (_simd_f32.h): float accumulators
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
from libc.math cimport isfinite, sqrt
from libc.stdlib cimport free, malloc

from cybn._openmp cimport CYBN_OPENMP_ENABLED

OPENMP_ENABLED = bool(CYBN_OPENMP_ENABLED)

cdef extern from "_simd_f32.h" nogil:
    void cybn_split(double m, float* hi, float* lo)
    void cybn_store_fence()
    void cybn_f32_block_moments(const float* p, Py_ssize_t n, Py_ssize_t nplanes,
                                Py_ssize_t stride, double* mean, double* m2)
    void cybn_f32_block_grad_sums(const float* g, const float* x, Py_ssize_t n,
                                  Py_ssize_t nplanes, Py_ssize_t stride, float mh, float ml,
                                  double* sum_dy, double* sum_dy_xmu)
    void cybn_f32_affine(const float* x, float* y, Py_ssize_t n, float mh, float scale,
                         float offset, int nt)
    void cybn_f32_grad_apply(const float* g, const float* x, float* dx, Py_ssize_t n,
                             float mh, float k1, float k2, float k3, int nt)
    void cybn_f32_rows_moments(const float* x, Py_ssize_t nr, Py_ssize_t L, double* mean,
                               double* m2, const float* next, Py_ssize_t next_rows)
    void cybn_f32_rows_grad_sums(const float* g, const float* x, Py_ssize_t nr, Py_ssize_t L,
                                 const float* hi, const float* lo, double* sum_dy,
                                 double* sum_dy_xmu, float* scratch)
    void cybn_f32_flat_affine(const float* x, float* y, Py_ssize_t e0, Py_ssize_t e1,
                              Py_ssize_t W, const float* hi, const float* scale,
                              const float* offset, int nt)
    void cybn_f32_flat_grad_apply(const float* g, const float* x, float* dx, Py_ssize_t e0,
                                  Py_ssize_t e1, Py_ssize_t W, const float* hi,
                                  const float* k1, const float* k2, const float* k3, int nt)

cdef enum:
    LANES = 16            # independent accumulators in a double block reduction
    PLANE_BLOCK = 4096    # elements per reduction block in the plane family (fits L1)
    ROW_BLOCK = 32        # rows per reduction block in the row family
    MAX_CHUNKS = 16       # reductions run as at most this many independent chunks
    ELEMENT_ITEM = 65536  # elements per work item of the row family's elementwise passes


cdef inline Py_ssize_t chunk_start(Py_ssize_t n, Py_ssize_t nchunks,
                                   Py_ssize_t i) noexcept nogil:
    """First index of chunk i when [0, n) is cut into nchunks near-equal chunks."""
    return (n * i) // nchunks


cdef inline double merge_one(double count, double count_b, double* mean, double* m2,
                             double mean_b, double m2_b) noexcept nogil:
    """Fold one block's (count_b, mean_b, m2_b) into (count, mean, m2); returns the count."""
    cdef double total = count + count_b
    cdef double delta = mean_b - mean[0]
    if count == 0.0:  # (0 * delta**2 would be NaN for means beyond 1e154)
        mean[0] = mean_b
        m2[0] = m2_b
    elif isfinite(delta):
        mean[0] = mean[0] + delta * (count_b / total)
        m2[0] = m2[0] + m2_b + delta * delta * (count * count_b / total)
    else:  # means of opposite sign near the float64 limit: a weighted mean cannot overflow
        mean[0] = mean[0] * (count / total) + mean_b * (count_b / total)
        m2[0] = m2[0] + m2_b + delta * delta
    return total


# ---------------------------------------------------------------------------------------
# Block helpers in double (float64 data), one block, no Python objects.
# ---------------------------------------------------------------------------------------

cdef inline double scaled_mean(const floating* p, Py_ssize_t n) noexcept nogil:
    """sum(p[i] / n): slower and less exact than the two-pass sum, but it cannot overflow
    for finite data (a fallback for data near the float64 limit)."""
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += <double>p[i] / <double>n
    return s


cdef inline void block_moments(const floating* p, Py_ssize_t n,
                               double* mean, double* m2) noexcept nogil:
    """Mean and sum of squared deviations of p[0:n] (n >= 1), two passes, in double.

    The first pass sums p[i] - p[0], so a constant block has exactly mean p[0] and m2 0.
    """
    cdef double acc[LANES]
    cdef Py_ssize_t i, j
    cdef Py_ssize_t nfull = n - n % LANES
    cdef double s = 0.0, m, d, first = <double>p[0]
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(nfull // LANES):
        for j in range(LANES):
            acc[j] += <double>p[i * LANES + j] - first
    for j in range(LANES):
        s += acc[j]
    for i in range(nfull, n):
        s += <double>p[i] - first
    m = first + s / <double>n
    if not isfinite(m):  # differences beyond the float64 range (data near +-1e308)
        m = scaled_mean(p, n)

    for j in range(LANES):
        acc[j] = 0.0
    for i in range(nfull // LANES):
        for j in range(LANES):
            d = <double>p[i * LANES + j] - m
            acc[j] += d * d
    s = 0.0
    for j in range(LANES):
        s += acc[j]
    for i in range(nfull, n):
        d = <double>p[i] - m
        s += d * d
    mean[0] = m
    m2[0] = s


cdef inline double merge_moments(double count, double count_b, Py_ssize_t C,
                                 double* mean, double* m2, const double* mean_b,
                                 const double* m2_b, Py_ssize_t stride_b) noexcept nogil:
    """Fold block statistics of C channels into (mean, m2): Chan et al.'s pairwise formula.

    Every channel has seen ``count`` values so far and the block adds ``count_b`` to each,
    so the divisions are shared and the loop over channels vectorizes. Block values for
    channel c are mean_b[c * stride_b], m2_b[c * stride_b]. Returns the new count.
    """
    cdef double total = count + count_b
    cdef double f_mean = count_b / total
    cdef double f_m2 = count * count_b / total
    cdef double delta
    cdef Py_ssize_t c
    if count == 0.0:  # the first block: (0 * delta**2 would be NaN for means beyond 1e154)
        for c in range(C):
            mean[c] = mean_b[c * stride_b]
            m2[c] = m2_b[c * stride_b]
        return total
    for c in range(C):
        delta = mean_b[c * stride_b] - mean[c]
        if isfinite(delta):
            mean[c] = mean[c] + delta * f_mean
            m2[c] = m2[c] + m2_b[c * stride_b] + delta * delta * f_m2
        else:  # as in merge_one
            merge_one(count, count_b, &mean[c], &m2[c], mean_b[c * stride_b],
                      m2_b[c * stride_b])
    return total


cdef inline void block_grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                                 double mean, double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """sum(dy) and sum(dy * (x - mean)) over one block, in double.

    Two loops with one lane array each: gcc vectorizes that form, not two arrays in one loop.
    """
    cdef double acc[LANES]
    cdef Py_ssize_t i, j
    cdef Py_ssize_t nfull = n - n % LANES
    cdef double s = 0.0
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(nfull // LANES):
        for j in range(LANES):
            acc[j] += <double>dy[i * LANES + j]
    for j in range(LANES):
        s += acc[j]
    for i in range(nfull, n):
        s += <double>dy[i]
    sum_dy[0] = s

    s = 0.0
    for j in range(LANES):
        acc[j] = 0.0
    for i in range(nfull // LANES):
        for j in range(LANES):
            acc[j] += <double>dy[i * LANES + j] * (<double>x[i * LANES + j] - mean)
    for j in range(LANES):
        s += acc[j]
    for i in range(nfull, n):
        s += <double>dy[i] * (<double>x[i] - mean)
    sum_dy_xmu[0] = s


cdef inline void block_affine(const floating* x, floating* y, Py_ssize_t n,
                              double shift, double scale, double offset) noexcept nogil:
    """y = (x - shift) * scale + offset over one block."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = <floating>((<double>x[i] - shift) * scale + offset)


cdef inline void block_grad_apply(const floating* dy, const floating* x, floating* dx,
                                  Py_ssize_t n, double mean, double k1, double k2,
                                  double k3) noexcept nogil:
    """dx = k1 * dy + k2 * (x - mean) + k3 over one block."""
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = <floating>(k1 * <double>dy[i] + k2 * (<double>x[i] - mean) + k3)


cdef inline void train_coefficients(double count, double m2, double eps, double weight,
                                    double* var, double* invstd, double* scale) noexcept nogil:
    """Biased variance, 1 / sqrt(var + eps) and the scale weight * invstd of one channel."""
    var[0] = m2 / count
    invstd[0] = 1.0 / sqrt(var[0] + eps)
    scale[0] = weight * invstd[0]


cdef inline void grad_coefficients(double count, double sum_dy, double sum_dy_xmu,
                                   double invstd, double weight, bint training,
                                   double* k1, double* k2, double* k3) noexcept nogil:
    """Coefficients of dx = k1 * dy + k2 * (x - mean) + k3 for one channel."""
    k1[0] = weight * invstd
    if training:
        k2[0] = -k1[0] * invstd * invstd * (sum_dy_xmu / count)
        k3[0] = -k1[0] * (sum_dy / count)
    else:
        k2[0] = 0.0
        k3[0] = 0.0

# ---------------------------------------------------------------------------------------
# Runs: one contiguous run of one channel, dispatched on the data type.
# ---------------------------------------------------------------------------------------

cdef inline void run_moments(const floating* p, Py_ssize_t n, Py_ssize_t nplanes,
                             Py_ssize_t stride, double* mean, double* m2) noexcept nogil:
    """(mean, M2) of one block: nplanes runs of n elements, stride elements apart."""
    cdef double count = 0.0, bmean, bm2
    cdef Py_ssize_t k
    if floating is float:
        cybn_f32_block_moments(p, n, nplanes, stride, mean, m2)
    else:
        mean[0] = 0.0
        m2[0] = 0.0
        for k in range(nplanes):
            block_moments(p + k * stride, n, &bmean, &bm2)
            count = merge_one(count, <double>n, mean, m2, bmean, bm2)


cdef inline void run_grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                               Py_ssize_t nplanes, Py_ssize_t stride, double mean,
                               double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """sum(dy), sum(dy * (x - mean)) of one block: nplanes runs of n, stride apart."""
    cdef float hi, lo
    cdef double a, b
    cdef Py_ssize_t k
    if floating is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_block_grad_sums(dy, x, n, nplanes, stride, hi, lo, sum_dy, sum_dy_xmu)
    else:
        sum_dy[0] = 0.0
        sum_dy_xmu[0] = 0.0
        for k in range(nplanes):
            block_grad_sums(dy + k * stride, x + k * stride, n, mean, &a, &b)
            sum_dy[0] = sum_dy[0] + a
            sum_dy_xmu[0] = sum_dy_xmu[0] + b


cdef inline void run_affine(const floating* x, floating* y, Py_ssize_t n, double shift,
                            double scale, double offset, int streaming) noexcept nogil:
    """y = (x - shift) * scale + offset; float32: (x - hi) * scale + (offset - lo * scale)."""
    cdef float hi, lo
    if floating is float:
        cybn_split(shift, &hi, &lo)
        cybn_f32_affine(x, y, n, hi, <float>scale, <float>(offset - <double>lo * scale),
                        streaming)
        if streaming:
            cybn_store_fence()
    else:
        block_affine(x, y, n, shift, scale, offset)


cdef inline void run_grad_apply(const floating* dy, const floating* x, floating* dx,
                                Py_ssize_t n, double mean, double k1, double k2, double k3,
                                int streaming) noexcept nogil:
    """dx = k1 * dy + k2 * (x - mean) + k3 (float32: the low part of mean folded into k3)."""
    cdef float hi, lo
    if floating is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_grad_apply(dy, x, dx, n, hi, <float>k1, <float>k2,
                            <float>(k3 - k2 * <double>lo), streaming)
        if streaming:
            cybn_store_fence()
    else:
        block_grad_apply(dy, x, dx, n, mean, k1, k2, k3)


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


cdef inline void plane_chunk_moments(const floating* x, Py_ssize_t outer, Py_ssize_t C,
                                     Py_ssize_t inner, PlaneBlocks blocks, Py_ssize_t q0,
                                     Py_ssize_t q1, Py_ssize_t c, double* out) noexcept nogil:
    """out = (count, mean, M2) of channel c over its blocks q0 <= q < q1, merged in order."""
    cdef double count = 0.0, mean = 0.0, m2 = 0.0, bmean, bm2
    cdef Py_ssize_t q, off, length, nplanes
    for q in range(q0, q1):
        off = block_span(blocks, outer, C, inner, q, c, &length, &nplanes)
        run_moments(x + off, length, nplanes, C * inner, &bmean, &bm2)
        count = merge_one(count, <double>(length * nplanes), &mean, &m2, bmean, bm2)
    out[0] = count
    out[1] = mean
    out[2] = m2


cdef inline void plane_chunk_grad_sums(const floating* dy, const floating* x, Py_ssize_t outer,
                                       Py_ssize_t C, Py_ssize_t inner, PlaneBlocks blocks,
                                       Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t c, double mean,
                                       double* out) noexcept nogil:
    """out = (sum dy, sum dy * (x - mean)) of channel c over its blocks q0 <= q < q1."""
    cdef double a = 0.0, b = 0.0, ba, bb
    cdef Py_ssize_t q, off, length, nplanes
    for q in range(q0, q1):
        off = block_span(blocks, outer, C, inner, q, c, &length, &nplanes)
        run_grad_sums(dy + off, x + off, length, nplanes, C * inner, mean, &ba, &bb)
        a = a + ba
        b = b + bb
    out[0] = a
    out[1] = b


cdef inline void plane_finish_moments(const double* part, Py_ssize_t nq, double* mean,
                                      double* m2) noexcept nogil:
    """Merge a channel's nq chunk partials (count, mean, M2) in chunk order."""
    cdef double count = 0.0
    cdef Py_ssize_t qi
    mean[0] = 0.0
    m2[0] = 0.0
    for qi in range(nq):
        count = merge_one(count, part[3 * qi], mean, m2, part[3 * qi + 1], part[3 * qi + 2])


cdef inline void plane_finish_sums(const double* part, Py_ssize_t nq, double* a,
                                   double* b) noexcept nogil:
    """Add a channel's nq chunk partial sums in chunk order."""
    cdef Py_ssize_t qi
    a[0] = 0.0
    b[0] = 0.0
    for qi in range(nq):
        a[0] = a[0] + part[2 * qi]
        b[0] = b[0] + part[2 * qi + 1]


cdef inline int plane_moments_core(const floating* x, Py_ssize_t outer, Py_ssize_t C,
                                   Py_ssize_t inner, double* mean, double* m2,
                                   int num_threads) noexcept nogil:
    """Per-channel (mean, M2), all threads sharing the work; -1 if out of memory."""
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t item, qi, c
    cdef double* part = <double*>malloc(3 * nq * C * sizeof(double))
    if part == NULL:
        return -1
    for item in prange(nq * C, schedule='static', num_threads=num_threads):
        qi = item // C
        c = item % C
        plane_chunk_moments(x, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                            chunk_start(Q, nq, qi + 1), c, part + 3 * (c * nq + qi))
    for c in range(C):
        plane_finish_moments(part + 3 * c * nq, nq, &mean[c], &m2[c])
    free(part)
    return 0


def plane_moments(const floating[:, :, ::1] x,      # IN  (outer, C, inner), nonempty
                  double[::1] mean,                # OUT (C,)
                  double[::1] m2,                  # OUT (C,) sum of squared deviations
                  int num_threads):
    """Per-channel mean and M2 of a plane-family view."""
    cdef int status
    with nogil:
        status = plane_moments_core(&x[0, 0, 0], x.shape[0], x.shape[1], x.shape[2], &mean[0],
                                    &m2[0], num_threads)
    if status != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


def plane_infer(const floating[:, :, ::1] x,       # IN  (outer, C, inner), nonempty
                const double[::1] shift,           # IN  (C,)
                const double[::1] scale,           # IN  (C,)
                const double[::1] offset,          # IN  (C,)
                floating[:, :, ::1] y,             # OUT (outer, C, inner); may be x itself
                bint streaming,
                int num_threads):
    """y = (x - shift[c]) * scale[c] + offset[c], work items of one block each."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t item, plane, c, start, off
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    with nogil:
        for item in prange(outer * C * nblocks, schedule='static', num_threads=num_threads):
            plane = item // nblocks
            c = plane % C
            start = (item % nblocks) * PLANE_BLOCK
            off = plane * inner + start
            run_affine(xp + off, yp + off, min(<Py_ssize_t>PLANE_BLOCK, inner - start),
                       shift[c], scale[c], offset[c], streaming)


def plane_train_forward(const floating[:, :, ::1] x,   # IN  (outer, C, inner), nonempty
                        const double[::1] weight,      # IN  (C,)
                        const double[::1] bias,        # IN  (C,)
                        double eps,
                        floating[:, :, ::1] y,         # OUT (outer, C, inner); may be x itself
                        double[::1] mean,              # OUT (C,) batch mean
                        double[::1] var,               # OUT (C,) biased batch variance
                        double[::1] invstd,            # OUT (C,) 1 / sqrt(var + eps)
                        Py_ssize_t group,              # channels per cooperative group; 0: owner
                        bint streaming,
                        int num_threads):
    """Training forward: batch statistics, then y = (x - mean) * weight * invstd + bias."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t c, c0, gi, gc, qi, o, item, plane, start, off
    cdef double count = <double>outer * <double>inner
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    cdef double* part = <double*>malloc((3 * nq * C + C) * sizeof(double))
    cdef double* scale
    if part == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    scale = part + 3 * nq * C
    with nogil:
        if group <= 0:
            for c in prange(C, schedule='dynamic', num_threads=num_threads):
                for qi in range(nq):
                    plane_chunk_moments(xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                        chunk_start(Q, nq, qi + 1), c, part + 3 * (c * nq + qi))
                plane_finish_moments(part + 3 * c * nq, nq, &mean[c], &var[c])
                train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c],
                                   &scale[c])
                for o in range(outer):
                    off = (o * C + c) * inner
                    run_affine(xp + off, yp + off, inner, mean[c], scale[c], bias[c],
                               streaming)
        else:
            for gi in range((C + group - 1) // group):
                c0 = gi * group
                gc = min(group, C - c0)
                for item in prange(nq * gc, schedule='static', num_threads=num_threads):
                    qi = item // gc
                    c = c0 + item % gc
                    plane_chunk_moments(xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                        chunk_start(Q, nq, qi + 1), c, part + 3 * (c * nq + qi))
                for c in range(c0, c0 + gc):
                    plane_finish_moments(part + 3 * c * nq, nq, &mean[c], &var[c])
                    train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c],
                                       &scale[c])
                for item in prange(outer * gc * nblocks, schedule='static',
                                   num_threads=num_threads):
                    plane = item // nblocks
                    o = plane // gc
                    c = c0 + plane % gc
                    start = (item % nblocks) * PLANE_BLOCK
                    off = (o * C + c) * inner + start
                    run_affine(xp + off, yp + off, min(<Py_ssize_t>PLANE_BLOCK, inner - start),
                               mean[c], scale[c], bias[c], streaming)
    free(part)


def plane_backward(const floating[:, :, ::1] dy,       # IN  (outer, C, inner), nonempty
                   const floating[:, :, ::1] x,        # IN  (outer, C, inner)
                   const double[::1] mean,             # IN  (C,)
                   const double[::1] invstd,           # IN  (C,)
                   const double[::1] weight,           # IN  (C,)
                   bint training,
                   floating[:, :, ::1] dx,             # OUT (outer, C, inner); may be dy or x
                   double[::1] sum_dy,                 # OUT (C,) sum of dy
                   double[::1] sum_dy_xmu,             # OUT (C,) sum of dy * (x - mean)
                   Py_ssize_t group,                   # as in plane_train_forward
                   bint streaming,
                   int num_threads):
    """Backward: gradient sums, then dx = k1 * dy + k2 * (x - mean) + k3, per channel."""
    cdef Py_ssize_t outer = dy.shape[0], C = dy.shape[1], inner = dy.shape[2]
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t c, c0, gi, gc, qi, o, item, plane, start, off
    cdef double count = <double>outer * <double>inner
    cdef const floating* gp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    cdef double* part = <double*>malloc((2 * nq * C + 3 * C) * sizeof(double))
    cdef double* coef
    if part == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    coef = part + 2 * nq * C   # k1, k2, k3 of channel c at coef[3c:3c+3]
    with nogil:
        if group <= 0:
            for c in prange(C, schedule='dynamic', num_threads=num_threads):
                for qi in range(nq):
                    plane_chunk_grad_sums(gp, xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                          chunk_start(Q, nq, qi + 1), c, mean[c],
                                          part + 2 * (c * nq + qi))
                plane_finish_sums(part + 2 * c * nq, nq, &sum_dy[c], &sum_dy_xmu[c])
                grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c],
                                  training, &coef[3 * c], &coef[3 * c + 1], &coef[3 * c + 2])
                for o in range(outer):
                    off = (o * C + c) * inner
                    run_grad_apply(gp + off, xp + off, dp + off, inner, mean[c], coef[3 * c],
                                   coef[3 * c + 1], coef[3 * c + 2], streaming)
        else:
            for gi in range((C + group - 1) // group):
                c0 = gi * group
                gc = min(group, C - c0)
                for item in prange(nq * gc, schedule='static', num_threads=num_threads):
                    qi = item // gc
                    c = c0 + item % gc
                    plane_chunk_grad_sums(gp, xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                          chunk_start(Q, nq, qi + 1), c, mean[c],
                                          part + 2 * (c * nq + qi))
                for c in range(c0, c0 + gc):
                    plane_finish_sums(part + 2 * c * nq, nq, &sum_dy[c], &sum_dy_xmu[c])
                    grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c],
                                      training, &coef[3 * c], &coef[3 * c + 1],
                                      &coef[3 * c + 2])
                for item in prange(outer * gc * nblocks, schedule='static',
                                   num_threads=num_threads):
                    plane = item // nblocks
                    o = plane // gc
                    c = c0 + plane % gc
                    start = (item % nblocks) * PLANE_BLOCK
                    off = (o * C + c) * inner + start
                    run_grad_apply(gp + off, xp + off, dp + off,
                                   min(<Py_ssize_t>PLANE_BLOCK, inner - start), mean[c],
                                   coef[3 * c], coef[3 * c + 1], coef[3 * c + 2], streaming)
    free(part)


# ---------------------------------------------------------------------------------------
# Row family: x[rows, L]; column j belongs to channel (j // inner) % C.
# Reductions: blocks of ROW_BLOCK rows, per-column results, chunks merged in order, then
# columns folded into channels in column order. Elementwise passes: one flat loop over a
# range of elements with per-column constants tiled so that a vector never wraps.
# ---------------------------------------------------------------------------------------

cdef enum:
    ROW_GROUP = 4         # rows folded into the column accumulators per update
    ROW_RUN = 512         # float64 elementwise: coefficients tiled over runs this long


cdef inline void row_block_moments(const floating* x, Py_ssize_t nrows, Py_ssize_t L,
                                   double* mean, double* m2) noexcept nogil:
    """Per-column mean and M2 of rows x[0:nrows, 0:L], two passes, vectorized over columns.

    Rows are read in order; each update of the column accumulators adds a group of
    ROW_GROUP rows (summed pairwise first), which quarters the accumulator traffic. The
    first pass sums x[r, j] - x[0, j], so a constant column has exactly mean x[0, j], m2 0.
    """
    cdef Py_ssize_t r, j, ngroups = nrows // ROW_GROUP
    cdef const floating* a
    cdef const floating* b
    cdef const floating* c
    cdef const floating* e
    cdef double d0, d1, d2, d3
    for j in range(L):
        mean[j] = 0.0
        m2[j] = 0.0
    for r in range(ngroups):
        a = x + (r * ROW_GROUP) * L
        b = a + L
        c = b + L
        e = c + L
        for j in range(L):
            mean[j] += (((<double>a[j] - <double>x[j]) + (<double>b[j] - <double>x[j]))
                        + ((<double>c[j] - <double>x[j]) + (<double>e[j] - <double>x[j])))
    for r in range(ngroups * ROW_GROUP, nrows):
        a = x + r * L
        for j in range(L):
            mean[j] += <double>a[j] - <double>x[j]
    for j in range(L):
        mean[j] = <double>x[j] + mean[j] / <double>nrows
        if not isfinite(mean[j]):  # data near +-1e308 (see scaled_mean)
            mean[j] = 0.0
            for r in range(nrows):
                mean[j] += <double>x[r * L + j] / <double>nrows
    for r in range(ngroups):
        a = x + (r * ROW_GROUP) * L
        b = a + L
        c = b + L
        e = c + L
        for j in range(L):
            d0 = <double>a[j] - mean[j]
            d1 = <double>b[j] - mean[j]
            d2 = <double>c[j] - mean[j]
            d3 = <double>e[j] - mean[j]
            m2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for r in range(ngroups * ROW_GROUP, nrows):
        a = x + r * L
        for j in range(L):
            d0 = <double>a[j] - mean[j]
            m2[j] += d0 * d0


cdef inline void row_block_grad_sums(const floating* dy, const floating* x, Py_ssize_t nrows,
                                     Py_ssize_t L, const double* col_mean,
                                     double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """Per-column sum(dy) and sum(dy * (x - mean)) over rows [0:nrows], one pass, ROW_GROUP
    rows per accumulator update (see row_block_moments)."""
    cdef Py_ssize_t r, j, ngroups = nrows // ROW_GROUP
    cdef const floating* g
    cdef const floating* v
    cdef double g0, g1, g2, g3, m
    for j in range(L):
        sum_dy[j] = 0.0
        sum_dy_xmu[j] = 0.0
    for r in range(ngroups):
        g = dy + (r * ROW_GROUP) * L
        v = x + (r * ROW_GROUP) * L
        for j in range(L):
            g0 = <double>g[j]
            g1 = <double>g[L + j]
            g2 = <double>g[2 * L + j]
            g3 = <double>g[3 * L + j]
            m = col_mean[j]
            sum_dy[j] += (g0 + g1) + (g2 + g3)
            sum_dy_xmu[j] += ((g0 * (<double>v[j] - m) + g1 * (<double>v[L + j] - m))
                              + (g2 * (<double>v[2 * L + j] - m)
                                 + g3 * (<double>v[3 * L + j] - m)))
    for r in range(ngroups * ROW_GROUP, nrows):
        g = dy + r * L
        v = x + r * L
        for j in range(L):
            sum_dy[j] += <double>g[j]
            sum_dy_xmu[j] += <double>g[j] * (<double>v[j] - col_mean[j])


cdef inline void row_block_affine(const floating* x, floating* y, Py_ssize_t nrows,
                                  Py_ssize_t L, Py_ssize_t group, const double* shift,
                                  const double* scale, const double* offset) noexcept nogil:
    """y[r, j] = (x[r, j] - shift[j]) * scale[j] + offset[j] over rows [0:nrows].

    The coefficients come tiled over ``group`` rows (length group * L), so ``group``
    consecutive rows are one flat, vectorized run; leftover rows go one at a time.
    """
    cdef Py_ssize_t r, i, run = group * L, ngroups = nrows // group
    for r in range(ngroups):
        for i in range(run):
            y[r * run + i] = <floating>((<double>x[r * run + i] - shift[i]) * scale[i]
                                        + offset[i])
    for r in range(ngroups * group, nrows):
        for i in range(L):
            y[r * L + i] = <floating>((<double>x[r * L + i] - shift[i]) * scale[i] + offset[i])


cdef inline void row_block_grad_apply(const floating* dy, const floating* x, floating* dx,
                                      Py_ssize_t nrows, Py_ssize_t L, Py_ssize_t group,
                                      const double* mean, const double* k1, const double* k2,
                                      const double* k3) noexcept nogil:
    """dx[r, j] = k1[j] * dy[r, j] + k2[j] * (x[r, j] - mean[j]) + k3[j] over rows [0:nrows],
    with coefficients tiled over ``group`` rows as in row_block_affine."""
    cdef Py_ssize_t r, i, o, run = group * L, ngroups = nrows // group
    for r in range(ngroups):
        for i in range(run):
            o = r * run + i
            dx[o] = <floating>(k1[i] * <double>dy[o] + k2[i] * (<double>x[o] - mean[i]) + k3[i])
    for r in range(ngroups * group, nrows):
        for i in range(L):
            o = r * L + i
            dx[o] = <floating>(k1[i] * <double>dy[o] + k2[i] * (<double>x[o] - mean[i]) + k3[i])



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


cdef inline Py_ssize_t column_channel(Py_ssize_t j, Py_ssize_t L, Py_ssize_t C,
                                      Py_ssize_t inner) noexcept nogil:
    return ((j % L) // inner) % C


cdef inline int row_moments_core(const floating* x, Py_ssize_t R, Py_ssize_t L, Py_ssize_t C,
                                 Py_ssize_t inner, double* mean, double* m2,
                                 int num_threads) noexcept nogil:
    """Per-channel (mean, M2) of a row-family view; -1 if out of memory."""
    cdef Py_ssize_t nblocks = (R + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t nchunks = min(nblocks, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t k = L // (C * inner)
    cdef Py_ssize_t item, blk, blk_end, r0, nrows, nnext, c, t, i
    cdef double count
    cdef double* tmp
    cdef int status[1]
    cdef double* part_mean = <double*>malloc(2 * nchunks * L * sizeof(double))
    cdef double* part_m2
    if part_mean == NULL:
        return -1
    part_m2 = part_mean + nchunks * L
    status[0] = 0
    for item in prange(nchunks, schedule='static', num_threads=num_threads):
        tmp = <double*>malloc(2 * L * sizeof(double))
        if tmp == NULL:
            status[0] = -1
            continue
        count = 0.0
        blk_end = chunk_start(nblocks, nchunks, item + 1)
        for blk in range(chunk_start(nblocks, nchunks, item), blk_end):
            r0 = blk * ROW_BLOCK
            nrows = min(<Py_ssize_t>ROW_BLOCK, R - r0)
            # rows of the chunk's next block, prefetched while this one is computed
            nnext = min(<Py_ssize_t>ROW_BLOCK, R - r0 - nrows) if blk + 1 < blk_end else 0
            if count == 0.0:  # the chunk's first block lands directly in its partial
                row_block_stats(x + r0 * L, nrows, L, &part_mean[item * L], &part_m2[item * L],
                                nnext)
            else:
                row_block_stats(x + r0 * L, nrows, L, tmp, tmp + L, nnext)
                merge_moments(count, <double>nrows, L, &part_mean[item * L],
                              &part_m2[item * L], tmp, tmp + L, 1)
            count = count + <double>nrows
        free(tmp)
    if status[0] == 0:
        count = 0.0
        for item in range(1, nchunks):
            count = <double>(chunk_start(nblocks, nchunks, item) * ROW_BLOCK)
            nrows = min(R, chunk_start(nblocks, nchunks, item + 1) * ROW_BLOCK) \
                - <Py_ssize_t>count
            merge_moments(count, <double>nrows, L, part_mean, part_m2,
                          &part_mean[item * L], &part_m2[item * L], 1)
        for c in range(C):
            mean[c] = 0.0
            m2[c] = 0.0
        count = 0.0
        for t in range(k):
            for i in range(inner):
                count = merge_moments(count, <double>R, C, mean, m2, &part_mean[t * C * inner + i],
                                      &part_m2[t * C * inner + i], inner)
    free(part_mean)
    return status[0]


cdef inline void row_block_stats(const floating* x, Py_ssize_t nrows, Py_ssize_t L,
                                 double* mean, double* m2, Py_ssize_t next_rows) noexcept nogil:
    """Per-column (mean, M2) of rows x[0:nrows]; float32 prefetches the next_rows that follow."""
    if floating is float:
        cybn_f32_rows_moments(x, nrows, L, mean, m2, x + nrows * L if next_rows > 0 else NULL,
                              next_rows)
    else:
        row_block_moments(x, nrows, L, mean, m2)


def row_moments(const floating[:, ::1] x,        # IN  (rows, L), nonempty
                Py_ssize_t C, Py_ssize_t inner,
                double[::1] mean,                # OUT (C,)
                double[::1] m2,                  # OUT (C,)
                int num_threads):
    """Per-channel mean and M2 of a row-family view."""
    cdef int status
    with nogil:
        status = row_moments_core(&x[0, 0], x.shape[0], x.shape[1], C, inner, &mean[0], &m2[0],
                                  num_threads)
    if status != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


cdef inline int row_affine_core(const floating* x, floating* y, Py_ssize_t R, Py_ssize_t L,
                                Py_ssize_t C, Py_ssize_t inner, const double* shift,
                                const double* scale, const double* offset, int streaming,
                                int num_threads) noexcept nogil:
    """y[r, j] = (x[r, j] - shift[c]) * scale[c] + offset[c], c the channel of column j.
    -1 if out of memory."""
    cdef Py_ssize_t n = R * L, nitems = (n + ELEMENT_ITEM - 1) // ELEMENT_ITEM
    cdef Py_ssize_t W, i, c, item, rev, group, rows_per_item, r0
    cdef float hi, lo
    cdef float* ft
    cdef double* dt
    if floating is float:
        W = tile_period(L)
        ft = <float*>malloc(3 * (W + 8) * sizeof(float))
        if ft == NULL:
            return -1
        for i in range(W + 8):
            c = column_channel(i, L, C, inner)
            cybn_split(shift[c], &hi, &lo)
            ft[i] = hi
            ft[W + 8 + i] = <float>scale[c]
            ft[2 * (W + 8) + i] = <float>(offset[c] - <double>lo * scale[c])
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            rev = nitems - 1 - item  # last-read rows first: they are still in the cache
            cybn_f32_flat_affine(x, y, rev * ELEMENT_ITEM, min(n, (rev + 1) * ELEMENT_ITEM),
                                 W, ft, ft + W + 8, ft + 2 * (W + 8), streaming)
            if streaming:
                cybn_store_fence()
        free(ft)
    else:
        group = row_group(L)
        W = group * L
        dt = <double*>malloc(3 * W * sizeof(double))
        if dt == NULL:
            return -1
        for i in range(W):
            c = column_channel(i, L, C, inner)
            dt[i] = shift[c]
            dt[W + i] = scale[c]
            dt[2 * W + i] = offset[c]
        rows_per_item = max(group, (ELEMENT_ITEM // W) * group)
        nitems = (R + rows_per_item - 1) // rows_per_item
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            r0 = (nitems - 1 - item) * rows_per_item  # last-read rows first (cache)
            row_block_affine(x + r0 * L, y + r0 * L, min(rows_per_item, R - r0), L, group,
                             dt, dt + W, dt + 2 * W)
        free(dt)
    return 0


def row_infer(const floating[:, ::1] x,           # IN  (rows, L), nonempty
              Py_ssize_t C, Py_ssize_t inner,
              const double[::1] shift,            # IN  (C,)
              const double[::1] scale,            # IN  (C,)
              const double[::1] offset,           # IN  (C,)
              floating[:, ::1] y,                 # OUT (rows, L); may be x itself
              bint streaming,
              int num_threads):
    """y = (x - shift[c]) * scale[c] + offset[c] over a row-family view."""
    cdef int status
    with nogil:
        status = row_affine_core(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], C, inner,
                                 &shift[0], &scale[0], &offset[0], streaming, num_threads)
    if status != 0:
        raise MemoryError("cybn: out of memory for kernel scratch")


def row_train_forward(const floating[:, ::1] x,   # IN  (rows, L), nonempty
                      Py_ssize_t C, Py_ssize_t inner,
                      const double[::1] weight,   # IN  (C,)
                      const double[::1] bias,     # IN  (C,)
                      double eps,
                      floating[:, ::1] y,         # OUT (rows, L); may be x itself
                      double[::1] mean,           # OUT (C,)
                      double[::1] var,            # OUT (C,) biased
                      double[::1] invstd,         # OUT (C,)
                      bint streaming,
                      int num_threads):
    """Training forward over a row-family view: statistics, then the elementwise pass."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], c
    cdef double count = <double>(R * (L // C))
    cdef int status
    cdef double* scale = <double*>malloc(C * sizeof(double))
    if scale == NULL:
        raise MemoryError("cybn: out of memory for kernel scratch")
    with nogil:
        status = row_moments_core(&x[0, 0], R, L, C, inner, &mean[0], &var[0], num_threads)
        if status == 0:
            for c in range(C):
                train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c],
                                   &scale[c])
            status = row_affine_core(&x[0, 0], &y[0, 0], R, L, C, inner, &mean[0], scale,
                                     &bias[0], streaming, num_threads)
    free(scale)
    if status != 0:
        raise MemoryError("cybn: out of memory for kernel scratch")


cdef inline int row_grad_sums_core(const floating* dy, const floating* x, Py_ssize_t R,
                                   Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner,
                                   const double* mean, double* sum_dy, double* sum_dy_xmu,
                                   int num_threads) noexcept nogil:
    """Per-channel sum(dy), sum(dy * (x - mean)); -1 if out of memory."""
    cdef Py_ssize_t nblocks = (R + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t nchunks = min(nblocks, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t k = L // (C * inner)
    cdef Py_ssize_t item, blk, blk_end, r0, nrows, j, c, t, i
    cdef double* tmp
    cdef int status[1]
    cdef float* fmean
    cdef double* col_mean
    # [chunk][column] partial sums, then the column means (double, and split for float32)
    cdef double* parts = <double*>malloc((2 * nchunks * L + L) * sizeof(double) + 2 * L * sizeof(float))
    if parts == NULL:
        return -1
    cdef double* part_a = parts
    cdef double* part_b = parts + nchunks * L
    col_mean = parts + 2 * nchunks * L
    fmean = <float*>(col_mean + L)
    for j in range(L):
        col_mean[j] = mean[column_channel(j, L, C, inner)]
        cybn_split(col_mean[j], &fmean[j], &fmean[L + j])
    status[0] = 0
    for item in prange(nchunks, schedule='static', num_threads=num_threads):
        tmp = <double*>malloc(2 * L * sizeof(double))
        if tmp == NULL:
            status[0] = -1
            continue
        for j in range(L):
            part_a[item * L + j] = 0.0
            part_b[item * L + j] = 0.0
        blk_end = chunk_start(nblocks, nchunks, item + 1)
        for blk in range(chunk_start(nblocks, nchunks, item), blk_end):
            r0 = blk * ROW_BLOCK
            nrows = min(<Py_ssize_t>ROW_BLOCK, R - r0)
            if floating is float:
                cybn_f32_rows_grad_sums(dy + r0 * L, x + r0 * L, nrows, L, fmean, fmean + L,
                                        &part_a[item * L], &part_b[item * L], <float*>tmp)
            else:
                row_block_grad_sums(dy + r0 * L, x + r0 * L, min(<Py_ssize_t>ROW_BLOCK, R - r0),
                                    L, col_mean, tmp, tmp + L)
                for j in range(L):
                    part_a[item * L + j] += tmp[j]
                    part_b[item * L + j] += tmp[L + j]
        free(tmp)
    if status[0] == 0:
        for c in range(C):
            sum_dy[c] = 0.0
            sum_dy_xmu[c] = 0.0
        for item in range(nchunks):
            for t in range(k):
                for i in range(inner):
                    for c in range(C):
                        j = (t * C + c) * inner + i
                        sum_dy[c] += part_a[item * L + j]
                        sum_dy_xmu[c] += part_b[item * L + j]
    free(parts)
    return status[0]


cdef inline int row_grad_apply_core(const floating* dy, const floating* x, floating* dx,
                                    Py_ssize_t R, Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner,
                                    const double* mean, const double* k1, const double* k2,
                                    const double* k3, int streaming,
                                    int num_threads) noexcept nogil:
    """dx[r, j] = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c]; -1 if out of memory."""
    cdef Py_ssize_t n = R * L, nitems = (n + ELEMENT_ITEM - 1) // ELEMENT_ITEM
    cdef Py_ssize_t W, P, i, c, item, rev, group, rows_per_item, r0
    cdef float hi, lo
    cdef float* ft
    cdef double* dt
    if floating is float:
        W = tile_period(L)
        P = W + 8
        ft = <float*>malloc(4 * P * sizeof(float))
        if ft == NULL:
            return -1
        for i in range(P):
            c = column_channel(i, L, C, inner)
            cybn_split(mean[c], &hi, &lo)
            ft[i] = hi
            ft[P + i] = <float>k1[c]
            ft[2 * P + i] = <float>k2[c]
            ft[3 * P + i] = <float>(k3[c] - k2[c] * <double>lo)
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            rev = nitems - 1 - item  # last-read rows first: they are still in the cache
            cybn_f32_flat_grad_apply(dy, x, dx, rev * ELEMENT_ITEM,
                                     min(n, (rev + 1) * ELEMENT_ITEM), W, ft, ft + P,
                                     ft + 2 * P, ft + 3 * P, streaming)
            if streaming:
                cybn_store_fence()
        free(ft)
    else:
        group = row_group(L)
        W = group * L
        dt = <double*>malloc(4 * W * sizeof(double))
        if dt == NULL:
            return -1
        for i in range(W):
            c = column_channel(i, L, C, inner)
            dt[i] = mean[c]
            dt[W + i] = k1[c]
            dt[2 * W + i] = k2[c]
            dt[3 * W + i] = k3[c]
        rows_per_item = max(group, (ELEMENT_ITEM // W) * group)
        nitems = (R + rows_per_item - 1) // rows_per_item
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            r0 = (nitems - 1 - item) * rows_per_item  # last-read rows first (cache)
            row_block_grad_apply(dy + r0 * L, x + r0 * L, dx + r0 * L,
                                 min(rows_per_item, R - r0), L, group, dt, dt + W, dt + 2 * W,
                                 dt + 3 * W)
        free(dt)
    return 0


def row_backward(const floating[:, ::1] dy,      # IN  (rows, L), nonempty
                 const floating[:, ::1] x,       # IN  (rows, L)
                 Py_ssize_t C, Py_ssize_t inner,
                 const double[::1] mean,         # IN  (C,)
                 const double[::1] invstd,       # IN  (C,)
                 const double[::1] weight,       # IN  (C,)
                 bint training,
                 floating[:, ::1] dx,            # OUT (rows, L); may be dy or x
                 double[::1] sum_dy,             # OUT (C,)
                 double[::1] sum_dy_xmu,         # OUT (C,)
                 bint streaming,
                 int num_threads):
    """Backward over a row-family view: gradient sums, then the elementwise pass."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], c
    cdef double count = <double>(R * (L // C))
    cdef int status
    cdef double* coef = <double*>malloc(3 * C * sizeof(double))
    if coef == NULL:
        raise MemoryError("cybn: out of memory for kernel scratch")
    with nogil:
        status = row_grad_sums_core(&dy[0, 0], &x[0, 0], R, L, C, inner, &mean[0], &sum_dy[0],
                                    &sum_dy_xmu[0], num_threads)
        if status == 0:
            for c in range(C):
                grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c],
                                  training, &coef[c], &coef[C + c], &coef[2 * C + c])
            status = row_grad_apply_core(&dy[0, 0], &x[0, 0], &dx[0, 0], R, L, C, inner,
                                         &mean[0], coef, coef + C, coef + 2 * C, streaming,
                                         num_threads)
    free(coef)
    if status != 0:
        raise MemoryError("cybn: out of memory for kernel scratch")


ctypedef fused running_t:
    float
    double


def update_running(running_t[::1] running,        # IN/OUT (C,) updated in place
                   const double[::1] batch,       # IN  (C,)
                   double momentum, double factor):
    """running = (1 - momentum) * running + momentum * (batch * factor), in double."""
    cdef Py_ssize_t c
    for c in range(running.shape[0]):
        running[c] = <running_t>((1.0 - momentum) * <double>running[c]
                                 + momentum * (batch[c] * factor))


def infer_scale(const double[::1] running_var,   # IN  (C,)
                const double[::1] weight,        # IN  (C,)
                double eps,
                double[::1] scale):              # OUT (C,)
    """scale = weight / sqrt(running_var + eps); NaN where running_var + eps < 0."""
    cdef Py_ssize_t c
    for c in range(scale.shape[0]):
        scale[c] = weight[c] / sqrt(running_var[c] + eps)


def grad_coefficients_array(double count, const double[::1] sum_dy,
                            const double[::1] sum_dy_xmu, const double[::1] invstd,
                            const double[::1] weight, bint training,
                            double[::1] k1, double[::1] k2, double[::1] k3):
    """Per-channel backward coefficients (OUT k1, k2, k3), the same arithmetic as the kernels."""
    cdef Py_ssize_t c
    for c in range(sum_dy.shape[0]):
        grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c], training,
                          &k1[c], &k2[c], &k3[c])


def train_coefficients_array(double count, const double[::1] m2, double eps,
                             const double[::1] weight, double[::1] var,
                             double[::1] invstd, double[::1] scale):
    """Per-channel var, invstd and scale (OUT), the same arithmetic as the kernels."""
    cdef Py_ssize_t c
    for c in range(m2.shape[0]):
        train_coefficients(count, m2[c], eps, weight[c], &var[c], &invstd[c], &scale[c])


# ---------------------------------------------------------------------------------------
# The memory-speed yardstick.
# ---------------------------------------------------------------------------------------

def parallel_copy(const floating[::1] src,        # IN  (n,)
                  floating[::1] dst,              # OUT (n,)
                  int num_threads):
    """dst[:] = src[:], split into fixed blocks over threads: the least a new array costs."""
    cdef Py_ssize_t n = src.shape[0], blk, start, i, end
    cdef Py_ssize_t block = 1 << 16
    cdef Py_ssize_t nblocks = (n + block - 1) // block
    if n == 0:
        return
    cdef const floating* s = &src[0]
    cdef floating* d = &dst[0]
    with nogil:
        for blk in prange(nblocks, schedule='static', num_threads=num_threads):
            start = blk * block
            end = min(n, start + block)
            for i in range(start, end):
                d[i] = s[i]

