# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# cybn's compiled kernels. Included by each instruction-set variant (_kernels_<isa>.pyx).
#
# Every layout reaches these kernels as a C-contiguous view (outer, C, inner) of the input,
# in one of two families:
#
#   plane family  x[outer, C, inner] (channels-first: N, C, H*W; chosen in _validate.py for
#                 inner >= 32 and for small arrays). Channel c's
#                 data is `outer` contiguous runs ("planes") of `inner` elements. Reductions
#                 cut each plane into blocks of PLANE_BLOCK elements.
#   row family    x[rows, L], L = k * C * inner with inner small (channels-last: inner == 1).
#                 Column j holds channel (j // inner) % C. Reductions cut the rows into
#                 blocks of `rows_per_block` rows and vectorize across the columns.
#
# Determinism: reductions cut the work into blocks, and the blocks into at most MAX_CHUNKS
# chunks, with bounds that depend on the shape only, never on the thread count. A chunk
# merges its blocks in order into one partial result; the partials are merged in chunk
# order. Which thread computes a chunk does not change its bits, so any thread count gives
# bitwise identical results. Chunking also keeps the scratch small (MAX_CHUNKS partials),
# so no call allocates memory proportional to x. Setup compiles with -ffp-contract=off, so
# every instruction-set variant gives the same bits too.
#
# Arithmetic: data may be float32 or float64 (`floating`); all per-channel values and all
# accumulators are double, and per-element arithmetic runs in double as well, so float32
# data far from zero (mean >> std) keeps full accuracy. Block statistics are two-pass
# (mean, then sum of squared deviations) over a cache-resident block; blocks are merged with
# Chan's pairwise formula.
#
# Arguments are marked IN (read) or OUT (written); work space is allocated inside (malloc,
# at most MAX_CHUNKS partials), and running out of it raises MemoryError.

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cybn._openmp cimport CYBN_OPENMP_ENABLED

OPENMP_ENABLED = bool(CYBN_OPENMP_ENABLED)

cdef enum:
    LANES = 16            # independent accumulators in a block reduction (vectorizable)
    PLANE_BLOCK = 4096    # elements per reduction block in the plane family (fits L1)
    MAX_CHUNKS = 16       # reductions run as at most this many independent chunks



cdef inline Py_ssize_t chunk_start(Py_ssize_t n, Py_ssize_t nchunks,
                                   Py_ssize_t i) noexcept nogil:
    """First index of chunk i when [0, n) is cut into nchunks near-equal chunks."""
    return (n * i) // nchunks


# ---------------------------------------------------------------------------------------
# Inline helpers: one block, one channel, no Python objects.
# ---------------------------------------------------------------------------------------

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
    for c in range(C):
        delta = mean_b[c * stride_b] - mean[c]
        mean[c] = mean[c] + delta * f_mean
        m2[c] = m2[c] + m2_b[c * stride_b] + delta * delta * f_m2
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
# Plane family: x[outer, C, inner]; channel c is the planes x[o, c, :].
# ---------------------------------------------------------------------------------------

