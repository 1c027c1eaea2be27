/* cybn: matrix products C = A @ B (+ C) in float32 and float64 (no threads of its own
 * beyond one OpenMP team per call, no Python objects).
 *
 * Goto and van de Geijn's scheme, as BLIS lays it out: for each block of KC inner indices,
 * B is packed into panels of NR columns (k-major, zero-padded), and a register tile of
 * MR x NR accumulators runs over the block, reading A's rows in place when they are
 * contiguous (else from MR-row panels packed the same way). A call's work items are
 * (row block of MC rows) x (group of GNG column panels); they depend only on the shapes,
 * and every output element is summed over k in one fixed order, so the bits are the same
 * for any thread count. Each variant uses FMA where the CPU has it: the variants agree
 * within rounding, not bitwise.
 *
 * Tile shapes, measured (2026-12, AMD EPYC with AVX-512, single thread, against NumPy's
 * OpenBLAS): AVX-512 8 x 32 (16 zmm accumulators), AVX2 6 x 16 (12 ymm), SSE2 4 x 8; a
 * narrow tile of one vector of columns (16, 12, 8 rows) for products with at most one
 * vector of columns (convolutions with few output channels). KC = 256 float32 (128
 * float64) keeps a B panel of KC x NR in L1; MC = 96 rows of A stay in L2.
 */
#ifndef CYBN_GEMM_H
#define CYBN_GEMM_H
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define CYBN_GEMM_VBYTES 64
#define CYBN_BC_S(x) ((cybn_gvs)_mm512_set1_ps(x))
#define CYBN_BC_D(x) ((cybn_gvd)_mm512_set1_pd(x))
#define CYBN_FMA_S(a, b, c) ((cybn_gvs)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#define CYBN_FMA_D(a, b, c) \
    ((cybn_gvd)_mm512_fmadd_pd((__m512d)(a), (__m512d)(b), (__m512d)(c)))
#define CYBN_MR_WIDE 8
#define CYBN_MR_NARROW 16
#elif defined(__FMA__)
#define CYBN_GEMM_VBYTES 32
#define CYBN_BC_S(x) ((cybn_gvs)_mm256_set1_ps(x))
#define CYBN_BC_D(x) ((cybn_gvd)_mm256_set1_pd(x))
#define CYBN_FMA_S(a, b, c) ((cybn_gvs)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define CYBN_FMA_D(a, b, c) \
    ((cybn_gvd)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
#define CYBN_MR_WIDE 6
#define CYBN_MR_NARROW 12
#else /* SSE2 (any x86-64): no FMA, a multiply and an add */
#define CYBN_GEMM_VBYTES 16
#define CYBN_BC_S(x) ((cybn_gvs)_mm_set1_ps(x))
#define CYBN_BC_D(x) ((cybn_gvd)_mm_set1_pd(x))
#define CYBN_FMA_S(a, b, c) ((a) * (b) + (c))
#define CYBN_FMA_D(a, b, c) ((a) * (b) + (c))
#define CYBN_MR_WIDE 4
#define CYBN_MR_NARROW 8
#endif
#define CYBN_GEMM_KC 256  /* inner block, float32 (float64: half) */
#define CYBN_GEMM_MC 96   /* row block */
#define CYBN_GEMM_NC 4096 /* column block */
#define CYBN_GEMM_NG 4    /* column panels per work item */
#define CYBN_GEMM_MIN_PARALLEL 1048576.0 /* multiply-adds below which a product has 1 thread */

/* Scratch for the packed panels, kept per thread and per slot (0: B's panels, 1: a block of
 * A) and grown as needed: a product costs no allocation once its thread has run one as
 * large (many small products, one per sample, spent more time in malloc than in
 * arithmetic). 64-byte aligned; NULL when out of memory. A thread's scratch is freed when
 * the thread exits (a pthread key's destructor). */
typedef struct {
    void* p;
    size_t bytes;
} cybn_scratch;

static pthread_key_t cybn_scratch_keys[2];
static pthread_once_t cybn_scratch_once = PTHREAD_ONCE_INIT;

static void cybn_scratch_release(void* s) {
    free(((cybn_scratch*)s)->p);
    free(s);
}

static void cybn_scratch_make_keys(void) {
    pthread_key_create(&cybn_scratch_keys[0], cybn_scratch_release);
    pthread_key_create(&cybn_scratch_keys[1], cybn_scratch_release);
}

static void* cybn_gemm_scratch(int slot, size_t bytes) {
    pthread_once(&cybn_scratch_once, cybn_scratch_make_keys);
    cybn_scratch* s = (cybn_scratch*)pthread_getspecific(cybn_scratch_keys[slot]);
    if (s == NULL) {
        s = (cybn_scratch*)calloc(1, sizeof(cybn_scratch));
        if (s == NULL || pthread_setspecific(cybn_scratch_keys[slot], s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->bytes < bytes) {
        size_t want = (bytes + 63) / 64 * 64;
        free(s->p);
        s->p = aligned_alloc(64, want);
        s->bytes = s->p == NULL ? 0 : want;
    }
    return s->p;
}

/* dst[k * ld + j] = src[j * ss + k] for an 8 x 8 (float) or 4 x 4 (double) block: the
 * in-register transposes that pack a transposed B (rows of src are B's columns). */
#if defined(__AVX__)
static inline void cybn_transpose8_s(const float* src, ptrdiff_t ss, float* dst, ptrdiff_t ld) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ss);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ss), r3 = _mm256_loadu_ps(src + 3 * ss);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ss), r5 = _mm256_loadu_ps(src + 5 * ss);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ss), r7 = _mm256_loadu_ps(src + 7 * ss);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

