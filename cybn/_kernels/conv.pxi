# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Depthwise convolution (one filter per channel), channels-last: x[N, Hp, Wp, C] already
# zero-padded, weight[kh, kw, C]. Every loop runs over C innermost, contiguous in x, the
# weight and the output, so it vectorizes; each output row is one work item. Sums run in the
# data's type, taps in a fixed order: the same bits for any thread count. Included after
# grad.pxi.

def depthwise_forward(const floating[:, :, :, ::1] x,    # IN  (N, Hp, Wp, C), padded
                      const floating[:, :, ::1] weight,  # IN  (kh, kw, C)
                      const floating[::1] bias,          # IN  (C,)
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                      floating[:, :, :, ::1] y,          # OUT (N, Ho, Wo, C)
                      int num_threads):
    """y[n, oh, ow, c] = bias[c] + sum over taps of x[n, oh*sh + i*dh, ow*sw + j*dw, c] *
    weight[i, j, c]."""
    cdef Py_ssize_t N = y.shape[0], Ho = y.shape[1], Wo = y.shape[2], C = y.shape[3]
    cdef Py_ssize_t kh = weight.shape[0], kw = weight.shape[1]
    cdef Py_ssize_t Hp = x.shape[1], Wp = x.shape[2]
    cdef Py_ssize_t row, n, oh, ow, i, j, c
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef const floating* bp = &bias[0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef floating* out
    cdef const floating* src
    cdef const floating* tap
    with nogil:
        for row in prange(N * Ho, schedule='static', num_threads=num_threads):
            n = row // Ho
            oh = row % Ho
            for ow in range(Wo):
                out = yp + ((n * Ho + oh) * Wo + ow) * C
                for c in range(C):
                    out[c] = bp[c]
                for i in range(kh):
                    for j in range(kw):
                        src = xp + ((n * Hp + oh * sh + i * dh) * Wp + ow * sw + j * dw) * C
                        tap = wp + (i * kw + j) * C
                        for c in range(C):
                            out[c] = out[c] + src[c] * tap[c]


def depthwise_backward(const floating[:, :, :, ::1] x,    # IN  (N, Hp, Wp, C), padded
                       const floating[:, :, ::1] weight,  # IN  (kh, kw, C)
                       const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, C)
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                       floating[:, :, :, ::1] dx,         # OUT (N, Hp, Wp, C), zeroed
                       double[:, :, :, ::1] dweight,      # OUT (N, kh, kw, C) per sample
                       int num_threads):
    """dx (padded) and each sample's weight gradient; a thread takes whole samples, so the
    scattered dx updates never meet. The caller sums dweight over samples in order."""
    cdef Py_ssize_t N = dy.shape[0], Ho = dy.shape[1], Wo = dy.shape[2], C = dy.shape[3]
    cdef Py_ssize_t kh = weight.shape[0], kw = weight.shape[1]
    cdef Py_ssize_t Hp = x.shape[1], Wp = x.shape[2]
    cdef Py_ssize_t n, oh, ow, i, j, c, off
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0, 0]
    cdef floating* dp = &dx[0, 0, 0, 0]
    cdef double* wg = &dweight[0, 0, 0, 0]
    cdef const floating* g
    cdef const floating* tap
    cdef double* acc
    with nogil:
        for n in prange(N, schedule='static', num_threads=num_threads):
            for c in range(kh * kw * C):
                wg[n * kh * kw * C + c] = 0.0
            for oh in range(Ho):
                for ow in range(Wo):
                    g = gp + ((n * Ho + oh) * Wo + ow) * C
                    for i in range(kh):
                        for j in range(kw):
                            off = ((n * Hp + oh * sh + i * dh) * Wp + ow * sw + j * dw) * C
                            tap = wp + (i * kw + j) * C
                            acc = wg + ((n * kh + i) * kw + j) * C
                            for c in range(C):
                                dp[off + c] = dp[off + c] + g[c] * tap[c]
                                acc[c] = acc[c] + <double>g[c] * <double>xp[off + c]
