# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Compiled entry points for small arrays: one call takes the ndarrays, checks them cheaply in C,
# computes the per-channel coefficients and runs the kernels of the array's family (plane or
# row, chosen as ops/_layout.ChannelView chooses) on the calling thread.
# Relies on the batch-norm cores (bn_stats, bn_forward, bn_backward); included last.
#
# A call that is not the plain common case (non-ndarray input, strided or misaligned arrays,
# an out= that is not a separate array or exactly the in-place input, anything that the full
# validation would reject, arrays large enough to use threads or the row family) returns
# None, and the op (cybn/ops/batchnorm.py) takes its full Python path, which gives every
# error message. Results are bitwise those of the full path: the same plane kernels on
# the same blocks.

cimport numpy as cnp
from libc.float cimport DBL_EPSILON, FLT_EPSILON

cnp.import_array()

cdef enum:
    FAST_SMALL_SIZE = 4096   # ops/_layout.SMALL_SIZE: smaller arrays are always plane family
    FAST_MIN_INNER = 32      # ops/_layout.MIN_PLANE_INNER
    FAST_ROW_WIDTH = 64      # ops/_layout.MIN_ROW_WIDTH

# The family rule compiled in above, for the test that keeps it equal to the layout's.
FAST_PLANE_RULE = (FAST_SMALL_SIZE, FAST_MIN_INNER, FAST_ROW_WIDTH)


cdef inline int data_kind(object a) noexcept:
    """NPY type number of a C-contiguous, aligned float32/float64 ndarray, else -1."""
    cdef cnp.ndarray arr
    cdef int t
    if type(a) is not cnp.ndarray:
        return -1
    arr = <cnp.ndarray>a
    if not cnp.PyArray_ISCARRAY_RO(arr) or not cnp.PyArray_ISNOTSWAPPED(arr):
        return -1
    t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64:
        return t
    return -1


cdef inline int load_vector(object v, Py_ssize_t C, double fill, double* dst,
                            bint writable) noexcept:
    """Copy a per-channel (C,) float32/float64 ndarray (or None -> fill) into dst as double.
    0 on success, -1 if v needs the full path."""
    cdef cnp.ndarray arr
    cdef Py_ssize_t c
    cdef int t
    if v is None:
        if writable:
            return -1
        for c in range(C):
            dst[c] = fill
        return 0
    t = data_kind(v)
    if t < 0:
        return -1
    arr = <cnp.ndarray>v
    if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIM(arr, 0) != C:
        return -1
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        return -1
    if t == cnp.NPY_FLOAT32:
        for c in range(C):
            dst[c] = (<float*>cnp.PyArray_DATA(arr))[c]
    else:
        for c in range(C):
            dst[c] = (<double*>cnp.PyArray_DATA(arr))[c]
    return 0


cdef inline bint fast_geometry(cnp.ndarray x, object axis, Py_ssize_t max_size,
                               Py_ssize_t* outer, Py_ssize_t* C, Py_ssize_t* inner,
                               Py_ssize_t* k) noexcept:
    """(outer, C, inner) of x for one thread (size < max_size), or False; k: 0 for the plane
    family, else the row family's outer slices per row (ChannelView.of's rule)."""
    cdef int nd = cnp.PyArray_NDIM(x), ax, j
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    if type(axis) is not int or nd < 2 or size == 0 or size >= max_size:
        return False
    if not -nd <= axis < nd:  # compared as Python ints: a huge axis never reaches <int>
        return False
    ax = <int>axis
    if ax < 0:
        ax += nd
    outer[0] = 1
    inner[0] = 1
    for j in range(ax):
        outer[0] *= cnp.PyArray_DIM(x, j)
    for j in range(ax + 1, nd):
        inner[0] *= cnp.PyArray_DIM(x, j)
    C[0] = cnp.PyArray_DIM(x, ax)
    k[0] = family_k(outer[0], C[0], inner[0])
    return True


cdef inline Py_ssize_t family_k(Py_ssize_t outer, Py_ssize_t C, Py_ssize_t inner,
                               bint small_plane=True) noexcept:
    """ChannelView.of's family rule for a view (outer, C, inner): 0 for the plane family,
    else the row family's outer slices per row."""
    cdef Py_ssize_t width = C * inner, cand
    if inner >= FAST_MIN_INNER or (small_plane and outer * width < FAST_SMALL_SIZE):
        return 0
    if width < FAST_ROW_WIDTH:
        for cand in range((FAST_ROW_WIDTH + width - 1) // width, 4 * FAST_ROW_WIDTH // width + 1):
            if outer % cand == 0:
                return cand
    return 1


cdef inline bint disjoint(cnp.ndarray a, object b) noexcept:
    """True when b is None or an ndarray whose bytes do not meet a's (both contiguous)."""
    cdef char* a0
    cdef char* b0
    if b is None:
        return True
    if type(b) is not cnp.ndarray:
        return False
    a0 = <char*>cnp.PyArray_DATA(a)
    b0 = <char*>cnp.PyArray_DATA(<cnp.ndarray>b)
    return (a0 + cnp.PyArray_NBYTES(a) <= b0 or b0 + cnp.PyArray_NBYTES(<cnp.ndarray>b) <= a0
            or cnp.PyArray_NBYTES(a) == 0 or cnp.PyArray_NBYTES(<cnp.ndarray>b) == 0)


cdef inline object result_array(object out, cnp.ndarray xa, int t, tuple in_place,
                                tuple others):
    """The array to write the result into: a new one when out is None; out itself when it is
    a C-contiguous aligned writeable array of x's shape and dtype that is either exactly one
    of the in_place arrays or meets none of them nor any of the others. None: full path
    (which accepts or rejects it with a message)."""
    cdef cnp.ndarray oa
    cdef object a
    if out is None:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), t, 0)
    if data_kind(out) != t:
        return None
    oa = <cnp.ndarray>out
    if not cnp.PyArray_ISWRITEABLE(oa) or not cnp.PyArray_SAMESHAPE(oa, xa):
        return None
    for a in in_place:  # C-contiguous, same shape and dtype: same start means same view
        if cnp.PyArray_DATA(<cnp.ndarray>a) != cnp.PyArray_DATA(oa) and not disjoint(oa, a):
            return None
    for a in others:
        if not disjoint(oa, a):
            return None
    return oa


cdef inline bint positive_float(object v) noexcept:
    return type(v) is float and 0.0 < <double>v < 1e308


