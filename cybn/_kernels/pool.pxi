# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Max and average pooling as PyTorch has them: zero or more padding, dilation (max), floor or
# ceil mode (the output counts are the caller's, checked here). Windows are clipped to the
# input: padding never wins a max (as -inf would not), and an average divides its sum by
# the window's size within the padded input (count_include_pad), within the input, or by a
# given divisor. Max pooling keeps, per output, the tap (i * kw + j) of its window's maximum
# (one byte); the backward scatters dy there in one pass. The first maximum wins, and a NaN
# wins over numbers (the first NaN), as NumPy's argmax. Each plane (channels-first) or
# sample (channels-last) is one thread's, so the backward's overlapping windows add up in a
# fixed order: the same bits for any thread count. Included after conv.pxi.

cdef enum:
    NO_TAP = 255          # never a tap: windows have at most 254


cdef int need_pool_out(Py_ssize_t size, Py_ssize_t n_out, Py_ssize_t k, Py_ssize_t s,
                       Py_ssize_t p, Py_ssize_t d, bint ceil, str what) except -1:
    """n_out is PyTorch's count of pooling windows over size positions padded by p: floor
    mode, or ceil mode (a last, partial window, unless it would start in the padding)."""
    cdef Py_ssize_t span = size + 2 * p - (k - 1) * d - 1
    cdef Py_ssize_t want = 0
    if span >= 0:
        want = (span + (s - 1 if ceil else 0)) // s + 1
        if ceil and (want - 1) * s >= size + p:
            want -= 1
    if n_out != want:
        raise ValueError(f"cybn kernel arguments: {n_out} output {what}s given, the pooling "
                         f"window (k={k}, stride {s}, padding {p}, dilation {d}, "
                         f"{'ceil' if ceil else 'floor'} mode) over {size} input {what}s "
                         f"gives {want}")
    return 0


cdef int need_pool(const Py_ssize_t* big, const Py_ssize_t* small, bint rows, Py_ssize_t kh,
                   Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                   Py_ssize_t dh, Py_ssize_t dw, bint ceil, bint byte_index,
                   int num_threads) except -1:
    """The input side big and output side small: planes (P, H, W) and (P, Ho, Wo), or with
    rows (N, H, W, C) and (N, Ho, Wo, C); the window, the output counts, taps a byte can
    name for max pooling."""
    cdef int hi = 1, wi = 2
    need_window(kh, kw, sh, sw, ph, pw, dh, dw)
    need_threads(num_threads)
    need_pool_out(big[hi], small[hi], kh, sh, ph, dh, ceil, "row")
    need_pool_out(big[wi], small[wi], kw, sw, pw, dw, ceil, "column")
    need(not byte_index or kh * kw < NO_TAP, "max pooling windows have at most 254 taps")
    need_len("the output side's first axis", small[0], big[0])
    if rows:
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


cdef inline Py_ssize_t first_out(Py_ssize_t off, Py_ssize_t s) noexcept nogil:
    """The first output o >= 0 whose input position o * s + off is >= 0."""
    return 0 if off >= 0 else (-off + s - 1) // s


cdef inline Py_ssize_t end_out(Py_ssize_t off, Py_ssize_t s, Py_ssize_t size,
                               Py_ssize_t n) noexcept nogil:
    """One past the last output o < n whose input position o * s + off is < size."""
    cdef Py_ssize_t e = 0 if size - off <= 0 else (size - off + s - 1) // s
    return e if e < n else n


cdef inline bint max_wins(floating v, floating best) noexcept nogil:
    """Whether v replaces the running maximum best: larger, or the first NaN (NumPy's argmax
    and PyTorch's rule); a tie keeps the earlier value."""
    return v > best or (v != v and best == best)


cdef inline bint windows_inside(Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo,
                                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                Py_ssize_t dw) noexcept nogil:
    """Whether every window lies inside the input (no padding, no partial ceil-mode window):
    the loops then take no range checks and start from each window's first tap."""
    return (ph == 0 and pw == 0 and (Ho - 1) * sh + (kh - 1) * dh < H
            and (Wo - 1) * sw + (kw - 1) * dw < W)


