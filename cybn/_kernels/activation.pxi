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


# ---------------------------------------------------------------------------------------
# The other elementwise activations, as PyTorch defines them (values and gradients at the
# kinks included). The piecewise-linear ones (hardtanh, leaky ReLU) and the hard ones
# (hardswish, hardsigmoid, written as PyTorch writes them) run in the data's type, each in a
# loop of its own that the compiler vectorizes; the transcendental ones in double, rounded
# once. The backward reads the forward's input x (for the clamping ones, whose gradient only
# asks on which side of the kinks a value lies, the output serves as well: their in-place
# forms).
# ---------------------------------------------------------------------------------------

cdef enum:
    ACT_HARDTANH = 0      # clamp(x, a, b) (ReLU6: a = 0, b = 6)
    ACT_HARDSWISH = 1
    ACT_HARDSIGMOID = 2
    ACT_SILU = 3
    ACT_SIGMOID = 4
    ACT_TANH = 5
    ACT_GELU = 6          # the exact form, with erf
    ACT_GELU_TANH = 7     # the tanh approximation
    ACT_LEAKY = 8         # x > 0 ? x : a * x
    ACT_KINDS = 9


cdef inline double sigmoid_of(double v) noexcept nogil:
    cdef double e
    if v >= 0:
        return 1.0 / (1.0 + exp(-v))
    e = exp(v)
    return e / (1.0 + e)


cdef inline double act_value(int kind, double v, double a, double b) noexcept nogil:
    cdef double t
    if kind == ACT_HARDTANH:
        return a if v < a else (b if v > b else v)
    if kind == ACT_HARDSWISH:
        return 0.0 if v < -3.0 else (v * (v + 3.0) / 6.0 if v <= 3.0 else v)
    if kind == ACT_HARDSIGMOID:
        return 0.0 if v <= -3.0 else (1.0 if v >= 3.0 else v / 6.0 + 0.5)
    if kind == ACT_SILU:
        return v * sigmoid_of(v)
    if kind == ACT_SIGMOID:
        return sigmoid_of(v)
    if kind == ACT_TANH:
        return tanh(v)
    if kind == ACT_GELU:
        return 0.5 * v * (1.0 + erf(v * 0.7071067811865476))
    if kind == ACT_GELU_TANH:
        t = tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))
        return 0.5 * v * (1.0 + t)
    return v if v > 0 else a * v


cdef inline double act_slope(int kind, double v, double a, double b) noexcept nogil:
    """The derivative at v (PyTorch's choice at the kinks)."""
    cdef double s, t, u
    if kind == ACT_HARDTANH:
        return 0.0 if (v <= a or v >= b) else 1.0
    if kind == ACT_HARDSWISH:
        return 0.0 if v <= -3.0 else (v / 3.0 + 0.5 if v < 3.0 else 1.0)
    if kind == ACT_HARDSIGMOID:
        return 1.0 / 6.0 if (v > -3.0 and v < 3.0) else 0.0
    if kind == ACT_SILU:
        s = sigmoid_of(v)
        return s * (1.0 + v * (1.0 - s))
    if kind == ACT_SIGMOID:
        s = sigmoid_of(v)
        return s * (1.0 - s)
    if kind == ACT_TANH:
        t = tanh(v)
        return 1.0 - t * t
    if kind == ACT_GELU:
        return 0.5 * (1.0 + erf(v * 0.7071067811865476)) \
            + v * exp(-0.5 * v * v) * 0.3989422804014327
    if kind == ACT_GELU_TANH:
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        t = tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * 0.7978845608028654 \
            * (1.0 + 3.0 * 0.044715 * v * v)
    return 1.0 if v > 0 else a


cdef int need_activation(int kind, double a, double b) except -1:
    need(0 <= kind < ACT_KINDS, f"activation kind {kind} is not one of 0..{ACT_KINDS - 1}")
    need(kind != ACT_HARDTANH or a <= b, f"hardtanh needs min {a} <= max {b}")
    return 0


