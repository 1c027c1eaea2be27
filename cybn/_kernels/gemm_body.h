/* cybn: one instance of the matrix product (see gemm.h, which includes this file once per
 * element type and register tile with GT, GV, GVL, GMR, GNV, GKC, GFMA, GBC and GX set). */
#define GNR (GVL * GNV)
#define GCAT2(a, b) a##b
#define GCAT(a, b) GCAT2(a, b)
#define GNAME(n) GCAT(n, GX)

/* an unaligned vector */
typedef GT GCAT(cybn_gvu_, GX)
    __attribute__((vector_size(GVL * sizeof(GT)), aligned(sizeof(GT))));
#define GVU GCAT(cybn_gvu_, GX)

static inline GV GNAME(cybn_gld_)(const GT* p) { return *(const GVU*)p; }
static inline void GNAME(cybn_gst_)(GT* p, GV v) { *(GVU*)p = v; }

/* The epilogue's activation (CYBN_ACT_*): ReLU as cybn's layer has it, 0 where v <= 0, v
 * elsewhere; ReLU6 as PyTorch's hardtanh, 0 where v < 0, 6 where v > 6, v elsewhere (-0.0
 * kept); NaN stays NaN in both */
static inline GV GNAME(cybn_gact_)(GV v, int act) {
    if (act == CYBN_ACT_RELU) {
        __typeof__(v <= v) cut = v <= (GV){0};
        return (GV)((__typeof__(cut))v & ~cut);
    }
    GV six = GBC((GT)6);
    __typeof__(v < v) below = v < (GV){0}, above = v > six;
    typedef __typeof__(below) M;
    return (GV)(((M)six & above) | ((M)v & ~(below | above)));
}

static inline GT GNAME(cybn_sact_)(GT v, int act) {
    if (act == CYBN_ACT_RELU) return v <= 0 ? (GT)0 : v;
    return v < 0 ? (GT)0 : (v > 6 ? (GT)6 : v);
}

/* A[ic:ic+mc, pc:pc+kc] into MR-row panels, k-major: Ap[panel][k][i]; rows past mc are 0.
 * A(i, k) at A[i*rsa + k*csa], or at arows[i][koff[k]] with row pointers and offsets. */
static void GNAME(cybn_pack_a_)(const GT* A, ptrdiff_t rsa, ptrdiff_t csa,
                               const ptrdiff_t* koff, const GT* const* arows, ptrdiff_t mc,
                               ptrdiff_t kc, GT* Ap) {
    for (ptrdiff_t ir = 0; ir < mc; ir += GMR) {
        ptrdiff_t m = mc - ir < GMR ? mc - ir : GMR;
        const GT* a = A + ir * rsa;
        if (arows != NULL) {
            for (ptrdiff_t k = 0; k < kc; k++) {
                ptrdiff_t i = 0;
                for (; i < m; i++) Ap[k * GMR + i] = arows[ir + i][koff[k]];
                for (; i < GMR; i++) Ap[k * GMR + i] = 0;
            }
        } else if (csa == 1) { /* row by row (block transposes): each row read in order */
            ptrdiff_t kb = kc / GTB * GTB, i = 0;
            for (; i + GTB <= m; i += GTB) {
                ptrdiff_t k = 0;
                for (; k < kb; k += GTB) GTRANSPOSE(a + i * rsa + k, rsa, Ap + k * GMR + i, GMR);
                for (; k < kc; k++)
                    for (ptrdiff_t ii = i; ii < i + GTB; ii++) Ap[k * GMR + ii] = a[ii * rsa + k];
            }
            for (; i < m; i++)
                for (ptrdiff_t k = 0; k < kc; k++) Ap[k * GMR + i] = a[i * rsa + k];
            for (; i < GMR; i++)
                for (ptrdiff_t k = 0; k < kc; k++) Ap[k * GMR + i] = 0;
        } else {
            for (ptrdiff_t k = 0; k < kc; k++) {
                ptrdiff_t i = 0;
                for (; i < m; i++) Ap[k * GMR + i] = a[i * rsa + k * csa];
                for (; i < GMR; i++) Ap[k * GMR + i] = 0;
            }
        }
        Ap += GMR * kc;
    }
}