cdef inline int affine_serial(const floating* x, floating* y, Py_ssize_t outer, Py_ssize_t C,
                              Py_ssize_t inner, Py_ssize_t k, const double* shift,
                              const double* scale, const double* offset, int ep) noexcept nogil:
    """The affine pass with the epilogue ep (no residual) on the calling thread, in the plane
    family (k = 0) or the row family of k slices per row; -1 if out of memory (nothing
    written)."""
    cdef Py_ssize_t o, c, off
    if k:
        return row_affine_core(x, y, outer // k, k * C * inner, C, inner, shift, scale, offset,
                               0, 1, x, ep)
    for o in range(outer):
        for c in range(C):
            off = (o * C + c) * inner
            run_affine(x + off, y + off, inner, shift[c], scale[c], offset[c], 0, NULL, ep)
    return 0


cdef inline int fast_threads(Py_ssize_t size, Py_ssize_t min_parallel,
                             int num_threads) noexcept nogil:
    """The ops' thread rule (ops/_schedule.threads_for): one thread below min_parallel."""
    return 1 if size < min_parallel or num_threads < 1 else num_threads


cdef inline int affine_threads(const floating* x, floating* y, Py_ssize_t outer, Py_ssize_t C,
                               Py_ssize_t inner, Py_ssize_t k, const double* shift,
                               const double* scale, const double* offset, int ep,
                               int threads) noexcept nogil:
    """affine_serial on `threads` threads (the full path's cores, no streaming: the fast
    path stops below the streaming threshold, ops/_schedule.fast_max_size); -1 if out of
    memory."""
    if threads == 1:
        return affine_serial(x, y, outer, C, inner, k, shift, scale, offset, ep)
    if k:
        return row_affine_core(x, y, outer // k, k * C * inner, C, inner, shift, scale, offset,
                               0, threads, x, ep)
    plane_affine_core(x, y, outer, C, inner, shift, scale, offset, 0, threads, x, ep)
    return 0


cdef inline void store_running(cnp.ndarray arr, const double* batch, double momentum,
                               double factor, Py_ssize_t C) noexcept:
    cdef Py_ssize_t c
    cdef float* f
    cdef double* d
    if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32:
        f = <float*>cnp.PyArray_DATA(arr)
        for c in range(C):
            f[c] = <float>((1.0 - momentum) * <double>f[c] + momentum * (batch[c] * factor))
    else:
        d = <double*>cnp.PyArray_DATA(arr)
        for c in range(C):
            d[c] = (1.0 - momentum) * d[c] + momentum * (batch[c] * factor)


