# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Max pooling without padding (floor mode): the forward keeps, per output, the index of its
# window's maximum (tap i * kw + j, one byte); the backward scatters dy there in one pass.
# The first maximum wins, and a NaN wins over numbers (the first NaN), as NumPy's argmax and
# PyTorch's max_pool2d. Each plane (channels-first) or sample (channels-last) is one thread's,
# so the backward's overlapping windows add up in a fixed order: the same bits for any thread
# count. Included after conv.pxi.

cdef int need_pool_planes(const Py_ssize_t* big, const Py_ssize_t* small, Py_ssize_t kh,
                          Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, bint byte_index,
                          int num_threads) except -1:
    """Planes (P, H, W) of the input side and (P, Ho, Wo) of the output side: the same P,
    every window inside the input (no padding), taps a byte can name for max pooling."""
    need_windows(big[1], big[2], small[1], small[2],
                 kh, kw, sh, sw, 0, 0, 1, 1, num_threads)
    need(not byte_index or kh * kw <= 255, "max pooling windows have at most 255 taps")
    need_len("the output side's planes", small[0], big[0])
    return 0


cdef int need_pool_rows(const Py_ssize_t* big, const Py_ssize_t* small, Py_ssize_t kh,
                        Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, bint byte_index,
                        int num_threads) except -1:
    """(N, H, W, C) input side and (N, Ho, Wo, C) output side, as need_pool_planes."""
    need_windows(big[1], big[2], small[1], small[2],
                 kh, kw, sh, sw, 0, 0, 1, 1, num_threads)
    need(not byte_index or kh * kw <= 255, "max pooling windows have at most 255 taps")
    need_len("the output side's samples", small[0], big[0])
    need_len("the output side's channels", small[3], big[3])
    return 0


cdef int need_taps(const unsigned char* arg, Py_ssize_t n, Py_ssize_t taps) except -1:
    """Every saved tap index names a tap of the window (the backward scatters by it)."""
    cdef Py_ssize_t i
    cdef unsigned char worst = 0
    with nogil:
        for i in range(n):
            worst = arg[i] if arg[i] > worst else worst
    if n > 0 and worst >= taps:
        raise ValueError(f"cybn kernel arguments: arg holds tap {worst}, the window has "
                         f"{taps}")
    return 0


cdef inline void pool_tap_strided(const floating* xr, Py_ssize_t sw, floating* yr,
                                  unsigned char* ar, Py_ssize_t Wo,
                                  unsigned char t) noexcept nogil:
    """One window tap over an output row (inputs sw apart): the running maxima and taps."""
    cdef Py_ssize_t ow
    cdef floating v, b
    cdef bint take
    for ow in range(Wo):
        v = xr[ow * sw]
        b = yr[ow]
        take = v > b or (v != v and b == b)
        yr[ow] = v if take else b
        ar[ow] = t if take else ar[ow]


def maxpool_forward_planes(const floating[:, :, ::1] x,      # IN  (P, H, W), P = N * C
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           floating[:, :, ::1] y,            # OUT (P, Ho, Wo)
                           unsigned char[:, :, ::1] arg,     # OUT (P, Ho, Wo) tap of the max
                           int num_threads):
    """Channels-first max pooling, a plane per work item; per output row, the taps in
    order, each a pass along the row (selects, no branches)."""
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2]
    cdef Py_ssize_t p, oh, ow, i, j
    cdef floating* yr
    cdef unsigned char* ar
    cdef const floating* xr
    need_pool_planes(x.shape, y.shape, kh, kw, sh, sw, True, num_threads)
    need_shape("arg", arg.shape, 3, P, Ho, Wo)
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                yr = &y[p, oh, 0]
                ar = &arg[p, oh, 0]
                xr = &x[p, oh * sh, 0]
                for ow in range(Wo):
                    yr[ow] = xr[ow * sw]
                    ar[ow] = 0
                for i in range(kh):
                    for j in range(kw):
                        if i == 0 and j == 0:
                            continue
                        pool_tap_strided(&x[p, oh * sh + i, j], sw, yr, ar, Wo,
                                         <unsigned char>(i * kw + j))