/* B[pc:pc+kc, j0:j0+n] (one NR-column panel) k-major: Bp[k][j]; columns past n are 0. */
static void GNAME(cybn_pack_b_)(const GT* B, ptrdiff_t rsb, ptrdiff_t csb, ptrdiff_t n,
                               ptrdiff_t kc, GT* Bp) {
    if (csb == 1 && n == GNR) {
        for (ptrdiff_t k = 0; k < kc; k++)
            for (ptrdiff_t v = 0; v < GNV; v++)
                GNAME(cybn_gst_)(Bp + k * GNR + v * GVL, GNAME(cybn_gld_)(B + k * rsb + v * GVL));
        return;
    }
    if (rsb == 1) { /* B's columns are contiguous (a transposed matrix): block transposes */
        ptrdiff_t nb = n / GTB * GTB, kb = kc / GTB * GTB;
        for (ptrdiff_t j = 0; j < nb; j += GTB) {
            ptrdiff_t k = 0;
            for (; k < kb; k += GTB) GTRANSPOSE(B + k + j * csb, csb, Bp + k * GNR + j, GNR);
            for (; k < kc; k++)
                for (ptrdiff_t jj = j; jj < j + GTB; jj++) Bp[k * GNR + jj] = B[k + jj * csb];
        }
        for (ptrdiff_t k = 0; k < kc; k++) {
            for (ptrdiff_t j = nb; j < n; j++) Bp[k * GNR + j] = B[k + j * csb];
            for (ptrdiff_t j = n; j < GNR; j++) Bp[k * GNR + j] = 0;
        }
        return;
    }
    for (ptrdiff_t k = 0; k < kc; k++) {
        ptrdiff_t j = 0;
        for (; j < n; j++) Bp[k * GNR + j] = B[k * rsb + j * csb];
        for (; j < GNR; j++) Bp[k * GNR + j] = 0;
    }
}

/* out[0:len] = the column matrix's row kidx at columns p0 .. p0+len-1 (see cybn_operand):
 * one image row segment per output row, copied where the window is inside, 0 elsewhere. */
static void GNAME(cybn_cols_run_)(const cybn_operand* b, ptrdiff_t kidx, ptrdiff_t p0,
                                 ptrdiff_t len, GT* out) {
    ptrdiff_t taps = b->kh * b->kw, c = kidx / taps, ti = kidx % taps / b->kw;
    ptrdiff_t tj = kidx % b->kw, H = b->H, W = b->W, sw = b->sw;
    const GT* plane = (const GT*)b->p + c * H * W;
    ptrdiff_t oh = p0 / b->Wo, ow = p0 % b->Wo;
    /* the outputs whose window column tj falls inside the image: ow in [lo, hi) */
    ptrdiff_t off = tj * b->dw - b->pw;                 /* q = ow * sw + off */
    ptrdiff_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
    ptrdiff_t hi = W - off > 0 ? (W - off + sw - 1) / sw : 0;
    if (hi > b->Wo) hi = b->Wo;
    while (len > 0) {
        ptrdiff_t run = b->Wo - ow < len ? b->Wo - ow : len;
        ptrdiff_t r = oh * b->sh - b->ph + ti * b->dh;
        if (r < 0 || r >= H || lo >= hi) {
            memset(out, 0, run * sizeof(GT));
        } else {
            const GT* row = plane + r * W + off;
            ptrdiff_t a = ow > lo ? ow : lo, e = ow + run < hi ? ow + run : hi;
            ptrdiff_t o = ow;
            for (; o < a && o < ow + run; o++) out[o - ow] = 0;
            if (sw == 1 && e > a) {
                memcpy(out + (a - ow), row + a, (e - a) * sizeof(GT));
                o = e;
            } else {
                for (; o < e; o++) out[o - ow] = row[o * sw];
            }
            for (; o < ow + run; o++) out[o - ow] = 0;
        }
        out += run;
        len -= run;
        ow = 0;
        oh++;
    }
}