static inline void cybn_transpose4_d(const double* src, ptrdiff_t ss, double* dst,
                                     ptrdiff_t ld) {
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + ss);
    __m256d r2 = _mm256_loadu_pd(src + 2 * ss), r3 = _mm256_loadu_pd(src + 3 * ss);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ld, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ld, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ld, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#define CYBN_TRANSPOSE_S(src, ss, dst, ld) cybn_transpose8_s(src, ss, dst, ld)
#define CYBN_TRANSPOSE_D(src, ss, dst, ld) cybn_transpose4_d(src, ss, dst, ld)
#define CYBN_TBLOCK_S 8
#define CYBN_TBLOCK_D 4
#else /* SSE2: 4 x 4 / 2 x 2 by element */
static inline void cybn_transpose4_s(const float* src, ptrdiff_t ss, float* dst, ptrdiff_t ld) {
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) dst[k * ld + j] = src[j * ss + k];
}

static inline void cybn_transpose2_d(const double* src, ptrdiff_t ss, double* dst,
                                     ptrdiff_t ld) {
    dst[0] = src[0];
    dst[1] = src[ss];
    dst[ld] = src[1];
    dst[ld + 1] = src[ss + 1];
}
#define CYBN_TRANSPOSE_S(src, ss, dst, ld) cybn_transpose4_s(src, ss, dst, ld)
#define CYBN_TRANSPOSE_D(src, ss, dst, ld) cybn_transpose2_d(src, ss, dst, ld)
#define CYBN_TBLOCK_S 4
#define CYBN_TBLOCK_D 2
#endif

/* dst[b * ds + a] = src[a * ss + b] for a < na, b < nb: a block transposed by the
 * in-register transposes above, the edges element by element (layout changes between
 * channels-first and channels-last; element by element they ran at a sixth of a copy's
 * speed). */
