# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Batch-norm forward: the elementwise pass y = ep((x - shift[c]) * scale[c] + offset[c]) of
# both families (inference; with the training statistics, the training forward), the fused
# epilogues (ReLU, residual add), the inference scale, the training forward of ghost
# batches, and the parallel copy used as the memory yardstick. Relies on bn_stats.pxi's
# moments cores; included after it.


# ---------------------------------------------------------------------------------------
# One run of one channel.
# ---------------------------------------------------------------------------------------

cdef inline double epilogue(double v, const double* r, Py_ssize_t i, int ep) noexcept nogil:
    """float64 data: v + r[i] (RESIDUAL), then relu (RELU): 0 where v <= 0 (see simd_f32.h)."""
    if ep & EP_RESIDUAL:
        v = v + r[i]
    if ep & EP_RELU:
        if v <= 0.0:
            v = 0.0
    return v


cdef inline void block_affine(const floating* x, floating* y, Py_ssize_t n,
                              double shift, double scale, double offset) noexcept nogil:
    """y = (x - shift) * scale + offset over one block."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = <floating>((<double>x[i] - shift) * scale + offset)


cdef inline void block_affine_ep(const double* x, double* y, Py_ssize_t n, double shift,
                                 double scale, double offset, const double* r,
                                 int ep) noexcept nogil:
    """y = epilogue((x - shift) * scale + offset) over one block of float64 data."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = epilogue((x[i] - shift) * scale + offset, r, i, ep)


cdef inline void run_affine(const storage* x, storage* y, Py_ssize_t n, double shift,
                            double scale, double offset, int streaming, const storage* r=NULL,
                            int ep=0) noexcept nogil:
    """y = ep((x - shift) * scale + offset); float32: (x - hi) * scale + (offset - lo * scale);
    half-precision: the float32 arithmetic on runs converted into scratch. r: the residual run
    (read when ep has EP_RESIDUAL)."""
    cdef float hi, lo
    if storage is float:
        cybn_split(shift, &hi, &lo)
        cybn_f32_affine_ep(x, y, n, hi, <float>scale, <float>(offset - <double>lo * scale),
                           streaming, r, ep)
        if streaming:
            cybn_store_fence()
    elif storage is double:
        if ep:
            block_affine_ep(x, y, n, shift, scale, offset, r, ep)
        else:
            block_affine(x, y, n, shift, scale, offset)
    else:  # half precision: converted in registers, the affine value in double
        cybn_affine_d(x, y, n, shift, scale, offset, r, ep, kind_of(x))


# ---------------------------------------------------------------------------------------
# Plane family.
# ---------------------------------------------------------------------------------------

cdef inline void plane_affine_core(const storage* x, storage* y, Py_ssize_t outer,
                                   Py_ssize_t C, Py_ssize_t inner, const double* shift,
                                   const double* scale, const double* offset, int streaming,
                                   int num_threads, const storage* r=NULL,
                                   int ep=0) noexcept nogil:
    """y = ep((x - shift[c]) * scale[c] + offset[c]), work items of one block each; r: the
    residual, x's layout (read when ep has EP_RESIDUAL)."""
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t item, plane, c, start, off
    for item in prange(outer * C * nblocks, schedule='static', num_threads=num_threads):
        plane = item // nblocks
        c = plane % C
        start = (item % nblocks) * PLANE_BLOCK
        off = plane * inner + start
        run_affine(x + off, y + off, min(<Py_ssize_t>PLANE_BLOCK, inner - start),
                   shift[c], scale[c], offset[c], streaming, r + off if ep else NULL, ep)