def maxpool_backward_planes(const floating[:, :, ::1] dy,    # IN  (P, Ho, Wo)
                            const unsigned char[:, :, ::1] arg,  # IN  (P, Ho, Wo)
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            floating[:, :, ::1] dx,          # OUT (P, H, W), zeroed here
                            int num_threads):
    """dx[window max] += dy, a plane per work item, outputs in order."""
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t p, oh, ow, t, r, c
    need_pool_planes(dx.shape, dy.shape, kh, kw, sh, sw, True, num_threads)
    need_shape("arg", arg.shape, 3, P, Ho, Wo)
    need_taps(&arg[0, 0, 0], arg.size, kh * kw)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    t = arg[p, oh, ow]
                    dx[p, oh * sh + t // kw, ow * sw + t % kw] += dy[p, oh, ow]


def maxpool_forward_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C)
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         floating[:, :, :, ::1] y,           # OUT (N, Ho, Wo, C)
                         unsigned char[:, :, :, ::1] arg,    # OUT (N, Ho, Wo, C)
                         int num_threads):
    """Channels-last max pooling, an output row per work item; the taps in order, each a
    vectorized pass over the channels (selects, no branches)."""
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t item, n, oh, ow, i, j, c
    cdef const floating* xr
    cdef floating* yr
    cdef unsigned char* ar
    need_pool_rows(x.shape, y.shape, kh, kw, sh, sw, True, num_threads)
    need_shape("arg", arg.shape, 4, N, Ho, Wo, C)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            for ow in range(Wo):
                yr = &y[n, oh, ow, 0]
                ar = &arg[n, oh, ow, 0]
                xr = &x[n, oh * sh, ow * sw, 0]
                for c in range(C):
                    yr[c] = xr[c]
                    ar[c] = 0
                for i in range(kh):
                    for j in range(kw):
                        if i == 0 and j == 0:
                            continue
                        pool_tap_rows(&x[n, oh * sh + i, ow * sw + j, 0], yr, ar, C,
                                      <unsigned char>(i * kw + j))


cdef inline void pool_tap_rows(const floating* xr, floating* yr, unsigned char* ar,
                               Py_ssize_t C, unsigned char t) noexcept nogil:
    """One window tap over C channels: the running maximum and its tap, by selects."""
    cdef Py_ssize_t c
    cdef floating v, b
    cdef bint take
    for c in range(C):
        v = xr[c]
        b = yr[c]
        take = v > b or (v != v and b == b)
        yr[c] = v if take else b
        ar[c] = t if take else ar[c]


cdef inline void pool_tap_back_rows(const floating* g, const unsigned char* ar,
                                    floating* dxr, Py_ssize_t C,
                                    unsigned char t) noexcept nogil:
    """dx[c] += dy[c] where this tap held the maximum (a select: other values add 0)."""
    cdef Py_ssize_t c
    for c in range(C):
        dxr[c] = dxr[c] + (g[c] if ar[c] == t else <floating>0)


