# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# The other norms on the batch-norm cores: group and instance norm a sample at a time
# (per-(sample, channel) moments merged into groups, then the affine pass), channels-first
# group norm a group per work item, and layer and RMS norm as rows x[M, D] with a
# per-column affine; forward and backward of each. Relies on the moments (bn_stats.pxi),
# the affine passes (bn_forward.pxi) and the gradient passes (bn_backward.pxi); included
# after them.

# ---------------------------------------------------------------------------------------
# Samples (see common.pxi): per-(sample, channel) moments.
# ---------------------------------------------------------------------------------------

cdef inline int sample_moments_one(const floating* x, Py_ssize_t outer, Py_ssize_t C,
                                   Py_ssize_t inner, Py_ssize_t k, bint plane, double* mean,
                                   double* m2, int num_threads) noexcept nogil:
    if plane:
        return plane_moments_core(x, outer, C, inner, mean, m2, num_threads)
    return row_moments_core(x, outer // k, k * C * inner, C, inner, mean, m2, num_threads)


# ---------------------------------------------------------------------------------------
# Samples (see common.pxi): group norm a sample at a time, statistics then the affine pass
# with per-(sample, channel) coefficients.
# ---------------------------------------------------------------------------------------

cdef inline int sample_affine_one(const floating* x, floating* y, Py_ssize_t outer,
                                  Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k, bint plane,
                                  const double* shift, const double* scale,
                                  const double* offset, int streaming,
                                  int num_threads) noexcept nogil:
    if plane:
        plane_affine_core(x, y, outer, C, inner, shift, scale, offset, streaming, num_threads)
        return 0
    return row_affine_core(x, y, outer // k, k * C * inner, C, inner, shift, scale, offset,
                           streaming, num_threads)


cdef inline int sample_group_forward_one(const floating* x, floating* y, Py_ssize_t outer,
                                         Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k,
                                         bint plane, Py_ssize_t groups, Py_ssize_t Cw,
                                         const double* weight, const double* bias, double eps,
                                         double* mean, double* var, double* invstd,
                                         int streaming, int num_threads) noexcept nogil:
    """One row of sample_group_forward; -1 if out of memory."""
    cdef Py_ssize_t Cg = C // groups, g, c
    cdef int status
    cdef double count = <double>(outer * inner), m, m2, d
    cdef double* chm = <double*>malloc(5 * C * sizeof(double))
    if chm == NULL:
        return -1
    cdef double* chm2 = chm + C
    cdef double* shift = chm + 2 * C
    cdef double* scale = chm + 3 * C
    cdef double* offset = chm + 4 * C
    if sample_moments_one(x, outer, C, inner, k, plane, chm, chm2, num_threads) != 0:
        free(chm)
        return -1
    for g in range(groups):
        # Chan's merge of Cg channels of equal counts: mean of means, M2 plus the spread
        m = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            m = m + chm[c]
        m = m / <double>Cg if Cg > 1 else chm[g * Cg]
        m2 = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            d = chm[c] - m
            m2 = m2 + chm2[c] + count * (d * d)
        mean[g] = m
        var[g] = m2 / (count * <double>Cg)
        invstd[g] = 1.0 / sqrt(var[g] + eps)
        for c in range(g * Cg, (g + 1) * Cg):
            shift[c] = m
            scale[c] = weight[c % Cw] * invstd[g]
            offset[c] = bias[c % Cw]
    status = sample_affine_one(x, y, outer, C, inner, k, plane, shift, scale, offset,
                               streaming, num_threads)
    free(chm)
    return status


cdef inline int sample_group_forward_core(const floating* x, floating* y, Py_ssize_t N,
                                          Py_ssize_t size, Py_ssize_t outer, Py_ssize_t C,
                                          Py_ssize_t inner, Py_ssize_t k, bint plane,
                                          Py_ssize_t groups, Py_ssize_t Cw,
                                          const double* weight, const double* bias, double eps,
                                          double* mean, double* var, double* invstd,
                                          int streaming, int num_threads) noexcept nogil:
    """sample_group_forward on pointers (N rows of size elements; (N, groups) statistics);
    -1 if out of memory."""
    cdef Py_ssize_t n
    cdef int inside, across
    cdef int status[1]
    status[0] = 0
    across = sample_threads(N, size, num_threads, &inside)
    if across == 1:
        for n in range(N):
            if sample_group_forward_one(x + n * size, y + n * size, outer, C, inner, k, plane,
                                        groups, Cw, weight, bias, eps, mean + n * groups,
                                        var + n * groups, invstd + n * groups, streaming,
                                        inside) != 0:
                status[0] = -1
    else:
        for n in prange(N, schedule='static', num_threads=across):
            if sample_group_forward_one(x + n * size, y + n * size, outer, C, inner, k, plane,
                                        groups, Cw, weight, bias, eps, mean + n * groups,
                                        var + n * groups, invstd + n * groups, streaming,
                                        inside) != 0:
                status[0] = -1
    return status[0]


def sample_group_forward(const floating[:, ::1] x,    # IN  (rows, size): one sample a row
                         Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k,
                         bint plane,                  # one row's view (C channels)
                         Py_ssize_t groups,           # groups of C // groups channels a row
                         const double[::1] weight,    # IN  (Cw,): channel c uses c % Cw
                         const double[::1] bias,      # IN  (Cw,)
                         double eps,
                         floating[:, ::1] y,          # OUT (rows, size); may be x itself
                         double[:, ::1] mean,         # OUT (rows, groups)
                         double[:, ::1] var,          # OUT (rows, groups) biased
                         double[:, ::1] invstd,       # OUT (rows, groups)
                         bint streaming,
                         int num_threads):
    """Group norm forward, a row at a time: per-channel moments, merged into groups, then
    y = (x - mean[g]) * weight[c] * invstd[g] + bias[c]."""
    need_threads(num_threads)
    need_sample_view(x.shape[1], outer, C, inner, k, groups, weight.shape[0])
    need_len("bias", bias.shape[0], weight.shape[0])
    need_same("y", y.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], groups)
    need_same("var", var.shape, mean.shape, 2)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef int status
    with nogil:
        status = sample_group_forward_core(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], outer,
                                           C, inner, k, plane, groups, weight.shape[0],
                                           &weight[0], &bias[0], eps, &mean[0, 0], &var[0, 0],
                                           &invstd[0, 0], streaming, num_threads)
    check_scratch(status)