cdef inline Py_ssize_t first_tap(Py_ssize_t start, Py_ssize_t d) noexcept nogil:
    """The first tap i of a window starting at position start (taps d apart) that lies at
    a position >= 0."""
    return 0 if start >= 0 else (-start + d - 1) // d


cdef inline void max_tap_run(const floating* xr, Py_ssize_t sw, floating* yr,
                             unsigned char* ar, Py_ssize_t n, unsigned char t) noexcept nogil:
    """One window tap over n outputs of a row (inputs sw apart): the running maxima and
    their taps, by selects. The maxima start at -inf and the taps at each window's first
    tap inside the input, so a window of -inf values names its first tap."""
    cdef Py_ssize_t o
    cdef floating v, b
    cdef bint take
    for o in range(n):
        v = xr[o * sw]
        b = yr[o]
        take = max_wins(v, b)
        yr[o] = v if take else b
        ar[o] = t if take else ar[o]


def maxpool_forward_planes(const floating[:, :, ::1] x,      # IN  (P, H, W), P = N * C
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                           bint ceil,
                           floating[:, :, ::1] y,            # OUT (P, Ho, Wo)
                           unsigned char[:, :, ::1] arg,     # OUT (P, Ho, Wo) tap of the max
                           int num_threads):
    """Channels-first max pooling, a plane per work item; per output row, the window's
    taps in order, each a pass over the outputs it reaches inside the input."""
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], H = x.shape[1]
    cdef Py_ssize_t W = x.shape[2], p, oh, ow, i, j, r, off, lo, hi
    cdef floating* yr
    cdef unsigned char* ar
    need_pool(x.shape, y.shape, False, kh, kw, sh, sw, ph, pw, dh, dw, ceil, True,
              num_threads)
    need_shape("arg", arg.shape, 3, P, Ho, Wo)
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    if P == 0 or Ho == 0 or Wo == 0:
        return
    cdef bint inside = windows_inside(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                yr = &y[p, oh, 0]
                ar = &arg[p, oh, 0]
                if inside:  # every window inside the input: start from its first tap
                    for ow in range(Wo):
                        yr[ow] = x[p, oh * sh, ow * sw]
                        ar[ow] = 0
                else:
                    i = first_tap(oh * sh - ph, dh)
                    for ow in range(Wo):
                        yr[ow] = -INFINITY
                        ar[ow] = <unsigned char>(i * kw + first_tap(ow * sw - pw, dw))
                for i in range(kh):
                    r = oh * sh - ph + i * dh
                    if r < 0 or r >= H:
                        continue
                    for j in range(kw):
                        if inside and i == 0 and j == 0:
                            continue
                        off = j * dw - pw
                        lo = first_out(off, sw)
                        hi = end_out(off, sw, W, Wo)
                        if lo < hi:
                            max_tap_run(&x[p, r, 0] + off + lo * sw, sw, yr + lo, ar + lo,
                                        hi - lo, <unsigned char>(i * kw + j))


def maxpool_backward_planes(const floating[:, :, ::1] dy,    # IN  (P, Ho, Wo)
                            const unsigned char[:, :, ::1] arg,  # IN  (P, Ho, Wo)
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                            bint ceil,
                            floating[:, :, ::1] dx,          # OUT (P, H, W), zeroed here
                            int num_threads):
    """dx[window max] += dy, a plane per work item, outputs in order; a tap index that does
    not name a position inside the input is an error (nothing is written there)."""
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t p, oh, ow, t, r, q, bad = 0
    need_pool(dx.shape, dy.shape, False, kh, kw, sh, sw, ph, pw, dh, dw, ceil, True,
              num_threads)
    need_shape("arg", arg.shape, 3, P, Ho, Wo)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    if P == 0 or H == 0 or W == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    t = arg[p, oh, ow]
                    r = oh * sh - ph + (t // kw) * dh
                    q = ow * sw - pw + (t % kw) * dw
                    if t >= kh * kw or r < 0 or r >= H or q < 0 or q >= W:
                        bad += 1
                    else:
                        dx[p, r, q] += dy[p, oh, ow]
    if bad:
        raise ValueError(f"cybn kernel arguments: arg names {bad} taps outside the window "
                         f"or the input")


cdef inline void max_tap_rows(const floating* xr, floating* yr, unsigned char* ar,
                              Py_ssize_t C, unsigned char t) noexcept nogil:
    """One window tap over C channels: the running maximum and its tap, by selects."""
    cdef Py_ssize_t c
    cdef floating v, b
    cdef bint take
    if floating is float:  # 8 channels at a time (simd_f32.h)
        cybn_f32_max_tap(xr, yr, ar, C, t)
        return
    for c in range(C):
        v = xr[c]
        b = yr[c]
        take = max_wins(v, b)
        yr[c] = v if take else b
        ar[c] = t if take else ar[c]


def maxpool_forward_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C)
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                         bint ceil,
                         floating[:, :, :, ::1] y,           # OUT (N, Ho, Wo, C)
                         unsigned char[:, :, :, ::1] arg,    # OUT (N, Ho, Wo, C)
                         int num_threads):
    """Channels-last max pooling, an output row per work item; the taps inside the input in
    order, each a vectorized pass over the channels (selects, no branches)."""
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], item, n, oh, ow, i, j, c, r, q
    cdef floating* yr
    cdef unsigned char* ar
    cdef const floating* xr
    need_pool(x.shape, y.shape, True, kh, kw, sh, sw, ph, pw, dh, dw, ceil, True, num_threads)
    need_shape("arg", arg.shape, 4, N, Ho, Wo, C)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    if N == 0 or Ho == 0 or Wo == 0 or C == 0:
        return
    cdef bint inside = windows_inside(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            for ow in range(Wo):
                yr = &y[n, oh, ow, 0]
                ar = &arg[n, oh, ow, 0]
                if inside:  # every window inside the input: start from its first tap
                    xr = &x[n, oh * sh, ow * sw, 0]
                    for c in range(C):
                        yr[c] = xr[c]
                        ar[c] = 0
                else:
                    r = first_tap(oh * sh - ph, dh) * kw + first_tap(ow * sw - pw, dw)
                    for c in range(C):
                        yr[c] = -INFINITY
                        ar[c] = <unsigned char>r
                for i in range(kh):
                    r = oh * sh - ph + i * dh
                    if r < 0 or r >= H:
                        continue
                    for j in range(kw):
                        q = ow * sw - pw + j * dw
                        if q >= 0 and q < W and not (inside and i == 0 and j == 0):
                            max_tap_rows(&x[n, r, q, 0], yr, ar, C,
                                         <unsigned char>(i * kw + j))


cdef inline void max_tap_back_rows(const floating* g, const unsigned char* ar,
                                   floating* dxr, Py_ssize_t C,
                                   unsigned char t) noexcept nogil:
    """dx[c] += dy[c] where this tap held the maximum (a select: other values add 0)."""
    cdef Py_ssize_t c
    if floating is float:  # 8 channels at a time (simd_f32.h)
        cybn_f32_max_tap_back(g, ar, dxr, C, t)
        return
    for c in range(C):
        dxr[c] = dxr[c] + (g[c] if ar[c] == t else <floating>0)


def maxpool_backward_rows(const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                          const unsigned char[:, :, :, ::1] arg,  # IN  (N, Ho, Wo, C)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          bint ceil,
                          floating[:, :, :, ::1] dx,         # OUT (N, H, W, C), zeroed here
                          int num_threads):
    """dx[window max] += dy, a sample per work item, outputs and taps inside the input in
    order, each tap a vectorized pass over the channels (only positions inside the input
    are written, whatever arg holds)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t n, oh, ow, r, q, i, j
    need_pool(dx.shape, dy.shape, True, kh, kw, sh, sw, ph, pw, dh, dw, ceil, True,
              num_threads)
    need_shape("arg", arg.shape, 4, N, Ho, Wo, C)
    need_taps(&arg[0, 0, 0, 0], arg.size, kh * kw)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    if N == 0 or H == 0 or W == 0 or C == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    for i in range(kh):
                        r = oh * sh - ph + i * dh
                        if r < 0 or r >= H:
                            continue
                        for j in range(kw):
                            q = ow * sw - pw + j * dw
                            if q >= 0 and q < W:
                                max_tap_back_rows(&dy[n, oh, ow, 0], &arg[n, oh, ow, 0],
                                                  &dx[n, r, q, 0], C,
                                                  <unsigned char>(i * kw + j))


# ---------------------------------------------------------------------------------------
# Average pooling: each output the sum of its window's taps inside the input (in order)
# divided by the divisor: divisor if > 0, else the window's size within the padded input
# (count_include_pad; in ceil mode a last window may reach past it), else its size within
# the input. The backward adds dy / divisor to every tap inside the input, a plane or
# sample per thread, outputs and taps in order.
# ---------------------------------------------------------------------------------------

cdef inline Py_ssize_t pool_divisor(Py_ssize_t hs, Py_ssize_t ws, Py_ssize_t kh,
                                    Py_ssize_t kw, Py_ssize_t H, Py_ssize_t W, Py_ssize_t ph,
                                    Py_ssize_t pw, bint include_pad,
                                    Py_ssize_t divisor) noexcept nogil:
    """The divisor of the window starting at (hs, ws) (padded coordinates shifted: the
    input's first row and column are 0)."""
    if divisor > 0:
        return divisor
    if include_pad:
        return (min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws)
    return (min(hs + kh, H) - max(hs, 0)) * (min(ws + kw, W) - max(ws, 0))


def avgpool_forward_planes(const floating[:, :, ::1] x,      # IN  (P, H, W), P = N * C
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t ph, Py_ssize_t pw, bint ceil, bint include_pad,
                           Py_ssize_t divisor,               # > 0: divisor_override
                           floating[:, :, ::1] y,            # OUT (P, Ho, Wo)
                           int num_threads):
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], H = x.shape[1]
    cdef Py_ssize_t W = x.shape[2], p, oh, ow, r, j, off, lo, hi, hs
    need_pool(x.shape, y.shape, False, kh, kw, sh, sw, ph, pw, 1, 1, ceil, False,
              num_threads)
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef floating* yr
    cdef const floating* xr
    cdef floating d
    if P == 0 or Ho == 0 or Wo == 0:
        return
    cdef bint inside = windows_inside(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, 1, 1)
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                yr = &y[p, oh, 0]
                hs = oh * sh - ph
                for ow in range(Wo):
                    yr[ow] = 0
                for r in range(max(hs, 0), min(hs + kh, H)):
                    for j in range(kw):
                        off = j - pw
                        lo = first_out(off, sw)
                        hi = end_out(off, sw, W, Wo)
                        xr = &x[p, r, 0] + off
                        for ow in range(lo, hi):
                            yr[ow] = yr[ow] + xr[ow * sw]
                if inside:  # one divisor for the row: a loop the compiler vectorizes
                    d = <floating>(divisor if divisor > 0 else kh * kw)
                    for ow in range(Wo):
                        yr[ow] = yr[ow] / d
                else:
                    for ow in range(Wo):
                        yr[ow] = yr[ow] / <floating>pool_divisor(hs, ow * sw - pw, kh, kw, H,
                                                                 W, ph, pw, include_pad,
                                                                 divisor)


def avgpool_backward_planes(const floating[:, :, ::1] dy,    # IN  (P, Ho, Wo)
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, bint ceil, bint include_pad,
                            Py_ssize_t divisor,
                            floating[:, :, ::1] dx,          # OUT (P, H, W), zeroed here
                            int num_threads):
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t p, oh, ow, r, q, j, hs, ws
    need_pool(dx.shape, dy.shape, False, kh, kw, sh, sw, ph, pw, 1, 1, ceil, False,
              num_threads)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    cdef floating g
    if P == 0 or H == 0 or W == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                hs = oh * sh - ph
                for ow in range(Wo):
                    ws = ow * sw - pw
                    g = dy[p, oh, ow] / <floating>pool_divisor(hs, ws, kh, kw, H, W, ph, pw,
                                                               include_pad, divisor)
                    for r in range(max(hs, 0), min(hs + kh, H)):
                        for q in range(max(ws, 0), min(ws + kw, W)):
                            dx[p, r, q] += g


def avgpool_forward_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C)
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw, bint ceil, bint include_pad,
                         Py_ssize_t divisor,
                         floating[:, :, :, ::1] y,           # OUT (N, Ho, Wo, C)
                         int num_threads):
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t H = x.shape[1], W = x.shape[2], item, n, oh, ow, r, q, c, hs, ws
    need_pool(x.shape, y.shape, True, kh, kw, sh, sw, ph, pw, 1, 1, ceil, False, num_threads)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef floating* yr
    cdef const floating* xr
    cdef floating d
    if N == 0 or Ho == 0 or Wo == 0 or C == 0:
        return
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            hs = oh * sh - ph
            for ow in range(Wo):
                ws = ow * sw - pw
                yr = &y[n, oh, ow, 0]
                for c in range(C):
                    yr[c] = 0
                for r in range(max(hs, 0), min(hs + kh, H)):
                    for q in range(max(ws, 0), min(ws + kw, W)):
                        xr = &x[n, r, q, 0]
                        for c in range(C):
                            yr[c] = yr[c] + xr[c]
                d = <floating>pool_divisor(hs, ws, kh, kw, H, W, ph, pw, include_pad, divisor)
                for c in range(C):
                    yr[c] = yr[c] / d