def fast_infer(x, running_mean, running_var, weight, bias, eps, axis, out,
               Py_ssize_t max_size, bint relu=False, Py_ssize_t min_parallel=0,
               int num_threads=1):
    """batch_norm_infer (with a fused ReLU when relu) for a C-contiguous array of fewer than
    max_size elements, on one thread below min_parallel elements, else on num_threads;
    None: use the full path."""
    cdef Py_ssize_t outer, C, inner, k, c
    cdef int t = data_kind(x), status, threads
    cdef cnp.ndarray xa, ya
    cdef object y
    cdef double* buf
    cdef double e
    if t < 0 or not positive_float(eps) or running_mean is None or running_var is None:
        return None
    xa = <cnp.ndarray>x
    if not fast_geometry(xa, axis, max_size, &outer, &C, &inner, &k):
        return None
    e = <double>eps
    buf = <double*>malloc(4 * C * sizeof(double))
    if buf == NULL:
        return None
    if (load_vector(running_mean, C, 0.0, buf, False) < 0
            or load_vector(running_var, C, 0.0, buf + C, False) < 0
            or load_vector(weight, C, 1.0, buf + 2 * C, False) < 0
            or load_vector(bias, C, 0.0, buf + 3 * C, False) < 0):
        free(buf)
        return None
    y = result_array(out, xa, t, (xa,), (running_mean, running_var, weight, bias))
    if y is None:
        free(buf)
        return None
    ya = <cnp.ndarray>y
    for c in range(C):  # scale, the same arithmetic as infer_scale
        buf[C + c] = buf[2 * C + c] * (1.0 / sqrt(buf[C + c] + e))
    threads = fast_threads(outer * C * inner, min_parallel, num_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            status = affine_threads(<const float*>cnp.PyArray_DATA(xa),
                                    <float*>cnp.PyArray_DATA(ya), outer, C, inner, k, buf,
                                    buf + C, buf + 3 * C, EP_RELU if relu else 0, threads)
        else:
            status = affine_threads(<const double*>cnp.PyArray_DATA(xa),
                                    <double*>cnp.PyArray_DATA(ya), outer, C, inner, k, buf,
                                    buf + C, buf + 3 * C, EP_RELU if relu else 0, threads)
    free(buf)
    return ya if status == 0 else None


def fast_train(x, weight, bias, running_mean, running_var, momentum, eps, axis, out,
               Py_ssize_t max_size, bint relu=False, bint unbiased=True,
               Py_ssize_t min_parallel=0, int num_threads=1):
    """batch_norm_train (with a fused ReLU when relu) for a C-contiguous array of fewer than
    max_size elements (threads as fast_infer); None: use the full path. Returns (y, mean,
    invstd). running_var receives the unbiased batch variance, or the biased one when not
    unbiased."""
    cdef Py_ssize_t outer, C, inner, k, c
    cdef int t = data_kind(x), status = 0, threads, ep = EP_RELU if relu else 0
    cdef cnp.ndarray xa, ya, mean_a, invstd_a, rm, rv
    cdef cnp.npy_intp dims[1]
    cdef double* buf
    cdef double* mean
    cdef double* invstd
    cdef double e, mom, count
    cdef object y
    if t < 0 or not positive_float(eps):
        return None
    if type(momentum) is not float or not (0.0 <= <double>momentum <= 1.0):
        return None
    xa = <cnp.ndarray>x
    if not fast_geometry(xa, axis, max_size, &outer, &C, &inner, &k) or outer * inner < 2:
        return None
    e = <double>eps
    mom = <double>momentum
    count = <double>outer * <double>inner
    if (running_mean is None) != (running_var is None):
        return None
    if running_mean is not None:
        if data_kind(running_mean) < 0 or data_kind(running_var) < 0:
            return None
        rm = <cnp.ndarray>running_mean
        rv = <cnp.ndarray>running_var
        if (cnp.PyArray_NDIM(rm) != 1 or cnp.PyArray_DIM(rm, 0) != C
                or cnp.PyArray_NDIM(rv) != 1 or cnp.PyArray_DIM(rv, 0) != C
                or not cnp.PyArray_ISWRITEABLE(rm) or not cnp.PyArray_ISWRITEABLE(rv)):
            return None
        if not disjoint(rm, rv):
            return None  # overlapping running buffers: the full path names the error
    y = result_array(out, xa, t, (xa,), (weight, bias, running_mean, running_var))
    if y is None:
        return None
    ya = <cnp.ndarray>y
    buf = <double*>malloc(4 * C * sizeof(double))
    if buf == NULL:
        return None
    if (load_vector(weight, C, 1.0, buf, False) < 0
            or load_vector(bias, C, 0.0, buf + C, False) < 0):
        free(buf)
        return None
    dims[0] = C
    mean_a = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
    invstd_a = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
    mean = <double*>cnp.PyArray_DATA(mean_a)
    invstd = <double*>cnp.PyArray_DATA(invstd_a)
    # buf: weight, bias, var (m2 first), scale
    threads = fast_threads(outer * C * inner, min_parallel, num_threads)
    if k and t == cnp.NPY_FLOAT32:
        with nogil:
            status = row_train_forward_core(
                <const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(ya),
                <const float*>cnp.PyArray_DATA(xa), outer // k, k * C * inner, C, inner, buf,
                buf + C, e, ep, mean, buf + 2 * C, invstd, 0, threads)
    elif k:
        with nogil:
            status = row_train_forward_core(
                <const double*>cnp.PyArray_DATA(xa), <double*>cnp.PyArray_DATA(ya),
                <const double*>cnp.PyArray_DATA(xa), outer // k, k * C * inner, C, inner, buf,
                buf + C, e, ep, mean, buf + 2 * C, invstd, 0, threads)
    elif threads > 1:  # the full path's cooperative schedule (the arrays fit the cache)
        with nogil:
            if t == cnp.NPY_FLOAT32:
                status = plane_train_forward_core(
                    <const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(ya),
                    <const float*>cnp.PyArray_DATA(xa), outer, C, inner, buf, buf + C, e, ep,
                    mean, buf + 2 * C, invstd, C, 0, threads)
            else:
                status = plane_train_forward_core(
                    <const double*>cnp.PyArray_DATA(xa), <double*>cnp.PyArray_DATA(ya),
                    <const double*>cnp.PyArray_DATA(xa), outer, C, inner, buf, buf + C, e, ep,
                    mean, buf + 2 * C, invstd, C, 0, threads)
    else:
        if t == cnp.NPY_FLOAT32:
            plane_moments_core(<const float*>cnp.PyArray_DATA(xa), outer, C, inner, mean,
                               buf + 2 * C, 1)
        else:
            plane_moments_core(<const double*>cnp.PyArray_DATA(xa), outer, C, inner, mean,
                               buf + 2 * C, 1)
        for c in range(C):
            train_coefficients(count, buf[2 * C + c], e, buf[c], &buf[2 * C + c], &invstd[c],
                               &buf[3 * C + c])
        if t == cnp.NPY_FLOAT32:
            affine_serial(<const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(ya),
                          outer, C, inner, 0, mean, buf + 3 * C, buf + C, EP_RELU if relu else 0)
        else:
            affine_serial(<const double*>cnp.PyArray_DATA(xa), <double*>cnp.PyArray_DATA(ya),
                          outer, C, inner, 0, mean, buf + 3 * C, buf + C, EP_RELU if relu else 0)
    if status != 0:  # out of memory before anything was written: the full path says so
        free(buf)
        return None
    if running_mean is not None:
        store_running(rm, mean, mom, 1.0, C)
        store_running(rv, buf + 2 * C, mom, count / (count - 1.0) if unbiased else 1.0, C)
    free(buf)
    return ya, mean_a, invstd_a


def fast_backward(dy, x, weight, mean, invstd, training, axis, out, Py_ssize_t max_size,
                  Py_ssize_t min_parallel=0, int num_threads=1):
    """batch_norm_backward for C-contiguous arrays of fewer than max_size elements (threads
    as fast_infer); None: use the full path. Returns (dx, dweight, dbias) with dweight,
    dbias in x's dtype."""
    cdef Py_ssize_t outer, C, inner, k, c, qi, o, off, nq, Q
    cdef int t = data_kind(x), status = 0, threads
    cdef cnp.ndarray xa, ga, dxa, dw_a, db_a
    cdef cnp.npy_intp dims[1]
    cdef double* buf
    cdef double* part
    cdef double count
    cdef PlaneBlocks blocks
    cdef bint train
    cdef object dxo
    if t < 0 or data_kind(dy) != t or type(training) is not bool:
        return None
    train = training
    xa = <cnp.ndarray>x
    ga = <cnp.ndarray>dy
    if not cnp.PyArray_SAMESHAPE(xa, ga):
        return None
    if not fast_geometry(xa, axis, max_size, &outer, &C, &inner, &k):
        return None
    dxo = result_array(out, xa, t, (xa, ga), (weight, mean, invstd))
    if dxo is None:
        return None
    dxa = <cnp.ndarray>dxo
    count = <double>outer * <double>inner
    blocks = plane_blocks(outer, inner)
    Q = blocks.count
    nq = 0 if k else min(Q, <Py_ssize_t>MAX_CHUNKS)
    # weight, mean, invstd, sum_dy, sum_dy_xmu, k1, k2, k3, then chunk partials
    buf = <double*>malloc((8 * C + 2 * nq * C) * sizeof(double))
    if buf == NULL:
        return None
    part = buf + 8 * C
    if (load_vector(weight, C, 1.0, buf, False) < 0
            or load_vector(mean, C, 0.0, buf + C, False) < 0 or mean is None
            or load_vector(invstd, C, 0.0, buf + 2 * C, False) < 0 or invstd is None):
        free(buf)
        return None
    threads = fast_threads(outer * C * inner, min_parallel, num_threads)
    if k and t == cnp.NPY_FLOAT32:
        with nogil:
            status = row_backward_core(
                <const float*>cnp.PyArray_DATA(ga), <const float*>cnp.PyArray_DATA(xa),
                <float*>cnp.PyArray_DATA(dxa), outer // k, k * C * inner, C, inner, buf + C,
                buf + 2 * C, buf, train, 0, NULL, NULL, NULL, NULL, buf + 3 * C, buf + 4 * C, 0,
                threads)
    elif k:
        with nogil:
            status = row_backward_core(
                <const double*>cnp.PyArray_DATA(ga), <const double*>cnp.PyArray_DATA(xa),
                <double*>cnp.PyArray_DATA(dxa), outer // k, k * C * inner, C, inner, buf + C,
                buf + 2 * C, buf, train, 0, NULL, NULL, NULL, NULL, buf + 3 * C, buf + 4 * C, 0,
                threads)
    elif threads > 1:  # the full path's cooperative schedule (the arrays fit the cache)
        with nogil:
            if t == cnp.NPY_FLOAT32:
                status = plane_backward_core(
                    <const float*>cnp.PyArray_DATA(ga), <const float*>cnp.PyArray_DATA(xa),
                    <float*>cnp.PyArray_DATA(dxa), outer, C, inner, buf + C, buf + 2 * C, buf,
                    train, 0, NULL, NULL, NULL, NULL, buf + 3 * C, buf + 4 * C, C, 0, threads)
            else:
                status = plane_backward_core(
                    <const double*>cnp.PyArray_DATA(ga), <const double*>cnp.PyArray_DATA(xa),
                    <double*>cnp.PyArray_DATA(dxa), outer, C, inner, buf + C, buf + 2 * C, buf,
                    train, 0, NULL, NULL, NULL, NULL, buf + 3 * C, buf + 4 * C, C, 0, threads)
    else:
        for c in range(C):
            for qi in range(nq):
                if t == cnp.NPY_FLOAT32:
                    plane_chunk_grad_sums(
                        <const float*>cnp.PyArray_DATA(ga), <const float*>cnp.PyArray_DATA(xa),
                        outer, C, inner, blocks, chunk_start(Q, nq, qi),
                        chunk_start(Q, nq, qi + 1), c, buf[C + c], part + 2 * (c * nq + qi))
                else:
                    plane_chunk_grad_sums(
                        <const double*>cnp.PyArray_DATA(ga), <const double*>cnp.PyArray_DATA(xa),
                        outer, C, inner, blocks, chunk_start(Q, nq, qi),
                        chunk_start(Q, nq, qi + 1), c, buf[C + c], part + 2 * (c * nq + qi))
            plane_finish_sums(part + 2 * c * nq, nq, &buf[3 * C + c], &buf[4 * C + c])
            grad_coefficients(count, buf[3 * C + c], buf[4 * C + c], buf[2 * C + c], buf[c],
                              train, &buf[5 * C + c], &buf[6 * C + c], &buf[7 * C + c])
        for o in range(outer):
            for c in range(C):
                off = (o * C + c) * inner
                if t == cnp.NPY_FLOAT32:
                    run_grad_apply(<const float*>cnp.PyArray_DATA(ga) + off,
                                   <const float*>cnp.PyArray_DATA(xa) + off,
                                   <float*>cnp.PyArray_DATA(dxa) + off, inner, buf[C + c],
                                   buf[5 * C + c], buf[6 * C + c], buf[7 * C + c], 0)
                else:
                    run_grad_apply(<const double*>cnp.PyArray_DATA(ga) + off,
                                   <const double*>cnp.PyArray_DATA(xa) + off,
                                   <double*>cnp.PyArray_DATA(dxa) + off, inner, buf[C + c],
                                   buf[5 * C + c], buf[6 * C + c], buf[7 * C + c], 0)
    if status != 0:  # out of memory before anything was written: the full path says so
        free(buf)
        return None
    dims[0] = C
    dw_a = cnp.PyArray_EMPTY(1, dims, t, 0)
    db_a = cnp.PyArray_EMPTY(1, dims, t, 0)
    for c in range(C):  # dweight = sum(dy * (x - mean)) * invstd, dbias = sum(dy)
        if t == cnp.NPY_FLOAT32:
            (<float*>cnp.PyArray_DATA(dw_a))[c] = <float>(buf[4 * C + c] * buf[2 * C + c])
            (<float*>cnp.PyArray_DATA(db_a))[c] = <float>buf[3 * C + c]
        else:
            (<double*>cnp.PyArray_DATA(dw_a))[c] = buf[4 * C + c] * buf[2 * C + c]
            (<double*>cnp.PyArray_DATA(db_a))[c] = buf[3 * C + c]
    free(buf)
    return dxa, dw_a, db_a


cdef inline bint mask_array(object keep, cnp.ndarray like) noexcept:
    """keep is a C-contiguous writeable uint8 ndarray of like's size, apart from like."""
    if type(keep) is not cnp.ndarray:
        return False
    cdef cnp.ndarray ka = <cnp.ndarray>keep
    return (cnp.PyArray_ISCARRAY(ka) and cnp.PyArray_TYPE(ka) == cnp.NPY_UINT8
            and cnp.PyArray_SIZE(ka) == cnp.PyArray_SIZE(like) and disjoint(like, ka))


def fast_relu(x, keep, bint inplace, int num_threads):
    """ReLU's forward in one call: (y, keep) for a C-contiguous aligned float32/float64 x,
    keep (uint8, 1 where x is not <= 0) written into ``keep`` (a C-contiguous uint8 array of
    x's size) or a new array when None; y is x itself with ``inplace``. None where this does
    not apply (an empty or strided x, a read-only x with inplace, another keep): the caller's
    full path."""
    cdef int t = data_kind(x)
    cdef cnp.ndarray xa, ya, ka
    cdef Py_ssize_t n
    if t < 0 or num_threads < 1:
        return None
    xa = <cnp.ndarray>x
    n = cnp.PyArray_SIZE(xa)
    if n == 0 or (inplace and not cnp.PyArray_ISWRITEABLE(xa)):
        return None
    if keep is None:
        ka = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), cnp.NPY_UINT8, 0)
    elif mask_array(keep, xa):
        ka = <cnp.ndarray>keep
    else:
        return None
    ya = xa if inplace else cnp.PyArray_EMPTY(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), t, 0)
    cdef unsigned char* kp = <unsigned char*>cnp.PyArray_DATA(ka)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            relu_forward_blocks(<const float*>cnp.PyArray_DATA(xa),
                                <float*>cnp.PyArray_DATA(ya), kp, n, num_threads)
        else:
            relu_forward_blocks(<const double*>cnp.PyArray_DATA(xa),
                                <double*>cnp.PyArray_DATA(ya), kp, n, num_threads)
    return ya, ka


