# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Depthwise convolution (one filter per channel), channels-last: x[N, H, W, C],
# weight[kh, kw, C], zero padding (ph, pw) handled by skipping the taps that fall outside
# (no padded copy). Every loop runs over C innermost, contiguous in x, the weight and the
# output, so it vectorizes. Sums run in the data's type, taps in a fixed order: the same
# bits for any thread count. Included after norms.pxi.

cdef struct DwGeometry:
    Py_ssize_t H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw


cdef inline void tap_range(Py_ssize_t o, Py_ssize_t s, Py_ssize_t p, Py_ssize_t d,
                           Py_ssize_t k, Py_ssize_t size, Py_ssize_t* first,
                           Py_ssize_t* last) noexcept nogil:
    """Taps t in [first, last) with 0 <= o * s - p + t * d < size."""
    cdef Py_ssize_t base = o * s - p
    first[0] = 0
    while first[0] < k and base + first[0] * d < 0:
        first[0] += 1
    last[0] = k
    while last[0] > first[0] and base + (last[0] - 1) * d >= size:
        last[0] -= 1


cdef inline DwGeometry dw_geometry(Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t Ho,
                                   Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                   Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) noexcept:
    cdef DwGeometry g
    g.H, g.W, g.C, g.Ho, g.Wo, g.kh, g.kw = H, W, C, Ho, Wo, kh, kw
    g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = sh, sw, ph, pw, dh, dw
    return g


def depthwise_forward(const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
                      const floating[:, :, ::1] weight,  # IN  (kh, kw, C)
                      const floating[::1] bias,          # IN  (C,)
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t dh, Py_ssize_t dw,
                      floating[:, :, :, ::1] y,          # OUT (N, Ho, Wo, C)
                      int num_threads):
    """y[n, oh, ow, c] = bias[c] + sum over taps of x[n, oh*sh - ph + i*dh,
    ow*sw - pw + j*dw, c] * weight[i, j, c], outside taps 0; an output row per work item."""
    need_windows(x.shape[1], x.shape[2], y.shape[1], y.shape[2],
                 weight.shape[0], weight.shape[1], sh, sw, ph, pw, dh, dw, num_threads)
    need_len("weight's channels", weight.shape[2], x.shape[3])
    need_len("bias", bias.shape[0], x.shape[3])
    need_shape("y", y.shape, 4, x.shape[0], y.shape[1], y.shape[2], x.shape[3])
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef DwGeometry g = dw_geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1],
                                    y.shape[2], weight.shape[0], weight.shape[1], sh, sw, ph,
                                    pw, dh, dw)
    cdef Py_ssize_t N = y.shape[0], row, n, oh, ow
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef const floating* bp = &bias[0]
    cdef floating* yp = &y[0, 0, 0, 0]
    with nogil:
        for row in prange(N * g.Ho, schedule='static', num_threads=num_threads):
            n = row // g.Ho
            depthwise_row(xp + n * g.H * g.W * g.C, wp, bp, g, row % g.Ho,
                          yp + row * g.Wo * g.C)


cdef inline void depthwise_sample_backward(const floating* x, const floating* weight,
                                           const floating* dy, floating* dx, double* dweight,
                                           DwGeometry g) noexcept nogil:
    """One sample: dx (zeroed by the caller) and its weight gradient (overwritten), an output
    row at a time: for each tap (i, j) in order, the pixels it reaches, a vector of channels
    at a time (the range checks once per row and tap). Each tap's weight gradient sums its
    pixels in row-major order."""
    cdef Py_ssize_t oh, ow, i, j, c, off, i0, i1, lo, hi, shift, C = g.C
    cdef const floating* gr
    cdef const floating* tap
    cdef const floating* xr
    cdef floating* dxr
    cdef double* acc
    for c in range(g.kh * g.kw * C):
        dweight[c] = 0.0
    for oh in range(g.Ho):
        tap_range(oh, g.sh, g.ph, g.dh, g.kh, g.H, &i0, &i1)
        for i in range(i0, i1):
            xr = x + (oh * g.sh - g.ph + i * g.dh) * g.W * C
            dxr = dx + (oh * g.sh - g.ph + i * g.dh) * g.W * C
            for j in range(g.kw):
                tap = weight + (i * g.kw + j) * C
                acc = dweight + (i * g.kw + j) * C
                out_range(g.sw, g.pw, j * g.dw, g.W, g.Wo, &lo, &hi)
                shift = j * g.dw - g.pw
                for ow in range(lo, hi):
                    gr = dy + (oh * g.Wo + ow) * C
                    off = (ow * g.sw + shift) * C
                    for c in range(C):
                        dxr[off + c] = dxr[off + c] + gr[c] * tap[c]
                        acc[c] = acc[c] + <double>gr[c] * <double>xr[off + c]