/* The column matrix's rows k0 .. k0+kc-1 at columns j0 .. j0+n-1 (n <= NR) as one k-major
 * panel, columns past n 0: the panel's outputs split into runs of one output row each, then
 * for each row (c, i, j) of the column matrix, each run copied from its image row (the
 * window inside the image) or zeroed. cybn_cols_run_ with the divisions and the run set-up
 * hoisted out of the row loop: packing is most of a product's time when the output channels
 * are few. */
static void GNAME(cybn_pack_cols_)(const cybn_operand* b, ptrdiff_t k0, ptrdiff_t kc,
                                   ptrdiff_t j0, ptrdiff_t n, GT* Bp) {
    ptrdiff_t run_oh[GNR], run_ow[GNR], run_len[GNR], runs = 0;
    for (ptrdiff_t p = j0; p < j0 + n; runs++) {
        run_oh[runs] = p / b->Wo;
        run_ow[runs] = p % b->Wo;
        run_len[runs] = b->Wo - run_ow[runs] < j0 + n - p ? b->Wo - run_ow[runs] : j0 + n - p;
        p += run_len[runs];
    }
    ptrdiff_t H = b->H, W = b->W, sw = b->sw, taps = b->kh * b->kw;
    ptrdiff_t c = k0 / taps, ti = k0 % taps / b->kw, tj = k0 % b->kw;
    for (ptrdiff_t k = 0; k < kc; k++) {
        GT* dst = Bp + k * GNR;
        const GT* plane = (const GT*)b->p + c * H * W;
        ptrdiff_t off = tj * b->dw - b->pw; /* image column = ow * sw + off */
        ptrdiff_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
        ptrdiff_t hi = W - off > 0 ? (W - off + sw - 1) / sw : 0;
        ptrdiff_t rbase = ti * b->dh - b->ph;
        for (ptrdiff_t s = 0; s < runs; s++) {
            ptrdiff_t ow = run_ow[s], e = ow + run_len[s], r = run_oh[s] * b->sh + rbase;
            ptrdiff_t a0 = ow > lo ? ow : lo, a1 = e < hi ? e : hi;
            if (r < 0 || r >= H || a0 >= a1) {
                for (ptrdiff_t o = ow; o < e; o++) dst[o - ow] = 0;
            } else {
                const GT* row = plane + r * W + off;
                for (ptrdiff_t o = ow; o < a0; o++) dst[o - ow] = 0;
                if (sw == 1)
                    for (ptrdiff_t o = a0; o < a1; o++) dst[o - ow] = row[o];
                else
                    for (ptrdiff_t o = a0; o < a1; o++) dst[o - ow] = row[o * sw];
                for (ptrdiff_t o = a1; o < e; o++) dst[o - ow] = 0;
            }
            dst += run_len[s];
        }
        for (ptrdiff_t j = n; j < GNR; j++) Bp[k * GNR + j] = 0;
        if (++tj == b->kw) { /* the next row of the column matrix: (c, ti, tj) + 1 */
            tj = 0;
            if (++ti == b->kh) {
                ti = 0;
                c++;
            }
        }
    }
}

/* One NR-column panel of an operand's rows k0 .. k0+kc-1 and columns j0 .. j0+n-1, k-major
 * (Bp[k][j]), columns past n 0: a matrix (cybn_pack_b_), the column matrix (each row a
 * run), or its transpose (runs of GTB columns into a scratch, then block transposes). */