def fast_relu_backward(dy, keep, int dtype_num, int num_threads):
    """ReLU's backward in one call: dx = dy where keep, else 0, for a C-contiguous aligned
    dy of the forward's dtype (type number dtype_num) and keep's size; None where this does
    not apply (the caller's full path converts dy)."""
    cdef int t = data_kind(dy)
    cdef cnp.ndarray ga, ka, da
    cdef Py_ssize_t n
    if t != dtype_num or num_threads < 1 or type(keep) is not cnp.ndarray:
        return None
    ga = <cnp.ndarray>dy
    ka = <cnp.ndarray>keep
    n = cnp.PyArray_SIZE(ga)
    if (n == 0 or not cnp.PyArray_ISCARRAY_RO(ka) or cnp.PyArray_TYPE(ka) != cnp.NPY_UINT8
            or cnp.PyArray_SIZE(ka) != n):
        return None
    da = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(ga), cnp.PyArray_DIMS(ga), t, 0)
    cdef const unsigned char* kp = <const unsigned char*>cnp.PyArray_DATA(ka)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            relu_backward_blocks(<const float*>cnp.PyArray_DATA(ga), kp,
                                 <float*>cnp.PyArray_DATA(da), n, num_threads)
        else:
            relu_backward_blocks(<const double*>cnp.PyArray_DATA(ga), kp,
                                 <double*>cnp.PyArray_DATA(da), n, num_threads)
    return da


