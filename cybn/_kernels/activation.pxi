# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# ReLU as PyTorch has it: y = 0 where x <= 0 (-inf included), x elsewhere (NaN stays NaN);
# the backward passes dy where x was not <= 0 and an exact 0 elsewhere. The forward keeps
# that condition as one byte per element for the backward. Elementwise, blocks of a fixed
# size over the threads. Included after pool.pxi.

cdef enum:
    RELU_BLOCK = 16384    # elements per work item


cdef inline void relu_run(const floating* x, floating* y, unsigned char* keep,
                          Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        y[i] = <floating>0 if v <= 0 else v
        keep[i] = 0 if v <= 0 else 1


cdef inline void relu_back_run(const floating* dy, const unsigned char* keep, floating* dx,
                               Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = dy[i] if keep[i] else <floating>0


cdef inline void relu_forward_blocks(const floating* x, floating* y, unsigned char* keep,
                                     Py_ssize_t n, int num_threads) noexcept nogil:
    """relu_run over n elements in blocks of RELU_BLOCK, a block per work item."""
    cdef Py_ssize_t item, start
    for item in prange((n + RELU_BLOCK - 1) // RELU_BLOCK, schedule='static',
                       num_threads=num_threads):
        start = item * RELU_BLOCK
        relu_run(x + start, y + start, keep + start, min(<Py_ssize_t>RELU_BLOCK, n - start))


cdef inline void relu_backward_blocks(const floating* dy, const unsigned char* keep,
                                      floating* dx, Py_ssize_t n,
                                      int num_threads) noexcept nogil:
    """relu_back_run over n elements in blocks of RELU_BLOCK, a block per work item."""
    cdef Py_ssize_t item, start
    for item in prange((n + RELU_BLOCK - 1) // RELU_BLOCK, schedule='static',
                       num_threads=num_threads):
        start = item * RELU_BLOCK
        relu_back_run(dy + start, keep + start, dx + start,
                      min(<Py_ssize_t>RELU_BLOCK, n - start))


def relu_forward(const floating[::1] x,          # IN  (n,)
                 floating[::1] y,                # OUT (n,); may be x itself
                 unsigned char[::1] keep,        # OUT (n,) 1 where x is not <= 0
                 int num_threads):
    need_threads(num_threads)
    need_len("y", y.shape[0], x.shape[0])
    need_len("keep", keep.shape[0], x.shape[0])
    need_apart("y", &y[0], y.nbytes, "x", &x[0], x.nbytes, True)
    with nogil:
        relu_forward_blocks(&x[0], &y[0], &keep[0], x.shape[0], num_threads)


def relu_backward(const floating[::1] dy,        # IN  (n,)
                  const unsigned char[::1] keep,  # IN  (n,)
                  floating[::1] dx,              # OUT (n,); may be dy itself
                  int num_threads):
    need_threads(num_threads)
    need_len("keep", keep.shape[0], dy.shape[0])
    need_len("dx", dx.shape[0], dy.shape[0])
    need_apart("dx", &dx[0], dx.nbytes, "dy", &dy[0], dy.nbytes, True)
    with nogil:
        relu_backward_blocks(&dy[0], &keep[0], &dx[0], dy.shape[0], num_threads)