# ---------------------------------------------------------------------------------------
# Rows: x[M, D] normalized per row (layer and RMS norm) with a per-column affine.
# ---------------------------------------------------------------------------------------

cdef inline void row_stats(const floating* x, Py_ssize_t D, double* mean,
                           double* m2) noexcept nogil:
    """Mean and M2 of one row of D elements: the plane family's reduction of one plane
    (blocks of PLANE_BLOCK, at most MAX_CHUNKS chunks merged in order)."""
    cdef PlaneBlocks blocks = plane_blocks(1, D)
    cdef Py_ssize_t Q = blocks.count
    cdef Py_ssize_t nq = min(Q, <Py_ssize_t>MAX_CHUNKS), qi
    cdef double part[3 * MAX_CHUNKS]
    for qi in range(nq):
        plane_chunk_moments(x, 1, 1, D, blocks, chunk_start(Q, nq, qi),
                            chunk_start(Q, nq, qi + 1), 0, part + 3 * qi)
    plane_finish_moments(part, nq, mean, m2)


cdef inline void row_normalize(const floating* x, floating* y, Py_ssize_t D, double shift,
                               double scale, const float* fw, const float* fb,
                               const double* weight, const double* bias) noexcept nogil:
    """y[d] = ((x[d] - shift) * scale) * weight[d] + bias[d]; float32 subtracts the split
    shift hi + lo in float ((x - hi) * s + o, o = -lo * s), float64 works in double."""
    cdef Py_ssize_t d
    cdef float hi = 0.0, lo = 0.0, fs, fo
    if floating is float:
        cybn_split(shift, &hi, &lo)
        fs = <float>scale
        fo = <float>(-<double>lo * scale)
        for d in range(D):
            y[d] = ((x[d] - hi) * fs + fo) * fw[d] + fb[d]
    else:
        for d in range(D):
            y[d] = ((x[d] - shift) * scale) * weight[d] + bias[d]