cdef void act_forward_run(int kind, const floating* x, floating* y, Py_ssize_t n, double a,
                          double b) noexcept nogil:
    """y[0:n] = f(x[0:n]): a loop per kind (vectorized where the kind is piecewise)."""
    cdef Py_ssize_t i
    cdef floating v, lo = <floating>a, hi = <floating>b, z
    cdef floating three = 3, six = 6, zero = 0
    if kind == ACT_HARDTANH:
        for i in range(n):
            v = x[i]
            y[i] = lo if v < lo else (hi if v > hi else v)
    elif kind == ACT_LEAKY:
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else lo * v
    elif kind == ACT_HARDSWISH:  # x * min(max(x + 3, 0), 6) / 6
        for i in range(n):
            v = x[i]
            z = v + three
            z = zero if z < zero else (six if z > six else z)
            y[i] = v * z / six
    elif kind == ACT_HARDSIGMOID:  # min(max(x + 3, 0), 6) / 6
        for i in range(n):
            z = x[i] + three
            z = zero if z < zero else (six if z > six else z)
            y[i] = z / six
    else:
        for i in range(n):
            y[i] = <floating>act_value(kind, <double>x[i], a, b)


cdef void act_backward_run(int kind, const floating* x, const floating* dy, floating* dx,
                           Py_ssize_t n, double a, double b) noexcept nogil:
    """dx[0:n] = dy * f'(x): a loop per kind, as act_forward_run."""
    cdef Py_ssize_t i
    cdef floating v, lo = <floating>a, hi = <floating>b, zero = 0
    cdef double s
    if kind == ACT_HARDTANH:
        for i in range(n):
            v = x[i]
            dx[i] = zero if (v <= lo or v >= hi) else dy[i]
    elif kind == ACT_LEAKY:
        for i in range(n):
            dx[i] = dy[i] if x[i] > 0 else dy[i] * lo
    else:
        for i in range(n):
            s = act_slope(kind, <double>x[i], a, b)
            dx[i] = <floating>0 if s == 0.0 else <floating>(<double>dy[i] * s)


def activation_forward(const floating[::1] x,      # IN  (n,)
                       floating[::1] y,            # OUT (n,); may be x itself
                       int kind, double a, double b, int num_threads):
    """y = f(x) for the activation kind (ACT_*) with parameters a, b; blocks of RELU_BLOCK
    elements over the threads."""
    cdef Py_ssize_t n = x.shape[0], item, start
    need_threads(num_threads)
    need_activation(kind, a, b)
    need_len("y", y.shape[0], n)
    need_apart("y", &y[0], y.nbytes, "x", &x[0], x.nbytes, True)
    if n == 0:
        return
    cdef const floating* xp = &x[0]
    cdef floating* yp = &y[0]
    with nogil:
        for item in prange((n + RELU_BLOCK - 1) // RELU_BLOCK, schedule='static',
                           num_threads=num_threads):
            start = item * RELU_BLOCK
            act_forward_run(kind, xp + start, yp + start, min(n, start + RELU_BLOCK) - start,
                            a, b)


def activation_backward(const floating[::1] x,     # IN  (n,) the forward's input
                        const floating[::1] dy,    # IN  (n,)
                        floating[::1] dx,          # OUT (n,); may be dy itself
                        int kind, double a, double b, int num_threads):
    """dx = dy * f'(x), blocks of RELU_BLOCK elements over the threads (an exact 0 where
    the slope is 0, whatever dy is)."""
    cdef Py_ssize_t n = x.shape[0], item, start
    need_threads(num_threads)
    need_activation(kind, a, b)
    need_len("dy", dy.shape[0], n)
    need_len("dx", dx.shape[0], n)
    need_apart("dx", &dx[0], dx.nbytes, "dy", &dy[0], dy.nbytes, True)
    need_apart("dx", &dx[0], dx.nbytes, "x", &x[0], x.nbytes, False)
    if n == 0:
        return
    cdef const floating* xp = &x[0]
    cdef const floating* gp = &dy[0]
    cdef floating* dp = &dx[0]
    with nogil:
        for item in prange((n + RELU_BLOCK - 1) // RELU_BLOCK, schedule='static',
                           num_threads=num_threads):
            start = item * RELU_BLOCK
            act_backward_run(kind, xp + start, gp + start, dp + start,
                             min(n, start + RELU_BLOCK) - start, a, b)
