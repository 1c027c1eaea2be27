# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Batch-norm statistics: the per-channel mean and M2 (sum of squared deviations) of a view,
# computed per block (two passes in double, or float32 SIMD with double flushes) and merged
# with Chan et al.'s pairwise formula in a fixed order; the merge of partial statistics
# (shards, ghost batches), the per-channel coefficients and the running-statistics update;
# the masked moments (positions left out by a mask). Defines the moments cores every norm
# builds on. Included after checks.pxi (common.pxi has the families, determinism and
# arithmetic).


# ---------------------------------------------------------------------------------------
# Merges and one block in double (float64 data).
# ---------------------------------------------------------------------------------------

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


cdef inline void train_coefficients(double count, double m2, double eps, double weight,
                                    double* var, double* invstd, double* scale) noexcept nogil:
    """Biased variance, 1 / sqrt(var + eps) and the scale weight * invstd of one channel."""
    var[0] = m2 / count
    invstd[0] = 1.0 / sqrt(var[0] + eps)
    scale[0] = weight * invstd[0]


cdef inline void run_moments(const storage* p, Py_ssize_t n, Py_ssize_t nplanes,
                             Py_ssize_t stride, double* mean, double* m2) noexcept nogil:
    """(mean, M2) of one block: nplanes runs of n elements, stride elements apart
    (half-precision: n * nplanes <= PLANE_BLOCK, converted into float32 scratch)."""
    cdef double count = 0.0, bmean, bm2
    cdef Py_ssize_t k
    cdef float buf[PLANE_BLOCK]
    if storage is float:
        cybn_f32_block_moments(p, n, nplanes, stride, mean, m2)
    elif storage is double:
        mean[0] = 0.0
        m2[0] = 0.0
        for k in range(nplanes):
            block_moments(p + k * stride, n, &bmean, &bm2)
            count = merge_one(count, <double>n, mean, m2, bmean, bm2)
    else:
        for k in range(nplanes):
            half_load(p + k * stride, buf + k * n, n)
        cybn_f32_block_moments(buf, n, nplanes, n, mean, m2)


# ---------------------------------------------------------------------------------------
# Plane family.
# ---------------------------------------------------------------------------------------