def avgpool_backward_rows(const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, bint ceil, bint include_pad,
                          Py_ssize_t divisor,
                          floating[:, :, :, ::1] dx,         # OUT (N, H, W, C), zeroed here
                          int num_threads):
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2]
    cdef Py_ssize_t n, oh, ow, r, q, c, hs, ws
    need_pool(dx.shape, dy.shape, True, kh, kw, sh, sw, ph, pw, 1, 1, ceil, False,
              num_threads)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    cdef floating d
    cdef floating* dr
    cdef const floating* gr
    if N == 0 or H == 0 or W == 0 or C == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                hs = oh * sh - ph
                for ow in range(Wo):
                    ws = ow * sw - pw
                    gr = &dy[n, oh, ow, 0]
                    d = <floating>pool_divisor(hs, ws, kh, kw, H, W, ph, pw, include_pad,
                                               divisor)
                    for r in range(max(hs, 0), min(hs + kh, H)):
                        for q in range(max(ws, 0), min(ws + kw, W)):
                            dr = &dx[n, r, q, 0]
                            for c in range(C):
                                dr[c] = dr[c] + gr[c] / d


# ---------------------------------------------------------------------------------------
# Adaptive pooling to any output size: output (oh, ow)'s window is rows [hs[oh], he[oh])
# and columns [ws[ow], we[ow]) (PyTorch's floor(o * H / Ho) .. ceil((o + 1) * H / Ho)),
# given as tables. Averages sum the window in order and divide by its size; maxima keep the
# position r * W + q of each (int32) for the backward. A plane or sample per work item.
# ---------------------------------------------------------------------------------------

