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


cdef inline double masked_run_sum(const floating* x, const unsigned char* m, Py_ssize_t n,
                                  double center, bint square) noexcept nogil:
    """Sum over i < n with m[i] of x[i] (square: (x[i] - center)**2), in 8 interleaved double
    accumulators (added in a fixed order) so the loop is not bound by one add's latency;
    positions with m[i] == 0 are skipped by a select, so NaN there does not leak in."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, a4 = 0.0, a5 = 0.0, a6 = 0.0
    cdef double a7 = 0.0, v
    cdef Py_ssize_t i, n8 = n - n % 8
    for i in range(0, n8, 8):
        if square:
            v = <double>x[i] - center
            a0 += v * v if m[i] else 0.0
            v = <double>x[i + 1] - center
            a1 += v * v if m[i + 1] else 0.0
            v = <double>x[i + 2] - center
            a2 += v * v if m[i + 2] else 0.0
            v = <double>x[i + 3] - center
            a3 += v * v if m[i + 3] else 0.0
            v = <double>x[i + 4] - center
            a4 += v * v if m[i + 4] else 0.0
            v = <double>x[i + 5] - center
            a5 += v * v if m[i + 5] else 0.0
            v = <double>x[i + 6] - center
            a6 += v * v if m[i + 6] else 0.0
            v = <double>x[i + 7] - center
            a7 += v * v if m[i + 7] else 0.0
        else:
            a0 += <double>x[i] if m[i] else 0.0
            a1 += <double>x[i + 1] if m[i + 1] else 0.0
            a2 += <double>x[i + 2] if m[i + 2] else 0.0
            a3 += <double>x[i + 3] if m[i + 3] else 0.0
            a4 += <double>x[i + 4] if m[i + 4] else 0.0
            a5 += <double>x[i + 5] if m[i + 5] else 0.0
            a6 += <double>x[i + 6] if m[i + 6] else 0.0
            a7 += <double>x[i + 7] if m[i + 7] else 0.0
    for i in range(n8, n):
        if m[i]:
            v = <double>x[i] - center if square else <double>x[i]
            a0 += v * v if square else v
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline void masked_channel_moments(const floating* x, const unsigned char* mask,
                                        Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                                        double count, double* mean,
                                        double* m2) noexcept nogil:
    """One channel's (mean, m2) over its outer planes of inner elements (x at the channel's
    first plane), the planes summed in order."""
    cdef Py_ssize_t o
    cdef double s = 0.0, q = 0.0, mu
    for o in range(outer):
        s += masked_run_sum(x + o * C * inner, mask + o * inner, inner, 0.0, False)
    mu = s / count
    for o in range(outer):
        q += masked_run_sum(x + o * C * inner, mask + o * inner, inner, mu, True)
    mean[0] = mu
    m2[0] = q


def masked_plane_moments(const floating[:, :, ::1] x,       # IN  (outer, C, inner)
                         const unsigned char[:, ::1] mask,  # IN  (outer, inner)
                         double count,                      # IN  mask's number of ones, > 0
                         double[::1] mean,                  # OUT (C,)
                         double[::1] m2,                    # OUT (C,)
                         int num_threads):
    """Per-channel mean and M2 over the positions where mask is 1."""
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2], c
    cdef const floating* xp = &x[0, 0, 0]
    cdef const unsigned char* mp = &mask[0, 0]
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
