# ---------------------------------------------------------------------------------------
# Ghost batch normalization: G ghost batches of equal size, each a contiguous slab of the
# batch (row g of a (G, n) view), normalized with its own statistics. A ghost batch is one
# work item run by the single-threaded training (or backward) core, so the whole batch
# costs one parallel region instead of G kernel calls; the cores give the same bits for any
# thread count, so each ghost batch's results equal a batch_norm_train call on it.
# ---------------------------------------------------------------------------------------

def ghost_train_forward(const floating[:, ::1] x,   # IN  (G, n): ghost batch g in row g
                        floating[:, ::1] y,         # OUT (G, n); may be x itself
                        bint plane,                 # plane view (d0 = outer) or row (d0 = rows, d1 = L)
                        Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t C, Py_ssize_t inner,
                        const double[::1] weight,   # IN  (C,)
                        const double[::1] bias,     # IN  (C,)
                        double eps,
                        double[:, ::1] mean,        # OUT (G, C)
                        double[:, ::1] var,         # OUT (G, C) biased
                        double[:, ::1] invstd,      # OUT (G, C)
                        int[::1] status,            # OUT (G,) 0, or -1 when out of memory
                        bint streaming,
                        int num_threads):
    """Training forward of each ghost batch (y = (x - mean) * weight * invstd + bias)."""
    need_threads(num_threads)
    need_nonempty(x.size, "x")
    need(C >= 1 and inner >= 1 and d0 >= 1, "C, inner and d0 must be >= 1")
    if plane:
        need_len("a ghost batch's values", x.shape[1], d0 * C * inner)
    else:
        need_rows_view(d1, C, inner)
        need_len("a ghost batch's values", x.shape[1], d0 * d1)
    need_len("weight", weight.shape[0], C)
    need_same("y", y.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], C)
    need_same("var", var.shape, mean.shape, 2)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_len("status", status.shape[0], x.shape[0])
    need_apart("y", &y[0, 0], y.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef Py_ssize_t G = x.shape[0], g
    with nogil:
        for g in prange(G, schedule='static', num_threads=num_threads):
            if plane:
                status[g] = plane_train_forward_core(
                    &x[g, 0], &y[g, 0], &x[g, 0], d0, C, inner, &weight[0], &bias[0], eps, 0,
                    &mean[g, 0], &var[g, 0], &invstd[g, 0], 0, streaming, 1)
            else:
                status[g] = row_train_forward_core(
                    &x[g, 0], &y[g, 0], &x[g, 0], d0, d1, C, inner, &weight[0], &bias[0], eps,
                    0, &mean[g, 0], &var[g, 0], &invstd[g, 0], streaming, 1)
    for g in range(G):
        if status[g] != 0:
            raise MemoryError("cybn: out of memory for reduction scratch")


def ghost_backward(const floating[:, ::1] dy,       # IN  (G, n)
                   const floating[:, ::1] x,        # IN  (G, n)
                   floating[:, ::1] dx,             # OUT (G, n); may be dy or x
                   bint plane, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t C, Py_ssize_t inner,
                   const double[:, ::1] mean,       # IN  (G, C)
                   const double[:, ::1] invstd,     # IN  (G, C)
                   const double[::1] weight,        # IN  (C,)
                   double[:, ::1] sum_dy,           # OUT (G, C)
                   double[:, ::1] sum_dy_xmu,       # OUT (G, C)
                   int[::1] status,                 # OUT (G,)
                   bint streaming,
                   int num_threads):
    """Training backward of each ghost batch with its own statistics."""
    need_threads(num_threads)
    need_nonempty(x.size, "x")
    need(C >= 1 and inner >= 1 and d0 >= 1, "C, inner and d0 must be >= 1")
    if plane:
        need_len("a ghost batch's values", x.shape[1], d0 * C * inner)
    else:
        need_rows_view(d1, C, inner)
        need_len("a ghost batch's values", x.shape[1], d0 * d1)
    need_len("weight", weight.shape[0], C)
    need_same("dy", dy.shape, x.shape, 2)
    need_same("dx", dx.shape, x.shape, 2)
    need_shape("mean", mean.shape, 2, x.shape[0], C)
    need_same("invstd", invstd.shape, mean.shape, 2)
    need_same("sum_dy", sum_dy.shape, mean.shape, 2)
    need_same("sum_dy_xmu", sum_dy_xmu.shape, mean.shape, 2)
    need_len("status", status.shape[0], x.shape[0])
    need_apart("dx", &dx[0, 0], dx.nbytes, "dy", &dy[0, 0], dy.nbytes, True)
    need_apart("dx", &dx[0, 0], dx.nbytes, "x", &x[0, 0], x.nbytes, True)
    cdef Py_ssize_t G = x.shape[0], g
    with nogil:
        for g in prange(G, schedule='static', num_threads=num_threads):
            if plane:
                status[g] = plane_backward_core(
                    &dy[g, 0], &x[g, 0], &dx[g, 0], d0, C, inner, &mean[g, 0], &invstd[g, 0],
                    &weight[0], True, 0, <const floating*>NULL, <floating*>NULL,
                    <const double*>NULL, <const double*>NULL, &sum_dy[g, 0],
                    &sum_dy_xmu[g, 0], 0, streaming, 1)
            else:
                status[g] = row_backward_core(
                    &dy[g, 0], &x[g, 0], &dx[g, 0], d0, d1, C, inner, &mean[g, 0],
                    &invstd[g, 0], &weight[0], True, 0, <const floating*>NULL,
                    <floating*>NULL, <const double*>NULL, <const double*>NULL, &sum_dy[g, 0],
                    &sum_dy_xmu[g, 0], streaming, 1)
    for g in range(G):
        if status[g] != 0:
            raise MemoryError("cybn: out of memory for reduction scratch")