cdef int need_bins(const Py_ssize_t[::1] start, const Py_ssize_t[::1] end, Py_ssize_t n_out,
                   Py_ssize_t size, str what) except -1:
    """Each output's window [start, end) is nonempty and inside the size input positions."""
    cdef Py_ssize_t i
    need_len(f"the {what} window starts", start.shape[0], n_out)
    need_len(f"the {what} window ends", end.shape[0], n_out)
    for i in range(n_out):
        if not (0 <= start[i] < end[i] <= size):
            raise ValueError(f"cybn kernel arguments: {what} window {i} is "
                             f"[{start[i]}, {end[i]}), not a nonempty part of [0, {size})")
    return 0


cdef int need_adaptive(const Py_ssize_t* big, const Py_ssize_t* small, bint rows,
                       const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                       const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                       int num_threads) except -1:
    need_threads(num_threads)
    need_len("the output side's first axis", small[0], big[0])
    if rows:
        need_len("the output side's channels", small[3], big[3])
    need_bins(hs, he, small[1], big[1], "row")
    need_bins(ws, we, small[2], big[2], "column")
    return 0


def adaptive_avgpool_planes(const floating[:, :, ::1] x,     # IN  (P, H, W)
                            const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                            const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                            floating[:, :, ::1] y,           # OUT (P, Ho, Wo)
                            int num_threads):
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], p, oh, ow, r, q
    need_adaptive(x.shape, y.shape, False, hs, he, ws, we, num_threads)
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef floating s
    if P == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                for ow in range(Wo):
                    s = 0
                    for r in range(hs[oh], he[oh]):
                        for q in range(ws[ow], we[ow]):
                            s = s + x[p, r, q]
                    y[p, oh, ow] = s / <floating>((he[oh] - hs[oh]) * (we[ow] - ws[ow]))