#define CYBN_TRANSPOSE_BLOCK(X, T, TB, TRANSPOSE)                                            \
    static void cybn_transpose_block_##X(const T* src, ptrdiff_t ss, T* dst, ptrdiff_t ds,   \
                                         ptrdiff_t na, ptrdiff_t nb) {                       \
        ptrdiff_t ab = na / (TB) * (TB), bb = nb / (TB) * (TB);                              \
        for (ptrdiff_t a = 0; a < ab; a += (TB)) {                                           \
            for (ptrdiff_t b = 0; b < bb; b += (TB))                                         \
                TRANSPOSE(src + a * ss + b, ss, dst + b * ds + a, ds);                       \
            for (ptrdiff_t b = bb; b < nb; b++)                                              \
                for (ptrdiff_t i = a; i < a + (TB); i++) dst[b * ds + i] = src[i * ss + b];  \
        }                                                                                    \
        for (ptrdiff_t b = 0; b < nb; b++)                                                   \
            for (ptrdiff_t a = ab; a < na; a++) dst[b * ds + a] = src[a * ss + b];           \
    }
CYBN_TRANSPOSE_BLOCK(s, float, CYBN_TBLOCK_S, CYBN_TRANSPOSE_S)
CYBN_TRANSPOSE_BLOCK(d, double, CYBN_TBLOCK_D, CYBN_TRANSPOSE_D)
#undef CYBN_TRANSPOSE_BLOCK

/* The B operand of a product: a strided matrix, or the column matrix of one image's
 * convolution windows, read while packing (implicit GEMM: the column matrix is never
 * written out). The column matrix of a (C, H, W) image has a row for each (c, i, j) of the
 * C x kh x kw window taps and a column for each (oh, ow) of the Ho x Wo outputs; entry
 * image[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], 0 outside the image. */
enum {
    CYBN_MATRIX = 0,
    CYBN_COLS = 1,   /* the column matrix */
    CYBN_COLS_T = 2, /* the column matrix transposed */
    CYBN_ROWS = 3,   /* rows given by pointers, each with N readable elements: read in place */
    CYBN_GATHER = 4  /* B(k, j) at rows[k][off[j]]: the windows of a channels-last image */
};

typedef struct {
    int kind;
    const void* p;       /* the matrix, or the image (C, H, W), C-contiguous */
    const void* const* rows; /* CYBN_ROWS, CYBN_GATHER: row k starts at rows[k] */
    const ptrdiff_t* off;    /* CYBN_GATHER: column j at offset off[j] (increasing) */
    ptrdiff_t rs, cs;    /* CYBN_MATRIX: element strides between rows and columns */
    ptrdiff_t C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw;  /* the windows */
} cybn_operand;

/* What a product does to a finished tile while it is in registers: add a residual R
 * (R(i, j) at residual[i*rsr + j], NULL: none), then an activation (act). */
enum { CYBN_ACT_NONE = 0, CYBN_ACT_RELU = 1, CYBN_ACT_RELU6 = 2 };
typedef struct {
    const void* residual;
    ptrdiff_t rsr;
    int act;
} cybn_epilogue;

typedef float cybn_gvs __attribute__((vector_size(CYBN_GEMM_VBYTES)));
typedef double cybn_gvd __attribute__((vector_size(CYBN_GEMM_VBYTES)));

/* gemm_body.h once per (type, tile): GT, GV, GVL (lanes), GMR, GNV (vectors per row of
 * the tile), GKC, GFMA, GBC (broadcast) and the name suffix GX. */

#define GT float
#define GV cybn_gvs
#define GVL (CYBN_GEMM_VBYTES / 4)
#define GKC CYBN_GEMM_KC
#define GFMA CYBN_FMA_S
#define GBC CYBN_BC_S
#define GTRANSPOSE CYBN_TRANSPOSE_S
#define GTB CYBN_TBLOCK_S
#define GMR CYBN_MR_WIDE
#define GNV 2
#define GX s_wide
#include "gemm_body.h"
#undef GMR
#undef GNV
#undef GX
#define GMR CYBN_MR_NARROW
#define GNV 1
#define GX s_narrow
#include "gemm_body.h"
#undef GMR
#undef GNV
#undef GX
#undef GT
#undef GV
#undef GVL
#undef GKC
#undef GFMA
#undef GBC
#undef GTRANSPOSE
#undef GTB