cdef inline int plane_train_forward_core(const storage* xp, storage* yp, const storage* rp,
                                         Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                         const double* weight, const double* bias, double eps,
                                         int ep, double* mean, double* var, double* invstd,
                                         Py_ssize_t group, int streaming,
                                         int num_threads) noexcept nogil:
    """Training forward: batch statistics, then y = ep((x - mean) * weight * invstd + bias);
    -1 if out of memory."""
    cdef Py_ssize_t nblocks = (inner + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef PlaneBlocks blocks = plane_blocks(outer, inner)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS)
    cdef Py_ssize_t c, c0, gi, gc, qi, o, item, plane, start, off
    cdef double count = <double>outer * <double>inner
    cdef double* part = <double*>malloc((3 * nq * C + C) * sizeof(double))
    cdef double* scale
    if part == NULL:
        return -1
    scale = part + 3 * nq * C
    if group <= 0:
        for c in prange(C, schedule='dynamic', num_threads=num_threads):
            for qi in range(nq):
                plane_chunk_moments(xp, outer, C, inner, blocks, chunk_start(Q, nq, qi),
                                    chunk_start(Q, nq, qi + 1), c, part + 3 * (c * nq + qi))
            plane_finish_moments(part + 3 * c * nq, nq, &mean[c], &var[c])
            train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c], &scale[c])
            for o in range(outer):
                off = (o * C + c) * inner
                run_affine(xp + off, yp + off, inner, mean[c], scale[c], bias[c], streaming,
                           rp + off, ep)
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
                           mean[c], scale[c], bias[c], streaming, rp + off, ep)
    free(part)
    return 0


# ---------------------------------------------------------------------------------------
# Row family.
# ---------------------------------------------------------------------------------------

cdef inline void row_block_affine(const floating* x, floating* y, Py_ssize_t nrows,
                                  Py_ssize_t L, Py_ssize_t group, const double* shift,
                                  const double* scale, const double* offset,
                                  const floating* res, int ep) noexcept nogil:
    """y[r, j] = ep((x[r, j] - shift[j]) * scale[j] + offset[j]) over rows [0:nrows].
    ep and res (the residual, x's layout) only for float64 data.

    The coefficients come tiled over ``group`` rows (length group * L), so ``group``
    consecutive rows are one flat, vectorized run; leftover rows go one at a time.
    """
    cdef Py_ssize_t r, i, run = group * L, ngroups = nrows // group
    if floating is double:
        if ep:
            for r in range(ngroups):
                for i in range(run):
                    y[r * run + i] = epilogue((x[r * run + i] - shift[i]) * scale[i] + offset[i],
                                              res, r * run + i, ep)
            for r in range(ngroups * group, nrows):
                for i in range(L):
                    y[r * L + i] = epilogue((x[r * L + i] - shift[i]) * scale[i] + offset[i],
                                            res, r * L + i, ep)
            return
    for r in range(ngroups):
        for i in range(run):
            y[r * run + i] = <floating>((<double>x[r * run + i] - shift[i]) * scale[i]
                                        + offset[i])
    for r in range(ngroups * group, nrows):
        for i in range(L):
            y[r * L + i] = <floating>((<double>x[r * L + i] - shift[i]) * scale[i] + offset[i])


cdef inline void row_half_affine(const storage* x, storage* y, Py_ssize_t n, Py_ssize_t k0,
                                 Py_ssize_t W, const float* xt, const storage* res,
                                 int ep) noexcept nogil:
    """The flat affine pass over n half-precision elements (converted in registers, the
    exact affine value from the tiles xt of exact_tiles)."""
    cybn_flat_affine_d(x, y, n, k0, W, xt, res, ep, kind_of(x))