def adaptive_avgpool_backward_planes(const floating[:, :, ::1] dy,  # IN  (P, Ho, Wo)
                                     const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                                     const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                                     floating[:, :, ::1] dx,        # OUT (P, H, W)
                                     int num_threads):
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], p, oh, ow, r, q
    need_adaptive(dx.shape, dy.shape, False, hs, he, ws, we, num_threads)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    cdef floating g
    if P == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    g = dy[p, oh, ow] / <floating>((he[oh] - hs[oh]) * (we[ow] - ws[ow]))
                    for r in range(hs[oh], he[oh]):
                        for q in range(ws[ow], we[ow]):
                            dx[p, r, q] += g


def adaptive_avgpool_rows(const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
                          const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                          const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                          floating[:, :, :, ::1] y,          # OUT (N, Ho, Wo, C)
                          int num_threads):
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t item, n, oh, ow, r, q, c
    need_adaptive(x.shape, y.shape, True, hs, he, ws, we, num_threads)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef floating* yr
    cdef const floating* xr
    cdef floating d
    if N == 0 or C == 0:
        return
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            for ow in range(Wo):
                yr = &y[n, oh, ow, 0]
                for c in range(C):
                    yr[c] = 0
                for r in range(hs[oh], he[oh]):
                    for q in range(ws[ow], we[ow]):
                        xr = &x[n, r, q, 0]
                        for c in range(C):
                            yr[c] = yr[c] + xr[c]
                d = <floating>((he[oh] - hs[oh]) * (we[ow] - ws[ow]))
                for c in range(C):
                    yr[c] = yr[c] / d