cdef inline void plane_chunk_moments(const storage* x, Py_ssize_t outer, Py_ssize_t C,
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


cdef inline void plane_finish_moments(const double* part, Py_ssize_t nq, double* mean,
                                      double* m2) noexcept nogil:
    """Merge a channel's nq chunk partials (count, mean, M2) in chunk order."""
    cdef double count = 0.0
    cdef Py_ssize_t qi
    mean[0] = 0.0
    m2[0] = 0.0
    for qi in range(nq):
        count = merge_one(count, part[3 * qi], mean, m2, part[3 * qi + 1], part[3 * qi + 2])


cdef inline int plane_moments_core(const storage* x, Py_ssize_t outer, Py_ssize_t C,
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


# ---------------------------------------------------------------------------------------
# Row family.
# ---------------------------------------------------------------------------------------

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


cdef inline void row_block_stats(const storage* x, Py_ssize_t nrows, Py_ssize_t L,
                                 double* mean, double* m2, Py_ssize_t next_rows,
                                 float* scratch) noexcept nogil:
    """Per-column (mean, M2) of rows x[0:nrows]; float32 prefetches the next_rows that
    follow; half-precision data is converted into scratch (nrows * L floats) first."""
    if storage is float:
        cybn_f32_rows_moments(x, nrows, L, mean, m2, x + nrows * L if next_rows > 0 else NULL,
                              next_rows)
    elif storage is double:
        row_block_moments(x, nrows, L, mean, m2)
    else:
        half_load(x, scratch, nrows * L)
        cybn_f32_rows_moments(scratch, nrows, L, mean, m2, NULL, 0)


cdef inline int row_moments_core(const storage* x, Py_ssize_t R, Py_ssize_t L, Py_ssize_t C,
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
        # 2 * L doubles of block moments; half-precision: a converted block of rows
        tmp = <double*>malloc(2 * L * sizeof(double) + (ROW_BLOCK * L * sizeof(float)
                                                        if sizeof(storage) == 2 else 0))
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
                                nnext, <float*>(tmp + 2 * L))
            else:
                row_block_stats(x + r0 * L, nrows, L, tmp, tmp + L, nnext, <float*>(tmp + 2 * L))
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


# ---------------------------------------------------------------------------------------
# Per-channel arrays: coefficients and running statistics.
# ---------------------------------------------------------------------------------------

def merge_stats_rows(const double[::1] counts,      # IN  (W,) values per partial, >= 0
                     const double[:, ::1] means,    # IN  (W, C)
                     const double[:, ::1] m2s,      # IN  (W, C) sums of squared deviations
                     double[::1] mean,              # OUT (C,)
                     double[::1] m2):               # OUT (C,)
    """Chan's merge of W partial (count, mean, M2) in row order, partials with count 0
    skipped (mean and M2 0 when every count is 0); returns the total count."""
    need_len("means' rows", means.shape[0], counts.shape[0])
    need_same("m2s", m2s.shape, means.shape, 2)
    need_len("mean", mean.shape[0], means.shape[1])
    need_len("m2", m2.shape[0], means.shape[1])
    cdef Py_ssize_t W = counts.shape[0], C = mean.shape[0], w, c
    cdef double total = 0.0, count
    with nogil:
        for w in range(W):
            if counts[w] > 0.0:
                total = total + counts[w]
        for c in range(C):
            mean[c] = 0.0
            m2[c] = 0.0
            count = 0.0
            for w in range(W):
                if counts[w] > 0.0:
                    count = merge_one(count, counts[w], &mean[c], &m2[c], means[w, c],
                                      m2s[w, c])
    return total


def train_coefficients_array(double count, const double[::1] m2, double eps,
                             const double[::1] weight, double[::1] var,
                             double[::1] invstd, double[::1] scale):
    """Per-channel var, invstd and scale (OUT), the same arithmetic as the kernels."""
    need_len("weight", weight.shape[0], m2.shape[0])
    need_len("var", var.shape[0], m2.shape[0])
    need_len("invstd", invstd.shape[0], m2.shape[0])
    need_len("scale", scale.shape[0], m2.shape[0])
    cdef Py_ssize_t c
    for c in range(m2.shape[0]):
        train_coefficients(count, m2[c], eps, weight[c], &var[c], &invstd[c], &scale[c])


ctypedef fused running_t:
    float
    double


def update_running(running_t[::1] running,        # IN/OUT (C,) updated in place
                   const double[::1] batch,       # IN  (C,)
                   double momentum, double factor):
    """running = (1 - momentum) * running + momentum * (batch * factor), in double."""
    need_len("batch", batch.shape[0], running.shape[0])
    cdef Py_ssize_t c
    for c in range(running.shape[0]):
        running[c] = <running_t>((1.0 - momentum) * <double>running[c]
                                 + momentum * (batch[c] * factor))


# ---------------------------------------------------------------------------------------
# Masked batch statistics: a mask over the non-channel positions (uint8, 1 = counted) leaves
# positions out of the per-channel mean and variance; every position still gets the affine
# transform (bn_forward.pxi). Plane family (outer, C, inner) with a mask (outer, inner): a channel
# per work item, summed in order. Row family (rows, C) with a mask (rows,): fixed blocks of
# MASK_ROW_BLOCK rows, each block's column sums merged in block order. Two passes (the sum,
# then squared deviations from the mean), in double: the same bits for any thread count.
# ---------------------------------------------------------------------------------------

cdef enum:
    MASK_ROW_BLOCK = 512  # rows per work item of the row kernels


cdef inline double masked_run_sum(const floating* x, const floating* m, Py_ssize_t n,
                                  double center, bint square, bint select) noexcept nogil:
    """Sum over i < n with m[i] (1.0 or 0.0) of x[i] (square: (x[i] - center)**2), in 8
    interleaved double accumulators (added in a fixed order at the end), so the loop is not
    bound by one add's latency. Without ``select`` each term is multiplied by m[i]
    (vectorizes; the same bits as skipping it while the data are finite); with ``select``
    the terms of m[i] == 0 are skipped, so NaN or inf there cannot leak in (the caller's
    fallback)."""
    cdef double acc[8]
    cdef double v
    cdef Py_ssize_t i, k, n8 = n - n % 8
    for k in range(8):
        acc[k] = 0.0
    if select:
        for i in range(n):
            if m[i]:
                v = <double>x[i] - center if square else <double>x[i]
                acc[i % 8] += v * v if square else v
    elif square:
        for i in range(0, n8, 8):
            for k in range(8):
                v = <double>x[i + k] - center
                acc[k] += (v * v) * <double>m[i + k]
    else:
        for i in range(0, n8, 8):
            for k in range(8):
                acc[k] += <double>(x[i + k] * m[i + k])
    if not select:
        for i in range(n8, n):
            if m[i]:
                v = <double>x[i] - center if square else <double>x[i]
                acc[i % 8] += v * v if square else v
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline double masked_plane_sum(const floating* x, const floating* mask,
                                    Py_ssize_t outer, Py_ssize_t stride, Py_ssize_t inner,
                                    double center, bint square) noexcept nogil:
    """The masked sum over a channel's outer planes (in order); recomputed with the select
    form when the fast form is not finite (NaN or inf somewhere, maybe under the mask)."""
    cdef Py_ssize_t o
    cdef double s = 0.0
    for o in range(outer):
        s += masked_run_sum(x + o * stride, mask + o * inner, inner, center, square, False)
    if isfinite(s):
        return s
    s = 0.0
    for o in range(outer):
        s += masked_run_sum(x + o * stride, mask + o * inner, inner, center, square, True)
    return s


cdef inline void masked_channel_moments(const floating* x, const floating* mask,
                                        Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                        double count, double* mean,
                                        double* m2) noexcept nogil:
    """One channel's (mean, m2) over its outer planes of inner elements (x at the channel's
    first plane), the planes summed in order."""
    cdef double mu = masked_plane_sum(x, mask, outer, C * inner, inner, 0.0, False) / count
    mean[0] = mu
    m2[0] = masked_plane_sum(x, mask, outer, C * inner, inner, mu, True)


def masked_plane_moments(const floating[:, :, ::1] x,       # IN  (outer, C, inner)
                         const floating[:, ::1] mask,       # IN  (outer, inner) 1.0 / 0.0
                         double count,                      # IN  mask's number of ones, > 0
                         double[::1] mean,                  # OUT (C,)
                         double[::1] m2,                    # OUT (C,)
                         int num_threads):
    """Per-channel mean and M2 over the positions where mask is 1."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_shape("mask", mask.shape, 2, x.shape[0], x.shape[2])
    need(count > 0, "count must be positive")
    need_len("mean", mean.shape[0], x.shape[1])
    need_len("m2", m2.shape[0], x.shape[1])
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* mp = &mask[0, 0]
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            masked_channel_moments(xp + c * inner, mp, outer, C, inner, count, &mean[c],
                                   &m2[c])


cdef inline void masked_row_block_sums(const floating* x, const unsigned char* m,
                                       Py_ssize_t nrows, Py_ssize_t C, const double* center,
                                       bint square, double* out) noexcept nogil:
    """out[j] = sum over the block's counted rows of x[r, j] (square: (x[r, j] -
    center[j])**2)."""
    cdef Py_ssize_t r, j
    cdef const floating* a
    cdef double dv
    for j in range(C):
        out[j] = 0.0
    for r in range(nrows):
        if not m[r]:
            continue
        a = x + r * C
        if square:
            for j in range(C):
                dv = <double>a[j] - center[j]
                out[j] += dv * dv
        else:
            for j in range(C):
                out[j] += <double>a[j]


def masked_row_moments(const floating[:, ::1] x,         # IN  (rows, C)
                       const unsigned char[::1] mask,    # IN  (rows,)
                       double count,                     # IN  mask's number of ones, > 0
                       double[::1] mean,                 # OUT (C,)
                       double[::1] m2,                   # OUT (C,)
                       double[:, ::1] part,              # scratch (blocks, C)
                       int num_threads):
    """Per-channel mean and M2 over the rows where mask is 1."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_len("mask", mask.shape[0], x.shape[0])
    need(count > 0, "count must be positive")
    need_len("mean", mean.shape[0], x.shape[1])
    need_len("m2", m2.shape[0], x.shape[1])
    need_shape("part", part.shape, 2, (x.shape[0] + MASK_ROW_BLOCK - 1) // MASK_ROW_BLOCK,
               x.shape[1])
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], nb = part.shape[0], k, j, lo
    cdef const floating* xp = &x[0, 0]
    cdef const unsigned char* mp = &mask[0]
    cdef double* pp = &part[0, 0]
    cdef double* sums[2]
    cdef double total
    cdef int centered
    sums[0] = &mean[0]
    sums[1] = &m2[0]
    with nogil:
        for centered in range(2):  # the values' sums (the mean), then the squared deviations
            for k in prange(nb, schedule='static', num_threads=num_threads):
                lo = k * MASK_ROW_BLOCK
                masked_row_block_sums(xp + lo * C, mp + lo,
                                      min(<Py_ssize_t>MASK_ROW_BLOCK, R - lo), C, sums[0],
                                      centered, pp + k * C)
            for j in range(C):  # the blocks' partial sums in block order
                total = 0.0
                for k in range(nb):
                    total += pp[k * C + j]
                sums[centered][j] = total if centered else total / count