cdef inline int rows_forward_core(const floating* xp, floating* yp, Py_ssize_t M,
                                  Py_ssize_t D, const double* weight, const double* bias,
                                  double eps, bint centered, double* mean, double* invstd,
                                  int num_threads) noexcept nogil:
    """rows_forward on pointers (also the compiled fast path's); -1 if out of memory."""
    cdef Py_ssize_t m, d
    cdef double mu, m2, inv
    cdef float* fw = <float*>malloc(2 * D * sizeof(float))
    if fw == NULL:
        return -1
    cdef float* fb = fw + D
    for d in range(D):
        fw[d] = <float>weight[d]
        fb[d] = <float>bias[d]
    for m in prange(M, schedule='static', num_threads=num_threads):
        mu = 0.0  # assigned in the loop, so that prange makes them private
        m2 = 0.0
        row_stats(xp + m * D, D, &mu, &m2)
        if centered:
            inv = 1.0 / sqrt(m2 / <double>D + eps)
        else:
            inv = 1.0 / sqrt(m2 / <double>D + mu * mu + eps)
            mu = 0.0
        mean[m] = mu
        invstd[m] = inv
        row_normalize(xp + m * D, yp + m * D, D, mu, inv, fw, fb, weight, bias)
    free(fw)
    return 0