def depthwise_backward(const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
                       const floating[:, :, ::1] weight,  # IN  (kh, kw, C)
                       const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t dh, Py_ssize_t dw,
                       floating[:, :, :, ::1] dx,         # OUT (N, H, W, C), zeroed
                       double[:, :, :, ::1] dweight,      # OUT (N, kh, kw, C) per sample
                       int num_threads):
    """dx and each sample's weight gradient; a thread takes whole samples, so the scattered
    dx updates never meet. The caller sums dweight over samples in order."""
    need_windows(x.shape[1], x.shape[2], dy.shape[1], dy.shape[2],
                 weight.shape[0], weight.shape[1], sh, sw, ph, pw, dh, dw, num_threads)
    need_len("weight's channels", weight.shape[2], x.shape[3])
    need_shape("dy", dy.shape, 4, x.shape[0], dy.shape[1], dy.shape[2], x.shape[3])
    need_shape("dx", dx.shape, 4, x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    need_shape("dweight", dweight.shape, 4, x.shape[0], weight.shape[0], weight.shape[1],
               x.shape[3])
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    cdef DwGeometry g = dw_geometry(x.shape[1], x.shape[2], x.shape[3], dy.shape[1],
                                    dy.shape[2], weight.shape[0], weight.shape[1], sh, sw, ph,
                                    pw, dh, dw)
    cdef Py_ssize_t N = dy.shape[0], n
    cdef Py_ssize_t xs = g.H * g.W * g.C, ys = g.Ho * g.Wo * g.C, ws = g.kh * g.kw * g.C
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0, 0]
    cdef double* wg = &dweight[0, 0, 0, 0]
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            depthwise_sample_backward(xp + n * xs, wp, gp + n * ys, dp + n * xs, wg + n * ws, g)


# ---------------------------------------------------------------------------------------
# Channels-first: planes x[N * C, H, W], weight[C, kh, kw]; loops run along the output row
# (contiguous for stride 1). Each output pixel adds its taps in the same order as the
# channels-last kernel, so the forward gives the same bits in both layouts.
# ---------------------------------------------------------------------------------------

