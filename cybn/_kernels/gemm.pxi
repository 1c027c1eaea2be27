# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Matrix products for Linear and the convolutions: C = A @ B (+ C) on packed panels with a
# register-blocked microkernel (gemm.h), float32 and float64, any strides. The work is cut
# into tiles that depend only on the shapes and each output element is summed in one fixed
# order, so the bits are the same for any thread count (FMA inside a variant: the variants
# agree within rounding, not bitwise). Sums over a long inner dimension (weight gradients)
# are cut into chunks fixed by the shapes and added in chunk order. Included after checks.pxi.

cdef extern from "gemm.h" nogil:
    ctypedef struct cybn_operand:
        int kind
        const void* p
        const void* const* rows
        const Py_ssize_t* off
        Py_ssize_t rs, cs, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw
    ctypedef struct cybn_epilogue:
        const void* residual
        Py_ssize_t rsr
        int act
    int CYBN_ACT_NONE
    int CYBN_ACT_RELU
    int CYBN_ACT_RELU6
    int CYBN_MATRIX
    int CYBN_COLS
    int CYBN_COLS_T
    int CYBN_ROWS
    int CYBN_GATHER
    int cybn_gemm_op_s(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t rsa,
                       Py_ssize_t csa, const Py_ssize_t* akoff, const float* const* arows,
                       const cybn_operand* B, const float* bias, float* C, Py_ssize_t rsc,
                       int accumulate, int num_threads)
    int cybn_gemm_op_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A,
                       Py_ssize_t rsa, Py_ssize_t csa, const Py_ssize_t* akoff,
                       const double* const* arows, const cybn_operand* B, const double* bias,
                       double* C, Py_ssize_t rsc, int accumulate, int num_threads)
    void cybn_transpose_block_s(const float* src, Py_ssize_t ss, float* dst, Py_ssize_t ds,
                                Py_ssize_t na, Py_ssize_t nb)
    void cybn_transpose_block_d(const double* src, Py_ssize_t ss, double* dst, Py_ssize_t ds,
                                Py_ssize_t na, Py_ssize_t nb)
    int cybn_gemm_ep_s(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t rsa,
                       Py_ssize_t csa, const Py_ssize_t* akoff, const float* const* arows,
                       const cybn_operand* B, const float* bias, float* C, Py_ssize_t rsc,
                       int accumulate, const cybn_epilogue* ep, int num_threads)
    int cybn_gemm_ep_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A,
                       Py_ssize_t rsa, Py_ssize_t csa, const Py_ssize_t* akoff,
                       const double* const* arows, const cybn_operand* B, const double* bias,
                       double* C, Py_ssize_t rsc, int accumulate, const cybn_epilogue* ep,
                       int num_threads)
    int cybn_gemm_s(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t rsa,
                    Py_ssize_t csa, const float* B, Py_ssize_t rsb, Py_ssize_t csb, float* C,
                    Py_ssize_t rsc, int accumulate, int num_threads)
    int cybn_gemm_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* A, Py_ssize_t rsa,
                    Py_ssize_t csa, const double* B, Py_ssize_t rsb, Py_ssize_t csb, double* C,
                    Py_ssize_t rsc, int accumulate, int num_threads)


cdef inline int gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                     Py_ssize_t rsa, Py_ssize_t csa, const floating* B, Py_ssize_t rsb,
                     Py_ssize_t csb, floating* C, Py_ssize_t rsc, int accumulate,
                     int num_threads) noexcept nogil:
    if floating is float:
        return cybn_gemm_s(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, accumulate, num_threads)
    else:
        return cybn_gemm_d(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, accumulate, num_threads)


cdef inline int gemm_op(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                        const cybn_operand* B, floating* C, int accumulate,
                        int num_threads) noexcept nogil:
    """C (M x N, C-contiguous) = A (M x K, C-contiguous) @ B (or +=), B an operand."""
    if floating is float:
        return cybn_gemm_op_s(M, N, K, A, K, 1, NULL, NULL, B, NULL, C, N, accumulate,
                              num_threads)
    else:
        return cybn_gemm_op_d(M, N, K, A, K, 1, NULL, NULL, B, NULL, C, N, accumulate,
                              num_threads)


cdef inline int gemm_windows(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                             const floating* const* arows, const Py_ssize_t* koff,
                             const floating* B, const floating* bias, floating* C,
                             const cybn_epilogue* ep, int num_threads) noexcept nogil:
    """C (M x N, C-contiguous) = A @ B^T (+ bias), A(i, k) at arows[i][koff[k]], B (N x K)
    C-contiguous: the windows of a convolution read where they lie; then the epilogue ep
    (NULL: none)."""
    cdef cybn_operand b
    b.kind, b.p, b.rows, b.rs, b.cs = CYBN_MATRIX, B, NULL, 1, K
    if floating is float:
        return cybn_gemm_ep_s(M, N, K, NULL, 0, 1, koff, arows, &b, bias, C, N, 0, ep,
                              num_threads)
    else:
        return cybn_gemm_ep_d(M, N, K, NULL, 0, 1, koff, arows, &b, bias, C, N, 0, ep,
                              num_threads)