def adaptive_avgpool_backward_rows(const floating[:, :, :, ::1] dy,  # IN  (N, Ho, Wo, C)
                                   const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                                   const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                                   floating[:, :, :, ::1] dx,        # OUT (N, H, W, C)
                                   int num_threads):
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], n, oh, ow, r, q, c
    need_adaptive(dx.shape, dy.shape, True, hs, he, ws, we, num_threads)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    cdef floating d
    cdef floating* dr
    cdef const floating* gr
    if N == 0 or C == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    gr = &dy[n, oh, ow, 0]
                    d = <floating>((he[oh] - hs[oh]) * (we[ow] - ws[ow]))
                    for r in range(hs[oh], he[oh]):
                        for q in range(ws[ow], we[ow]):
                            dr = &dx[n, r, q, 0]
                            for c in range(C):
                                dr[c] = dr[c] + gr[c] / d


def adaptive_maxpool_planes(const floating[:, :, ::1] x,     # IN  (P, H, W)
                            const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                            const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                            floating[:, :, ::1] y,           # OUT (P, Ho, Wo)
                            int[:, :, ::1] index,            # OUT (P, Ho, Wo): r * W + q
                            int num_threads):
    cdef Py_ssize_t P = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], W = x.shape[2]
    cdef Py_ssize_t p, oh, ow, r, q
    need_adaptive(x.shape, y.shape, False, hs, he, ws, we, num_threads)
    need_shape("index", index.shape, 3, P, Ho, Wo)
    need(x.shape[1] * W < 2 ** 31, "adaptive max pooling planes have fewer than 2^31 pixels")
    need_apart("y", &y[0, 0, 0], y.nbytes, "x", &x[0, 0, 0], x.nbytes, False)
    cdef floating v, b
    cdef int at
    if P == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            for oh in range(Ho):
                for ow in range(Wo):
                    b = x[p, hs[oh], ws[ow]]
                    at = <int>(hs[oh] * W + ws[ow])
                    for r in range(hs[oh], he[oh]):
                        for q in range(ws[ow], we[ow]):
                            v = x[p, r, q]
                            if max_wins(v, b):
                                b = v
                                at = <int>(r * W + q)
                    y[p, oh, ow] = b
                    index[p, oh, ow] = at


