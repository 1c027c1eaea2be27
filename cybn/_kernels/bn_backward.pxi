# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Batch-norm backward: per-channel sums of dy and dy * (x - mean), then the elementwise pass
# dx = k1 * dy + k2 * (x - mean) + k3 (both families, through the fused ReLU and residual
# add), the two halves apart (for statistics reduced across shards), the per-channel
# coefficients, the masked gradient and the ghost batches' backward. Relies on
# bn_forward.pxi's epilogue helpers; included after it.


# ---------------------------------------------------------------------------------------
# One block, one run, one channel's coefficients.
# ---------------------------------------------------------------------------------------

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


cdef inline void block_grad_apply(const floating* dy, const floating* x, floating* dx,
                                  Py_ssize_t n, double mean, double k1, double k2,
                                  double k3) noexcept nogil:
    """dx = k1 * dy + k2 * (x - mean) + k3 over one block."""
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = <floating>(k1 * <double>dy[i] + k2 * (<double>x[i] - mean) + k3)


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


cdef inline void run_grad_sums(const storage* dy, const storage* x, Py_ssize_t n,
                               Py_ssize_t nplanes, Py_ssize_t stride, double mean,
                               double* sum_dy, double* sum_dy_xmu,
                               Py_ssize_t gstride=-1) noexcept nogil:
    """sum(dy), sum(dy * (x - mean)) of one block: nplanes runs of n, x's stride apart and
    dy's gstride apart (default: stride); half-precision: n * nplanes <= PLANE_BLOCK,
    converted into float32 scratch."""
    cdef float hi, lo
    cdef double a, b
    cdef Py_ssize_t k
    if gstride < 0:
        gstride = stride
    if storage is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_block_grad_sums(dy, x, n, nplanes, stride, gstride, hi, lo, sum_dy,
                                 sum_dy_xmu)
    elif storage is double:
        sum_dy[0] = 0.0
        sum_dy_xmu[0] = 0.0
        for k in range(nplanes):
            block_grad_sums(dy + k * gstride, x + k * stride, n, mean, &a, &b)
            sum_dy[0] = sum_dy[0] + a
            sum_dy_xmu[0] = sum_dy_xmu[0] + b
    else:  # half precision: converted in registers
        cybn_split(mean, &hi, &lo)
        cybn_block_grad_sums(dy, x, n, nplanes, stride, gstride, hi, lo, sum_dy, sum_dy_xmu,
                             kind_of(x))


cdef inline void run_grad_apply(const storage* dy, const storage* x, storage* dx,
                                Py_ssize_t n, double mean, double k1, double k2, double k3,
                                int streaming) noexcept nogil:
    """dx = k1 * dy + k2 * (x - mean) + k3 (float32: the low part of mean folded into k3)."""
    cdef float hi, lo
    if storage is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_grad_apply(dy, x, dx, n, hi, <float>k1, <float>k2,
                            <float>(k3 - k2 * <double>lo), streaming)
        if streaming:
            cybn_store_fence()
    elif storage is double:
        block_grad_apply(dy, x, dx, n, mean, k1, k2, k3)
    else:  # half precision: converted in registers
        cybn_split(mean, &hi, &lo)
        cybn_grad_apply_k(dy, x, dx, n, hi, <float>k1, <float>k2, <float>(k3 - k2 * <double>lo),
                          0, 0.0, 0.0, 0, kind_of(x))


# ---------------------------------------------------------------------------------------
# Through a fused ReLU (and residual add): the forward's pre-activation value
# (x - mean) * s + o (+ r) is recomputed with the forward's arithmetic (s = weight * invstd,
# o = bias; float32: the split mean and o - lo * s, as run_affine), and dy is kept where it
# is not <= 0, else replaced by an exact 0. See simd_f32.h.
# ---------------------------------------------------------------------------------------

cdef inline void run_relu_mask(const storage* dy, const storage* x, const storage* r,
                               storage* g, Py_ssize_t n, double mean, double s, double o,
                               int ep) noexcept nogil:
    """g = dy masked by the forward's ReLU over one run (r read when ep has EP_RESIDUAL)."""
    cdef float hi, lo
    cdef Py_ssize_t i, m
    cdef double v
    if storage is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_relu_mask(dy, x, r, g, n, hi, <float>s, <float>(o - <double>lo * s), ep)
    elif storage is not double:  # half precision: the forward's double affine value
        cybn_relu_mask_d(dy, x, r, g, n, mean, s, o, ep, kind_of(x))
    else:
        for i in range(n):
            v = (x[i] - mean) * s + o
            if ep & EP_RESIDUAL:
                v = v + r[i]
            g[i] = 0.0 if v <= 0.0 else dy[i]