cdef inline void add_act(floating* y, const floating* res, Py_ssize_t n,
                         int act) noexcept nogil:
    """y += res (NULL: nothing) then the activation act (CYBN_ACT_*, as the products'
    epilogue), elementwise: a product's epilogue run after it, on a sample's output still in
    the cache (the order of the unfused passes)."""
    cdef Py_ssize_t i
    cdef floating v
    if res != NULL:
        for i in range(n):
            y[i] = y[i] + res[i]
    if act == CYBN_ACT_RELU:
        for i in range(n):
            v = y[i]
            y[i] = <floating>0 if v <= 0 else v
    elif act == CYBN_ACT_RELU6:
        for i in range(n):
            v = y[i]
            y[i] = <floating>0 if v < 0 else (<floating>6 if v > 6 else v)


cdef int need_act(int act) except -1:
    need(act == CYBN_ACT_NONE or act == CYBN_ACT_RELU or act == CYBN_ACT_RELU6,
         f"act must be 0 (none), 1 (ReLU) or 2 (ReLU6), got {act}")
    return 0


cdef int need_epilogue(const void* res, Py_ssize_t res_bytes, const Py_ssize_t* res_shape,
                       const Py_ssize_t* y_shape, int ndim, const void* y, Py_ssize_t y_bytes,
                       str y_name) except -1:
    """The checks of a residual beside an output y: y's shape, apart from y."""
    cdef int i
    for i in range(ndim):
        need(res_shape[i] == y_shape[i],
             f"residual has shape {tuple([res_shape[j] for j in range(ndim)])}, expected "
             f"{y_name}'s {tuple([y_shape[j] for j in range(ndim)])}")
    need_apart(y_name, y, y_bytes, "residual", res, res_bytes, False)
    return 0
    need(res_shape == y_shape, f"residual has shape {res_shape}, expected {y_shape}")
    need_apart(y_name, y, y_bytes, "residual", res, res_bytes, False)
    return 0


cdef int input_strides(str name, const char* base, const Py_ssize_t* shape,
                       const Py_ssize_t* strides, int ndim, Py_ssize_t itemsize,
                       const void* out, Py_ssize_t out_bytes, Py_ssize_t* elements) except -1:
    """An input of any strides (negative ones too): its strides in whole elements (the
    products index by element) into ``elements``, and a ValueError unless the bytes between
    its lowest and highest element stay apart from ``out``."""
    cdef Py_ssize_t lo = 0, hi = 0, i
    for i in range(ndim):
        need(strides[i] % itemsize == 0, f"{name}'s strides must be whole elements")
        elements[i] = strides[i] // itemsize
    for i in range(ndim):
        if shape[i] == 0:
            return 0
        if strides[i] < 0:
            lo += (shape[i] - 1) * strides[i]
        else:
            hi += (shape[i] - 1) * strides[i]
    return need_apart("out", out, out_bytes, name, base + lo, hi - lo + itemsize, False)


def matmul(const floating[:, :] a,      # IN  (M, K), any strides
           const floating[:, :] b,      # IN  (K, N), any strides
           floating[:, ::1] out,        # OUT (M, N), apart from a and b
           bint accumulate,             # out += a @ b instead of out = a @ b
           int num_threads,
           const floating[::1] bias=None):  # IN (N,) added to each row (not with accumulate)
    """out = a @ b (+ bias), or out += a @ b, the same bits for any num_threads."""
    need_threads(num_threads)
    need_len("b's rows", b.shape[0], a.shape[1])
    need_shape("out", out.shape, 2, a.shape[0], b.shape[1])
    cdef const floating* bp = NULL
    cdef cybn_operand op
    if bias is not None:
        need(not accumulate, "bias is added to a new product, not with accumulate")
        need_len("bias", bias.shape[0], b.shape[1])
        if bias.shape[0] > 0:
            bp = &bias[0]
            need_apart("out", &out[0, 0], out.nbytes, "bias", bp, bias.nbytes, False)
    cdef Py_ssize_t sa[2]
    cdef Py_ssize_t sb[2]
    input_strides("a", <const char*>&a[0, 0], a.shape, a.strides, 2, sizeof(floating),
                  &out[0, 0], out.nbytes, sa)
    input_strides("b", <const char*>&b[0, 0], b.shape, b.strides, 2, sizeof(floating),
                  &out[0, 0], out.nbytes, sb)
    cdef int status
    op.kind, op.p, op.rows, op.rs, op.cs = CYBN_MATRIX, &b[0, 0], NULL, sb[0], sb[1]
    with nogil:
        if floating is float:
            status = cybn_gemm_op_s(out.shape[0], out.shape[1], a.shape[1], &a[0, 0], sa[0],
                                    sa[1], NULL, NULL, &op, bp, &out[0, 0], out.shape[1],
                                    accumulate, num_threads)
        else:
            status = cybn_gemm_op_d(out.shape[0], out.shape[1], a.shape[1], &a[0, 0], sa[0],
                                    sa[1], NULL, NULL, &op, bp, &out[0, 0], out.shape[1],
                                    accumulate, num_threads)
    check_scratch(status)