def rows_forward(const floating[:, ::1] x,        # IN  (M, D), nonempty
                 const double[::1] weight,        # IN  (D,)
                 const double[::1] bias,          # IN  (D,)
                 double eps,
                 bint centered,                   # layer norm True, RMS norm False
                 floating[:, ::1] y,              # OUT (M, D); may be x itself
                 double[::1] mean,                # OUT (M,) row means (centered only)
                 double[::1] invstd,              # OUT (M,) 1 / sqrt(var + eps), or 1 / rms
                 int num_threads):
    """Layer norm (centered) or RMS norm forward, one row at a time while it is in cache:
    the row's moments, then y = ((x - mean) * invstd) * weight + bias with
    invstd = 1 / sqrt(M2 / D + eps); RMS norm: y = (x * invrms) * weight with
    invrms = 1 / sqrt(M2 / D + mean**2 + eps) (bias zeros). One thread per row: the bits
    do not depend on the thread count."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_len("weight", weight.shape[0], x.shape[1])
    need_len("bias", bias.shape[0], x.shape[1])
    need_same("y", y.shape, x.shape, 2)
    need_len("mean", mean.shape[0], x.shape[0])
    need_len("invstd", invstd.shape[0], x.shape[0])
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef int status
    with nogil:
        status = rows_forward_core(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], &weight[0],
                                   &bias[0], eps, centered, &mean[0], &invstd[0], num_threads)
    check_scratch(status)


# ---------------------------------------------------------------------------------------
# Groups: channels-first group (and instance) norm, x[N * G, Cg * S]: each row is one group
# of one sample, Cg contiguous channels of S elements. A thread owns whole groups and runs
# statistics -> coefficients -> affine on one group while it is in its cache (one read from
# memory, as the owner schedule of the plane family).
# ---------------------------------------------------------------------------------------

cdef inline void group_moments(const floating* x, Py_ssize_t n, double* mean,
                               double* m2) noexcept nogil:
    """Mean and M2 of one group's n contiguous elements: blocks of PLANE_BLOCK merged in
    order (Chan), as the plane family does for one plane."""
    cdef double count = 0.0, bmean, bm2
    cdef Py_ssize_t start, length
    mean[0] = 0.0
    m2[0] = 0.0
    start = 0
    while start < n:
        length = min(<Py_ssize_t>PLANE_BLOCK, n - start)
        run_moments(x + start, length, 1, length, &bmean, &bm2)
        count = merge_one(count, <double>length, mean, m2, bmean, bm2)
        start += length


cdef inline void group_forward_core(const floating* xp, floating* yp, Py_ssize_t R,
                                    Py_ssize_t n, Py_ssize_t S, Py_ssize_t C,
                                    const double* weight, const double* bias, double eps,
                                    double* mean, double* var, double* invstd, int streaming,
                                    int num_threads) noexcept nogil:
    """group_train_forward on pointers: R rows (groups) of n = Cg * S elements."""
    cdef Py_ssize_t Cg = n // S, G = C // Cg
    cdef Py_ssize_t r, j, ch
    cdef double m, m2
    for r in prange(R, schedule='static', num_threads=num_threads):
        m = 0.0  # assigned in the loop, so that prange makes m and m2 private
        m2 = 0.0
        group_moments(xp + r * n, n, &m, &m2)
        mean[r] = m
        var[r] = m2 / <double>n
        invstd[r] = 1.0 / sqrt(var[r] + eps)
        for j in range(Cg):
            ch = (r % G) * Cg + j
            run_affine(xp + r * n + j * S, yp + r * n + j * S, S, m,
                       weight[ch] * invstd[r], bias[ch], streaming)


def group_train_forward(const floating[:, ::1] x,    # IN  (N * G, Cg * S), nonempty
                        Py_ssize_t S,                # elements per channel
                        const double[::1] weight,    # IN  (C,), C = G * Cg
                        const double[::1] bias,      # IN  (C,)
                        double eps,
                        floating[:, ::1] y,          # OUT (N * G, Cg * S); may be x itself
                        double[::1] mean,            # OUT (N * G,)
                        double[::1] var,             # OUT (N * G,) biased
                        double[::1] invstd,          # OUT (N * G,)
                        bint streaming,
                        int num_threads):
    """Group norm forward: per group, its statistics, then y = (x - mean) * scale[c] +
    bias[c] with scale[c] = weight[c] * invstd, channel by channel."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_group_view(x.shape[0], x.shape[1], S, weight.shape[0])
    need_len("bias", bias.shape[0], weight.shape[0])
    need_same("y", y.shape, x.shape, 2)
    need_len("mean", mean.shape[0], x.shape[0])
    need_len("var", var.shape[0], x.shape[0])
    need_len("invstd", invstd.shape[0], x.shape[0])
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0], x.nbytes, True)
    with nogil:
        group_forward_core(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], S, weight.shape[0],
                           &weight[0], &bias[0], eps, &mean[0], &var[0], &invstd[0], streaming,
                           num_threads)


# ---------------------------------------------------------------------------------------
# Samples (see common.pxi): group norm backward a sample at a time: per-(sample, channel)
# gradient sums, the group's coefficients, the elementwise pass.
# ---------------------------------------------------------------------------------------

cdef inline int sample_grad_sums_one(const floating* dy, const floating* x, Py_ssize_t outer,
                                     Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k, bint plane,
                                     const double* mean, double* sum_dy, double* sum_dy_xmu,
                                     int num_threads) noexcept nogil:
    if plane:
        return plane_grad_sums_core(dy, x, outer, C, inner, mean, sum_dy, sum_dy_xmu,
                                    num_threads)
    return row_grad_sums_core(dy, x, outer // k, k * C * inner, C, inner, mean, sum_dy,
                              sum_dy_xmu, num_threads)



cdef inline int sample_grad_apply_one(const floating* dy, const floating* x, floating* dx,
                                      Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                      Py_ssize_t k, bint plane, const double* mean,
                                      const double* k1, const double* k2, const double* k3,
                                      int streaming, int num_threads) noexcept nogil:
    if plane:
        plane_grad_apply_core(dy, x, dx, outer, C, inner, mean, k1, k2, k3, streaming,
                              num_threads)
        return 0
    return row_grad_apply_core(dy, x, dx, outer // k, k * C * inner, C, inner, mean, k1, k2,
                               k3, streaming, num_threads)