cdef inline int row_affine_core(const storage* x, storage* y, Py_ssize_t R, Py_ssize_t L,
                                Py_ssize_t C, Py_ssize_t inner, const double* shift,
                                const double* scale, const double* offset, int streaming,
                                int num_threads, const storage* res=NULL,
                                int ep=0) noexcept nogil:
    """y[r, j] = ep((x[r, j] - shift[c]) * scale[c] + offset[c]), c the channel of column j;
    res: the residual, x's layout (read when ep has EP_RESIDUAL). -1 if out of memory."""
    cdef Py_ssize_t n = R * L, nitems = (n + ELEMENT_ITEM - 1) // ELEMENT_ITEM
    cdef Py_ssize_t W, item, rev, group, rows_per_item, r0, e0
    cdef float* ft
    cdef double* dt
    if storage is not double:
        W = tile_period(L)
        # float32 tiles (hi, scale, offset - lo * scale); half precision: the exact tiles
        ft = <float*>malloc(4 * (W + 8) * sizeof(float))
        if ft == NULL:
            return -1
        if sizeof(storage) == 2:
            exact_tiles(ft, W, L, C, inner, shift, scale, offset)
        else:
            affine_tiles(ft, W + 8, C, inner, shift, scale, offset)
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            rev = nitems - 1 - item  # last-read rows first: they are still in the cache
            e0 = rev * ELEMENT_ITEM
            if storage is float:
                cybn_f32_flat_affine_ep(x + e0, y + e0, min(n, e0 + ELEMENT_ITEM) - e0, e0 % W,
                                        W, ft, ft + W + 8, ft + 2 * (W + 8), streaming,
                                        res + e0 if ep & EP_RESIDUAL else NULL, ep)
                if streaming:
                    cybn_store_fence()
            else:
                row_half_affine(x + e0, y + e0, min(n, e0 + ELEMENT_ITEM) - e0, e0 % W, W, ft,
                                res + e0 if ep & EP_RESIDUAL else NULL, ep)
        free(ft)
    else:
        group = row_group(L)
        W = group * L
        dt = <double*>malloc(3 * W * sizeof(double))
        if dt == NULL:
            return -1
        column_table(dt, shift, W, L, C, inner)
        column_table(dt + W, scale, W, L, C, inner)
        column_table(dt + 2 * W, offset, W, L, C, inner)
        rows_per_item = max(group, (ELEMENT_ITEM // W) * group)
        nitems = (R + rows_per_item - 1) // rows_per_item
        for item in prange(nitems, schedule='static', num_threads=num_threads):
            r0 = (nitems - 1 - item) * rows_per_item  # last-read rows first (cache)
            row_block_affine(x + r0 * L, y + r0 * L, min(rows_per_item, R - r0), L, group,
                             dt, dt + W, dt + 2 * W, res + r0 * L if ep else NULL, ep)
        free(dt)
    return 0


cdef inline int row_train_forward_core(const storage* x, storage* y, const storage* res,
                                       Py_ssize_t R, Py_ssize_t L, Py_ssize_t C,
                                       Py_ssize_t inner, const double* weight,
                                       const double* bias, double eps, int ep, double* mean,
                                       double* var, double* invstd, int streaming,
                                       int num_threads) noexcept nogil:
    """Training forward over a row-family view: statistics, then the elementwise pass; -1 if
    out of memory."""
    cdef Py_ssize_t c
    cdef double count = <double>(R * (L // C))
    cdef int status
    cdef double* scale = <double*>malloc(C * sizeof(double))
    if scale == NULL:
        return -1
    status = row_moments_core(x, R, L, C, inner, mean, var, num_threads)
    if status == 0:
        for c in range(C):
            train_coefficients(count, var[c], eps, weight[c], &var[c], &invstd[c], &scale[c])
        status = row_affine_core(x, y, R, L, C, inner, mean, scale, bias, streaming,
                                 num_threads, res, ep)
    free(scale)
    return status


# ---------------------------------------------------------------------------------------
# Per-channel arrays.
# ---------------------------------------------------------------------------------------

def infer_scale(const double[::1] running_var,   # IN  (C,)
                const double[::1] weight,        # IN  (C,)
                double eps,
                double[::1] scale):              # OUT (C,)
    """scale = weight * invstd with invstd = 1 / sqrt(running_var + eps) (the product the
    training forward and the backward use too); NaN where running_var + eps < 0."""
    need_len("running_var", running_var.shape[0], scale.shape[0])
    need_len("weight", weight.shape[0], scale.shape[0])
    cdef Py_ssize_t c
    for c in range(scale.shape[0]):
        scale[c] = weight[c] * (1.0 / sqrt(running_var[c] + eps))


# ---------------------------------------------------------------------------------------
# The memory-speed yardstick.
# ---------------------------------------------------------------------------------------

def parallel_copy(const floating[::1] src,        # IN  (n,)
                  floating[::1] dst,              # OUT (n,)
                  int num_threads):
    """dst[:] = src[:], split into fixed blocks over threads: the least a new array costs."""
    need_threads(num_threads)
    need_len("dst", dst.shape[0], src.shape[0])
    need_apart("dst", &dst[0], dst.nbytes, "src", &src[0], src.nbytes, False)
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


# ---------------------------------------------------------------------------------------
# Ghost batch normalization: G ghost batches of equal size, each a contiguous slab of the
# batch (row g of a (G, n) view), normalized with its own statistics. A ghost batch is one
# work item run by the single-threaded training (or backward) core, so the whole batch
# costs one parallel region instead of G kernel calls; the cores give the same bits for any
# thread count, so each ghost batch's results equal a batch_norm_train call on it.
# ---------------------------------------------------------------------------------------

cdef inline int ghost_forward_one(const floating* x, floating* y, bint plane, Py_ssize_t d0,
                                  Py_ssize_t d1, Py_ssize_t C, Py_ssize_t inner,
                                  const double* weight, const double* bias, double eps,
                                  double* mean, double* var, double* invstd, int streaming,
                                  int threads) noexcept nogil:
    """One ghost batch's training forward on `threads` threads (plane family: all threads
    share each channel, the schedule of arrays that fit the cache); -1 if out of memory."""
    if plane:
        return plane_train_forward_core(x, y, x, d0, C, inner, weight, bias, eps, 0, mean, var,
                                        invstd, C, streaming,
                                        threads)
    return row_train_forward_core(x, y, x, d0, d1, C, inner, weight, bias, eps, 0, mean, var,
                                  invstd, streaming, threads)


def ghost_train_forward(const floating[:, ::1] x,   # IN  (G, n): ghost batch g in row g
                        floating[:, ::1] y,         # OUT (G, n); may be x itself
                        bint plane,                 # plane view (d0 = outer) or row (d0 = rows, d1 = L)
                        Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t C, Py_ssize_t inner,
                        const double[::1] weight,   # IN  (C,)
                        const double[::1] bias,     # IN  (C,)
                        double eps,
                        double[:, ::1] mean,        # OUT (G, C)
                        double[:, ::1] var,         # OUT (G, C) biased
                        double[:, ::1] invstd,      # OUT (G, C)
                        int[::1] status,            # OUT (G,) 0, or -1 when out of memory
                        bint streaming,
                        int num_threads):
    """Training forward of each ghost batch (y = (x - mean) * weight * invstd + bias)."""
    need_threads(num_threads)
    need_nonempty(x.size, "x")
    need_ghost_view(x.shape[1], plane, d0, d1, C, inner)
    need_len("weight", weight.shape[0], C)
    need_same("y", y.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], C)
    need_same("var", var.shape, mean.shape, 2)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_len("status", status.shape[0], x.shape[0])
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef Py_ssize_t G = x.shape[0], g
    cdef int inside, across = sample_threads(G, x.shape[1], num_threads, &inside)
    with nogil:
        if across == 1:  # few ghost batches: one at a time on all threads (the same bits)
            for g in range(G):
                status[g] = ghost_forward_one(&x[g, 0], &y[g, 0], plane, d0, d1, C, inner,
                                              &weight[0], &bias[0], eps, &mean[g, 0],
                                              &var[g, 0], &invstd[g, 0], streaming, inside)
        else:
            for g in prange(G, schedule='static', num_threads=across):
                status[g] = ghost_forward_one(&x[g, 0], &y[g, 0], plane, d0, d1, C, inner,
                                              &weight[0], &bias[0], eps, &mean[g, 0],
                                              &var[g, 0], &invstd[g, 0], streaming, 1)
    for g in range(G):
        if status[g] != 0:
            raise MemoryError("cybn: out of memory for reduction scratch")