cdef enum:
    GEMV_MIN_PARALLEL = 1048576  # multiply-adds below which a batch of one runs on 1 thread


cdef inline void dot_row(const floating* w, const floating* x, Py_ssize_t K, floating start,
                         floating* out) noexcept nogil:
    """out[0] = start + sum over k of w[k] * x[k]: sixteen lanes (k mod 16, in order, a
    plain loop the compiler vectorizes), added pairwise, then the tail in order."""
    cdef floating lane[16]
    cdef floating s
    cdef Py_ssize_t k, l, K16 = K // 16 * 16
    for l in range(16):
        lane[l] = 0
    for k in range(0, K16, 16):
        for l in range(16):
            lane[l] = lane[l] + w[k + l] * x[k + l]
    for l in range(8):
        lane[l] = lane[l] + lane[l + 8]
    for l in range(4):
        lane[l] = lane[l] + lane[l + 4]
    s = start + ((lane[0] + lane[2]) + (lane[1] + lane[3]))
    for k in range(K16, K):
        s = s + w[k] * x[k]
    out[0] = s


cdef inline void matvec(const floating* w, const floating* x, const floating* bias,
                        Py_ssize_t N, Py_ssize_t K, floating* y, int num_threads) noexcept nogil:
    """y[n] = bias[n] + weight[n] . x for weight (N, K) row-major: one dot per output, an
    output per work item (a batch of one: packing the weight for a product tile would read
    it twice and fill one tile row in eight)."""
    cdef Py_ssize_t n
    if <double>N * <double>K < GEMV_MIN_PARALLEL:
        num_threads = 1
    for n in prange(N, schedule='static', num_threads=num_threads):
        dot_row(w + n * K, x, K, bias[n] if bias != NULL else <floating>0, y + n)


def fast_linear(x, weight, bias, int num_threads, int act=0):
    """Linear's forward in one call: x @ weight^T (+ bias) as a new array, for a C-contiguous
    aligned 2-D float32/float64 x, a weight (out, in) and a bias (out,) or None of x's dtype:
    the product's tiles starting from the bias (as _kernels.matmul with bias), or for one
    row of x, a dot product per output (matvec); then the activation act (0 none, 1 ReLU,
    2 ReLU6; in the product's registers). None where this does not apply (the caller's full path)."""
    cdef int t = data_kind(x)
    cdef cnp.ndarray xa, wa, ba, ya
    cdef cnp.npy_intp dims[2]
    cdef Py_ssize_t M, N, K
    cdef cybn_operand b
    cdef cybn_epilogue ep
    cdef int status
    if t < 0 or data_kind(weight) != t or num_threads < 1 or not 0 <= act <= 2:
        return None
    xa = <cnp.ndarray>x
    wa = <cnp.ndarray>weight
    if cnp.PyArray_NDIM(xa) != 2 or cnp.PyArray_NDIM(wa) != 2:
        return None
    M, K, N = cnp.PyArray_DIM(xa, 0), cnp.PyArray_DIM(xa, 1), cnp.PyArray_DIM(wa, 0)
    if cnp.PyArray_DIM(wa, 1) != K or M == 0 or N == 0 or K == 0:
        return None
    cdef const void* bp = NULL
    if bias is not None:
        if data_kind(bias) != t:
            return None
        ba = <cnp.ndarray>bias
        if cnp.PyArray_NDIM(ba) != 1 or cnp.PyArray_DIM(ba, 0) != N:
            return None
        bp = cnp.PyArray_DATA(ba)
    dims[0], dims[1] = M, N
    ya = cnp.PyArray_EMPTY(2, dims, t, 0)
    if M == 1:  # a batch of one: dot products along the weight's rows
        with nogil:
            if t == cnp.NPY_FLOAT32:
                matvec(<const float*>cnp.PyArray_DATA(wa), <const float*>cnp.PyArray_DATA(xa),
                       <const float*>bp, N, K, <float*>cnp.PyArray_DATA(ya), num_threads)
            else:
                matvec(<const double*>cnp.PyArray_DATA(wa),
                       <const double*>cnp.PyArray_DATA(xa), <const double*>bp, N, K,
                       <double*>cnp.PyArray_DATA(ya), num_threads)
            if act:
                if t == cnp.NPY_FLOAT32:
                    add_act(<float*>cnp.PyArray_DATA(ya), <const float*>NULL, N, act)
                else:
                    add_act(<double*>cnp.PyArray_DATA(ya), <const double*>NULL, N, act)
        return ya
    b.kind, b.p, b.rows, b.rs, b.cs = CYBN_MATRIX, cnp.PyArray_DATA(wa), NULL, 1, K
    ep.residual, ep.rsr, ep.act = NULL, 0, act
    with nogil:
        if t == cnp.NPY_FLOAT32:
            status = cybn_gemm_ep_s(M, N, K, <const float*>cnp.PyArray_DATA(xa), K, 1, NULL,
                                    NULL, &b, <const float*>bp, <float*>cnp.PyArray_DATA(ya),
                                    N, 0, &ep, num_threads)
        else:
            status = cybn_gemm_ep_d(M, N, K, <const double*>cnp.PyArray_DATA(xa), K, 1, NULL,
                                    NULL, &b, <const double*>bp,
                                    <double*>cnp.PyArray_DATA(ya), N, 0, &ep, num_threads)
    return ya if status == 0 else None