static void GNAME(cybn_pack_any_)(const cybn_operand* b, ptrdiff_t k0, ptrdiff_t kc,
                                  ptrdiff_t j0, ptrdiff_t n, GT* Bp) {
    if (b->kind == CYBN_MATRIX) {
        GNAME(cybn_pack_b_)((const GT*)b->p + k0 * b->rs + j0 * b->cs, b->rs, b->cs, n, kc,
                            Bp);
        return;
    }
    if (b->kind == CYBN_COLS) {
        GNAME(cybn_pack_cols_)(b, k0, kc, j0, n, Bp);
        return;
    }
    if (b->kind == CYBN_GATHER) { /* columns off[j0 ..]: one run when they are adjacent */
        const ptrdiff_t* off = b->off + j0;
        int run = off[n - 1] - off[0] == n - 1;
        for (ptrdiff_t k = 0; k < kc; k++) {
            const GT* row = (const GT*)b->rows[k0 + k];
            if (run)
                for (ptrdiff_t j = 0; j < n; j++) Bp[k * GNR + j] = row[off[0] + j];
            else
                for (ptrdiff_t j = 0; j < n; j++) Bp[k * GNR + j] = row[off[j]];
            for (ptrdiff_t j = n; j < GNR; j++) Bp[k * GNR + j] = 0;
        }
        return;
    }
    if (b->kind == CYBN_ROWS) { /* a partial panel: only n columns are readable */
        for (ptrdiff_t k = 0; k < kc; k++) {
            const GT* row = (const GT*)b->rows[k0 + k] + j0;
            for (ptrdiff_t j = 0; j < n; j++) Bp[k * GNR + j] = row[j];
            for (ptrdiff_t j = n; j < GNR; j++) Bp[k * GNR + j] = 0;
        }
        return;
    }
    /* CYBN_COLS_T: row k0 + k is output k0 + k, column j0 + j the tap j0 + j */
    GT t[GTB * (GKC + GTB)];
    ptrdiff_t kb = kc / GTB * GTB;
    for (ptrdiff_t j = 0; j < GNR; j += GTB) {
        for (ptrdiff_t jj = 0; jj < GTB; jj++) {
            if (j + jj < n)
                GNAME(cybn_cols_run_)(b, j0 + j + jj, k0, kc, t + jj * kc);
            else
                memset(t + jj * kc, 0, kc * sizeof(GT));
        }
        ptrdiff_t k = 0;
        for (; k < kb; k += GTB) GTRANSPOSE(t + k, kc, Bp + k * GNR + j, GNR);
        for (; k < kc; k++)
            for (ptrdiff_t jj = 0; jj < GTB; jj++) Bp[k * GNR + j + jj] = t[jj * kc + k];
    }
}

/* C[0:m, 0:n] (row stride rsc) = (add ? C : bias) + A @ B over kc: the register tile.
 * A(i, k) at a[i*ars + k*acs], or at ar[i][koff[k]] with row pointers and offsets (ar not
 * NULL); B a packed panel b (brow NULL), or read in
 * place: B(k, j) at brow[k][bj + j] (all NR columns readable); bias: NR readable values, or
 * NULL (0). The epilogue of the last inner block: res (not NULL: R(i, j) at res[i*rsr + j])
 * added to the sum, then the activation act (CYBN_ACT_*). */