def maxpool_backward_rows(const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                          const unsigned char[:, :, :, ::1] arg,  # IN  (N, Ho, Wo, C)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          floating[:, :, :, ::1] dx,         # OUT (N, H, W, C), zeroed here
                          int num_threads):
    """dx[window max] += dy, a sample per work item, outputs and taps in order, each tap a
    vectorized pass over the channels."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t n, oh, ow, c, r, q, i, j
    need_pool_rows(dx.shape, dy.shape, kh, kw, sh, sw, True, num_threads)
    need_shape("arg", arg.shape, 4, N, Ho, Wo, C)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    for i in range(kh):
                        for j in range(kw):
                            pool_tap_back_rows(&dy[n, oh, ow, 0], &arg[n, oh, ow, 0],
                                               &dx[n, oh * sh + i, ow * sw + j, 0], C,
                                               <unsigned char>(i * kw + j))


# ---------------------------------------------------------------------------------------
# Average pooling without padding (floor mode): each output the mean of its window (taps
# added in order, then scaled by 1 / (kh * kw)); the backward adds dy / (kh * kw) to every
# tap of the window, a plane or sample per thread, outputs and taps in order.
# ---------------------------------------------------------------------------------------

def avgpool_forward_planes(const floating[:, :, ::1] x,      # IN  (P, H, W), P = N * C
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           floating[:, :, ::1] y,            # OUT (P, Ho, Wo)
                           int num_threads):
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2]
    cdef Py_ssize_t p, oh, ow, i, j
    need_pool_planes(x.shape, y.shape, kh, kw, sh, sw, False, num_threads)
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef floating inv = <floating>(1.0 / <double>(kh * kw))
    cdef floating* yr
    cdef const floating* xr
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                yr = &y[p, oh, 0]
                for ow in range(Wo):
                    yr[ow] = 0
                for i in range(kh):
                    for j in range(kw):
                        xr = &x[p, oh * sh + i, j]
                        for ow in range(Wo):
                            yr[ow] = yr[ow] + xr[ow * sw]
                for ow in range(Wo):
                    yr[ow] = yr[ow] * inv


def avgpool_backward_planes(const floating[:, :, ::1] dy,    # IN  (P, Ho, Wo)
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            floating[:, :, ::1] dx,          # OUT (P, H, W), zeroed here
                            int num_threads):
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t p, oh, ow, i, j, r, c
    need_pool_planes(dx.shape, dy.shape, kh, kw, sh, sw, False, num_threads)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    cdef floating inv = <floating>(1.0 / <double>(kh * kw))
    cdef floating* dr
    cdef const floating* gr
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                gr = &dy[p, oh, 0]
                for i in range(kh):
                    for j in range(kw):
                        dr = &dx[p, oh * sh + i, j]
                        for ow in range(Wo):
                            dr[ow * sw] = dr[ow * sw] + gr[ow] * inv


def avgpool_forward_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C)
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         floating[:, :, :, ::1] y,           # OUT (N, Ho, Wo, C)
                         int num_threads):
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t item, n, oh, ow, i, j, c
    need_pool_rows(x.shape, y.shape, kh, kw, sh, sw, False, num_threads)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef floating inv = <floating>(1.0 / <double>(kh * kw))
    cdef floating* yr
    cdef const floating* xr
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            for ow in range(Wo):
                yr = &y[n, oh, ow, 0]
                for c in range(C):
                    yr[c] = 0
                for i in range(kh):
                    for j in range(kw):
                        xr = &x[n, oh * sh + i, ow * sw + j, 0]
                        for c in range(C):
                            yr[c] = yr[c] + xr[c]
                for c in range(C):
                    yr[c] = yr[c] * inv


def avgpool_backward_rows(const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          floating[:, :, :, ::1] dx,         # OUT (N, H, W, C), zeroed here
                          int num_threads):
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t n, oh, ow, i, j, c, r, q
    need_pool_rows(dx.shape, dy.shape, kh, kw, sh, sw, False, num_threads)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    cdef floating inv = <floating>(1.0 / <double>(kh * kw))
    cdef floating* dr
    cdef const floating* gr
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    gr = &dy[n, oh, ow, 0]
                    for i in range(kh):
                        for j in range(kw):
                            dr = &dx[n, oh * sh + i, ow * sw + j, 0]
                            for c in range(C):
                                dr[c] = dr[c] + gr[c] * inv


# ---------------------------------------------------------------------------------------
# Global average pooling: y[o, i] = the mean over p of x[o, p, i] for x viewed as
# (outer, P, inner) (channels-first: (N * C, H * W, 1); channels-last: (N, H * W, C)), summed
# in double in a fixed order (eight lanes over p for inner 1), one outer slice per work item:
# the same bits for any thread count.
# ---------------------------------------------------------------------------------------

cdef inline void mean_run(const floating* x, Py_ssize_t P, floating* y) noexcept nogil:
    """y[0] = the mean of the P contiguous values at x."""
    cdef double lane[8]
    cdef Py_ssize_t p, j, P8 = P // 8 * 8
    for j in range(8):
        lane[j] = 0.0
    for p in range(0, P8, 8):
        for j in range(8):
            lane[j] += <double>x[p + j]
    for p in range(P8, P):
        lane[p - P8] += <double>x[p]
    y[0] = <floating>((((lane[0] + lane[1]) + (lane[2] + lane[3]))
                       + ((lane[4] + lane[5]) + (lane[6] + lane[7]))) / <double>P)


cdef inline void avg_column(const floating* x, Py_ssize_t P, Py_ssize_t stride,
                            floating* y) noexcept nogil:
    """y[0] = the mean of P values stride apart, summed in order in double."""
    cdef double s = 0.0
    cdef Py_ssize_t p
    for p in range(P):
        s += <double>x[p * stride]
    y[0] = <floating>(s / <double>P)


def global_avgpool(const floating[:, :, ::1] x,    # IN  (outer, P, inner), P >= 1
                   floating[:, ::1] y,             # OUT (outer, inner)
                   int num_threads):
    """y[o, i] = mean over p of x[o, p, i], accumulated in double."""
    need_threads(num_threads)
    need(x.shape[1] >= 1, "global_avgpool needs at least one value per mean")
    need_shape("y", y.shape, 2, x.shape[0], x.shape[2])
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef Py_ssize_t O = x.shape[0], P = x.shape[1], I = x.shape[2], o, p, i
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* yp = &y[0, 0]
    cdef double* acc
    if O == 0 or I == 0:
        return
    with nogil:
        if I == 1:
            for o in prange(O, schedule='static', num_threads=num_threads):
                mean_run(xp + o * P, P, yp + o)
        else:
            for o in prange(O, schedule='static', num_threads=num_threads):
                acc = <double*>malloc(I * sizeof(double))
                if acc != NULL:
                    for i in range(I):
                        acc[i] = 0.0
                    for p in range(P):
                        for i in range(I):
                            acc[i] += <double>xp[(o * P + p) * I + i]
                    for i in range(I):
                        yp[o * I + i] = <floating>(acc[i] / <double>P)
                else:  # out of scratch: the same sums, one column at a time
                    for i in range(I):
                        avg_column(xp + o * P * I + i, P, I, yp + o * I + i)
                free(acc)