def matmul_batch(const floating[:, :, :] a,   # IN  (batch, M, K), any strides (0: shared)
                 const floating[:, :, :] b,   # IN  (batch, K, N), any strides (0: shared)
                 floating[:, :, ::1] out,     # OUT (batch, M, N), apart from a and b
                 bint accumulate,
                 int num_threads):
    """out[i] = a[i] @ b[i] (or +=) for every i: the products spread over the threads when
    there are at least as many as threads, else each product uses them all."""
    need_threads(num_threads)
    need_len("a's batch", a.shape[0], out.shape[0])
    need_len("b's batch", b.shape[0], out.shape[0])
    need_len("b's rows", b.shape[1], a.shape[2])
    need_shape("out", out.shape, 3, out.shape[0], a.shape[1], b.shape[2])
    cdef Py_ssize_t ea[3]
    cdef Py_ssize_t eb[3]
    input_strides("a", <const char*>&a[0, 0, 0], a.shape, a.strides, 3, sizeof(floating),
                  &out[0, 0, 0], out.nbytes, ea)
    input_strides("b", <const char*>&b[0, 0, 0], b.shape, b.strides, 3, sizeof(floating),
                  &out[0, 0, 0], out.nbytes, eb)
    cdef Py_ssize_t sa = ea[0], rsa = ea[1], csa = ea[2], sb = eb[0], rsb = eb[1], csb = eb[2]
    cdef Py_ssize_t n = out.shape[0], M = out.shape[1], N = out.shape[2], K = a.shape[2], i
    cdef const floating* ap = &a[0, 0, 0]
    cdef const floating* bp = &b[0, 0, 0]
    cdef floating* op = &out[0, 0, 0]
    cdef int failed = 0
    with nogil:
        if n >= num_threads:
            for i in prange(n, schedule='static', num_threads=num_threads):
                if gemm(M, N, K, ap + i * sa, rsa, csa, bp + i * sb, rsb, csb, op + i * M * N,
                        N, accumulate, 1) != 0:
                    failed += 1
        else:
            for i in range(n):
                if gemm(M, N, K, ap + i * sa, rsa, csa, bp + i * sb, rsb, csb, op + i * M * N,
                        N, accumulate, num_threads) != 0:
                    failed += 1
    check_scratch(failed)


def matmul_sum(const floating[:, :, :] a,     # IN  (batch, M, K), any strides
               const floating[:, :, :] b,     # IN  (batch, K, N), any strides
               floating[:, ::1] out,          # OUT (M, N), apart from a and b
               Py_ssize_t chunk,              # products per chunk (fixed by the shapes)
               int num_threads):
    """out = sum over i of a[i] @ b[i]: chunks of ``chunk`` consecutive products, each chunk's
    sum on one thread, the chunks' sums added in chunk order."""
    need_threads(num_threads)
    need(chunk >= 1, "chunk must be at least 1")
    need_len("b's batch", b.shape[0], a.shape[0])
    need_len("b's rows", b.shape[1], a.shape[2])
    need_shape("out", out.shape, 2, a.shape[1], b.shape[2])
    cdef Py_ssize_t ea[3]
    cdef Py_ssize_t eb[3]
    input_strides("a", <const char*>&a[0, 0, 0], a.shape, a.strides, 3, sizeof(floating),
                  &out[0, 0], out.nbytes, ea)
    input_strides("b", <const char*>&b[0, 0, 0], b.shape, b.strides, 3, sizeof(floating),
                  &out[0, 0], out.nbytes, eb)
    cdef Py_ssize_t sa = ea[0], rsa = ea[1], csa = ea[2], sb = eb[0], rsb = eb[1], csb = eb[2]
    cdef Py_ssize_t n = a.shape[0], M = out.shape[0], N = out.shape[1], K = a.shape[2]
    cdef Py_ssize_t nchunks = (n + chunk - 1) // chunk, t, i, j, i1
    cdef const floating* ap = &a[0, 0, 0]
    cdef const floating* bp = &b[0, 0, 0]
    cdef floating* op = &out[0, 0]
    cdef floating* part = NULL
    cdef int failed = 0
    if n == 0 or nchunks == 1:
        with nogil:
            if n == 0:
                failed = gemm(M, N, 0, ap, rsa, csa, bp, rsb, csb, op, N, 0, 1)
            for i in range(n):
                if gemm(M, N, K, ap + i * sa, rsa, csa, bp + i * sb, rsb, csb, op, N, i > 0,
                        num_threads) != 0:
                    failed += 1
        check_scratch(failed)
        return
    part = <floating*>malloc(nchunks * M * N * sizeof(floating))
    check_scratch(part == NULL)
    with nogil:
        for t in prange(nchunks, schedule='static', num_threads=num_threads):
            i1 = min(n, (t + 1) * chunk)
            for i in range(t * chunk, i1):
                if gemm(M, N, K, ap + i * sa, rsa, csa, bp + i * sb, rsb, csb,
                        part + t * M * N, N, i > t * chunk, 1) != 0:
                    failed += 1
        add_parts(op, part, nchunks, M * N)
    free(part)
    check_scratch(failed)