static inline __attribute__((always_inline)) void GNAME(cybn_micro_)(
        ptrdiff_t kc, const GT* restrict a, ptrdiff_t ars, ptrdiff_t acs, const ptrdiff_t* koff,
        const GT* const* ar, const GT* restrict b, const GT* const* brow, ptrdiff_t bj,
        const GT* bias, GT* c, ptrdiff_t rsc, ptrdiff_t m, ptrdiff_t n, int add,
        const GT* res, ptrdiff_t rsr, int act) {
    GV acc[GMR][GNV];
    const GT* ap[GMR];
#pragma GCC unroll 16
    for (int i = 0; i < GMR; i++) {
        ap[i] = ar != NULL ? ar[i] : a + i * ars;
#pragma GCC unroll 4
        for (int v = 0; v < GNV; v++)
            acc[i][v] = add || bias == NULL ? (GV){0} : GNAME(cybn_gld_)(bias + v * GVL);
    }
    for (ptrdiff_t k = 0; k < kc; k++) {
        GV bv[GNV];
#pragma GCC unroll 4
        for (int v = 0; v < GNV; v++)
            bv[v] = brow == NULL ? *(const GV*)(b + v * GVL)
                                 : GNAME(cybn_gld_)(brow[k] + bj + v * GVL);
#pragma GCC unroll 16
        for (int i = 0; i < GMR; i++) {
            GV ai = GBC(ar != NULL ? ap[i][koff[k]] : a[i * ars]);
#pragma GCC unroll 4
            for (int v = 0; v < GNV; v++) acc[i][v] = GFMA(ai, bv[v], acc[i][v]);
        }
        if (ar == NULL) a += acs;
        b += GNR;
    }
    if (m == GMR && n == GNR) {
#pragma GCC unroll 16
        for (int i = 0; i < GMR; i++)
#pragma GCC unroll 4
            for (int v = 0; v < GNV; v++) {
                GT* p = c + i * rsc + v * GVL;
                GV r = add ? GNAME(cybn_gld_)(p) + acc[i][v] : acc[i][v];
                if (res != NULL) r += GNAME(cybn_gld_)(res + i * rsr + v * GVL);
                GNAME(cybn_gst_)(p, act ? GNAME(cybn_gact_)(r, act) : r);
            }
        return;
    }
    GT t[GMR * GNR];
    for (int i = 0; i < GMR; i++)
        for (int v = 0; v < GNV; v++) GNAME(cybn_gst_)(t + i * GNR + v * GVL, acc[i][v]);
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            GT r = add ? c[i * rsc + j] + t[i * GNR + j] : t[i * GNR + j];
            if (res != NULL) r += res[i * rsr + j];
            c[i * rsc + j] = act ? GNAME(cybn_sact_)(r, act) : r;
        }
}

/* C (M x N, row stride rsc) = (accumulate ? C : bias) + A @ B, A(i, k) at A[i*rsa + k*csa]
 * (or, with row pointers arows and an offset table akoff, at arows[i][akoff[k]]: rows that
 * are windows of an image, read where they lie), B the
 * operand *B (a matrix, an image's column matrix or rows read in place, see cybn_operand),
 * bias N values added to each row (NULL: none; the tiles start from it), then the epilogue
 * *ep (NULL: none) while the tile is in registers: a residual R (M x N, apart from C) added,
 * then an activation. The tiles and the summation order depend only on the shapes: the same bits for
 * any thread count, and the same as the unfused passes. 0, or -1 when out of memory. */