cdef inline void out_range(Py_ssize_t s, Py_ssize_t p, Py_ssize_t offset, Py_ssize_t size,
                           Py_ssize_t n_out, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) whose input o * s - p + offset lies in [0, size)."""
    cdef Py_ssize_t start = p - offset
    lo[0] = 0 if start <= 0 else (start + s - 1) // s
    hi[0] = min(n_out, (size - 1 + p - offset) // s + 1) if size - 1 + p - offset >= 0 else 0
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void row_axpy(floating* out, const floating* src, floating a,
                          Py_ssize_t n) noexcept nogil:
    """out[k] += src[k] * a for k < n (a plain loop the compiler vectorizes)."""
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = out[k] + src[k] * a


cdef inline void depthwise_plane_row(const floating* x, const floating* weight,
                                     floating bias, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                                     Py_ssize_t oh, Py_ssize_t sh, Py_ssize_t sw,
                                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                     Py_ssize_t dw, floating* out) noexcept nogil:
    """One output row of one plane (x and weight at the plane's and channel's start)."""
    cdef Py_ssize_t ow, i, j, i0, i1, lo, hi, shift
    cdef const floating* src
    cdef floating wv
    for ow in range(Wo):
        out[ow] = bias
    tap_range(oh, sh, ph, dh, kh, H, &i0, &i1)
    for i in range(i0, i1):
        src = x + (oh * sh - ph + i * dh) * W
        for j in range(kw):
            wv = weight[i * kw + j]
            out_range(sw, pw, j * dw, W, Wo, &lo, &hi)
            shift = j * dw - pw
            if sw == 1:
                row_axpy(out + lo, src + lo + shift, wv, hi - lo)
            else:
                for ow in range(lo, hi):
                    out[ow] = out[ow] + src[ow * sw + shift] * wv


cdef inline void channel_axpy(floating* out, const floating* src, const floating* w,
                              Py_ssize_t C) noexcept nogil:
    """out[c] += src[c] * w[c] for c < C (a plain loop the compiler vectorizes)."""
    cdef Py_ssize_t c
    for c in range(C):
        out[c] = out[c] + src[c] * w[c]


cdef inline void depthwise_row(const floating* x, const floating* weight,
                               const floating* bias, DwGeometry g, Py_ssize_t oh,
                               floating* out) noexcept nogil:
    """One output row (Wo pixels x C channels) of one channels-last sample: the bias, then
    each tap (i, j) in order added to the pixels whose input it reaches, a vector of
    channels at a time: each output element sums its taps in depthwise_pixel's order (the
    same bits), with the range checks once per row and tap instead of per pixel."""
    cdef Py_ssize_t ow, i, j, i0, i1, lo, hi, shift, C = g.C
    cdef const floating* src
    cdef const floating* tap
    for ow in range(g.Wo):
        for j in range(C):
            out[ow * C + j] = bias[j]
    tap_range(oh, g.sh, g.ph, g.dh, g.kh, g.H, &i0, &i1)
    for i in range(i0, i1):
        src = x + (oh * g.sh - g.ph + i * g.dh) * g.W * C
        for j in range(g.kw):
            tap = weight + (i * g.kw + j) * C
            out_range(g.sw, g.pw, j * g.dw, g.W, g.Wo, &lo, &hi)
            shift = j * g.dw - g.pw
            for ow in range(lo, hi):
                channel_axpy(out + ow * C, src + (ow * g.sw + shift) * C, tap, C)


cdef enum:
    PLANE_GRID_BELOW = 32  # stride-1 channels-first outputs narrower than this: whole planes


cdef inline void depthwise_plane_grid(const floating* x, const floating* weight,
                                      floating bias, Py_ssize_t H, Py_ssize_t W,
                                      Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                                      Py_ssize_t kw, Py_ssize_t ph, Py_ssize_t pw,
                                      Py_ssize_t dh, Py_ssize_t dw, floating* scratch,
                                      floating* out) noexcept nogil:
    """One stride-1 plane of narrow rows at once: the plane zero-padded into scratch, the
    outputs computed on the padded grid (row stride W + 2 pw) with one pass per tap over the
    whole plane (short rows cost a call each per tap), the valid columns copied to out.
    Each output adds its taps in the row kernel's order; a tap outside the image adds
    x * 0 (the row kernel skips it: the same value, but for the sign of a zero sum and an
    infinite weight)."""
    cdef Py_ssize_t Hp = H + 2 * ph, Wp = W + 2 * pw, L = (Ho - 1) * Wp + Wo, r, i, j
    cdef floating* pad = scratch
    cdef floating* grid = scratch + Hp * Wp
    memset(pad, 0, Hp * Wp * sizeof(floating))
    for r in range(H):
        memcpy(pad + (r + ph) * Wp + pw, x + r * W, W * sizeof(floating))
    for r in range(L):
        grid[r] = bias
    for i in range(kh):
        for j in range(kw):
            row_axpy(grid, pad + i * dh * Wp + j * dw, weight[i * kw + j], L)
    for r in range(Ho):
        memcpy(out + r * Wo, grid + r * Wp, Wo * sizeof(floating))


def depthwise_forward_planes(const floating[:, :, ::1] x,    # IN  (N * C, H, W)
                             const floating[:, :, ::1] weight,  # IN  (C, kh, kw)
                             const floating[::1] bias,       # IN  (C,)
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                             Py_ssize_t dh, Py_ssize_t dw,
                             floating[:, :, ::1] y,          # OUT (N * C, Ho, Wo)
                             int num_threads):
    """Channels-first depthwise convolution, an output row per work item."""
    need_windows(x.shape[1], x.shape[2], y.shape[1], y.shape[2],
                 weight.shape[1], weight.shape[2], sh, sw, ph, pw, dh, dw, num_threads)
    need(weight.shape[0] >= 1 and x.shape[0] % weight.shape[0] == 0,
         "x's planes must be whole samples of weight's channels")
    need_len("bias", bias.shape[0], weight.shape[0])
    need_shape("y", y.shape, 3, x.shape[0], y.shape[1], y.shape[2])
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2]
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], C = weight.shape[0]
    cdef Py_ssize_t kh = weight.shape[1], kw = weight.shape[2]
    cdef Py_ssize_t row, p, c
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef floating* yp = &y[0, 0, 0]
    cdef floating* scratch
    if sh == 1 and sw == 1 and Wo < PLANE_GRID_BELOW:
        with nogil:
            for p in prange(P, schedule='static', num_threads=num_threads):
                c = p % C
                scratch = <floating*>malloc(((H + 2 * ph) * (W + 2 * pw) + Ho * (W + 2 * pw))
                                            * sizeof(floating))
                if scratch != NULL:
                    depthwise_plane_grid(xp + p * H * W, wp + c * kh * kw, bias[c], H, W, Ho,
                                         Wo, kh, kw, ph, pw, dh, dw, scratch,
                                         yp + p * Ho * Wo)
                else:  # out of scratch: row by row, the same sums
                    for row in range(Ho):
                        depthwise_plane_row(xp + p * H * W, wp + c * kh * kw, bias[c], H, W,
                                            Wo, kh, kw, row, 1, 1, ph, pw, dh, dw,
                                            yp + (p * Ho + row) * Wo)
                free(scratch)
        return
    with nogil:
        for row in prange(P * Ho, schedule='static', num_threads=num_threads):
            p = row // Ho
            c = p % C
            depthwise_plane_row(xp + p * H * W, wp + c * kh * kw, bias[c], H, W, Wo, kh, kw,
                                row % Ho, sh, sw, ph, pw, dh, dw, yp + row * Wo)


cdef inline void depthwise_plane_backward(const floating* x, const floating* weight,
                                          const floating* dy, floating* dx, double* dweight,
                                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho,
                                          Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                                          Py_ssize_t pw, Py_ssize_t dh,
                                          Py_ssize_t dw) noexcept nogil:
    """One plane: dx (zeroed by the caller) and the weight gradient of its channel."""
    cdef Py_ssize_t oh, ow, i, j, lo, hi, shift, ih
    cdef const floating* g
    cdef const floating* src
    cdef floating* dst
    cdef floating wv
    cdef double acc
    for i in range(kh):
        for j in range(kw):
            wv = weight[i * kw + j]
            out_range(sw, pw, j * dw, W, Wo, &lo, &hi)
            shift = j * dw - pw
            acc = 0.0
            for oh in range(Ho):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    continue
                g = dy + oh * Wo
                src = x + ih * W
                dst = dx + ih * W
                for ow in range(lo, hi):
                    dst[ow * sw + shift] = dst[ow * sw + shift] + g[ow] * wv
                for ow in range(lo, hi):
                    acc = acc + <double>g[ow] * <double>src[ow * sw + shift]
            dweight[i * kw + j] = acc


def depthwise_backward_planes(const floating[:, :, ::1] x,     # IN  (N * C, H, W)
                              const floating[:, :, ::1] weight,  # IN  (C, kh, kw)
                              const floating[:, :, ::1] dy,    # IN  (N * C, Ho, Wo)
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                              Py_ssize_t dh, Py_ssize_t dw,
                              floating[:, :, ::1] dx,          # OUT (N * C, H, W), zeroed
                              double[:, :, ::1] dweight,       # OUT (N * C, kh, kw)
                              int num_threads):
    """Channels-first depthwise backward, a plane per work item: dx, and each plane's
    weight gradient (summed over output rows, then columns, in order, in double)."""
    need_windows(x.shape[1], x.shape[2], dy.shape[1], dy.shape[2],
                 weight.shape[1], weight.shape[2], sh, sw, ph, pw, dh, dw, num_threads)
    need(weight.shape[0] >= 1 and x.shape[0] % weight.shape[0] == 0,
         "x's planes must be whole samples of weight's channels")
    need_shape("dy", dy.shape, 3, x.shape[0], dy.shape[1], dy.shape[2])
    need_shape("dx", dx.shape, 3, x.shape[0], x.shape[1], x.shape[2])
    need_shape("dweight", dweight.shape, 3, x.shape[0], weight.shape[1], weight.shape[2])
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    cdef Py_ssize_t P = dy.shape[0], Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], C = weight.shape[0]
    cdef Py_ssize_t kh = weight.shape[1], kw = weight.shape[2]
    cdef Py_ssize_t p
    cdef const floating* xp = &x[0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0]
    cdef double* wg = &dweight[0, 0, 0]
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            depthwise_plane_backward(xp + p * H * W, wp + (p % C) * kh * kw, gp + p * Ho * Wo,
                                     dp + p * H * W, wg + p * kh * kw, H, W, Ho, Wo, kh, kw,
                                     sh, sw, ph, pw, dh, dw)


# ---------------------------------------------------------------------------------------
# im2col / col2im for the dense convolution, channels-last: the column matrix has one row
# per output position and columns in (kh, kw, C) order, so each kernel tap copies one run of
# C contiguous channels; zero padding is handled here (taps outside the input are zeros).
# col2im adds a sample's rows back in a fixed order (a sample per thread): the same bits for
# any thread count.
# ---------------------------------------------------------------------------------------

cdef inline void im2col_row(const floating* x, floating* dst, Py_ssize_t n, Py_ssize_t oh,
                            Py_ssize_t ow, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                            Py_ssize_t dw) noexcept nogil:
    cdef Py_ssize_t i, j, r, q, c
    cdef const floating* src
    for i in range(kh):
        r = oh * sh - ph + i * dh
        for j in range(kw):
            q = ow * sw - pw + j * dw
            if 0 <= r < H and 0 <= q < W:
                src = x + ((n * H + r) * W + q) * C
                for c in range(C):
                    dst[c] = src[c]
            else:
                for c in range(C):
                    dst[c] = 0
            dst += C


def im2col_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C), unpadded
                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                floating[:, ::1] cols,              # OUT (N * Ho * Wo, kh * kw * C)
                Py_ssize_t Ho, Py_ssize_t Wo,
                int num_threads):
    """cols[(n, oh, ow), (i, j, c)] = x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c] (0 outside)."""
    need_windows(x.shape[1], x.shape[2], Ho, Wo,
                 kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_shape("cols", cols.shape, 2, x.shape[0] * Ho * Wo, kh * kw * x.shape[3])
    need_apart("cols", &cols[0, 0], cols.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t K = cols.shape[1], m, rem
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* cp = &cols[0, 0]
    with nogil:
        for m in prange(N * Ho * Wo, schedule='static', num_threads=num_threads):
            rem = m % (Ho * Wo)
            im2col_row(xp, cp + m * K, m // (Ho * Wo), rem // Wo, rem % Wo, H, W, C, kh, kw,
                       sh, sw, ph, pw, dh, dw)


def col2im_rows(const floating[:, ::1] dcols,      # IN  (N * Ho * Wo, kh * kw * C)
                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                Py_ssize_t Ho, Py_ssize_t Wo,
                floating[:, :, :, ::1] dx,          # OUT (N, H, W, C), zeroed here
                int num_threads):
    """dx[n, r, q, c] = the sum of dcols over the (output, tap) pairs reading x[n, r, q, c]."""
    need_windows(dx.shape[1], dx.shape[2], Ho, Wo,
                 kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_shape("dcols", dcols.shape, 2, dx.shape[0] * Ho * Wo, kh * kw * dx.shape[3])
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dcols", &dcols[0, 0], dcols.nbytes, False)
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t K = dcols.shape[1], n, oh, ow, i, j, r, q, c, e
    cdef const floating* src
    cdef floating* dst
    cdef const floating* dp = &dcols[0, 0]
    cdef floating* xp = &dx[0, 0, 0, 0]
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            for e in range(H * W * C):
                xp[n * H * W * C + e] = 0
            for oh in range(Ho):
                for ow in range(Wo):
                    src = dp + ((n * Ho + oh) * Wo + ow) * K
                    for i in range(kh):
                        r = oh * sh - ph + i * dh
                        for j in range(kw):
                            q = ow * sw - pw + j * dw
                            if 0 <= r < H and 0 <= q < W:
                                dst = xp + ((n * H + r) * W + q) * C
                                for c in range(C):
                                    dst[c] = dst[c] + src[c]
                            src = src + C


# ---------------------------------------------------------------------------------------
# im2col / col2im, channels-first: a sample's column matrix is (C * kh * kw, Ho * Wo) with
# one row per (channel, tap), so the product weight (O, C * kh * kw) @ columns gives the
# sample's (O, Ho * Wo) output planes directly, without a transpose. A work item is one
# (sample, channel) plane: im2col writes its kh * kw rows; col2im adds them back into that
# plane in tap order (the same bits for any thread count).
# ---------------------------------------------------------------------------------------

cdef inline void valid_span(Py_ssize_t size, Py_ssize_t out, Py_ssize_t s, Py_ssize_t off,
                            Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the outputs o in [0, out) whose tap o * s + off falls in [0, size)."""
    cdef Py_ssize_t a = 0, b = out
    if off < 0:
        a = (-off + s - 1) // s
    if (out - 1) * s + off >= size:
        b = (size - 1 - off) // s + 1 if size - 1 - off >= 0 else 0
    if b < a:
        b = a
    lo[0] = a if a < out else out
    hi[0] = b if b < out else out