def adaptive_maxpool_backward_planes(const floating[:, :, ::1] dy,  # IN  (P, Ho, Wo)
                                     const int[:, :, ::1] index,    # IN  (P, Ho, Wo)
                                     floating[:, :, ::1] dx,        # OUT (P, H, W)
                                     int num_threads):
    """dx[index] += dy, a plane per work item, outputs in order; an index outside the
    plane is an error (nothing is written there)."""
    cdef Py_ssize_t P = dx.shape[0], H = dx.shape[1], W = dx.shape[2]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], p, oh, ow, bad = 0
    cdef int at
    need_threads(num_threads)
    need_len("dy's planes", dy.shape[0], P)
    need_shape("index", index.shape, 3, P, Ho, Wo)
    need_apart("dx", &dx[0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0], dy.nbytes, False)
    if P == 0 or H == 0 or W == 0:
        return
    cdef floating* dp = &dx[0, 0, 0]
    with nogil:
        for p in prange(P, schedule='static', num_threads=num_threads):
            memset(&dx[p, 0, 0], 0, H * W * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    at = index[p, oh, ow]
                    if at < 0 or at >= H * W:
                        bad += 1
                    else:
                        dp[p * H * W + at] += dy[p, oh, ow]
    if bad:
        raise ValueError(f"cybn kernel arguments: index holds {bad} positions outside the "
                         f"plane")


def adaptive_maxpool_rows(const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
                          const Py_ssize_t[::1] hs, const Py_ssize_t[::1] he,
                          const Py_ssize_t[::1] ws, const Py_ssize_t[::1] we,
                          floating[:, :, :, ::1] y,          # OUT (N, Ho, Wo, C)
                          int[:, :, :, ::1] index,           # OUT (N, Ho, Wo, C): r * W + q
                          int num_threads):
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t W = x.shape[2], item, n, oh, ow, r, q, c
    need_adaptive(x.shape, y.shape, True, hs, he, ws, we, num_threads)
    need_shape("index", index.shape, 4, N, Ho, Wo, C)
    need(x.shape[1] * W < 2 ** 31, "adaptive max pooling maps have fewer than 2^31 pixels")
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    cdef floating* yr
    cdef int* ir
    cdef const floating* xr
    cdef floating v, b
    cdef bint take
    cdef int at
    if N == 0 or C == 0:
        return
    with nogil:
        for item in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = item // Ho
            oh = item % Ho
            for ow in range(Wo):
                yr = &y[n, oh, ow, 0]
                ir = &index[n, oh, ow, 0]
                xr = &x[n, hs[oh], ws[ow], 0]
                at = <int>(hs[oh] * W + ws[ow])
                for c in range(C):
                    yr[c] = xr[c]
                    ir[c] = at
                for r in range(hs[oh], he[oh]):
                    for q in range(ws[ow], we[ow]):
                        xr = &x[n, r, q, 0]
                        at = <int>(r * W + q)
                        for c in range(C):
                            v = xr[c]
                            b = yr[c]
                            take = max_wins(v, b)
                            yr[c] = v if take else b
                            ir[c] = at if take else ir[c]


def adaptive_maxpool_backward_rows(const floating[:, :, :, ::1] dy,  # IN  (N, Ho, Wo, C)
                                   const int[:, :, :, ::1] index,    # IN  (N, Ho, Wo, C)
                                   floating[:, :, :, ::1] dx,        # OUT (N, H, W, C)
                                   int num_threads):
    """dx[n, index // W, index % W, c] += dy, a sample per work item, outputs in order; an
    index outside the map is an error (nothing is written there)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], n, oh, ow, c, bad = 0
    cdef int at
    need_threads(num_threads)
    need_len("dy's samples", dy.shape[0], N)
    need_len("dy's channels", dy.shape[3], C)
    need_shape("index", index.shape, 4, N, Ho, Wo, C)
    need_apart("dx", &dx[0, 0, 0, 0], dx.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes, False)
    if N == 0 or H == 0 or W == 0 or C == 0:
        return
    cdef floating* dp = &dx[0, 0, 0, 0]
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(&dx[n, 0, 0, 0], 0, H * W * C * sizeof(floating))
            for oh in range(Ho):
                for ow in range(Wo):
                    for c in range(C):
                        at = index[n, oh, ow, c]
                        if at < 0 or at >= H * W:
                            bad += 1
                        else:
                            dp[(n * H * W + at) * C + c] += dy[n, oh, ow, c]
    if bad:
        raise ValueError(f"cybn kernel arguments: index holds {bad} positions outside the "
                         f"map")


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
