# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Argument checks of the compiled entry points. Every `def` in the files below calls these
# before it reads or writes anything: each array's shape against the others (the memoryview
# types already fix dtype and contiguity), sizes and window geometry that the loops divide
# by or step with, the thread count, and overlap between an output and the inputs it must
# not alias. So no Python call, however wrong its arguments, can make a kernel read or write
# out of bounds: it raises ValueError instead. The Python layer checks arguments first with
# messages in the caller's terms; these are the last line, naming the kernel's argument.
# Included after common.pxi.

cdef int check_scratch(int status) except -1:
    """MemoryError when a kernel core reported (status != 0) that its scratch could not be
    allocated; the cores run without the GIL and return a status instead of raising."""
    if status != 0:
        raise MemoryError("cybn: out of memory for kernel scratch")
    return 0


cdef int need(bint ok, str what) except -1:
    """ValueError stating the broken rule unless ok."""
    if not ok:
        raise ValueError(f"cybn kernel arguments: {what}")
    return 0


cdef int need_len(str name, Py_ssize_t got, Py_ssize_t want) except -1:
    """ValueError unless a per-channel (or per-row) array has the length the data implies."""
    if got != want:
        raise ValueError(f"cybn kernel arguments: {name} has length {got}, expected {want}")
    return 0


cdef int need_shape(str name, const Py_ssize_t* got, int ndim, Py_ssize_t a, Py_ssize_t b=-1,
                    Py_ssize_t c=-1, Py_ssize_t d=-1) except -1:
    """ValueError unless the first ndim entries of got are (a, b, c, d)[:ndim]."""
    cdef Py_ssize_t want[4]
    cdef int i
    want[0], want[1], want[2], want[3] = a, b, c, d
    for i in range(ndim):
        if got[i] != want[i]:
            raise ValueError(f"cybn kernel arguments: {name} has shape "
                             f"{tuple([got[k] for k in range(ndim)])}, expected "
                             f"{tuple([want[k] for k in range(ndim)])}")
    return 0


cdef int need_threads(int num_threads) except -1:
    if num_threads < 1:
        raise ValueError(f"cybn kernel arguments: num_threads must be at least 1, "
                         f"got {num_threads}")
    return 0


cdef int need_window(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) except -1:
    """A convolution or pooling window: taps, strides and dilations at least 1, padding at
    least 0 (the loops step and divide by these)."""
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"cybn kernel arguments: window (kh={kh}, kw={kw}), stride "
                         f"({sh}, {sw}), padding ({ph}, {pw}), dilation ({dh}, {dw}): "
                         f"taps, strides and dilations must be >= 1, padding >= 0")
    return 0


cdef int need_out(Py_ssize_t size, Py_ssize_t n_out, Py_ssize_t k, Py_ssize_t s, Py_ssize_t p,
                  Py_ssize_t d, str what) except -1:
    """n_out is the number of windows (k taps, dilation d) at stride s over size positions
    padded by p on each side: (size + 2p - (k - 1) d - 1) // s + 1, floor mode."""
    cdef Py_ssize_t span = size + 2 * p - (k - 1) * d - 1
    cdef Py_ssize_t want = span // s + 1 if span >= 0 else 0
    if n_out != want:
        raise ValueError(f"cybn kernel arguments: {n_out} output {what}s given, the window "
                         f"(k={k}, stride {s}, padding {p}, dilation {d}) over {size} input "
                         f"{what}s gives {want}")
    return 0


cdef int need_windows(Py_ssize_t H, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t kh,
                      Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                      Py_ssize_t dh, Py_ssize_t dw, int num_threads) except -1:
    """A window (need_window) sliding over H x W input positions gives Ho x Wo outputs
    (need_out), and at least one thread."""
    need_window(kh, kw, sh, sw, ph, pw, dh, dw)
    need_threads(num_threads)
    need_out(H, Ho, kh, sh, ph, dh, "row")
    need_out(W, Wo, kw, sw, pw, dw, "column")
    return 0