cdef inline int sample_group_backward_one(const floating* dy, const floating* x, floating* dx,
                                          Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                          Py_ssize_t k, bint plane, Py_ssize_t groups,
                                          Py_ssize_t Cw, const double* mean,
                                          const double* invstd, const double* weight,
                                          double* sum_dy, double* sum_dy_xmu, int streaming,
                                          int num_threads) noexcept nogil:
    """One row of sample_group_backward; -1 if out of memory."""
    cdef Py_ssize_t Cg = C // groups, g, c
    cdef int status
    cdef double count = <double>(outer * inner) * <double>Cg, a, b, inv, w
    cdef double* shift = <double*>malloc(4 * C * sizeof(double))
    if shift == NULL:
        return -1
    cdef double* k1 = shift + C
    cdef double* k2 = shift + 2 * C
    cdef double* k3 = shift + 3 * C
    for c in range(C):
        shift[c] = mean[c // Cg]
    if sample_grad_sums_one(dy, x, outer, C, inner, k, plane, shift, sum_dy, sum_dy_xmu,
                            num_threads) != 0:
        free(shift)
        return -1
    for g in range(groups):
        a = 0.0
        b = 0.0
        for c in range(g * Cg, (g + 1) * Cg):
            w = weight[c % Cw]
            a = a + w * sum_dy[c]
            b = b + w * sum_dy_xmu[c]
        inv = invstd[g]
        for c in range(g * Cg, (g + 1) * Cg):
            k1[c] = weight[c % Cw] * inv
            k2[c] = -inv * inv * inv * (b / count)
            k3[c] = -inv * (a / count)
    status = sample_grad_apply_one(dy, x, dx, outer, C, inner, k, plane, shift, k1, k2, k3,
                                   streaming, num_threads)
    free(shift)
    return status


cdef inline int sample_group_backward_core(const floating* dy, const floating* x,
                                           floating* dx, Py_ssize_t N, Py_ssize_t size,
                                           Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                           Py_ssize_t k, bint plane, Py_ssize_t groups,
                                           Py_ssize_t Cw, const double* mean,
                                           const double* invstd, const double* weight,
                                           double* sum_dy, double* sum_dy_xmu, int streaming,
                                           int num_threads) noexcept nogil:
    """sample_group_backward on pointers ((N, groups) statistics, (N, C) sums); -1 if out
    of memory."""
    cdef Py_ssize_t n
    cdef int inside, across
    cdef int status[1]
    status[0] = 0
    across = sample_threads(N, size, num_threads, &inside)
    if across == 1:
        for n in range(N):
            if sample_group_backward_one(dy + n * size, x + n * size, dx + n * size, outer, C,
                                         inner, k, plane, groups, Cw, mean + n * groups,
                                         invstd + n * groups, weight, sum_dy + n * C,
                                         sum_dy_xmu + n * C, streaming, inside) != 0:
                status[0] = -1
    else:
        for n in prange(N, schedule='static', num_threads=across):
            if sample_group_backward_one(dy + n * size, x + n * size, dx + n * size, outer, C,
                                         inner, k, plane, groups, Cw, mean + n * groups,
                                         invstd + n * groups, weight, sum_dy + n * C,
                                         sum_dy_xmu + n * C, streaming, inside) != 0:
                status[0] = -1
    return status[0]


def sample_group_backward(const floating[:, ::1] dy,  # IN  (rows, size): one sample a row
                          const floating[:, ::1] x,   # IN  (rows, size)
                          Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t k,
                          bint plane,                 # one row's view (C channels)
                          Py_ssize_t groups,          # groups of C // groups channels a row
                          const double[:, ::1] mean,      # IN  (rows, groups)
                          const double[:, ::1] invstd,    # IN  (rows, groups)
                          const double[::1] weight,       # IN  (Cw,): channel c uses c % Cw
                          floating[:, ::1] dx,            # OUT (rows, size); may be dy or x
                          double[:, ::1] sum_dy,          # OUT (rows, C)
                          double[:, ::1] sum_dy_xmu,      # OUT (rows, C) sum dy * (x - mean)
                          bint streaming,
                          int num_threads):
    """Group norm backward, a row at a time: per-channel gradient sums, the group's
    coefficients, dx = k1[c] * dy + k2[g] * (x - mean[g]) + k3[g]."""
    need_threads(num_threads)
    need_sample_view(x.shape[1], outer, C, inner, k, groups, weight.shape[0])
    need_same("dy", dy.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], groups)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_same("dx", dx.shape, x.shape, 2)
    need_shape("sum_dy", sum_dy.shape, 2, x.shape[0], C)
    need_same("sum_dy_xmu", sum_dy_xmu.shape, sum_dy.shape, 2)
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef int status
    with nogil:
        status = sample_group_backward_core(&dy[0, 0], &x[0, 0], &dx[0, 0], x.shape[0],
                                            x.shape[1], outer, C, inner, k, plane, groups,
                                            weight.shape[0], &mean[0, 0], &invstd[0, 0],
                                            &weight[0], &sum_dy[0, 0], &sum_dy_xmu[0, 0],
                                            streaming, num_threads)
    check_scratch(status)