cdef inline void run_relu_grad_apply(const storage* dy, const storage* x, storage* dx,
                                     Py_ssize_t n, double mean, double k1, double k2, double k3,
                                     double s, double o, int streaming) noexcept nogil:
    """dx = k1 * g + k2 * (x - mean) + k3, g = dy masked by the forward's ReLU (no residual)."""
    cdef float hi, lo
    cdef Py_ssize_t i, m
    cdef double g
    if storage is float:
        cybn_split(mean, &hi, &lo)
        cybn_f32_relu_grad_apply(dy, x, dx, n, hi, <float>k1, <float>k2,
                                 <float>(k3 - k2 * <double>lo), streaming, <float>s,
                                 <float>(o - <double>lo * s))
        if streaming:
            cybn_store_fence()
    elif storage is not double:  # half precision: the forward's double affine value
        cybn_split(mean, &hi, &lo)
        cybn_relu_grad_apply_d(dy, x, dx, n, hi, <float>k1, <float>k2,
                               <float>(k3 - k2 * <double>lo), mean, s, o, kind_of(x))
    else:
        for i in range(n):
            g = 0.0 if (x[i] - mean) * s + o <= 0.0 else dy[i]
            dx[i] = k1 * g + k2 * (x[i] - mean) + k3


cdef inline void run_grad_apply_ep(const storage* dy, const storage* x, storage* dx,
                                   Py_ssize_t n, double mean, double k1, double k2, double k3,
                                   int streaming, const storage* dres, double s, double o,
                                   int ep) noexcept nogil:
    """The elementwise backward of one run: plain, through the ReLU (mask recomputed), or,
    with a residual, from the masked dy the reduction pass stored in dres."""
    if ep & EP_RESIDUAL:
        run_grad_apply(dres, x, dx, n, mean, k1, k2, k3, streaming)
    elif ep:
        run_relu_grad_apply(dy, x, dx, n, mean, k1, k2, k3, s, o, streaming)
    else:
        run_grad_apply(dy, x, dx, n, mean, k1, k2, k3, streaming)


# ---------------------------------------------------------------------------------------
# Plane family.
# ---------------------------------------------------------------------------------------

cdef inline void plane_chunk_grad_sums(const storage* dy, const storage* x, Py_ssize_t outer,
                                       Py_ssize_t C, Py_ssize_t inner, PlaneBlocks blocks,
                                       Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t c, double mean,
                                       double* out, const storage* r=NULL,
                                       storage* dres=NULL, double s=0.0, double o=0.0,
                                       int ep=0) noexcept nogil:
    """out = (sum dy, sum dy * (x - mean)) of channel c over its blocks q0 <= q < q1.

    With ep, dy is first masked by the forward's ReLU, block by block: into dres (the
    residual's gradient, an output) with EP_RESIDUAL, else into a block on the stack."""
    cdef double a = 0.0, b = 0.0, ba, bb
    cdef Py_ssize_t q, off, length, nplanes, k, stride = C * inner
    cdef storage gbuf[PLANE_BLOCK]
    cdef storage* g
    for q in range(q0, q1):
        off = block_span(blocks, outer, C, inner, q, c, &length, &nplanes)
        if ep & EP_RESIDUAL:
            for k in range(nplanes):
                run_relu_mask(dy + off + k * stride, x + off + k * stride, r + off + k * stride,
                              dres + off + k * stride, length, mean, s, o, ep)
            run_grad_sums(dres + off, x + off, length, nplanes, stride, mean, &ba, &bb)
        elif ep:
            g = &gbuf[0]
            for k in range(nplanes):
                run_relu_mask(dy + off + k * stride, x + off + k * stride, <const storage*>NULL,
                              g + k * length, length, mean, s, o, ep)
            run_grad_sums(g, x + off, length, nplanes, stride, mean, &ba, &bb, length)
        else:
            run_grad_sums(dy + off, x + off, length, nplanes, stride, mean, &ba, &bb)
        a = a + ba
        b = b + bb
    out[0] = a
    out[1] = b


cdef inline void plane_finish_sums(const double* part, Py_ssize_t nq, double* a,
                                   double* b) noexcept nogil:
    """Add a channel's nq chunk partial sums in chunk order."""
    cdef Py_ssize_t qi
    a[0] = 0.0
    b[0] = 0.0
    for qi in range(nq):
        a[0] = a[0] + part[2 * qi]
        b[0] = b[0] + part[2 * qi + 1]