cdef inline bint spans_overlap(const void* a, Py_ssize_t na, const void* b,
                               Py_ssize_t nb) noexcept:
    cdef size_t pa = <size_t>a, pb = <size_t>b
    if na <= 0 or nb <= 0:
        return False
    return pa < pb + <size_t>nb and pb < pa + <size_t>na


cdef int need_apart(str out_name, const void* out, Py_ssize_t out_bytes, str in_name,
                    const void* inp, Py_ssize_t in_bytes, bint same_ok) except -1:
    """ValueError when an output overlaps an input, except (with same_ok) when it is that
    very input (the kernels that allow in-place work element by element)."""
    if not spans_overlap(out, out_bytes, inp, in_bytes):
        return 0
    if same_ok and out == inp and out_bytes == in_bytes:
        return 0
    raise ValueError(f"cybn kernel arguments: {out_name} overlaps {in_name}"
                     + (f" without being {in_name} itself" if same_ok else ""))


cdef int need_rows_view(Py_ssize_t L, Py_ssize_t C, Py_ssize_t inner) except -1:
    """A row-family view (rows, L): L a whole number of (C, inner) blocks."""
    if C < 1 or inner < 1 or L % (C * inner) != 0:
        raise ValueError(f"cybn kernel arguments: a row of {L} values is not whole blocks "
                         f"of C={C} channels x inner={inner}")
    return 0


cdef int need_same(str name, const Py_ssize_t* got, const Py_ssize_t* ref, int ndim) except -1:
    """ValueError unless got has the reference array's shape (its first ndim entries)."""
    return need_shape(name, got, ndim, ref[0], ref[1] if ndim > 1 else -1,
                      ref[2] if ndim > 2 else -1, ref[3] if ndim > 3 else -1)


cdef int need_nonempty(Py_ssize_t size, str name) except -1:
    if size <= 0:
        raise ValueError(f"cybn kernel arguments: {name} must not be empty")
    return 0


cdef int need_sample_view(Py_ssize_t row_len, Py_ssize_t outer, Py_ssize_t C,
                          Py_ssize_t inner, Py_ssize_t k, Py_ssize_t groups,
                          Py_ssize_t Cw) except -1:
    """Group norm a sample at a time: each row one sample's outer * C * inner values, k
    dividing outer, groups dividing C, the per-channel arrays' length Cw dividing C."""
    need(outer >= 1 and C >= 1 and inner >= 1 and k >= 1 and outer % k == 0,
         "outer, C, inner and k must be >= 1, k dividing outer")
    need_len("a sample's values", row_len, outer * C * inner)
    need(groups >= 1 and C % groups == 0, "groups must divide C")
    need(Cw >= 1 and C % Cw == 0, "weight's length must divide C")
    return 0


cdef Py_ssize_t need_group_view(Py_ssize_t R, Py_ssize_t n, Py_ssize_t S,
                                Py_ssize_t C) except -1:
    """Channels-first group norm, x[N * G, Cg * S]: rows of whole channels of S values,
    groups of Cg = n // S channels dividing C, whole samples of G = C // Cg rows. Returns N."""
    need(S >= 1 and n % S == 0 and 1 <= n // S <= C and C % (n // S) == 0,
         "a row must be whole channels of S values, Cg of them dividing C")
    need(R % (C // (n // S)) == 0, "rows must be whole samples of C // Cg groups")
    return R // (C // (n // S))


cdef int need_ghost_view(Py_ssize_t row_len, bint plane, Py_ssize_t d0, Py_ssize_t d1,
                         Py_ssize_t C, Py_ssize_t inner) except -1:
    """Ghost batches as rows of a (G, n) array: each row one ghost batch's view, plane
    (d0 = outer: outer * C * inner values) or row family (d0 rows of d1 = k * C * inner)."""
    need(C >= 1 and inner >= 1 and d0 >= 1, "C, inner and d0 must be >= 1")
    if plane:
        need_len("a ghost batch's values", row_len, d0 * C * inner)
    else:
        need_rows_view(d1, C, inner)
        need_len("a ghost batch's values", row_len, d0 * d1)
    return 0