# ---------------------------------------------------------------------------------------
# Rows (layer and RMS norm): x[M, D], statistics per row, affine per column.
# ---------------------------------------------------------------------------------------

cdef enum:
    ROWS_CHUNKS = 64       # row chunks of the column sums (fixed by the shape, merged in order)
    ROWS_PER_CHUNK = 16    # at least this many rows a chunk (fewer chunks for fewer rows)


cdef inline void row_grad_coefficients(const floating* dy, const floating* x, Py_ssize_t D,
                                       double mean, double invstd, const double* weight,
                                       bint centered, double* k) noexcept nogil:
    """One row's dx = k[0] * (weight * dy) + k[1] * (x - mean) + k[2].

    g = weight * dy; dx = invstd * (g - mean(g) - xhat * mean(g * xhat)) with
    xhat = (x - mean) * invstd (centered, layer norm); without centering (RMS norm) the
    mean is 0 and the mean(g) term is dropped."""
    cdef double acc_a[LANES]
    cdef double acc_b[LANES]
    cdef Py_ssize_t i, j, nfull = D - D % LANES
    cdef double a = 0.0, b = 0.0, g
    for j in range(LANES):
        acc_a[j] = 0.0
        acc_b[j] = 0.0
    for i in range(nfull // LANES):
        for j in range(LANES):
            g = weight[i * LANES + j] * <double>dy[i * LANES + j]
            acc_a[j] += g
            acc_b[j] += g * (<double>x[i * LANES + j] - mean)
    for j in range(LANES):
        a += acc_a[j]
        b += acc_b[j]
    for i in range(nfull, D):
        g = weight[i] * <double>dy[i]
        a += g
        b += g * (<double>x[i] - mean)
    k[0] = invstd
    k[1] = -invstd * invstd * invstd * (b / <double>D)
    k[2] = -invstd * (a / <double>D) if centered else 0.0


cdef inline void rows_grad_rows(const floating* dy, const floating* x, floating* dx,
                                Py_ssize_t nrows, Py_ssize_t D, const double* mean,
                                const double* invstd, const double* weight, const float* fw,
                                bint centered, double* col_xhat, double* col_dy) noexcept nogil:
    """dx of nrows (1 to ROW_GROUP) consecutive rows, and their dy * xhat and dy summed over
    the rows in order, then added into the column sums (one accumulator update per
    ROW_GROUP rows). float32 in float32 SIMD (simd_f32.h) with the row sums in double,
    float64 in double; fw: the weight as float32 (float32 data)."""
    cdef double k[3 * ROW_GROUP]
    cdef float fk[3 * ROW_GROUP]
    cdef float mh[ROW_GROUP]
    cdef float ml[ROW_GROUP]
    cdef float finv[ROW_GROUP]
    cdef double sx, sd, g, xm, a, b
    cdef Py_ssize_t i, r
    if floating is float:
        for r in range(nrows):
            cybn_split(mean[r], &mh[r], &ml[r])
            cybn_f32_row_grad_sums(dy + r * D, x + r * D, fw, D, mh[r], ml[r], &a, &b)
            # dx = inv * ((w * dy - mean(w * dy)) - xm * inv**2 * mean(w * dy * xm))
            fk[3 * r] = <float>invstd[r]
            fk[3 * r + 1] = <float>(invstd[r] * invstd[r] * (b / <double>D))
            fk[3 * r + 2] = <float>(a / <double>D) if centered else 0.0
            finv[r] = <float>invstd[r]
        cybn_f32_rows_grad_apply(dy, x, dx, nrows, D, fw, mh, ml, finv, fk, col_xhat, col_dy)
        return
    for r in range(nrows):
        row_grad_coefficients(dy + r * D, x + r * D, D, mean[r], invstd[r], weight, centered,
                              k + 3 * r)
    for i in range(D):
        sx = 0.0
        sd = 0.0
        for r in range(nrows):
            g = <double>dy[r * D + i]
            xm = <double>x[r * D + i] - mean[r]
            sx = sx + g * (xm * invstd[r])
            sd = sd + g
            dx[r * D + i] = <floating>(k[3 * r] * (weight[i] * g) + k[3 * r + 1] * xm
                                       + k[3 * r + 2])
        col_xhat[i] += sx
        col_dy[i] += sd


cdef inline int rows_backward_core(const floating* gp, const floating* xp, floating* dp,
                                   Py_ssize_t M, Py_ssize_t D, const double* mean,
                                   const double* invstd, const double* weight, bint centered,
                                   double* dweight, double* dbias,
                                   int num_threads) noexcept nogil:
    """rows_backward on pointers (also the compiled fast path's); -1 if out of memory."""
    cdef Py_ssize_t d, m, item, step
    cdef Py_ssize_t nchunks = max(1, min(M // ROWS_PER_CHUNK, <Py_ssize_t>ROWS_CHUNKS))
    cdef double* part = <double*>malloc(2 * nchunks * D * sizeof(double) + D * sizeof(float))
    if part == NULL:
        return -1
    cdef float* fw = <float*>(part + 2 * nchunks * D)
    for d in range(D):
        fw[d] = <float>weight[d]
    for item in prange(nchunks, schedule='static', num_threads=num_threads):
        for d in range(2 * D):
            part[2 * item * D + d] = 0.0
        m = chunk_start(M, nchunks, item)
        while m < chunk_start(M, nchunks, item + 1):
            step = min(<Py_ssize_t>ROW_GROUP, chunk_start(M, nchunks, item + 1) - m)
            rows_grad_rows(gp + m * D, xp + m * D, dp + m * D, step, D, mean + m, invstd + m,
                           weight, fw, centered, part + 2 * item * D, part + 2 * item * D + D)
            m = m + step
    for d in range(D):
        dweight[d] = 0.0
        dbias[d] = 0.0
    for item in range(nchunks):
        for d in range(D):
            dweight[d] += part[2 * item * D + d]
            dbias[d] += part[2 * item * D + D + d]
    free(part)
    return 0


def rows_backward(const floating[:, ::1] dy,     # IN  (M, D), nonempty
                  const floating[:, ::1] x,      # IN  (M, D)
                  const double[::1] mean,        # IN  (M,) (zeros: RMS norm)
                  const double[::1] invstd,      # IN  (M,)
                  const double[::1] weight,      # IN  (D,)
                  bint centered,                 # layer norm True, RMS norm False
                  floating[:, ::1] dx,           # OUT (M, D); may be dy or x
                  double[::1] dweight,           # OUT (D,) sum over rows of dy * xhat
                  double[::1] dbias,             # OUT (D,) sum over rows of dy
                  int num_threads):
    """Backward of a per-row normalization with a per-column affine, in one pass per row
    (rows ROW_GROUP at a time; column sums in row chunks fixed by the shape)."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    need_same("dy", dy.shape, x.shape, 2)
    need_len("mean", mean.shape[0], x.shape[0])
    need_len("invstd", invstd.shape[0], x.shape[0])
    need_len("weight", weight.shape[0], x.shape[1])
    need_same("dx", dx.shape, x.shape, 2)
    need_len("dweight", dweight.shape[0], x.shape[1])
    need_len("dbias", dbias.shape[0], x.shape[1])
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef int status
    with nogil:
        status = rows_backward_core(&dy[0, 0], &x[0, 0], &dx[0, 0], x.shape[0], x.shape[1],
                                    &mean[0], &invstd[0], &weight[0], centered, &dweight[0],
                                    &dbias[0], num_threads)
    check_scratch(status)


# ---------------------------------------------------------------------------------------
# Groups (see above): channels-first group norm backward, a thread per group.
# ---------------------------------------------------------------------------------------

cdef inline void group_backward_core(const floating* gp, const floating* xp, floating* dp,
                                     Py_ssize_t R, Py_ssize_t n, Py_ssize_t S, Py_ssize_t C,
                                     const double* mean, const double* invstd,
                                     const double* weight, double* sdy, double* sdx,
                                     int streaming, int num_threads) noexcept nogil:
    """group_backward on pointers: R rows (groups) of n = Cg * S elements; (N, C) sums."""
    cdef Py_ssize_t Cg = n // S, G = C // Cg
    cdef Py_ssize_t r, j, ch, s, c0
    cdef double a, b, k2, k3, inv, sa, sb
    for r in prange(R, schedule='static', num_threads=num_threads):
        s = r // G
        c0 = (r % G) * Cg
        a = 0.0
        b = 0.0
        sa = 0.0  # assigned in the loop, so that prange makes sa and sb private
        sb = 0.0
        for j in range(Cg):
            ch = c0 + j
            run_grad_sums(gp + r * n + j * S, xp + r * n + j * S, S, 1, S, mean[r], &sa, &sb)
            sdy[s * C + ch] = sa
            sdx[s * C + ch] = sb
            a = a + weight[ch] * sa
            b = b + weight[ch] * sb
        inv = invstd[r]
        k2 = -inv * inv * inv * (b / <double>n)
        k3 = -inv * (a / <double>n)
        for j in range(Cg):
            ch = c0 + j
            run_grad_apply(gp + r * n + j * S, xp + r * n + j * S, dp + r * n + j * S, S,
                           mean[r], weight[ch] * inv, k2, k3, streaming)


def group_backward(const floating[:, ::1] dy,      # IN  (N * G, Cg * S), nonempty
                   const floating[:, ::1] x,       # IN  (N * G, Cg * S)
                   Py_ssize_t S,                   # elements per channel
                   const double[::1] mean,         # IN  (N * G,)
                   const double[::1] invstd,       # IN  (N * G,)
                   const double[::1] weight,       # IN  (C,)
                   floating[:, ::1] dx,            # OUT (N * G, Cg * S); may be dy or x
                   double[:, ::1] sum_dy,          # OUT (N, C)
                   double[:, ::1] sum_dy_xmu,      # OUT (N, C) sum of dy * (x - mean)
                   bint streaming,
                   int num_threads):
    """Group norm backward: per group, each channel's sums (dy, dy * (x - mean)), the
    group's coefficients, then dx = k1[c] * dy + k2 * (x - mean) + k3 channel by channel."""
    need_nonempty(x.size, "x")
    need_threads(num_threads)
    cdef Py_ssize_t samples = need_group_view(x.shape[0], x.shape[1], S, weight.shape[0])
    need_same("dy", dy.shape, x.shape, 2)
    need_len("mean", mean.shape[0], x.shape[0])
    need_len("invstd", invstd.shape[0], x.shape[0])
    need_same("dx", dx.shape, x.shape, 2)
    need_shape("sum_dy", sum_dy.shape, 2, samples, weight.shape[0])
    need_same("sum_dy_xmu", sum_dy_xmu.shape, sum_dy.shape, 2)
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    with nogil:
        group_backward_core(&dy[0, 0], &x[0, 0], &dx[0, 0], x.shape[0], x.shape[1], S,
                            weight.shape[0], &mean[0], &invstd[0], &weight[0], &sum_dy[0, 0],
                            &sum_dy_xmu[0, 0], streaming, num_threads)