# ---------------------------------------------------------------------------------------
# Layer and RMS norm: x as rows (M, D), the normalized shape one int (x's last axis). Any
# size: the row cores run on num_threads threads from min_parallel elements on (the ops'
# threads_for rule), so a call of any size costs one compiled call.
# ---------------------------------------------------------------------------------------

cdef inline object affine_output(object weight, object bias, Py_ssize_t n, double* buf,
                                 object out, cnp.ndarray xa, int t):
    """weight and bias (n,) (None: 1 and 0) into buf[0:n] and buf[n:2n], and the array the
    forward writes (result_array); None where either needs the full path."""
    if (load_vector(weight, n, 1.0, buf, False) < 0
            or load_vector(bias, n, 0.0, buf + n, False) < 0):
        return None
    return result_array(out, xa, t, (xa,), (weight, bias))


cdef inline bint row_geometry(cnp.ndarray x, object normalized_shape, Py_ssize_t* M,
                              Py_ssize_t* D) noexcept:
    """x as (M, D) when normalized_shape is an int (or a 1-tuple of one) equal to x's last
    axis and x is not empty; else False."""
    cdef int nd = cnp.PyArray_NDIM(x)
    cdef Py_ssize_t size = cnp.PyArray_SIZE(x)
    if type(normalized_shape) is tuple and len(<tuple>normalized_shape) == 1:
        normalized_shape = (<tuple>normalized_shape)[0]
    if type(normalized_shape) is not int or nd < 1 or size == 0:
        return False
    if normalized_shape != cnp.PyArray_DIM(x, nd - 1):  # compared as Python ints
        return False
    D[0] = cnp.PyArray_DIM(x, nd - 1)
    M[0] = size // D[0]
    return True


cdef inline object row_stat_array(cnp.ndarray x):
    """A new float64 array of x's shape without its last axis (one value per row)."""
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x) - 1, cnp.PyArray_DIMS(x), cnp.NPY_FLOAT64, 0)


cdef inline double* row_stat_data(object a, cnp.ndarray x) noexcept:
    """The data of a float64 C-contiguous array of x's shape without its last axis, else
    NULL."""
    cdef cnp.ndarray arr
    cdef int j, nd = cnp.PyArray_NDIM(x)
    if data_kind(a) != cnp.NPY_FLOAT64:
        return NULL
    arr = <cnp.ndarray>a
    if cnp.PyArray_NDIM(arr) != nd - 1:
        return NULL
    for j in range(nd - 1):
        if cnp.PyArray_DIM(arr, j) != cnp.PyArray_DIM(x, j):
            return NULL
    return <double*>cnp.PyArray_DATA(arr)


cdef inline bint row_eps(object eps, bint centered, int t, double* e) noexcept:
    """eps as a double: a positive float; RMS norm's None is the machine epsilon of x's
    dtype (float32 / float64), as in rms_norm."""
    if eps is None and not centered:
        e[0] = FLT_EPSILON if t == cnp.NPY_FLOAT32 else DBL_EPSILON
        return True
    if not positive_float(eps):
        return False
    e[0] = <double>eps
    return True