def matmul_split(const floating[:, :] a,    # IN  (M, K), any strides
                 const floating[:, :] b,    # IN  (K, N), any strides
                 floating[:, ::1] out,      # OUT (M, N), apart from a and b
                 Py_ssize_t chunk,          # inner-dimension chunk (fixed by the shapes)
                 int num_threads):
    """out = a @ b with the inner dimension cut into chunks of ``chunk``: each chunk's
    product on one thread, the chunks' products added in chunk order."""
    need_threads(num_threads)
    need(chunk >= 1, "chunk must be at least 1")
    need_len("b's rows", b.shape[0], a.shape[1])
    need_shape("out", out.shape, 2, a.shape[0], b.shape[1])
    cdef Py_ssize_t ea[2]
    cdef Py_ssize_t eb[2]
    input_strides("a", <const char*>&a[0, 0], a.shape, a.strides, 2, sizeof(floating),
                  &out[0, 0], out.nbytes, ea)
    input_strides("b", <const char*>&b[0, 0], b.shape, b.strides, 2, sizeof(floating),
                  &out[0, 0], out.nbytes, eb)
    cdef Py_ssize_t rsa = ea[0], csa = ea[1], rsb = eb[0], csb = eb[1]
    cdef Py_ssize_t M = out.shape[0], N = out.shape[1], K = a.shape[1], t, k0
    cdef Py_ssize_t nchunks = max(1, (K + chunk - 1) // chunk)
    cdef const floating* ap = &a[0, 0]
    cdef const floating* bp = &b[0, 0]
    cdef floating* part = <floating*>malloc(nchunks * M * N * sizeof(floating))
    cdef int failed = 0
    check_scratch(part == NULL and M * N > 0)
    with nogil:
        for t in prange(nchunks, schedule='static', num_threads=num_threads):
            k0 = t * chunk
            if gemm(M, N, min(chunk, K - k0), ap + k0 * csa, rsa, csa, bp + k0 * rsb, rsb, csb,
                    part + t * M * N, N, 0, 1) != 0:
                failed += 1
        add_parts(&out[0, 0], part, nchunks, M * N)
    free(part)
    check_scratch(failed)


cdef void add_parts(floating* out, const floating* part, Py_ssize_t nparts,
                    Py_ssize_t size) noexcept nogil:
    """out = part[0] + part[1] + ... in that order, elementwise (parts of size elements)."""
    cdef Py_ssize_t t, j
    for j in range(size):
        out[j] = part[j]
    for t in range(1, nparts):
        for j in range(size):
            out[j] = out[j] + part[t * size + j]


cdef cybn_operand window_columns(int kind, const void* image, const Py_ssize_t* shape,
                                 Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                 Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """The column matrix (or, kind CYBN_COLS_T, its transpose) of the windows over one
    (C, H, W) image (shape: the batch's (N, C, H, W)); see gemm.h."""
    cdef cybn_operand op
    op.kind, op.p, op.rows, op.rs, op.cs = kind, image, NULL, 0, 0
    op.C, op.H, op.W, op.Ho, op.Wo = shape[1], shape[2], shape[3], Ho, Wo
    op.kh, op.kw, op.sh, op.sw, op.ph, op.pw, op.dh, op.dw = kh, kw, sh, sw, ph, pw, dh, dw
    return op


def conv_forward_planes(const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
                        const floating[:, ::1] weight,      # IN  (out, C * kh * kw)
                        const floating[::1] bias,           # IN  (out,), or (0,): none
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                        floating[:, :, :, ::1] y,           # OUT (N, out, Ho, Wo)
                        int num_threads,
                        const floating[:, :, :, ::1] residual=None,  # IN (N, out, Ho, Wo)
                        int act=0):
    """y[n] = weight @ columns(x[n]) + bias[:, None], the columns packed straight from x a
    panel at a time (implicit GEMM: no column matrix); the samples spread over the threads
    when there are at least as many, else each product uses them all. Then, on each sample
    while it is in the cache, + residual (None: none) and the activation act (0 none, 1 ReLU,
    2 ReLU6)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], O = y.shape[1], Ho = y.shape[2]
    cdef Py_ssize_t Wo = y.shape[3], K = C * kh * kw, P = Ho * Wo, n, o, j
    need_windows(x.shape[2], x.shape[3], Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_len("y's samples", N, y.shape[0])
    need_shape("weight", weight.shape, 2, O, K)
    need(bias.shape[0] == O or bias.shape[0] == 0, f"bias has length {bias.shape[0]}, "
         f"expected {O} or 0")
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "weight", &weight[0, 0], weight.nbytes, False)
    need_act(act)
    cdef const floating* rp = NULL
    if residual is not None:
        need_epilogue(&residual[0, 0, 0, 0], residual.nbytes, &residual.shape[0], &y.shape[0],
                      4, &y[0, 0, 0, 0], y.nbytes, "y")
        rp = &residual[0, 0, 0, 0]
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* wp = &weight[0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef int failed = 0
    with nogil:
        if N >= num_threads:  # the samples spread over the threads
            for n in prange(N, schedule='static', num_threads=num_threads):
                if planes_sample(xp + n * C * x.shape[2] * x.shape[3], x.shape, wp, bp, O,
                                 kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, yp + n * O * P,
                                 rp + n * O * P if rp != NULL else NULL, act, 1) != 0:
                    failed += 1
        else:  # each product on all threads (not inside a parallel region: nested regions
            # run on one thread, and so did batch 1 with 2 threads)
            for n in range(N):
                if planes_sample(xp + n * C * x.shape[2] * x.shape[3], x.shape, wp, bp, O,
                                 kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, yp + n * O * P,
                                 rp + n * O * P if rp != NULL else NULL, act,
                                 num_threads) != 0:
                    failed += 1
    check_scratch(failed)


cdef inline void add_row_bias(floating* y, const floating* bias, Py_ssize_t O,
                              Py_ssize_t P) noexcept nogil:
    """y[o, :] += bias[o] for the O rows of P outputs (nothing when bias is NULL)."""
    cdef Py_ssize_t o, q
    cdef floating t
    if bias == NULL:
        return
    for o in range(O):
        t = bias[o]
        for q in range(P):
            y[o * P + q] = y[o * P + q] + t


cdef int planes_sample(const floating* x, const Py_ssize_t* xshape, const floating* wp,
                       const floating* bp, Py_ssize_t O, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo,
                       floating* y, const floating* res, int act,
                       int num_threads) noexcept nogil:
    """One sample of conv_forward_planes (x: (C, H, W), y: (O, Ho, Wo)) on num_threads:
    the product, the bias, then + res and the activation; 0, or -1 when out of memory."""
    cdef Py_ssize_t C = xshape[1], K = C * kh * kw, P = Ho * Wo
    cdef cybn_operand cols
    cdef int status
    if sh == 1 and sw == 1:
        status = conv_padded_sample(x, C, xshape[2], xshape[3], wp, bp, O, kh, kw, ph, pw, dh,
                                    dw, Ho, Wo, y, num_threads)
    else:
        cols = window_columns(CYBN_COLS, x, xshape, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw)
        status = gemm_op(O, P, K, wp, &cols, y, 0, num_threads)
        add_row_bias(y, bp, O, P)
    add_act(y, res, O * P, act)
    return status


cdef int conv_padded_sample(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                            const floating* weight, const floating* bias, Py_ssize_t O,
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t ph, Py_ssize_t pw,
                            Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Ho, Py_ssize_t Wo,
                            floating* y, int num_threads) noexcept nogil:
    """One sample's stride-1 convolution (y: (O, Ho, Wo)) with no packing of the columns:
    x copied into a zero-padded image, whose rows then are the column matrix's rows on the
    padded output grid (output (oh, ow) at oh * Wp + ow; row (c, i, j) of the columns starts
    at image plane c, row i * dh, column j * dw). The product runs on that grid (the
    columns ow >= Wo are discarded) and the valid outputs are copied to y with the bias.
    0, or -1 when out of memory."""
    cdef Py_ssize_t Hp = H + 2 * ph, Wp = W + 2 * pw, K = C * kh * kw
    cdef Py_ssize_t Pp = (Ho - 1) * Wp + Wo, c, r, q, i, j, o, oh
    # without padding x is its own padded image; with whole rows (kw == 1) the padded
    # grid is the output's, and the product writes y directly (a 1x1 convolution: two
    # copies of the maps and their fresh pages were most of its time at batch 1)
    cdef bint unpadded = ph == 0 and pw == 0, direct = unpadded and Wo == Wp
    cdef floating* pad = <floating*>x if unpadded else \
        <floating*>malloc(C * Hp * Wp * sizeof(floating))
    cdef const void** rows = <const void**>malloc(K * sizeof(void*))
    cdef floating* out = y if direct else <floating*>malloc(O * Pp * sizeof(floating))
    cdef cybn_operand b
    cdef int status = -1
    cdef floating t
    if pad != NULL and rows != NULL and out != NULL:
        if not unpadded:
            memset(pad, 0, C * Hp * Wp * sizeof(floating))
        for c in range(C):
            if not unpadded:
                for r in range(H):
                    memcpy(pad + (c * Hp + r + ph) * Wp + pw, x + (c * H + r) * W,
                           W * sizeof(floating))
            for i in range(kh):
                for j in range(kw):
                    rows[(c * kh + i) * kw + j] = pad + (c * Hp + i * dh) * Wp + j * dw
        b.kind, b.p, b.rows = CYBN_ROWS, pad, rows
        if direct and kh == 1:  # x's planes are the columns' rows: a matrix, packed by
            # panels (read in place, rows a plane apart, it ran at a third of the speed)
            b.kind, b.rs, b.cs = CYBN_MATRIX, H * W, 1
        status = gemm_op(O, Pp, K, weight, &b, out, 0, num_threads)
        if status == 0 and direct:  # the outputs in place: the bias added (as below)
            add_row_bias(y, bias, O, Pp)
        elif status == 0:
            for o in range(O):
                for oh in range(Ho):
                    if bias == NULL:
                        memcpy(y + (o * Ho + oh) * Wo, out + o * Pp + oh * Wp,
                               Wo * sizeof(floating))
                        continue
                    t = bias[o]
                    for q in range(Wo):
                        y[(o * Ho + oh) * Wo + q] = out[o * Pp + oh * Wp + q] + t
    if not unpadded:
        free(pad)
    free(rows)
    if not direct:
        free(out)
    return status


def conv_weight_grad_planes(const floating[:, :, :, ::1] dy,  # IN  (N, out, Ho, Wo)
                            const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                            floating[:, ::1] dweight,         # OUT (out, C * kh * kw)
                            Py_ssize_t chunk,                 # samples per chunk (fixed)
                            int num_threads):
    """dweight = sum over n of dy[n] (out x Ho*Wo) @ columns(x[n])^T, the columns packed
    straight from x; chunks of ``chunk`` samples, each summed on one thread (or, one chunk,
    with all threads inside each product), the chunks added in order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], O = dy.shape[1], Ho = dy.shape[2]
    cdef Py_ssize_t Wo = dy.shape[3], K = C * kh * kw, P = Ho * Wo, n, t, n1
    need_windows(x.shape[2], x.shape[3], Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need(chunk >= 1, "chunk must be at least 1")
    need_len("dy's samples", dy.shape[0], N)
    need_shape("dweight", dweight.shape, 2, O, K)
    need_apart("dweight", &dweight[0, 0], dweight.nbytes, "x", &x[0, 0, 0, 0], x.nbytes,
               False)
    need_apart("dweight", &dweight[0, 0], dweight.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes,
               False)
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* gp = &dy[0, 0, 0, 0]
    cdef floating* out = &dweight[0, 0]
    cdef Py_ssize_t image = C * x.shape[2] * x.shape[3]
    cdef Py_ssize_t nchunks = (N + chunk - 1) // chunk
    cdef cybn_operand cols
    cdef int failed = 0
    cdef floating* part = NULL
    if nchunks <= 1:
        with nogil:
            if N == 0:
                memset(out, 0, O * K * sizeof(floating))
            for n in range(N):
                cols = window_columns(CYBN_COLS_T, xp + n * image, x.shape, Ho, Wo, kh, kw,
                                      sh, sw, ph, pw, dh, dw)
                if gemm_op(O, K, P, gp + n * O * P, &cols, out, n > 0, num_threads) != 0:
                    failed += 1
        check_scratch(failed)
        return
    part = <floating*>malloc(nchunks * O * K * sizeof(floating))
    check_scratch(part == NULL)
    with nogil:
        for t in prange(nchunks, schedule='static', num_threads=num_threads):
            n1 = min(N, (t + 1) * chunk)
            for n in range(t * chunk, n1):
                cols = window_columns(CYBN_COLS_T, xp + n * image, x.shape, Ho, Wo, kh, kw,
                                      sh, sw, ph, pw, dh, dw)
                if gemm_op(O, K, P, gp + n * O * P, &cols, part + t * O * K, n > t * chunk,
                           1) != 0:
                    failed += 1
        add_parts(out, part, nchunks, O * K)
    free(part)
    check_scratch(failed)


cdef int window_rows(const floating* x, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t C, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh, Py_ssize_t kw,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                     Py_ssize_t dh, Py_ssize_t dw, bint channel_major, floating** pad,
                     Py_ssize_t** koff, const floating*** rows,
                     int num_threads) noexcept nogil:
    """The windows of channels-last x (N, H, W, C) where they lie: rows[(n * Ho + oh) * Wo +
    ow] points at output (n, oh, ow)'s window, whose column (tap (i, j), channel c) is at
    offset koff[(i * kw + j) * C + c], or with channel_major at koff[(c * kh + i) * kw + j]
    (the order of PyTorch's weight (out, C, kh, kw)); with padding, in a zero-padded copy
    *pad of x. The caller frees the three; -1 if out of memory."""
    cdef Py_ssize_t Hp = H + 2 * ph, Wp = W + 2 * pw, K = kh * kw * C, n, r, i, j, c, oh, ow
    cdef const floating* src = x
    pad[0] = NULL
    koff[0] = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t))
    rows[0] = <const floating**>malloc(N * Ho * Wo * sizeof(floating*))
    if ph > 0 or pw > 0:
        pad[0] = <floating*>malloc(N * Hp * Wp * C * sizeof(floating))
        if pad[0] == NULL:
            return -1
        src = pad[0]
        for n in prange(N, schedule='static', num_threads=num_threads):
            memset(pad[0] + n * Hp * Wp * C, 0, Hp * Wp * C * sizeof(floating))
            for r in range(H):
                memcpy(pad[0] + ((n * Hp + r + ph) * Wp + pw) * C, x + (n * H + r) * W * C,
                       W * C * sizeof(floating))
    if koff[0] == NULL or rows[0] == NULL:
        return -1
    for i in range(kh):
        for j in range(kw):
            for c in range(C):
                koff[0][((c * kh + i) * kw + j) if channel_major else ((i * kw + j) * C + c)] \
                    = (i * dh * Wp + j * dw) * C + c
    for n in range(N):
        for oh in range(Ho):
            for ow in range(Wo):
                rows[0][(n * Ho + oh) * Wo + ow] = src + ((n * Hp + oh * sh) * Wp + ow * sw) * C
    return 0