cdef inline int plane_backward_core(const storage* gp, const storage* xp, storage* dp,
                                    Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                    const double* mean, const double* invstd,
                                    const double* weight, bint training, int ep,
                                    const storage* rp, storage* gp_res, const double* fs,
                                    const double* fo, double* sum_dy, double* sum_dy_xmu,
                                    Py_ssize_t group, int streaming,
                                    int num_threads) noexcept nogil:
    """Backward: gradient sums, then dx = k1 * dy + k2 * (x - mean) + k3, per channel; with
    ep, through the forward's ReLU (dy masked where its pre-activation was <= 0); rp and
    gp_res (the residual and its gradient) with EP_RESIDUAL, fs and fo (the forward's scale
    and offset) with ep, else NULL. -1 if out of memory."""
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t c, c0, gi, gc, qi, o, item, plane, start, off
    cdef double count = <double>outer * <double>inner
    cdef double* part = <double*>malloc((2 * nq * C + 3 * C) * sizeof(double))
    cdef double* coef
    if part == NULL:
        return -1
    coef = part + 2 * nq * C   # k1, k2, k3 of channel c at coef[3c:3c+3]
    if group <= 0:
        for c in prange(C, schedule='dynamic', num_threads=num_threads):
            for qi in range(nq):
                plane_chunk_grad_sums(gp, xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                      chunk_start(Q, nq, qi + 1), c, mean[c],
                                      part + 2 * (c * nq + qi), rp, gp_res,
                                      fs[c] if ep else 0.0, fo[c] if ep else 0.0, ep)
            plane_finish_sums(part + 2 * c * nq, nq, &sum_dy[c], &sum_dy_xmu[c])
            grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c],
                              training, &coef[3 * c], &coef[3 * c + 1], &coef[3 * c + 2])
            for o in range(outer):
                off = (o * C + c) * inner
                run_grad_apply_ep(gp + off, xp + off, dp + off, inner, mean[c], coef[3 * c],
                                  coef[3 * c + 1], coef[3 * c + 2], streaming,
                                  gp_res + off if ep & EP_RESIDUAL else NULL,
                                  fs[c] if ep else 0.0, fo[c] if ep else 0.0, ep)
    else:
        for gi in range((C + group - 1) // group):
            c0 = gi * group
            gc = min(group, C - c0)
            for item in prange(nq * gc, schedule='static', num_threads=num_threads):
                qi = item // gc
                c = c0 + item % gc
                plane_chunk_grad_sums(gp, xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                      chunk_start(Q, nq, qi + 1), c, mean[c],
                                      part + 2 * (c * nq + qi), rp, gp_res,
                                      fs[c] if ep else 0.0, fo[c] if ep else 0.0, ep)
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
                run_grad_apply_ep(gp + off, xp + off, dp + off,
                                  min(<Py_ssize_t>PLANE_BLOCK, inner - start), mean[c],
                                  coef[3 * c], coef[3 * c + 1], coef[3 * c + 2], streaming,
                                  gp_res + off if ep & EP_RESIDUAL else NULL,
                                  fs[c] if ep else 0.0, fo[c] if ep else 0.0, ep)
    free(part)
    return 0


# ---------------------------------------------------------------------------------------
# Row family.
# ---------------------------------------------------------------------------------------

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


cdef inline void row_block_grad_apply(const floating* dy, const floating* x, floating* dx,
                                      Py_ssize_t nrows, Py_ssize_t L, Py_ssize_t group,
                                      const double* mean, const double* k1, const double* k2,
                                      const double* k3, const double* s=NULL,
                                      const double* fo=NULL) noexcept nogil:
    """dx[r, j] = k1[j] * dy[r, j] + k2[j] * (x[r, j] - mean[j]) + k3[j] over rows [0:nrows],
    with coefficients tiled over ``group`` rows as in row_block_affine. With s and fo (the
    forward's tiled scale and offset), dy is masked by the forward's ReLU."""
    cdef Py_ssize_t r, i, o, run = group * L, ngroups = nrows // group
    cdef double g
    if s != NULL:
        for r in range(nrows):
            for i in range(L):
                o = r * L + i
                g = 0.0 if (<double>x[o] - mean[i]) * s[i] + fo[i] <= 0.0 else <double>dy[o]
                dx[o] = <floating>(k1[i] * g + k2[i] * (<double>x[o] - mean[i]) + k3[i])
        return
    for r in range(ngroups):
        for i in range(run):
            o = r * run + i
            dx[o] = <floating>(k1[i] * <double>dy[o] + k2[i] * (<double>x[o] - mean[i]) + k3[i])
    for r in range(ngroups * group, nrows):
        for i in range(L):
            o = r * L + i
            dx[o] = <floating>(k1[i] * <double>dy[o] + k2[i] * (<double>x[o] - mean[i]) + k3[i])


cdef inline void row_relu_mask(const storage* dy, const storage* x, const storage* res,
                               storage* g, Py_ssize_t r0, Py_ssize_t nrows, Py_ssize_t L,
                               Py_ssize_t W, const float* ftile, const double* col,
                               int ep) noexcept nogil:
    """g[0:nrows * L] = dy masked by the forward's ReLU over rows [r0, r0 + nrows); float32:
    ftile holds the tiled (hi, scale, offset), 3 arrays of W + 8; float64: col holds the
    per-column (mean, scale, offset), 3 arrays of L. (Half-precision data: see
    row_grad_sums_core.)"""
    cdef Py_ssize_t r, j, e
    cdef double v
    if storage is float:
        cybn_f32_flat_relu_mask(dy + r0 * L, x + r0 * L, res + r0 * L if ep & EP_RESIDUAL else NULL,
                                g, nrows * L, (r0 * L) % W, W, ftile, ftile + W + 8,
                                ftile + 2 * (W + 8), ep)
    elif storage is double:
        for r in range(nrows):
            for j in range(L):
                e = (r0 + r) * L + j
                v = (x[e] - col[j]) * col[L + j] + col[2 * L + j]
                if ep & EP_RESIDUAL:
                    v = v + res[e]
                g[r * L + j] = 0.0 if v <= 0.0 else dy[e]


cdef inline int row_grad_sums_core(const storage* dy, const storage* x, Py_ssize_t R,
                                   Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner,
                                   const double* mean, double* sum_dy, double* sum_dy_xmu,
                                   int num_threads, const storage* res=NULL,
                                   storage* dres=NULL, const double* fscale=NULL,
                                   const double* foffset=NULL, int ep=0) noexcept nogil:
    """Per-channel sum(dy), sum(dy * (x - mean)); -1 if out of memory. With ep, dy is first
    masked by the forward's ReLU (fscale, foffset: its per-channel scale and offset), block by
    block: into dres (an output) with EP_RESIDUAL (res: the residual), else into scratch.
    Half-precision data: each block of dy, x (and the residual) converted into float32
    scratch, masked there, the masked dy stored into dres with EP_RESIDUAL."""
    cdef Py_ssize_t nblocks = (R + ROW_BLOCK - 1) // ROW_BLOCK
    cdef Py_ssize_t nchunks = min(nblocks, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t k = L // (C * inner)
    cdef Py_ssize_t W = tile_period(L) if ep else 0
    cdef Py_ssize_t item, blk, blk_end, r0, nrows, j, c, run, t, i
    cdef double* tmp
    cdef int status[1]
    cdef float* fmean
    cdef float* ftile
    cdef double* col_mean
    cdef float hi, lo
    cdef const storage* g
    cdef float* gf
    cdef float* xf
    cdef Py_ssize_t nb
    cdef float* xtile
    # [chunk][column] partial sums, the column means (double, and split for float32), and
    # with ep the forward's per-column (scale, offset) and its float32 tiles (hi, scale,
    # offset - lo * scale; half precision: the exact tiles, see exact_tiles)
    cdef double* parts = <double*>malloc((2 * nchunks * L + 3 * L) * sizeof(double)
                                         + (2 * L + 7 * (W + 8)) * sizeof(float))
    if parts == NULL:
        return -1
    cdef double* part_a = parts
    cdef double* part_b = parts + nchunks * L
    col_mean = parts + 2 * nchunks * L
    fmean = <float*>(col_mean + 3 * L)
    ftile = fmean + 2 * L
    xtile = ftile + 3 * (W + 8)
    c = 0
    j = 0
    while j < L:  # one channel's run of columns at a time (rows are whole runs)
        cybn_split(mean[c], &hi, &lo)
        for i in range(j, j + inner):
            col_mean[i] = mean[c]
            fmean[i] = hi
            fmean[L + i] = lo
            if ep:
                col_mean[L + i] = fscale[c]
                col_mean[2 * L + i] = foffset[c]
        j += inner
        c = c + 1 if c + 1 < C else 0
    if ep:
        affine_tiles(ftile, W + 8, C, inner, mean, fscale, foffset)
        if sizeof(storage) == 2:
            exact_tiles(xtile, W, L, C, inner, mean, fscale, foffset)
    status[0] = 0
    for item in prange(nchunks, schedule='static', num_threads=num_threads):
        # 2 * L doubles of column sums, and a block of masked dy when ep has no residual;
        # half-precision: blocks of dy, x and the residual in float32
        tmp = <double*>malloc(2 * L * sizeof(double)
                              + (ROW_BLOCK * L * sizeof(storage) if ep else 0)
                              + (2 * ROW_BLOCK * L * sizeof(float)
                                 if sizeof(storage) == 2 and ep else 0))
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
            if ep & EP_RESIDUAL:
                g = dres + r0 * L
            elif ep:
                g = <const storage*>(tmp + 2 * L)
            else:
                g = dy + r0 * L
            if storage is float or storage is double:
                if ep:
                    row_relu_mask(dy, x, res, <storage*>g, r0, nrows, L, W, ftile, col_mean, ep)
            if storage is float:
                cybn_f32_rows_grad_sums(g, x + r0 * L, nrows, L, fmean, fmean + L,
                                        &part_a[item * L], &part_b[item * L], <float*>tmp)
            elif storage is double:
                row_block_grad_sums(g, x + r0 * L, nrows, L, col_mean, tmp, tmp + L)
                for j in range(L):
                    part_a[item * L + j] += tmp[j]
                    part_b[item * L + j] += tmp[L + j]
            elif ep:  # half precision through the ReLU: a float32 block of masked dy
                nb = nrows * L
                gf = <float*>(<char*>(tmp + 2 * L) + ROW_BLOCK * L * sizeof(storage))
                xf = gf + ROW_BLOCK * L
                cybn_flat_relu_mask_d(dy + r0 * L, x + r0 * L,
                                      res + r0 * L if ep & EP_RESIDUAL else NULL, gf, nb,
                                      (r0 * L) % W, W, xtile, ep, kind_of(x))
                if ep & EP_RESIDUAL:
                    half_store(gf, dres + r0 * L, nb)
                half_load(x + r0 * L, xf, nb)
                cybn_f32_rows_grad_sums(gf, xf, nrows, L, fmean, fmean + L, &part_a[item * L],
                                        &part_b[item * L], <float*>tmp)
            else:  # half precision: converted in registers
                cybn_rows_grad_sums(dy + r0 * L, x + r0 * L, nrows, L, fmean, fmean + L,
                                    &part_a[item * L], &part_b[item * L], <float*>tmp,
                                    kind_of(x))
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


cdef inline void row_half_grad_apply(const storage* dy, const storage* x, storage* dx,
                                     Py_ssize_t n, Py_ssize_t k0, Py_ssize_t W, const float* ft,
                                     const float* xt, bint relu) noexcept nogil:
    """The flat backward pass (ft: the float32 tiles of row_grad_apply_core; with relu the
    mask from the forward's exact affine value, xt its tiles) over n half-precision
    elements, converted in registers."""
    cdef Py_ssize_t P = W + 8
    if relu:
        cybn_flat_relu_grad_apply_d(dy, x, dx, n, k0, W, ft, ft + P, ft + 2 * P, ft + 3 * P, xt,
                                    kind_of(x))
    else:
        cybn_flat_grad_apply_k(dy, x, dx, n, k0, W, ft, ft + P, ft + 2 * P, ft + 3 * P, 0, NULL,
                               NULL, 0, kind_of(x))


cdef inline int row_grad_apply_core(const storage* dy, const storage* x, storage* dx,
                                    Py_ssize_t R, Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner,
                                    const double* mean, const double* k1, const double* k2,
                                    const double* k3, int streaming,
                                    int num_threads, const double* fscale=NULL,
                                    const double* foffset=NULL) noexcept nogil:
    """dx[r, j] = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c]; -1 if out of memory. With
    fscale and foffset (the forward's per-channel scale and offset), dy is masked by the
    forward's ReLU."""
    cdef Py_ssize_t n = R * L, nitems = (n + ELEMENT_ITEM - 1) // ELEMENT_ITEM
    cdef Py_ssize_t W, P, i, j, q, c, run, item, e0, group, rows_per_item, r0
    cdef bint relu = fscale != NULL
    cdef float hi, lo
    cdef float* ft
    cdef double* dt
    if storage is not double:
        W = tile_period(L)
        P = W + 8
        # float32 tiles; half precision through the ReLU also the exact tiles
        ft = <float*>malloc(10 * P * sizeof(float))
        if ft == NULL:
            return -1
        c = 0
        i = 0
        while i < P:  # one channel's run of columns at a time (rows are whole runs)
            run = min(inner, P - i)
            cybn_split(mean[c], &hi, &lo)
            ft[i] = hi
            ft[P + i] = <float>k1[c]
            ft[2 * P + i] = <float>k2[c]
            ft[3 * P + i] = <float>(k3[c] - k2[c] * <double>lo)
            if relu:
                ft[4 * P + i] = <float>fscale[c]
                ft[5 * P + i] = <float>(foffset[c] - <double>lo * fscale[c])
            for j in range(i + 1, i + run):
                for q in range(6 if relu else 4):
                    ft[q * P + j] = ft[q * P + i]
            i += run
            c = c + 1 if c + 1 < C else 0
        if relu and sizeof(storage) == 2:
            exact_tiles(ft + 6 * P, W, L, C, inner, mean, fscale, foffset)
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            e0 = (nitems - 1 - item) * ELEMENT_ITEM  # last-read rows first (still cached)
            if storage is not float:
                row_half_grad_apply(dy + e0, x + e0, dx + e0, min(n, e0 + ELEMENT_ITEM) - e0,
                                    e0 % W, W, ft, ft + 6 * P, relu)
            elif relu:
                cybn_f32_flat_relu_grad_apply(dy + e0, x + e0, dx + e0, min(n, e0 + ELEMENT_ITEM) - e0,
                                              e0 % W, W, ft, ft + P, ft + 2 * P, ft + 3 * P,
                                              streaming, ft + 4 * P, ft + 5 * P)
            else:
                cybn_f32_flat_grad_apply(dy + e0, x + e0, dx + e0, min(n, e0 + ELEMENT_ITEM) - e0,
                                         e0 % W, W, ft, ft + P, ft + 2 * P, ft + 3 * P,
                                         streaming)
            if streaming:
                cybn_store_fence()
        free(ft)
    else:
        group = row_group(L)
        W = group * L
        dt = <double*>malloc(6 * W * sizeof(double))
        if dt == NULL:
            return -1
        column_table(dt, mean, W, L, C, inner)
        column_table(dt + W, k1, W, L, C, inner)
        column_table(dt + 2 * W, k2, W, L, C, inner)
        column_table(dt + 3 * W, k3, W, L, C, inner)
        if relu:
            column_table(dt + 4 * W, fscale, W, L, C, inner)
            column_table(dt + 5 * W, foffset, W, L, C, inner)
        rows_per_item = max(group, (ELEMENT_ITEM // W) * group)
        nitems = (R + rows_per_item - 1) // rows_per_item
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            r0 = (nitems - 1 - item) * rows_per_item  # last-read rows first (cache)
            row_block_grad_apply(dy + r0 * L, x + r0 * L, dx + r0 * L,
                                 min(rows_per_item, R - r0), L, group, dt, dt + W, dt + 2 * W,
                                 dt + 3 * W, dt + 4 * W if relu else NULL,
                                 dt + 5 * W if relu else NULL)
        free(dt)
    return 0


cdef inline int row_backward_core(const storage* dy, const storage* x, storage* dx,
                                  Py_ssize_t R, Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner,
                                  const double* mean, const double* invstd,
                                  const double* weight, bint training, int ep,
                                  const storage* rp, storage* gp_res, const double* fs,
                                  const double* fo, double* sum_dy, double* sum_dy_xmu,
                                  int streaming, int num_threads) noexcept nogil:
    """Backward over a row-family view (arguments as plane_backward_core); -1 if out of
    memory."""
    cdef Py_ssize_t c
    cdef double count = <double>(R * (L // C))
    cdef int status
    cdef double* coef = <double*>malloc(3 * C * sizeof(double))
    if coef == NULL:
        return -1
    status = row_grad_sums_core(dy, x, R, L, C, inner, mean, sum_dy, sum_dy_xmu, num_threads,
                                rp, gp_res, fs, fo, ep)
    if status == 0:
        for c in range(C):
            grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c], training,
                              &coef[c], &coef[C + c], &coef[2 * C + c])
        if ep & EP_RESIDUAL:  # from the masked dy the reduction stored in dres
            status = row_grad_apply_core(gp_res, x, dx, R, L, C, inner, mean, coef, coef + C,
                                         coef + 2 * C, streaming, num_threads)
        else:
            status = row_grad_apply_core(dy, x, dx, R, L, C, inner, mean, coef, coef + C,
                                         coef + 2 * C, streaming, num_threads, fs, fo)
    free(coef)
    return status


# ---------------------------------------------------------------------------------------
# The two halves of the batch norm backward apart (for statistics reduced across
# processes between them): the same blocks, chunks and arithmetic as plane_backward and
# row_backward, so the halves give those kernels' bits.
# ---------------------------------------------------------------------------------------

def plane_grad_sums(const floating[:, :, ::1] dy,  # IN  (outer, C, inner), nonempty
                    const floating[:, :, ::1] x,   # IN  (outer, C, inner)
                    const double[::1] mean,        # IN  (C,)
                    double[::1] sum_dy,            # OUT (C,)
                    double[::1] sum_dy_xmu,        # OUT (C,)
                    int num_threads):
    """Per-channel sum(dy) and sum(dy * (x - mean)) of a plane-family view."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_same("dy", dy.shape, x.shape, 3)
    need_len("mean", mean.shape[0], x.shape[1])
    need_len("sum_dy", sum_dy.shape[0], x.shape[1])
    need_len("sum_dy_xmu", sum_dy_xmu.shape[0], x.shape[1])
    cdef int status
    with nogil:
        status = plane_grad_sums_core(&dy[0, 0, 0], &x[0, 0, 0], x.shape[0], x.shape[1],
                                      x.shape[2], &mean[0], &sum_dy[0], &sum_dy_xmu[0],
                                      num_threads)
    check_scratch(status)


def row_grad_sums(const floating[:, ::1] dy,       # IN  (rows, L), nonempty
                  const floating[:, ::1] x,        # IN  (rows, L)
                  Py_ssize_t C, Py_ssize_t inner,
                  const double[::1] mean,          # IN  (C,)
                  double[::1] sum_dy,              # OUT (C,)
                  double[::1] sum_dy_xmu,          # OUT (C,)
                  int num_threads):
    """Per-channel sum(dy) and sum(dy * (x - mean)) of a row-family view."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_rows_view(x.shape[1], C, inner)
    need_same("dy", dy.shape, x.shape, 2)
    need_len("mean", mean.shape[0], C)
    need_len("sum_dy", sum_dy.shape[0], C)
    need_len("sum_dy_xmu", sum_dy_xmu.shape[0], C)
    cdef int status
    with nogil:
        status = row_grad_sums_core(&dy[0, 0], &x[0, 0], x.shape[0], x.shape[1], C, inner,
                                    &mean[0], &sum_dy[0], &sum_dy_xmu[0], num_threads)
    check_scratch(status)


def plane_grad_apply(const floating[:, :, ::1] dy,  # IN  (outer, C, inner), nonempty
                     const floating[:, :, ::1] x,   # IN  (outer, C, inner)
                     const double[::1] mean,        # IN  (C,)
                     const double[::1] k1,          # IN  (C,) coefficients, as
                     const double[::1] k2,          # IN  (C,) grad_coefficients_array
                     const double[::1] k3,          # IN  (C,) gives them
                     floating[:, :, ::1] dx,        # OUT (outer, C, inner); may be dy or x
                     bint streaming,
                     int num_threads):
    """dx = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c] over a plane-family view."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_same("dy", dy.shape, x.shape, 3)
    need_len("mean", mean.shape[0], x.shape[1])
    need_len("k1", k1.shape[0], x.shape[1])
    need_len("k2", k2.shape[0], x.shape[1])
    need_len("k3", k3.shape[0], x.shape[1])
    need_same("dx", dx.shape, x.shape, 3)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "x", &x[0, 0, 0], x.nbytes, True)
    with nogil:
        plane_grad_apply_core(&dy[0, 0, 0], &x[0, 0, 0], &dx[0, 0, 0], x.shape[0], x.shape[1],
                              x.shape[2], &mean[0], &k1[0], &k2[0], &k3[0], streaming,
                              num_threads)


def row_grad_apply(const floating[:, ::1] dy,       # IN  (rows, L), nonempty
                   const floating[:, ::1] x,        # IN  (rows, L)
                   Py_ssize_t C, Py_ssize_t inner,
                   const double[::1] mean,          # IN  (C,)
                   const double[::1] k1,            # IN  (C,)
                   const double[::1] k2,            # IN  (C,)
                   const double[::1] k3,            # IN  (C,)
                   floating[:, ::1] dx,             # OUT (rows, L); may be dy or x
                   bint streaming,
                   int num_threads):
    """dx = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c] over a row-family view."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_rows_view(x.shape[1], C, inner)
    need_same("dy", dy.shape, x.shape, 2)
    need_len("mean", mean.shape[0], C)
    need_len("k1", k1.shape[0], C)
    need_len("k2", k2.shape[0], C)
    need_len("k3", k3.shape[0], C)
    need_same("dx", dx.shape, x.shape, 2)
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef int status
    with nogil:
        status = row_grad_apply_core(&dy[0, 0], &x[0, 0], &dx[0, 0], x.shape[0], x.shape[1],
                                     C, inner, &mean[0], &k1[0], &k2[0], &k3[0], streaming,
                                     num_threads)
    check_scratch(status)


# ---------------------------------------------------------------------------------------
# Per-channel arrays.
# ---------------------------------------------------------------------------------------

def grad_coefficients_array(double count, const double[::1] sum_dy,
                            const double[::1] sum_dy_xmu, const double[::1] invstd,
                            const double[::1] weight, bint training,
                            double[::1] k1, double[::1] k2, double[::1] k3):
    """Per-channel backward coefficients (OUT k1, k2, k3), the same arithmetic as the kernels."""
    need_len("sum_dy_xmu", sum_dy_xmu.shape[0], sum_dy.shape[0])
    need_len("invstd", invstd.shape[0], sum_dy.shape[0])
    need_len("weight", weight.shape[0], sum_dy.shape[0])
    need_len("k1", k1.shape[0], sum_dy.shape[0])
    need_len("k2", k2.shape[0], sum_dy.shape[0])
    need_len("k3", k3.shape[0], sum_dy.shape[0])
    cdef Py_ssize_t c
    for c in range(sum_dy.shape[0]):
        grad_coefficients(count, sum_dy[c], sum_dy_xmu[c], invstd[c], weight[c], training,
                          &k1[c], &k2[c], &k3[c])


# ---------------------------------------------------------------------------------------
# Plane family, the two halves of the backward apart (all channels shared by all threads):
# for norms whose coefficients mix channels (group norm), computed between the halves.
# ---------------------------------------------------------------------------------------

cdef inline int plane_grad_sums_core(const floating* dy, const floating* x, Py_ssize_t outer,
                                     Py_ssize_t C, Py_ssize_t inner, const double* mean,
                                     double* sum_dy, double* sum_dy_xmu,
                                     int num_threads) noexcept nogil:
    """Per-channel sum(dy), sum(dy * (x - mean[c])); the blocks of plane_backward."""
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t item, qi, c
    cdef double* part = <double*>malloc(2 * nq * C * sizeof(double))
    if part == NULL:
        return -1
    for item in prange(nq * C, schedule='static', num_threads=num_threads):
        qi = item // C
        c = item % C
        plane_chunk_grad_sums(dy, x, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                              chunk_start(Q, nq, qi + 1), c, mean[c], part + 2 * (c * nq + qi))
    for c in range(C):
        plane_finish_sums(part + 2 * c * nq, nq, &sum_dy[c], &sum_dy_xmu[c])
    free(part)
    return 0


cdef inline void plane_grad_apply_core(const floating* dy, const floating* x, floating* dx,
                                       Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                       const double* mean, const double* k1, const double* k2,
                                       const double* k3, int streaming,
                                       int num_threads) noexcept nogil:
    """dx = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c], work items of one block each."""
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t item, plane, c, start, off
    for item in prange(outer * C * nblocks, schedule='static', num_threads=num_threads):
        plane = item // nblocks
        c = plane % C
        start = (item % nblocks) * PLANE_BLOCK
        off = plane * inner + start
        run_grad_apply(dy + off, x + off, dx + off, min(<Py_ssize_t>PLANE_BLOCK, inner - start),
                       mean[c], k1[c], k2[c], k3[c], streaming)


def masked_plane_grad_apply(const floating[:, :, ::1] dy,    # IN  (outer, C, inner)
                            const floating[:, :, ::1] x,     # IN  (outer, C, inner)
                            const unsigned char[:, ::1] mask,  # IN  (outer, inner)
                            const double[::1] a,             # IN  (C,)
                            const double[::1] b,             # IN  (C,)
                            const double[::1] d,             # IN  (C,)
                            floating[:, :, ::1] dx,          # OUT (outer, C, inner); may be dy
                            int num_threads):
    """dx = a[c] * dy + (mask ? b[c] + d[c] * x : 0), per element."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_same("dy", dy.shape, x.shape, 3)
    need_shape("mask", mask.shape, 2, x.shape[0], x.shape[2])
    need_len("a", a.shape[0], x.shape[1])
    need_len("b", b.shape[0], x.shape[1])
    need_len("d", d.shape[0], x.shape[1])
    need_same("dx", dx.shape, x.shape, 3)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "x", &x[0, 0, 0], x.nbytes, True)
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2], p, i, c
    cdef const floating* gp = &dy[0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0]
    cdef const unsigned char* mp = &mask[0, 0]
    cdef floating* op = &dx[0, 0, 0]
    cdef const floating* g
    cdef const floating* xr
    cdef const unsigned char* mr
    cdef floating* o
    cdef floating fa, fb, fd
    with nogil:
        for p in prange(outer * C, schedule='static', num_threads=num_threads):
            c = p % C
            fa = <floating>a[c]
            fb = <floating>b[c]
            fd = <floating>d[c]
            g = gp + p * inner
            xr = xp + p * inner
            mr = mp + (p // C) * inner
            o = op + p * inner
            for i in range(inner):
                if mr[i]:
                    o[i] = fa * g[i] + (fb + fd * xr[i])
                else:
                    o[i] = fa * g[i]


def masked_row_grad_apply(const floating[:, ::1] dy,     # IN  (rows, C)
                          const floating[:, ::1] x,      # IN  (rows, C)
                          const unsigned char[::1] mask,  # IN  (rows,)
                          const double[::1] a,           # IN  (C,)
                          const double[::1] b,           # IN  (C,)
                          const double[::1] d,           # IN  (C,)
                          floating[:, ::1] dx,           # OUT (rows, C); may be dy
                          int num_threads):
    """dx = a[j] * dy + (mask[r] ? b[j] + d[j] * x : 0), per element."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_same("dy", dy.shape, x.shape, 2)
    need_len("mask", mask.shape[0], x.shape[0])
    need_len("a", a.shape[0], x.shape[1])
    need_len("b", b.shape[0], x.shape[1])
    need_len("d", d.shape[0], x.shape[1])
    need_same("dx", dx.shape, x.shape, 2)
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], r, j
    cdef const floating* gp = &dy[0, 0]
    cdef const floating* xp = &x[0, 0]
    cdef const unsigned char* mp = &mask[0]
    cdef floating* op = &dx[0, 0]
    cdef floating* fa = <floating*>malloc(3 * C * sizeof(floating))
    cdef floating* fb
    cdef floating* fd
    if fa == NULL:
        raise MemoryError("cybn: out of memory for coefficients")
    fb = fa + C
    fd = fb + C
    for j in range(C):
        fa[j] = <floating>a[j]
        fb[j] = <floating>b[j]
        fd[j] = <floating>d[j]
    with nogil:
        for r in prange(R, schedule='static', num_threads=num_threads):
            if mp[r]:
                for j in range(C):
                    op[r * C + j] = fa[j] * gp[r * C + j] + (fb[j] + fd[j] * xp[r * C + j])
            else:
                for j in range(C):
                    op[r * C + j] = fa[j] * gp[r * C + j]
    free(fa)


cdef inline int ghost_backward_one(const floating* dy, const floating* x, floating* dx,
                                   bint plane, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t C,
                                   Py_ssize_t inner, const double* mean, const double* invstd,
                                   const double* weight, double* sum_dy, double* sum_dy_xmu,
                                   int streaming, int threads) noexcept nogil:
    """One ghost batch's backward on `threads` threads (schedule as ghost_forward_one); -1
    if out of memory."""
    if plane:
        return plane_backward_core(dy, x, dx, d0, C, inner, mean, invstd, weight, True, 0,
                                   <const floating*>NULL, <floating*>NULL, <const double*>NULL,
                                   <const double*>NULL, sum_dy, sum_dy_xmu,
                                   C, streaming, threads)
    return row_backward_core(dy, x, dx, d0, d1, C, inner, mean, invstd, weight, True, 0,
                             <const floating*>NULL, <floating*>NULL, <const double*>NULL,
                             <const double*>NULL, sum_dy, sum_dy_xmu, streaming, threads)


def ghost_backward(const floating[:, ::1] dy,       # IN  (G, n)
                   const floating[:, ::1] x,        # IN  (G, n)
                   floating[:, ::1] dx,             # OUT (G, n); may be dy or x
                   bint plane, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t C, Py_ssize_t inner,
                   const double[:, ::1] mean,       # IN  (G, C)
                   const double[:, ::1] invstd,     # IN  (G, C)
                   const double[::1] weight,        # IN  (C,)
                   double[:, ::1] sum_dy,           # OUT (G, C)
                   double[:, ::1] sum_dy_xmu,       # OUT (G, C)
                   int[::1] status,                 # OUT (G,)
                   bint streaming,
                   int num_threads):
    """Training backward of each ghost batch with its own statistics."""
    need_threads(num_threads)
    need_nonempty(x.size, "x")
    need_ghost_view(x.shape[1], plane, d0, d1, C, inner)
    need_len("weight", weight.shape[0], C)
    need_same("dy", dy.shape, x.shape, 2)
    need_same("dx", dx.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], C)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_same("sum_dy", sum_dy.shape, mean.shape, 2)
    need_same("sum_dy_xmu", sum_dy_xmu.shape, mean.shape, 2)
    need_len("status", status.shape[0], x.shape[0])
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef Py_ssize_t G = x.shape[0], g
    cdef int inside, across = sample_threads(G, x.shape[1], num_threads, &inside)
    with nogil:
        if across == 1:  # few ghost batches: one at a time on all threads (the same bits)
            for g in range(G):
                status[g] = ghost_backward_one(&dy[g, 0], &x[g, 0], &dx[g, 0], plane, d0, d1,
                                               C, inner, &mean[g, 0], &invstd[g, 0],
                                               &weight[0], &sum_dy[g, 0], &sum_dy_xmu[g, 0],
                                               streaming, inside)
        else:
            for g in prange(G, schedule='static', num_threads=across):
                status[g] = ghost_backward_one(&dy[g, 0], &x[g, 0], &dx[g, 0], plane, d0, d1,
                                               C, inner, &mean[g, 0], &invstd[g, 0],
                                               &weight[0], &sum_dy[g, 0], &sum_dy_xmu[g, 0],
                                               streaming, 1)
    for g in range(G):
        if status[g] != 0:
            raise MemoryError("cybn: out of memory for reduction scratch")