static int GNAME(cybn_gemm_)(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const GT* A, ptrdiff_t rsa,
                            ptrdiff_t csa, const ptrdiff_t* akoff, const GT* const* arows,
                            const cybn_operand* B, const GT* bias, GT* C, ptrdiff_t rsc,
                            int accumulate, const cybn_epilogue* ep, int num_threads) {
    if (M <= 0 || N <= 0) return 0;
    const GT* res = ep != NULL ? (const GT*)ep->residual : NULL;
    ptrdiff_t rsr = ep != NULL ? ep->rsr : 0;
    int act = ep != NULL ? ep->act : CYBN_ACT_NONE;
    if (K <= 0) {
        for (ptrdiff_t i = 0; i < M; i++)
            for (ptrdiff_t j = 0; j < N; j++) {
                GT r = accumulate ? C[i * rsc + j] : bias != NULL ? bias[j] : 0;
                if (res != NULL) r += res[i * rsr + j];
                C[i * rsc + j] = act ? GNAME(cybn_sact_)(r, act) : r;
            }
        return 0;
    }
    ptrdiff_t ncmax = N < CYBN_GEMM_NC ? N : CYBN_GEMM_NC;
    ptrdiff_t kcmax = K < GKC ? K : GKC;
    ptrdiff_t npan = (ncmax + GNR - 1) / GNR;
    GT* Bp = (GT*)cybn_gemm_scratch(0, (size_t)npan * GNR * kcmax * sizeof(GT));
    if (Bp == NULL) return -1;
    int failed = 0;
    /* A's rows read in place, no packing; except rows a multiple of 4 KB apart, whose
     * register tile would fall into one set of the L1 cache (a 64 x 4096 @ 4096 x 10 product
     * ran at 14 GFLOP/s reading them in place; at 2 KB apart packing cost more than it
     * saved) */
    ptrdiff_t apart = (arows != NULL && M > 1) ? (const char*)arows[1] - (const char*)arows[0]
                                               : rsa * (ptrdiff_t)sizeof(GT);
    int direct = (csa == 1 || arows != NULL) && apart % 4096 != 0;
    ptrdiff_t mblocks = (M + CYBN_GEMM_MC - 1) / CYBN_GEMM_MC;
    /* no more threads than work items, and one for a small product (a team's start and
     * barriers cost more than they save there); the tiles, and so the bits, stay the same */
    ptrdiff_t items = mblocks * ((npan + CYBN_GEMM_NG - 1) / CYBN_GEMM_NG);
    if (num_threads > items) num_threads = (int)items;
    if ((double)M * N * K < CYBN_GEMM_MIN_PARALLEL) num_threads = 1;
    ptrdiff_t deal = items >= 8 * (ptrdiff_t)num_threads
                         ? (items + num_threads - 1) / num_threads : 1;
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
    {
        /* this thread's packed block of A (all of it, or the last rows of direct blocks) */
        GT* Ap = (GT*)cybn_gemm_scratch(1, (size_t)CYBN_GEMM_MC * kcmax * sizeof(GT));
        if (Ap == NULL) {
#pragma omp atomic write
            failed = 1;
        }
        for (ptrdiff_t jc = 0; jc < N; jc += CYBN_GEMM_NC) {
            ptrdiff_t nc = N - jc < CYBN_GEMM_NC ? N - jc : CYBN_GEMM_NC;
            ptrdiff_t np = (nc + GNR - 1) / GNR;
            /* the work items: row blocks x groups of column panels */
            ptrdiff_t ngroups = (np + CYBN_GEMM_NG - 1) / CYBN_GEMM_NG;
            for (ptrdiff_t pc = 0; pc < K; pc += GKC) {
                ptrdiff_t kc = K - pc < GKC ? K - pc : GKC;
                int add = accumulate || pc > 0, last = pc + kc >= K;
                int eact = last ? act : CYBN_ACT_NONE;
                ptrdiff_t packed = -1;
#pragma omp for schedule(static)
                for (ptrdiff_t p = 0; p < np; p++) {
                    ptrdiff_t j0 = p * GNR, n = nc - j0 < GNR ? nc - j0 : GNR;
                    if (B->kind != CYBN_ROWS || n < GNR || akoff != NULL)
                        GNAME(cybn_pack_any_)(B, pc, kc, jc + j0, n, Bp + p * GNR * kc);
                }
                /* few work items round robin (row blocks of unequal height, 96 and 32
                 * rows of a 128-row product, then spread evenly), many in one contiguous
                 * range per thread (neighbouring row blocks read neighbouring windows:
                 * dealt round robin, a 64 x 32x32 channels-last convolution was 14%
                 * slower); which thread computes a tile never changes its bits */
#pragma omp for schedule(static, deal)
                for (ptrdiff_t t = 0; t < mblocks * ngroups; t++) {
                    if (Ap == NULL) continue;
                    ptrdiff_t ib = t / ngroups, g = t % ngroups;
                    ptrdiff_t ic = ib * CYBN_GEMM_MC;
                    ptrdiff_t mc = M - ic < CYBN_GEMM_MC ? M - ic : CYBN_GEMM_MC;
                    ptrdiff_t mfull = direct ? mc / GMR * GMR : 0; /* rows read in place */
                    if (packed != ib && mfull < mc) {
                        GNAME(cybn_pack_a_)(A + (ic + mfull) * rsa + (akoff ? 0 : pc * csa),
                                            rsa, csa, akoff ? akoff + pc : NULL,
                                            arows ? arows + ic + mfull : NULL, mc - mfull, kc,
                                            Ap);
                        packed = ib;
                    }
                    ptrdiff_t p1 = (g + 1) * CYBN_GEMM_NG < np ? (g + 1) * CYBN_GEMM_NG : np;
                    for (ptrdiff_t p = g * CYBN_GEMM_NG; p < p1; p++) {
                        ptrdiff_t j0 = p * GNR, n = nc - j0 < GNR ? nc - j0 : GNR;
                        const GT* bp = Bp + p * GNR * kc;
                        /* a rows operand's full panels are read in place */
                        const GT* const* brow = B->kind == CYBN_ROWS && n == GNR && !akoff ?
                            (const GT* const*)B->rows + pc : NULL;
                        GT* cp = C + jc + j0;
                        /* the bias of the panel's columns, NR readable values */
                        GT bpad[GNR];
                        const GT* bb = bias == NULL ? NULL : bias + jc + j0;
                        if (bb != NULL && n < GNR) {
                            for (ptrdiff_t j = 0; j < GNR; j++) bpad[j] = j < n ? bb[j] : 0;
                            bb = bpad;
                        }
                        /* the epilogue's residual at the panel's rows ic.. and columns */
                        const GT* rp = last && res != NULL ? res + ic * rsr + jc + j0 : NULL;
                        ptrdiff_t ir = 0;
                        /* (separate calls: each inlined for its A, B) */
                        if (arows != NULL)
                            for (; ir < mfull; ir += GMR)
                                GNAME(cybn_micro_)(kc, NULL, 0, 0, akoff + pc,
                                                   arows + ic + ir, bp, NULL, 0, bb,
                                                   cp + (ic + ir) * rsc, rsc, GMR, n, add,
                                                   rp ? rp + ir * rsr : NULL, rsr, eact);
                        else if (brow != NULL)
                            for (; ir < mfull; ir += GMR)
                                GNAME(cybn_micro_)(kc, A + (ic + ir) * rsa + pc, rsa, 1, NULL,
                                                   NULL, NULL, brow, jc + j0, bb,
                                                   cp + (ic + ir) * rsc, rsc, GMR, n, add,
                                                   rp ? rp + ir * rsr : NULL, rsr, eact);
                        else
                            for (; ir < mfull; ir += GMR)
                                GNAME(cybn_micro_)(kc, A + (ic + ir) * rsa + pc, rsa, 1, NULL,
                                                   NULL, bp, NULL, 0, bb, cp + (ic + ir) * rsc,
                                                   rsc, GMR, n, add, rp ? rp + ir * rsr : NULL,
                                                   rsr, eact);
                        for (; ir < mc; ir += GMR)
                            GNAME(cybn_micro_)(kc, Ap + (ir - mfull) * kc, 1, GMR, NULL, NULL,
                                               bp, brow, jc + j0, bb, cp + (ic + ir) * rsc,
                                               rsc, mc - ir < GMR ? mc - ir : GMR, n, add,
                                               rp ? rp + ir * rsr : NULL, rsr, eact);
                    }
                }
            }
        }
    }
    return failed ? -1 : 0;
}

#undef GNR
#undef GVU
#undef GCAT
#undef GCAT2
#undef GNAME