cdef inline void im2col_plane(const floating* x, floating* cols, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                              Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """The kh * kw rows (each Ho * Wo long, at cols) of one input plane x (H, W)."""
    cdef Py_ssize_t i, j, oh, ow, r, off, lo, hi
    cdef const floating* src
    cdef floating* dst
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pw
            valid_span(W, Wo, sw, off, &lo, &hi)
            for oh in range(Ho):
                dst = cols + ((i * kw + j) * Ho + oh) * Wo
                r = oh * sh - ph + i * dh
                if r < 0 or r >= H:
                    for ow in range(Wo):
                        dst[ow] = 0
                    continue
                src = x + r * W + off
                for ow in range(lo):
                    dst[ow] = 0
                if sw == 1:
                    for ow in range(lo, hi):
                        dst[ow] = src[ow]
                else:
                    for ow in range(lo, hi):
                        dst[ow] = src[ow * sw]
                for ow in range(hi, Wo):
                    dst[ow] = 0


cdef inline void col2im_plane(const floating* dcols, floating* dx, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                              Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                              Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """dx (H, W) = the sum of one plane's kh * kw column rows, added tap by tap in order."""
    cdef Py_ssize_t i, j, oh, ow, r, off, lo, hi, e
    cdef const floating* src
    cdef floating* dst
    for e in range(H * W):
        dx[e] = 0
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pw
            valid_span(W, Wo, sw, off, &lo, &hi)
            for oh in range(Ho):
                r = oh * sh - ph + i * dh
                if r < 0 or r >= H:
                    continue
                src = dcols + ((i * kw + j) * Ho + oh) * Wo
                dst = dx + r * W + off
                if sw == 1:
                    for ow in range(lo, hi):
                        dst[ow] = dst[ow] + src[ow]
                else:
                    for ow in range(lo, hi):
                        dst[ow * sw] = dst[ow * sw] + src[ow]


def im2col_planes(const floating[:, :, ::1] x,      # IN  (N * C, H, W), unpadded
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                  floating[:, :, ::1] cols,          # OUT (N * C, kh * kw, Ho * Wo)
                  Py_ssize_t Ho, Py_ssize_t Wo,
                  int num_threads):
    """cols[(n, c), (i, j), (oh, ow)] = x[(n, c), oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside)."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2], p
    need_windows(H, W, Ho, Wo,
                 kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_shape("cols", cols.shape, 3, P, kh * kw, Ho * Wo)
    need_apart("cols", &cols[0, 0, 0], cols.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef const floating* xp = &x[0, 0, 0]
    cdef floating* cp = &cols[0, 0, 0]
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            im2col_plane(xp + p * H * W, cp + p * kh * kw * Ho * Wo, H, W, Ho, Wo, kh, kw,
                         sh, sw, ph, pw, dh, dw)


def col2im_planes(const floating[:, :, ::1] dcols,  # IN  (N * C, kh * kw, Ho * Wo)
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                  Py_ssize_t Ho, Py_ssize_t Wo,
                  floating[:, :, ::1] dx,            # OUT (N * C, H, W), zeroed here
                  int num_threads):
    """dx[(n, c), r, q] = the sum of dcols over the (tap, output) pairs reading x there."""
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2], p
    need_windows(H, W, Ho, Wo,
                 kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_shape("dcols", dcols.shape, 3, P, kh * kw, Ho * Wo)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dcols", &dcols[0, 0, 0], dcols.nbytes, False)
    cdef const floating* dp = &dcols[0, 0, 0]
    cdef floating* xp = &dx[0, 0, 0]
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            col2im_plane(dp + p * kh * kw * Ho * Wo, xp + p * H * W, H, W, Ho, Wo, kh, kw,
                         sh, sw, ph, pw, dh, dw)


# ---------------------------------------------------------------------------------------
# Layout changes: dst[n, b, a] = src[n, a, b] (channels-first (N, C, H*W) <-> channels-last
# (N, H*W, C)), in square tiles that stay in the cache, a tile row per work item.
# ---------------------------------------------------------------------------------------

cdef enum:
    TRANSPOSE_TILE = 32


def transpose_batch(const floating[:, :, ::1] src,   # IN  (N, A, B)
                    floating[:, :, ::1] dst,         # OUT (N, B, A), apart from src
                    int num_threads):
    """dst[n] = src[n]^T for every n."""
    need_threads(num_threads)
    need_shape("dst", dst.shape, 3, src.shape[0], src.shape[2], src.shape[1])
    need_apart("dst", &dst[0, 0, 0], dst.nbytes, "src", &src[0, 0, 0], src.nbytes, False)
    cdef Py_ssize_t N = src.shape[0], A = src.shape[1], B = src.shape[2]
    cdef Py_ssize_t ta = (A + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE, item, n, a0, b0
    cdef Py_ssize_t a1, b1, tb, tbn = (B + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE
    cdef const floating* sp = &src[0, 0, 0]
    cdef floating* dp = &dst[0, 0, 0]
    if N == 0 or A == 0 or B == 0:
        return
    with nogil:
        for item in prange(N * ta, schedule='static', num_threads=num_threads):
            n = item // ta
            a0 = (item % ta) * TRANSPOSE_TILE
            a1 = min(A, a0 + TRANSPOSE_TILE)
            for tb in range(tbn):
                b0 = tb * TRANSPOSE_TILE
                b1 = min(B, b0 + TRANSPOSE_TILE)
                if floating is float:
                    cybn_transpose_block_s(sp + (n * A + a0) * B + b0, B,
                                           dp + (n * B + b0) * A + a0, A, a1 - a0, b1 - b0)
                else:
                    cybn_transpose_block_d(sp + (n * A + a0) * B + b0, B,
                                           dp + (n * B + b0) * A + a0, A, a1 - a0, b1 - b0)


# ---------------------------------------------------------------------------------------
# The weight an input gradient reads: the convolution of dy with the weight's in and out
# channels swapped and its taps flipped. rows[c, T - 1 - t, o] (taps_outer) or
# rows[c, o, T - 1 - t] = weight[o, c, t], in one pass: an input channel per work item,
# reading each output channel's T taps where they lie.
# ---------------------------------------------------------------------------------------

def flipped_weight_rows(const floating[:, :, ::1] weight,  # IN  (out, C, T), T = kh * kw
                        floating[:, :, ::1] rows,          # OUT (C, T, out) or (C, out, T)
                        bint taps_outer,                   # rows is (C, T, out)
                        int num_threads):
    need_threads(num_threads)
    cdef Py_ssize_t O = weight.shape[0], C = weight.shape[1], T = weight.shape[2]
    if taps_outer:
        need_shape("rows", rows.shape, 3, C, T, O)
    else:
        need_shape("rows", rows.shape, 3, C, O, T)
    if O == 0 or C == 0 or T == 0:
        return
    need_apart("rows", &rows[0, 0, 0], rows.nbytes, "weight", &weight[0, 0, 0],
               weight.nbytes, False)
    cdef const floating* wp = &weight[0, 0, 0]
    cdef floating* rp = &rows[0, 0, 0]
    cdef Py_ssize_t c, o, t
    cdef const floating* src
    cdef floating* dst
    with nogil:
        for c in prange(C, schedule='static', num_threads=num_threads):
            dst = rp + c * T * O
            if taps_outer:
                # a row of O per tap, written in order (this input channel's cache
                # lines, one per output channel, stay in L1 across the T rows)
                src = wp + c * T
                for t in range(T):
                    for o in range(O):
                        dst[(T - 1 - t) * O + o] = src[o * C * T + t]
            else:
                for o in range(O):
                    src = wp + (o * C + c) * T
                    for t in range(T):
                        dst[o * T + T - 1 - t] = src[t]