def fast_rows_forward(x, normalized_shape, weight, bias, eps, out, bint centered,
                      Py_ssize_t min_parallel, int num_threads):
    """layer_norm (centered) or rms_norm for a C-contiguous float32/float64 array in one
    call: (y, mean, invstd) or (y, invrms); None: use the full path."""
    cdef Py_ssize_t M, D
    cdef int t = data_kind(x), status, threads
    cdef cnp.ndarray xa, ya
    cdef object y, mean, invstd
    cdef double* buf
    cdef double* mp
    cdef double* ip
    cdef double e
    if t < 0 or not row_eps(eps, centered, t, &e) or (not centered and bias is not None):
        return None
    xa = <cnp.ndarray>x
    if not row_geometry(xa, normalized_shape, &M, &D) or num_threads < 1:
        return None
    buf = <double*>malloc((2 * D + M) * sizeof(double))
    if buf == NULL:
        return None
    y = affine_output(weight, bias, D, buf, out, xa, t)
    if y is None:
        free(buf)
        return None
    ya = <cnp.ndarray>y
    mean = row_stat_array(xa)
    invstd = row_stat_array(xa)
    mp = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean) if centered else buf + 2 * D
    ip = <double*>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    threads = fast_threads(M * D, min_parallel, num_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            status = rows_forward_core(<const float*>cnp.PyArray_DATA(xa),
                                       <float*>cnp.PyArray_DATA(ya), M, D, buf, buf + D, e,
                                       centered, mp, ip, threads)
        else:
            status = rows_forward_core(<const double*>cnp.PyArray_DATA(xa),
                                       <double*>cnp.PyArray_DATA(ya), M, D, buf, buf + D, e,
                                       centered, mp, ip, threads)
    free(buf)
    if status != 0:
        return None
    return (ya, mean, invstd) if centered else (ya, invstd)


def fast_rows_backward(dy, x, weight, mean, invstd, normalized_shape, out, bint centered,
                       Py_ssize_t min_parallel, int num_threads):
    """layer_norm_backward (centered; mean given) or rms_norm_backward (mean None, invstd
    the invrms) in one call: (dx, dweight, dbias) or (dx, dweight); None: the full path."""
    cdef Py_ssize_t M, D, d
    cdef int t = data_kind(x), status, threads
    cdef cnp.ndarray xa, ga, da, dwa, dba
    cdef cnp.npy_intp dims[1]
    cdef object dx
    cdef double* buf
    cdef double* mp
    cdef double* ip
    if t < 0 or data_kind(dy) != t or num_threads < 1:
        return None
    xa = <cnp.ndarray>x
    ga = <cnp.ndarray>dy
    if not cnp.PyArray_SAMESHAPE(xa, ga) or not row_geometry(xa, normalized_shape, &M, &D):
        return None
    ip = row_stat_data(invstd, xa)
    mp = row_stat_data(mean, xa) if centered else NULL
    if ip == NULL or (centered and mp == NULL) or (not centered and mean is not None):
        return None
    buf = <double*>malloc((3 * D + M) * sizeof(double))
    if buf == NULL:
        return None
    if load_vector(weight, D, 1.0, buf, False) < 0:
        free(buf)
        return None
    dx = result_array(out, xa, t, (xa, ga), (weight, mean, invstd))
    if dx is None:
        free(buf)
        return None
    da = <cnp.ndarray>dx
    if not centered:
        mp = buf + 3 * D
        for d in range(M):
            mp[d] = 0.0
    threads = fast_threads(M * D, min_parallel, num_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            status = rows_backward_core(<const float*>cnp.PyArray_DATA(ga),
                                        <const float*>cnp.PyArray_DATA(xa),
                                        <float*>cnp.PyArray_DATA(da), M, D, mp, ip, buf,
                                        centered, buf + D, buf + 2 * D, threads)
        else:
            status = rows_backward_core(<const double*>cnp.PyArray_DATA(ga),
                                        <const double*>cnp.PyArray_DATA(xa),
                                        <double*>cnp.PyArray_DATA(da), M, D, mp, ip, buf,
                                        centered, buf + D, buf + 2 * D, threads)
    if status != 0:
        free(buf)
        return None
    dims[0] = D
    dwa = cnp.PyArray_EMPTY(1, dims, t, 0)
    dba = cnp.PyArray_EMPTY(1, dims, t, 0)
    for d in range(D):  # the gradients in x's dtype, as the full path's astype
        if t == cnp.NPY_FLOAT32:
            (<float*>cnp.PyArray_DATA(dwa))[d] = <float>buf[D + d]
            (<float*>cnp.PyArray_DATA(dba))[d] = <float>buf[2 * D + d]
        else:
            (<double*>cnp.PyArray_DATA(dwa))[d] = buf[D + d]
            (<double*>cnp.PyArray_DATA(dba))[d] = buf[2 * D + d]
    free(buf)
    return (da, dwa, dba) if centered else (da, dwa)


# ---------------------------------------------------------------------------------------
# Group and instance norm (num_groups None: one group per channel), as ops/norms.py runs
# them: channels-first data with at least min_group_rows (sample, group) pairs a group per
# work item, otherwise the sample kernels on ops/_layout.Samples' view.
# ---------------------------------------------------------------------------------------

cdef struct GroupPlan:
    Py_ssize_t N, C, G      # batch, channels, groups
    Py_ssize_t rows, size   # sample-kernel rows and elements a row
    Py_ssize_t outer, Cv, inner, k   # a row's view (Cv channels; k 1 for the plane family)
    bint plane
    Py_ssize_t S            # > 0: group rows of Cg * S elements (channels-first)


cdef inline bint group_plan(cnp.ndarray x, object axis, object num_groups,
                            Py_ssize_t max_size, Py_ssize_t min_group_rows,
                            GroupPlan* p) noexcept:
    """The plan of Samples.of and _group_rows for x, or False (full path)."""
    cdef int nd = cnp.PyArray_NDIM(x), ax, j
    cdef Py_ssize_t total = cnp.PyArray_SIZE(x), outer_s = 1, k
    if type(axis) is not int or nd < 2 or total == 0 or total >= max_size:
        return False
    if not -nd <= axis < nd:  # compared as Python ints
        return False
    ax = <int>axis
    if ax < 0:
        ax += nd
    if ax == 0:
        return False
    p.N = cnp.PyArray_DIM(x, 0)
    p.C = cnp.PyArray_DIM(x, ax)
    if num_groups is None:
        p.G = p.C
    elif type(num_groups) is not int or not 1 <= num_groups <= p.C:
        return False
    else:
        p.G = <Py_ssize_t>num_groups
        if p.C % p.G:
            return False
    p.inner = 1
    for j in range(1, ax):
        outer_s *= cnp.PyArray_DIM(x, j)
    for j in range(ax + 1, nd):
        p.inner *= cnp.PyArray_DIM(x, j)
    p.S = 0
    if outer_s == 1:  # channels-first: one row of N * C channels
        p.rows = 1
        p.size = total
        p.outer = 1
        p.Cv = p.N * p.C
        p.k = 1
        p.plane = True
        if p.N * p.G >= min_group_rows:
            p.S = p.inner
        return True
    p.rows = p.N
    p.size = total // p.N
    p.outer = outer_s
    p.Cv = p.C
    k = family_k(outer_s, p.C, p.inner, False)
    p.plane = k == 0
    p.k = 1 if k == 0 else k
    return True


cdef inline object group_stat_array(GroupPlan* p):
    cdef cnp.npy_intp dims[2]
    dims[0] = p.N
    dims[1] = p.G
    return cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT64, 0)


cdef inline double* group_stat_data(object a, GroupPlan* p) noexcept:
    """The data of a float64 C-contiguous (N, G) array, else NULL."""
    if data_kind(a) != cnp.NPY_FLOAT64:
        return NULL
    if (cnp.PyArray_NDIM(<cnp.ndarray>a) != 2 or cnp.PyArray_DIM(<cnp.ndarray>a, 0) != p.N
            or cnp.PyArray_DIM(<cnp.ndarray>a, 1) != p.G):
        return NULL
    return <double*>cnp.PyArray_DATA(<cnp.ndarray>a)


def fast_group_forward(x, num_groups, weight, bias, eps, axis, out, Py_ssize_t max_size,
                       Py_ssize_t min_group_rows, Py_ssize_t min_parallel, int num_threads):
    """group_norm (instance_norm's statistics with num_groups None) in one call for a
    C-contiguous float32/float64 array of fewer than max_size elements: (y, mean, invstd,
    var), each statistic (N, groups); None: use the full path (also for instances of one
    element, which instance_norm rejects)."""
    cdef GroupPlan p
    cdef int t = data_kind(x), status = 0, threads
    cdef cnp.ndarray xa, ya
    cdef object y, mean, invstd, var
    cdef double* buf
    cdef double* mp
    cdef double* vp
    cdef double* ip
    cdef double e
    if t < 0 or not positive_float(eps):
        return None
    xa = <cnp.ndarray>x
    if not group_plan(xa, axis, num_groups, max_size, min_group_rows, &p):
        return None
    if num_groups is None and p.N * p.C == cnp.PyArray_SIZE(xa):
        return None
    e = <double>eps
    buf = <double*>malloc(2 * p.C * sizeof(double))
    if buf == NULL:
        return None
    y = affine_output(weight, bias, p.C, buf, out, xa, t)
    if y is None:
        free(buf)
        return None
    ya = <cnp.ndarray>y
    mean = group_stat_array(&p)
    invstd = group_stat_array(&p)
    var = group_stat_array(&p)
    mp = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean)
    vp = <double*>cnp.PyArray_DATA(<cnp.ndarray>var)
    ip = <double*>cnp.PyArray_DATA(<cnp.ndarray>invstd)
    threads = fast_threads(cnp.PyArray_SIZE(xa), min_parallel, num_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32 and p.S:
            group_forward_core(<const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(ya),
                               p.N * p.G, p.size // (p.N * p.G), p.S, p.C, buf, buf + p.C, e,
                               mp, vp, ip, 0, threads)
        elif p.S:
            group_forward_core(<const double*>cnp.PyArray_DATA(xa),
                               <double*>cnp.PyArray_DATA(ya), p.N * p.G,
                               p.size // (p.N * p.G), p.S, p.C, buf, buf + p.C, e, mp, vp, ip,
                               0, threads)
        elif t == cnp.NPY_FLOAT32:
            status = sample_group_forward_core(
                <const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(ya), p.rows,
                p.size, p.outer, p.Cv, p.inner, p.k, p.plane, p.G * p.N // p.rows, p.C, buf,
                buf + p.C, e, mp, vp, ip, 0, threads)
        else:
            status = sample_group_forward_core(
                <const double*>cnp.PyArray_DATA(xa), <double*>cnp.PyArray_DATA(ya), p.rows,
                p.size, p.outer, p.Cv, p.inner, p.k, p.plane, p.G * p.N // p.rows, p.C, buf,
                buf + p.C, e, mp, vp, ip, 0, threads)
    free(buf)
    if status != 0:
        return None
    return ya, mean, invstd, var


def fast_group_backward(dy, x, num_groups, weight, mean, invstd, axis, out,
                        Py_ssize_t max_size, Py_ssize_t min_group_rows,
                        Py_ssize_t min_parallel, int num_threads):
    """group_norm_backward (instance_norm_backward with num_groups None) in one call:
    (dx, dweight, dbias); None: use the full path."""
    cdef GroupPlan p
    cdef int t = data_kind(x), status = 0, threads
    cdef cnp.ndarray xa, ga, da, dwa, dba
    cdef cnp.npy_intp dims[1]
    cdef object dx
    cdef double* buf
    cdef double* mp
    cdef double* ip
    cdef double* sdy
    cdef double* sdx
    cdef double dw, db
    cdef Py_ssize_t n, c, Cg
    if t < 0 or data_kind(dy) != t:
        return None
    xa = <cnp.ndarray>x
    ga = <cnp.ndarray>dy
    if not cnp.PyArray_SAMESHAPE(xa, ga):
        return None
    if not group_plan(xa, axis, num_groups, max_size, min_group_rows, &p):
        return None
    mp = group_stat_data(mean, &p)
    ip = group_stat_data(invstd, &p)
    if mp == NULL or ip == NULL:
        return None
    buf = <double*>malloc((p.C + 2 * p.N * p.C) * sizeof(double))
    if buf == NULL:
        return None
    if load_vector(weight, p.C, 1.0, buf, False) < 0:
        free(buf)
        return None
    dx = result_array(out, xa, t, (xa, ga), (weight, mean, invstd))
    if dx is None:
        free(buf)
        return None
    da = <cnp.ndarray>dx
    sdy = buf + p.C
    sdx = buf + p.C + p.N * p.C
    threads = fast_threads(cnp.PyArray_SIZE(xa), min_parallel, num_threads)
    with nogil:
        if t == cnp.NPY_FLOAT32 and p.S:
            group_backward_core(<const float*>cnp.PyArray_DATA(ga),
                                <const float*>cnp.PyArray_DATA(xa), <float*>cnp.PyArray_DATA(da),
                                p.N * p.G, p.size // (p.N * p.G), p.S, p.C, mp, ip, buf, sdy,
                                sdx, 0, threads)
        elif p.S:
            group_backward_core(<const double*>cnp.PyArray_DATA(ga),
                                <const double*>cnp.PyArray_DATA(xa),
                                <double*>cnp.PyArray_DATA(da), p.N * p.G, p.size // (p.N * p.G),
                                p.S, p.C, mp, ip, buf, sdy, sdx, 0, threads)
        elif t == cnp.NPY_FLOAT32:
            status = sample_group_backward_core(
                <const float*>cnp.PyArray_DATA(ga), <const float*>cnp.PyArray_DATA(xa),
                <float*>cnp.PyArray_DATA(da), p.rows, p.size, p.outer, p.Cv, p.inner, p.k,
                p.plane, p.G * p.N // p.rows, p.C, mp, ip, buf, sdy, sdx, 0, threads)
        else:
            status = sample_group_backward_core(
                <const double*>cnp.PyArray_DATA(ga), <const double*>cnp.PyArray_DATA(xa),
                <double*>cnp.PyArray_DATA(da), p.rows, p.size, p.outer, p.Cv, p.inner, p.k,
                p.plane, p.G * p.N // p.rows, p.C, mp, ip, buf, sdy, sdx, 0, threads)
    if status != 0:
        free(buf)
        return None
    dims[0] = p.C
    dwa = cnp.PyArray_EMPTY(1, dims, t, 0)
    dba = cnp.PyArray_EMPTY(1, dims, t, 0)
    Cg = p.C // p.G
    for c in range(p.C):  # the full path's NumPy sums over the samples, in sample order
        dw = sdx[c] * ip[c // Cg]
        db = sdy[c]
        for n in range(1, p.N):
            dw = dw + sdx[n * p.C + c] * ip[n * p.G + c // Cg]
            db = db + sdy[n * p.C + c]
        if t == cnp.NPY_FLOAT32:
            (<float*>cnp.PyArray_DATA(dwa))[c] = <float>dw
            (<float*>cnp.PyArray_DATA(dba))[c] = <float>db
        else:
            (<double*>cnp.PyArray_DATA(dwa))[c] = dw
            (<double*>cnp.PyArray_DATA(dba))[c] = db
    free(buf)
    return da, dwa, dba