cdef inline int plane_chunked_moments(const floating* x, Py_ssize_t outer, Py_ssize_t C,
                                     Py_ssize_t inner, double* mean, double* m2,
                                     int num_threads) noexcept nogil:
    """Per-channel moments of x[outer, C, inner]; returns -1 if out of memory.

    Each channel's blocks are numbered q = o * nblocks + k (plane o, block k). The q range
    is cut into at most MAX_CHUNKS q-chunks; when there are fewer q-chunks than that, the
    channels are cut into ranges as well, so that even N = 1 keeps every thread busy. A work
    item (q-chunk, channel range) reduces, for each of its q, the block of each of its
    channels and merges them, vectorized over channels, into its partial [q-chunk][c]. The
    partials are then merged in q-chunk order. Channel ranges do not change any channel's
    arithmetic, so results are the same however the work is split.
    """
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t Q = outer * nblocks
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t nc = min(C, max(<Py_ssize_t>1, <Py_ssize_t>MAX_CHUNKS // nq))
    cdef Py_ssize_t item, qi, c0, nch, q, o, c, start, length
    cdef double count
    cdef double* tmp
    cdef int status[1]
    cdef double* part_mean = <double*>malloc((2 * nq * C + nq) * sizeof(double))
    cdef double* part_m2
    cdef double* part_count
    if part_mean == NULL:
        return -1
    part_m2 = part_mean + nq * C
    part_count = part_m2 + nq * C
    status[0] = 0
    for item in prange(nq * nc, schedule='static', num_threads=num_threads):
        qi = item // nc
        c0 = chunk_start(C, nc, item % nc)
        nch = chunk_start(C, nc, item % nc + 1) - c0
        tmp = <double*>malloc(2 * nch * sizeof(double))
        if tmp == NULL:
            status[0] = -1
            continue
        for c in range(c0, c0 + nch):
            part_mean[qi * C + c] = 0.0
            part_m2[qi * C + c] = 0.0
        count = 0.0
        for q in range(chunk_start(Q, nq, qi), chunk_start(Q, nq, qi + 1)):
            o = q // nblocks
            start = (q % nblocks) * PLANE_BLOCK
            length = min(<Py_ssize_t>PLANE_BLOCK, inner - start)
            for c in range(nch):
                block_moments(x + (o * C + c0 + c) * inner + start, length, &tmp[c],
                              &tmp[nch + c])
            count = merge_moments(count, <double>length, nch, &part_mean[qi * C + c0],
                                  &part_m2[qi * C + c0], tmp, tmp + nch, 1)
        if c0 == 0:
            part_count[qi] = count
        free(tmp)
    if status[0] == 0:
        for c in range(C):
            mean[c] = 0.0
            m2[c] = 0.0
        count = 0.0
        for qi in range(nq):
            count = merge_moments(count, part_count[qi], C, mean, m2, &part_mean[qi * C],
                                  &part_m2[qi * C], 1)
    free(part_mean)
    return status[0]


def plane_moments(const floating[:, :, ::1] x,      # IN  (outer, C, inner), nonempty
                  double[::1] mean,                # OUT (C,)
                  double[::1] m2,                  # OUT (C,) sum of squared deviations
                  int num_threads):
    """Per-channel mean and M2 of a plane-family view."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef int status
    with nogil:
        status = plane_chunked_moments(&x[0, 0, 0], outer, C, inner, &mean[0], &m2[0],
                                       num_threads)
    if status != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


cdef inline void plane_affine_core(const floating* x, floating* y, Py_ssize_t outer,
                                   Py_ssize_t C, Py_ssize_t inner, const double* shift,
                                   const double* scale, const double* offset,
                                   int num_threads) noexcept nogil:
    """y = (x - shift[c]) * scale[c] + offset[c], per block in parallel."""
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t item, plane, c, start, length
    for item in prange(outer * C * nblocks, schedule='static', num_threads=num_threads):
        plane = item // nblocks
        c = plane % C
        start = (item % nblocks) * PLANE_BLOCK
        length = min(<Py_ssize_t>PLANE_BLOCK, inner - start)
        block_affine(x + plane * inner + start, y + plane * inner + start, length,
                     shift[c], scale[c], offset[c])


def plane_affine(const floating[:, :, ::1] x,      # IN  (outer, C, inner), nonempty
                 const double[::1] shift,          # IN  (C,)
                 const double[::1] scale,          # IN  (C,)
                 const double[::1] offset,         # IN  (C,)
                 floating[:, :, ::1] y,            # OUT (outer, C, inner); may be x itself
                 int num_threads):
    """y = (x - shift[c]) * scale[c] + offset[c]."""
    with nogil:
        plane_affine_core(&x[0, 0, 0], &y[0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
                          &shift[0], &scale[0], &offset[0], num_threads)


def plane_train_forward(const floating[:, :, ::1] x,   # IN  (outer, C, inner), nonempty
                        const double[::1] weight,      # IN  (C,)
                        const double[::1] bias,        # IN  (C,)
                        double eps,
                        floating[:, :, ::1] y,         # OUT (outer, C, inner); may be x itself
                        double[::1] mean,              # OUT (C,) batch mean
                        double[::1] var,               # OUT (C,) biased batch variance
                        double[::1] invstd,            # OUT (C,) 1 / sqrt(var + eps)
                        int num_threads):
    """Training forward: batch statistics, then y = (x - mean) * weight * invstd + bias.

    Two streaming passes over x (reduce, then normalize).
    """
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2], c
    cdef double count = <double>outer * <double>inner
    cdef int status
    cdef double* scale = <double*>malloc(C * sizeof(double))
    if scale == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    with nogil:
        # m2 lands in var, then var, invstd and the scale are derived from it.
        status = plane_chunked_moments(&x[0, 0, 0], outer, C, inner, &mean[0], &var[0],
                                       num_threads)
        if status == 0:
            for c in range(C):
                train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c],
                                   &scale[c])
            plane_affine_core(&x[0, 0, 0], &y[0, 0, 0], outer, C, inner, &mean[0], scale,
                              &bias[0], num_threads)
    free(scale)
    if status != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


def plane_backward(const floating[:, :, ::1] dy,       # IN  (outer, C, inner), nonempty
                   const floating[:, :, ::1] x,        # IN  (outer, C, inner)
                   const double[::1] mean,             # IN  (C,)
                   const double[::1] invstd,           # IN  (C,)
                   const double[::1] weight,           # IN  (C,)
                   bint training,
                   floating[:, :, ::1] dx,             # OUT (outer, C, inner); may be dy or x
                   double[::1] sum_dy,                 # OUT (C,) sum of dy
                   double[::1] sum_dy_xmu,             # OUT (C,) sum of dy * (x - mean)
                   int num_threads):
    """Backward: one reduction pass, then dx = k1 * dy + k2 * (x - mean) + k3.

    The reduction is chunked like plane_chunked_moments: a chunk adds its blocks' sums in
    (o, block) order, then the chunk sums are added in chunk order.
    """
    cdef Py_ssize_t outer = dy.shape[0], C = dy.shape[1], inner = dy.shape[2]
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t Q = outer * nblocks
    cdef Py_ssize_t nchunks = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t nc = min(C, max(<Py_ssize_t>1, <Py_ssize_t>MAX_CHUNKS // nchunks))
    cdef Py_ssize_t c, c0, c1, o, start, length, item, qi, q, off
    cdef double count = <double>outer * <double>inner, a, b
    cdef const floating* gp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    # Scratch: per-chunk partial sums, then the coefficients k1, k2, k3 per channel.
    cdef double* part_a = <double*>malloc((2 * nchunks * C + 3 * C) * sizeof(double))
    cdef double* part_b
    cdef double* coef
    if part_a == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    part_b = part_a + nchunks * C
    coef = part_b + nchunks * C
    with nogil:
        # Work items (q-chunk, channel range), as in plane_chunked_moments.
        for item in prange(nchunks * nc, schedule='static', num_threads=num_threads):
            a = 0.0  # assigned here so that Cython makes a and b thread-private
            b = 0.0
            qi = item // nc
            c0 = chunk_start(C, nc, item % nc)
            c1 = chunk_start(C, nc, item % nc + 1)
            for c in range(c0, c1):
                part_a[qi * C + c] = 0.0
                part_b[qi * C + c] = 0.0
            for q in range(chunk_start(Q, nchunks, qi), chunk_start(Q, nchunks, qi + 1)):
                o = q // nblocks
                start = (q % nblocks) * PLANE_BLOCK
                length = min(<Py_ssize_t>PLANE_BLOCK, inner - start)
                for c in range(c0, c1):
                    off = (o * C + c) * inner + start
                    block_grad_sums(gp + off, xp + off, length, mean[c], &a, &b)
                    part_a[qi * C + c] += a
                    part_b[qi * C + c] += b
        for c in range(C):
            sum_dy[c] = 0.0
            sum_dy_xmu[c] = 0.0
        for item in range(nchunks):
            for c in range(C):
                sum_dy[c] += part_a[item * C + c]
                sum_dy_xmu[c] += part_b[item * C + c]
        for c in range(C):
            grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c],
                              training, &coef[c], &coef[C + c], &coef[2 * C + c])
        for item in prange(outer * C * nblocks, schedule='static', num_threads=num_threads):
            q = item // nblocks
            c = q % C
            start = (item % nblocks) * PLANE_BLOCK
            length = min(<Py_ssize_t>PLANE_BLOCK, inner - start)
            off = q * inner + start
            block_grad_apply(gp + off, xp + off, dp + off, length, mean[c],
                             coef[c], coef[C + c], coef[2 * C + c])
    free(part_a)


# ---------------------------------------------------------------------------------------
# Row family: x[rows, L]; column j belongs to channel (j // inner) % C.
# Per-column results are folded into channels in (block, column) order.
# ---------------------------------------------------------------------------------------

cdef enum:
    ROW_GROUP = 4         # rows folded into the column accumulators per update


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


def row_moments(const floating[:, ::1] x,        # IN  (rows, L), nonempty
                Py_ssize_t C, Py_ssize_t inner,
                Py_ssize_t rows_per_block,
                double[::1] mean,                # OUT (C,)
                double[::1] m2,                  # OUT (C,)
                int num_threads):
    """Per-channel mean and M2 of a row-family view.

    Row blocks are grouped into at most MAX_CHUNKS chunks; a chunk merges its blocks'
    per-column statistics in order into part[chunk]; chunks are merged in order into
    part[0], whose columns are then folded into channels in column order.
    """
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nblocks = (R + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t nchunks = min(nblocks, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t k = L // (C * inner)
    cdef Py_ssize_t item, blk, r0, r1, nrows, c, t, i
    cdef double count
    cdef double* tmp
    cdef int status[1]
    cdef const floating* xp = &x[0, 0]
    cdef double* parts = <double*>malloc(2 * nchunks * L * sizeof(double))
    if parts == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    cdef double* part_mean = parts              # [chunk][column] partials
    cdef double* part_m2 = parts + nchunks * L
    status[0] = 0
    with nogil:
        for item in prange(nchunks, schedule='static', num_threads=num_threads):
            tmp = <double*>malloc(2 * L * sizeof(double))
            if tmp == NULL:
                status[0] = -1
                continue
            count = 0.0
            for blk in range(chunk_start(nblocks, nchunks, item),
                             chunk_start(nblocks, nchunks, item + 1)):
                r0 = blk * rows_per_block
                r1 = min(R, r0 + rows_per_block)
                if count == 0.0:  # the chunk's first block lands directly in its partial
                    row_block_moments(xp + r0 * L, r1 - r0, L, &part_mean[item * L],
                                      &part_m2[item * L])
                else:
                    row_block_moments(xp + r0 * L, r1 - r0, L, tmp, tmp + L)
                    merge_moments(count, <double>(r1 - r0), L, &part_mean[item * L],
                                  &part_m2[item * L], tmp, tmp + L, 1)
                count = count + <double>(r1 - r0)
            free(tmp)
        if status[0] == 0:
            count = 0.0
            for item in range(1, nchunks):
                count = <double>chunk_start(nblocks, nchunks, item) * rows_per_block
                nrows = min(R, chunk_start(nblocks, nchunks, item + 1) * rows_per_block) \
                    - <Py_ssize_t>count
                merge_moments(count, <double>nrows, L, part_mean, part_m2,
                              &part_mean[item * L], &part_m2[item * L], 1)
            for c in range(C):
                mean[c] = 0.0
                m2[c] = 0.0
            count = 0.0
            for t in range(k):
                for i in range(inner):
                    count = merge_moments(count, <double>R, C, &mean[0], &m2[0],
                                          &part_mean[t * C * inner + i],
                                          &part_m2[t * C * inner + i], inner)
    free(parts)
    if status[0] != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


def row_affine(const floating[:, ::1] x,          # IN  (rows, L), nonempty
               const double[::1] shift,           # IN  (group * L,) per column, tiled
               const double[::1] scale,           # IN  (group * L,)
               const double[::1] offset,          # IN  (group * L,)
               floating[:, ::1] y,                # OUT (rows, L); may be x itself
               Py_ssize_t rows_per_block,
               int num_threads):
    """y[r, j] = (x[r, j] - shift[j]) * scale[j] + offset[j].

    The per-column coefficients are tiled over ``group = len(shift) // L`` rows;
    rows_per_block must be a multiple of group.
    """
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], group = shift.shape[0] // x.shape[1]
    cdef Py_ssize_t nblocks = (R + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t blk, r, r0, r1, j
    cdef const floating* xp = &x[0, 0]
    cdef floating* yp = &y[0, 0]
    cdef const double* sh = &shift[0]
    cdef const double* sc = &scale[0]
    cdef const double* of = &offset[0]
    with nogil:
        for blk in prange(nblocks, schedule='static', num_threads=num_threads):
            r0 = blk * rows_per_block
            r1 = min(R, r0 + rows_per_block)
            row_block_affine(xp + r0 * L, yp + r0 * L, r1 - r0, L, group, sh, sc, of)


def row_grad_sums(const floating[:, ::1] dy,      # IN  (rows, L), nonempty
                  const floating[:, ::1] x,       # IN  (rows, L)
                  const double[::1] col_mean,     # IN  (L,) mean of each column's channel
                  Py_ssize_t C, Py_ssize_t inner,
                  Py_ssize_t rows_per_block,
                  double[::1] sum_dy,             # OUT (C,)
                  double[::1] sum_dy_xmu,         # OUT (C,)
                  int num_threads):
    """Per-channel sum(dy) and sum(dy * (x - mean)) of a row-family view, chunked as in
    row_moments."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nblocks = (R + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t nchunks = min(nblocks, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t k = L // (C * inner)
    cdef Py_ssize_t item, blk, r0, j, c, t, i
    cdef double* tmp
    cdef int status[1]
    cdef const floating* gp = &dy[0, 0]
    cdef const floating* xp = &x[0, 0]
    cdef double* parts = <double*>malloc(2 * nchunks * L * sizeof(double))
    if parts == NULL:
        raise MemoryError("cybn: out of memory for reduction scratch")
    cdef double* part_a = parts                 # [chunk][column] partial sums
    cdef double* part_b = parts + nchunks * L
    status[0] = 0
    with nogil:
        for item in prange(nchunks, schedule='static', num_threads=num_threads):
            tmp = <double*>malloc(2 * L * sizeof(double))
            if tmp == NULL:
                status[0] = -1
                continue
            for j in range(L):
                part_a[item * L + j] = 0.0
                part_b[item * L + j] = 0.0
            for blk in range(chunk_start(nblocks, nchunks, item),
                             chunk_start(nblocks, nchunks, item + 1)):
                r0 = blk * rows_per_block
                row_block_grad_sums(gp + r0 * L, xp + r0 * L, min(rows_per_block, R - r0), L,
                                    &col_mean[0], tmp, tmp + L)
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
    if status[0] != 0:
        raise MemoryError("cybn: out of memory for reduction scratch")


def row_grad_apply(const floating[:, ::1] dy,     # IN  (rows, L), nonempty
                   const floating[:, ::1] x,      # IN  (rows, L)
                   const double[::1] col_mean,    # IN  (group * L,) tiled as in row_affine
                   const double[::1] k1,          # IN  (group * L,)
                   const double[::1] k2,          # IN  (group * L,)
                   const double[::1] k3,          # IN  (group * L,)
                   floating[:, ::1] dx,           # OUT (rows, L); may be dy or x
                   Py_ssize_t rows_per_block,
                   int num_threads):
    """dx[r, j] = k1[j] * dy[r, j] + k2[j] * (x[r, j] - mean[j]) + k3[j] (tiled coefficients,
    see row_affine)."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], group = k1.shape[0] // x.shape[1]
    cdef Py_ssize_t nblocks = (R + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t blk, r, r0, r1, j
    cdef const floating* gp = &dy[0, 0]
    cdef const floating* xp = &x[0, 0]
    cdef floating* dp = &dx[0, 0]
    cdef const double* m = &col_mean[0]
    cdef const double* a = &k1[0]
    cdef const double* b = &k2[0]
    cdef const double* e = &k3[0]
    with nogil:
        for blk in prange(nblocks, schedule='static', num_threads=num_threads):
            r0 = blk * rows_per_block
            r1 = min(R, r0 + rows_per_block)
            row_block_grad_apply(gp + r0 * L, xp + r0 * L, dp + r0 * L, r1 - r0, L, group,
                                 m, a, b, e)


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