def conv_forward_rows(const floating[:, :, :, ::1] x,     # IN  (N, H, W, C)
                      const floating[:, ::1] weight,       # IN  (out, C * kh * kw)
                      # ^ columns in (C, kh, kw) order with channel_major, else (kh, kw, C)
                      const floating[::1] bias,            # IN  (out,), or (0,): none
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                      floating[:, :, :, ::1] y,            # OUT (N, Ho, Wo, out)
                      int num_threads,
                      const floating[:, :, :, ::1] residual=None,  # IN (N, Ho, Wo, out)
                      int act=0, bint channel_major=False):
    """The channels-last convolution y = columns(x) @ weight^T + bias with no column matrix
    (an indirect convolution): the product's row for output (n, oh, ow) reads its window where
    it lies (window_rows), its columns in (kh, kw, C) order (each tap's channels read in a
    run), or with channel_major in (C, kh, kw) order, PyTorch's weight (out, C, kh, kw) as it
    is (for few rows, where a reordered copy of the weight would cost more than the reads). The products' tiles start from the bias, get + residual (None:
    none) and the activation act (0 none, 1 ReLU, 2 ReLU6) in registers, and are written
    into y."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t Ho = y.shape[1], Wo = y.shape[2], O = y.shape[3], K = kh * kw * C
    need_windows(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need_len("y's samples", y.shape[0], N)
    need_shape("weight", weight.shape, 2, O, K)
    need(bias.shape[0] == O or bias.shape[0] == 0, f"bias has length {bias.shape[0]}, "
         f"expected {O} or 0")
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "x", &x[0, 0, 0, 0], x.nbytes, False)
    need_apart("y", &y[0, 0, 0, 0], y.nbytes, "weight", &weight[0, 0], weight.nbytes, False)
    if bias.shape[0] > 0:
        need_apart("y", &y[0, 0, 0, 0], y.nbytes, "bias", &bias[0], bias.nbytes, False)
    cdef cybn_epilogue ep
    need_act(act)
    ep.residual, ep.rsr, ep.act = NULL, O, act
    if residual is not None:
        need_epilogue(&residual[0, 0, 0, 0], residual.nbytes, &residual.shape[0], &y.shape[0],
                      4, &y[0, 0, 0, 0], y.nbytes, "y")
        ep.residual = &residual[0, 0, 0, 0]
    if N == 0 or O == 0:
        return
    cdef floating* pad
    cdef Py_ssize_t* koff
    cdef const floating** rows
    cdef const floating* bp = &bias[0] if bias.shape[0] > 0 else NULL
    cdef int status
    with nogil:
        status = window_rows(&x[0, 0, 0, 0], N, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh,
                             dw, channel_major, &pad, &koff, &rows, num_threads)
        if status == 0:
            status = gemm_windows(N * Ho * Wo, O, K, rows, koff, &weight[0, 0], bp,
                                  &y[0, 0, 0, 0], &ep, num_threads)
    free(pad)
    free(koff)
    free(rows)
    check_scratch(status)


def conv_weight_grad_rows(const floating[:, :, :, ::1] dy,   # IN  (N, Ho, Wo, out)
                          const floating[:, :, :, ::1] x,    # IN  (N, H, W, C)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          floating[:, ::1] dweight,          # OUT (out, kh * kw * C)
                          Py_ssize_t chunk,                  # samples per chunk (fixed)
                          int num_threads):
    """dweight = dy^T (out x N*Ho*Wo) @ columns(x), the columns' panels packed from the
    windows where they lie (window_rows), no column matrix; chunks of ``chunk`` samples, each
    summed on one thread (or, one chunk, with all threads inside the product), the chunks
    added in order."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], O = dy.shape[3], K = kh * kw * C
    cdef Py_ssize_t P = Ho * Wo, nchunks, t, n0, n1
    need_windows(H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, num_threads)
    need(chunk >= 1, "chunk must be at least 1")
    need_len("dy's samples", dy.shape[0], N)
    need_shape("dweight", dweight.shape, 2, O, K)
    need_apart("dweight", &dweight[0, 0], dweight.nbytes, "x", &x[0, 0, 0, 0], x.nbytes,
               False)
    need_apart("dweight", &dweight[0, 0], dweight.nbytes, "dy", &dy[0, 0, 0, 0], dy.nbytes,
               False)
    if O == 0 or K == 0:
        return
    if N == 0:
        memset(&dweight[0, 0], 0, O * K * sizeof(floating))
        return
    cdef floating* pad
    cdef Py_ssize_t* koff
    cdef const floating** rows
    cdef const floating* gp = &dy[0, 0, 0, 0]
    cdef floating* part = NULL
    cdef cybn_operand b
    cdef int status, failed = 0
    nchunks = (N + chunk - 1) // chunk
    with nogil:
        status = window_rows(&x[0, 0, 0, 0], N, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh,
                             dw, False, &pad, &koff, &rows, num_threads)
        if status == 0 and nchunks > 1:
            part = <floating*>malloc(nchunks * O * K * sizeof(floating))
            status = -1 if part == NULL else 0
        if status == 0:
            b.kind, b.off, b.p = CYBN_GATHER, koff, NULL
            if nchunks == 1:
                b.rows = <const void* const*>rows
                status = gemm_gather(O, K, N * P, gp, O, &b, &dweight[0, 0], num_threads)
            else:
                for t in prange(nchunks, schedule='static', num_threads=num_threads):
                    n0 = t * chunk
                    n1 = min(N, n0 + chunk)
                    failed += gemm_gather_part(O, K, (n1 - n0) * P, gp + n0 * P * O, O, koff,
                                               rows + n0 * P, part + t * O * K) != 0
                if failed:
                    status = -1
                else:
                    add_parts(&dweight[0, 0], part, nchunks, O * K)
    free(part)
    free(pad)
    free(koff)
    free(rows)
    check_scratch(status)


cdef inline int gemm_gather(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                            Py_ssize_t csa, const cybn_operand* B, floating* C,
                            int num_threads) noexcept nogil:
    """C (M x N, C-contiguous) = A @ B, A(i, k) at A[i + k * csa] (a transposed matrix),
    B a gathering operand."""
    if floating is float:
        return cybn_gemm_op_s(M, N, K, A, 1, csa, NULL, NULL, B, NULL, C, N, 0, num_threads)
    else:
        return cybn_gemm_op_d(M, N, K, A, 1, csa, NULL, NULL, B, NULL, C, N, 0, num_threads)


cdef inline int gemm_gather_part(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                                 Py_ssize_t csa, const Py_ssize_t* koff,
                                 const floating** rows, floating* C) noexcept nogil:
    """gemm_gather on one thread for a chunk whose window rows start at rows."""
    cdef cybn_operand b
    b.kind, b.off, b.p, b.rows = CYBN_GATHER, koff, NULL, <const void* const*>rows
    return gemm_gather(M, N, K, A, csa, &b, C, 1)