#define GT double
#define GV cybn_gvd
#define GVL (CYBN_GEMM_VBYTES / 8)
#define GKC (CYBN_GEMM_KC / 2)
#define GFMA CYBN_FMA_D
#define GBC CYBN_BC_D
#define GTRANSPOSE CYBN_TRANSPOSE_D
#define GTB CYBN_TBLOCK_D
#define GMR CYBN_MR_WIDE
#define GNV 2
#define GX d_wide
#include "gemm_body.h"
#undef GMR
#undef GNV
#undef GX
#define GMR CYBN_MR_NARROW
#define GNV 1
#define GX d_narrow
#include "gemm_body.h"
#undef GMR
#undef GNV
#undef GX
#undef GT
#undef GV
#undef GVL
#undef GKC
#undef GFMA
#undef GBC
#undef GTRANSPOSE
#undef GTB

/* C (M x N, row stride rsc) = A @ B (+ bias), or C += A @ B with accumulate; A(i, k) at
 * A[i*rsa + k*csa] (akoff, arows: see gemm_body.h), B the operand *B: cybn_gemm_op_s/d. The
 * narrow tile for at most one vector of columns, else the wide one. 0, or -1 when out of
 * memory. cybn_gemm_ep_s/d: the same with an epilogue (NULL: none). cybn_gemm_s/d: B a
 * matrix, B(k, j) at B[k*rsb + j*csb], no bias.
 * (Computing C^T = B^T A^T for few rows and many columns was tried and measured slower in
 * float32.) */
#define CYBN_GEMM_DISPATCH(X, T, VL)                                                         \
    static int cybn_gemm_ep_##X(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T* A,          \
                                ptrdiff_t rsa, ptrdiff_t csa, const ptrdiff_t* akoff,       \
                                const T* const* arows, const cybn_operand* B,               \
                                const T* bias, T* C, ptrdiff_t rsc, int accumulate,         \
                                const cybn_epilogue* ep, int num_threads) {                 \
        if (N <= (VL))                                                                      \
            return cybn_gemm_##X##_narrow(M, N, K, A, rsa, csa, akoff, arows, B, bias, C,   \
                                          rsc, accumulate, ep, num_threads);                \
        return cybn_gemm_##X##_wide(M, N, K, A, rsa, csa, akoff, arows, B, bias, C, rsc,    \
                                    accumulate, ep, num_threads);                           \
    }                                                                                       \
    static int cybn_gemm_op_##X(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T* A,          \
                                ptrdiff_t rsa, ptrdiff_t csa, const ptrdiff_t* akoff,       \
                                const T* const* arows, const cybn_operand* B,               \
                                const T* bias, T* C, ptrdiff_t rsc, int accumulate,         \
                                int num_threads) {                                          \
        return cybn_gemm_ep_##X(M, N, K, A, rsa, csa, akoff, arows, B, bias, C, rsc,        \
                                accumulate, NULL, num_threads);                             \
    }                                                                                       \
    static int cybn_gemm_##X(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T* A,             \
                             ptrdiff_t rsa, ptrdiff_t csa, const T* B, ptrdiff_t rsb,        \
                             ptrdiff_t csb, T* C, ptrdiff_t rsc, int accumulate,             \
                             int num_threads) {                                             \
        cybn_operand b = {.kind = CYBN_MATRIX, .p = B, .rs = rsb, .cs = csb};                \
        return cybn_gemm_op_##X(M, N, K, A, rsa, csa, NULL, NULL, &b, NULL, C, rsc,         \
                                accumulate, num_threads);                                   \
    }
CYBN_GEMM_DISPATCH(s, float, CYBN_GEMM_VBYTES / 4)
CYBN_GEMM_DISPATCH(d, double, CYBN_GEMM_VBYTES / 8)
#undef CYBN_GEMM_DISPATCH
#endif
