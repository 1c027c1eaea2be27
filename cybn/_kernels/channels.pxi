# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True, language_level=3
#
# Channel routing: one copy that moves an evenly spaced set of channels of one array to an
# evenly spaced set of channels of another, both seen as (outer, C, inner). Concatenation
# along the channel axis, a channel range (ShuffleNetV2's split), channel shuffle and their
# backward passes are each one or a few such copies. The data is moved as words of its
# item size (1, 2, 4 or 8 bytes), so every dtype of those sizes keeps its bits. Work items
# are fixed by the shapes (a copy gives the same bits on any thread count anyway).
# Included after activation.pxi.

ctypedef fused word:
    unsigned char
    unsigned short
    unsigned int
    unsigned long long

cdef enum:
    CHANNEL_COPY_BLOCK = 16384    # words per work item where a run is contiguous


cdef inline void copy_strided_run(const word* src, Py_ssize_t src_step, word* dst,
                                  Py_ssize_t dst_step, Py_ssize_t count) noexcept nogil:
    """dst[k * dst_step] = src[k * src_step] for k < count (inner == 1: one word each).
    The steps of a two-way interleave get loops of their own, with the step a constant
    the compiler can vectorize."""
    cdef Py_ssize_t k
    if src_step == 1 and dst_step == 2:
        for k in range(count):
            dst[2 * k] = src[k]
    elif src_step == 2 and dst_step == 1:
        for k in range(count):
            dst[k] = src[2 * k]
    else:
        for k in range(count):
            dst[k * dst_step] = src[k * src_step]


cdef inline void copy_channels_core(const word* src, Py_ssize_t src_channels, word* dst,
                                    Py_ssize_t dst_channels, Py_ssize_t outer,
                                    Py_ssize_t inner, Py_ssize_t src_start,
                                    Py_ssize_t src_step, Py_ssize_t dst_start,
                                    Py_ssize_t dst_step, Py_ssize_t count,
                                    int num_threads) noexcept nogil:
    """dst[o, dst_start + k * dst_step, :] = src[o, src_start + k * src_step, :]."""
    cdef Py_ssize_t item, o, k, start, run, blocks
    cdef const word* s
    cdef word* d
    if src_step == 1 and dst_step == 1:
        # the channels are consecutive on both sides: one contiguous run per outer index,
        # cut into blocks so that a single sample still spreads over the threads
        run = count * inner
        blocks = (run + CHANNEL_COPY_BLOCK - 1) // CHANNEL_COPY_BLOCK
        for item in prange(outer * blocks, schedule='static', num_threads=num_threads):
            o = item // blocks
            start = (item % blocks) * CHANNEL_COPY_BLOCK
            memcpy(dst + (o * dst_channels + dst_start) * inner + start,
                   src + (o * src_channels + src_start) * inner + start,
                   min(<Py_ssize_t>CHANNEL_COPY_BLOCK, run - start) * sizeof(word))
    elif inner == 1:
        # channels-last with a step: one strided run of single words per pixel
        for o in prange(outer, schedule='static', num_threads=num_threads):
            copy_strided_run(src + o * src_channels + src_start, src_step,
                             dst + o * dst_channels + dst_start, dst_step, count)
    else:
        # channels-first with a step: a plane per (outer, channel)
        for item in prange(outer * count, schedule='static', num_threads=num_threads):
            o = item // count
            k = item % count
            s = src + (o * src_channels + src_start + k * src_step) * inner
            d = dst + (o * dst_channels + dst_start + k * dst_step) * inner
            memcpy(d, s, inner * sizeof(word))


cdef int need_channel_run(str name, Py_ssize_t channels, Py_ssize_t start, Py_ssize_t step,
                          Py_ssize_t count) except -1:
    """ValueError unless channels start, start + step, ..., (count of them) exist."""
    if start < 0 or step < 1 or count < 0 or (count > 0
                                              and start + (count - 1) * step >= channels):
        raise ValueError(f"cybn kernel arguments: {name}'s channels {start} + k * {step} "
                         f"for k < {count} are not all in 0..{channels - 1}")
    return 0


def copy_channels(const word[:, :, ::1] src,    # IN  (outer, Cs, inner)
                  word[:, :, ::1] dst,          # OUT (outer, Cd, inner)
                  Py_ssize_t src_start, Py_ssize_t src_step,
                  Py_ssize_t dst_start, Py_ssize_t dst_step,
                  Py_ssize_t count, int num_threads):
    """dst[:, dst_start + k * dst_step, :] = src[:, src_start + k * src_step, :] for
    k < count; the other channels of dst are left as they are."""
    need_threads(num_threads)
    need_shape("dst", &dst.shape[0], 1, src.shape[0])
    need(dst.shape[2] == src.shape[2], "src and dst differ in their inner size")
    need_channel_run("src", src.shape[1], src_start, src_step, count)
    need_channel_run("dst", dst.shape[1], dst_start, dst_step, count)
    if src.shape[0] == 0 or src.shape[2] == 0 or count == 0:
        return
    need_apart("dst", &dst[0, 0, 0], dst.nbytes, "src", &src[0, 0, 0], src.nbytes, False)
    with nogil:
        copy_channels_core(&src[0, 0, 0], src.shape[1], &dst[0, 0, 0], dst.shape[1],
                           src.shape[0], src.shape[2], src_start, src_step, dst_start,
                           dst_step, count, num_threads)
