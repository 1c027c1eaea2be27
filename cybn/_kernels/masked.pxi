# ---------------------------------------------------------------------------------------
# Masked batch statistics: a mask over the non-channel positions (uint8, 1 = counted) leaves
# positions out of the per-channel mean and variance; every position still gets the affine
# transform (apply.pxi). Plane family (outer, C, inner) with a mask (outer, inner): a channel
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
    cdef double* mu = &mean[0]
    with nogil:
        for k in prange(nb, schedule='static', num_threads=num_threads):
            lo = k * MASK_ROW_BLOCK
            masked_row_block_sums(xp + lo * C, mp + lo, min(<Py_ssize_t>MASK_ROW_BLOCK, R - lo),
                                  C, mu, False, pp + k * C)
        for j in range(C):
            mu[j] = 0.0
        for k in range(nb):
            for j in range(C):
                mu[j] += pp[k * C + j]
        for j in range(C):
            mu[j] = mu[j] / count
        for k in prange(nb, schedule='static', num_threads=num_threads):
            lo = k * MASK_ROW_BLOCK
            masked_row_block_sums(xp + lo * C, mp + lo, min(<Py_ssize_t>MASK_ROW_BLOCK, R - lo),
                                  C, mu, True, pp + k * C)
        for j in range(C):
            m2[j] = 0.0
        for k in range(nb):
            for j in range(C):
                m2[j] += pp[k * C + j]


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
