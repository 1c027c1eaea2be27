/* cybn: float32 SIMD block kernels (no threads, no Python objects).
 *
 * The Cython kernels (stats.pxi, apply.pxi, grad.pxi) cut the work into blocks and threads;
 * this header does the per-element work of float32 data on one block, in float32 vectors written with GCC/Clang
 * vector extensions (8 floats; the compiler maps them to AVX, SSE or NEON registers).
 *
 * Accuracy where it lives:
 *   - Statistics: float accumulators over short runs (at most FLUSH elements per lane), flushed
 *     into double; block results are (mean, M2) in double, merged by the caller (Chan).
 *   - A double mean m is split into two floats m_hi = (float)m, m_lo = (float)(m - m_hi).
 *     x - m_hi is exact for data near the mean, so centred values keep full accuracy on data far
 *     from zero; m_lo is subtracted next (statistics) or folded into the bias (elementwise).
 * Bits: every lane does the same operations in the same order on every instruction set, and the
 * build turns off contraction (-ffp-contract=off), so all variants give the same results.
 *
 * Streaming stores (nt != 0) bypass the cache for outputs much larger than it: they save the
 * read-for-ownership of every output line. Loads run one step ahead of the stores, which avoids
 * the slowdown when the output sits just past the input modulo 4096 bytes (4K aliasing).
 * Callers issue cybn_store_fence() before other threads read what was streamed.
 */
#ifndef CYBN_SIMD_F32_H
#define CYBN_SIMD_F32_H

#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

typedef float cybn_v8f __attribute__((vector_size(32)));
typedef float cybn_v8f_u __attribute__((vector_size(32), aligned(4)));
typedef float cybn_v4f __attribute__((vector_size(16)));
typedef double cybn_v4d __attribute__((vector_size(32)));

#define CYBN_FLUSH 256 /* elements summed in float per lane group before a flush into double */

static inline cybn_v8f cybn_ld8(const float* p) { return *(const cybn_v8f_u*)p; }
static inline void cybn_st8(float* p, cybn_v8f v) { *(cybn_v8f_u*)p = v; }
static inline cybn_v8f cybn_bc8(float s) { return (cybn_v8f){s, s, s, s, s, s, s, s}; }

/* Streaming store of 8 floats to a 32-byte aligned address. */
static inline void cybn_st8_nt(float* p, cybn_v8f v) {
#if defined(__AVX__)
    _mm256_stream_ps(p, (__m256)v);
#elif defined(__SSE2__)
    cybn_v4f lo, hi;
    memcpy(&lo, &v, 16);
    memcpy(&hi, (const char*)&v + 16, 16);
    _mm_stream_ps(p, (__m128)lo);
    _mm_stream_ps(p + 4, (__m128)hi);
#else
    cybn_st8(p, v);
#endif
}

static inline void cybn_store_fence(void) {
#if defined(__SSE2__) || defined(__AVX__)
    _mm_sfence();
#endif
}

/* acc (8 floats) added into two double vectors. */
static inline void cybn_flush8(cybn_v8f a, cybn_v4d* lo, cybn_v4d* hi) {
    cybn_v4f a0, a1;
    memcpy(&a0, &a, 16);
    memcpy(&a1, (const char*)&a + 16, 16);
    *lo += __builtin_convertvector(a0, cybn_v4d);
    *hi += __builtin_convertvector(a1, cybn_v4d);
}

static inline double cybn_hsum(cybn_v4d a, cybn_v4d b) {
    cybn_v4d s = a + b;
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static inline void cybn_split(double m, float* hi, float* lo) {
    float h = (float)m;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    /* An empty asm the compiler cannot see through keeps the rounding to float: GCC 12's
     * vectorizer at -O3 with -mavx512f dropped the double -> float -> double round trip
     * (hi came out unrounded and lo zero), so the avx512 variant lost the low part. */
    __asm__("" : "+x"(h));
#endif
    *hi = h;
    *lo = (float)(m - (double)h);
}

/* ------------------------------------------------------------------ contiguous runs */

/* sum(x - c) over one run, added into two double vectors (vector part) and *tail (the last
 * n % 8 elements, in double). Float accumulators hold at most CYBN_FLUSH elements. */
static inline void cybn_f32_run_sum(const float* p, ptrdiff_t n, float c, cybn_v4d* d0,
                                    cybn_v4d* d1, double* tail) {
    const cybn_v8f vc = cybn_bc8(c);
    ptrdiff_t i = 0, n32 = n & ~(ptrdiff_t)31;
    while (i < n32) {
        ptrdiff_t end = i + CYBN_FLUSH < n32 ? i + CYBN_FLUSH : n32;
        cybn_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; i < end; i += 32) {
            a0 += cybn_ld8(p + i) - vc;
            a1 += cybn_ld8(p + i + 8) - vc;
            a2 += cybn_ld8(p + i + 16) - vc;
            a3 += cybn_ld8(p + i + 24) - vc;
        }
        cybn_flush8((a0 + a1) + (a2 + a3), d0, d1);
    }
    if (i + 8 <= n) {
        cybn_v8f a0 = {0};
        for (; i + 8 <= n; i += 8) a0 += cybn_ld8(p + i) - vc;
        cybn_flush8(a0, d0, d1);
    }
    for (; i < n; i++) *tail += (double)p[i] - (double)c;
}

/* sum(((x - mh) - ml)^2) over one run, as cybn_f32_run_sum; m = mh + ml in double. */
static inline void cybn_f32_run_sum_sq(const float* p, ptrdiff_t n, float mh, float ml, double m,
                                       cybn_v4d* d0, cybn_v4d* d1, double* tail) {
    const cybn_v8f vh = cybn_bc8(mh), vl = cybn_bc8(ml);
    ptrdiff_t i = 0, n32 = n & ~(ptrdiff_t)31;
    while (i < n32) {
        ptrdiff_t end = i + CYBN_FLUSH < n32 ? i + CYBN_FLUSH : n32;
        cybn_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (; i < end; i += 32) {
            cybn_v8f e0 = (cybn_ld8(p + i) - vh) - vl, e1 = (cybn_ld8(p + i + 8) - vh) - vl;
            cybn_v8f e2 = (cybn_ld8(p + i + 16) - vh) - vl, e3 = (cybn_ld8(p + i + 24) - vh) - vl;
            a0 += e0 * e0;
            a1 += e1 * e1;
            a2 += e2 * e2;
            a3 += e3 * e3;
        }
        cybn_flush8((a0 + a1) + (a2 + a3), d0, d1);
    }
    if (i + 8 <= n) {
        cybn_v8f a0 = {0};
        for (; i + 8 <= n; i += 8) {
            cybn_v8f e0 = (cybn_ld8(p + i) - vh) - vl;
            a0 += e0 * e0;
        }
        cybn_flush8(a0, d0, d1);
    }
    for (; i < n; i++) {
        double d = (double)p[i] - m;
        *tail += d * d;
    }
}

/* The block moments below in double, element by element: for blocks whose float sums
 * overflowed (deviations beyond about 1e19 square past FLT_MAX). Rare; exact range. */
static inline void cybn_f32_block_moments_wide(const float* p, ptrdiff_t n, ptrdiff_t nplanes,
                                               ptrdiff_t stride, double* mean, double* m2) {
    const double pivot = p[0];
    double s = 0.0, m, d;
    ptrdiff_t k, i;
    for (k = 0; k < nplanes; k++)
        for (i = 0; i < n; i++) s += (double)p[k * stride + i] - pivot;
    m = pivot + s / ((double)n * (double)nplanes);
    s = 0.0;
    for (k = 0; k < nplanes; k++)
        for (i = 0; i < n; i++) {
            d = (double)p[k * stride + i] - m;
            s += d * d;
        }
    *mean = m;
    *m2 = s;
}

/* Mean and M2 of a block: nplanes runs of n elements (n >= 1), stride elements apart, two
 * passes (the block fits L1/L2). The first pass sums x - p[0], so a constant block gives
 * exactly mean p[0] and M2 0. */
static inline void cybn_f32_block_moments(const float* p, ptrdiff_t n, ptrdiff_t nplanes,
                                          ptrdiff_t stride, double* mean, double* m2) {
    const float pivot = p[0];
    cybn_v4d d0 = {0, 0, 0, 0}, d1 = {0, 0, 0, 0};
    double tail = 0.0;
    ptrdiff_t k;
    for (k = 0; k < nplanes; k++) cybn_f32_run_sum(p + k * stride, n, pivot, &d0, &d1, &tail);
    const double m = (double)pivot + (cybn_hsum(d0, d1) + tail) / ((double)n * (double)nplanes);
    float mh, ml;
    cybn_split(m, &mh, &ml);
    d0 = (cybn_v4d){0, 0, 0, 0};
    d1 = (cybn_v4d){0, 0, 0, 0};
    tail = 0.0;
    for (k = 0; k < nplanes; k++) cybn_f32_run_sum_sq(p + k * stride, n, mh, ml, m, &d0, &d1, &tail);
    *mean = m;
    *m2 = cybn_hsum(d0, d1) + tail;
    if (!isfinite(*m2)) cybn_f32_block_moments_wide(p, n, nplanes, stride, mean, m2);
}

/* sum(dy) and sum(dy * (x - mean)) over a block of nplanes runs of n elements, stride apart;
 * mean = mh + ml (split). */
static inline void cybn_f32_block_grad_sums(const float* g, const float* x, ptrdiff_t n,
                                            ptrdiff_t nplanes, ptrdiff_t stride, float mh,
                                            float ml, double* sum_dy, double* sum_dy_xmu) {
    const cybn_v8f vh = cybn_bc8(mh), vl = cybn_bc8(ml);
    const double m = (double)mh + (double)ml;
    cybn_v4d a_lo = {0, 0, 0, 0}, a_hi = {0, 0, 0, 0}, b_lo = {0, 0, 0, 0}, b_hi = {0, 0, 0, 0};
    double sa = 0.0, sb = 0.0;
    ptrdiff_t k, i, n16 = n & ~(ptrdiff_t)15;
    for (k = 0; k < nplanes; k++) {
        const float* gk = g + k * stride;
        const float* xk = x + k * stride;
        i = 0;
        while (i < n16) {
            ptrdiff_t end = i + CYBN_FLUSH < n16 ? i + CYBN_FLUSH : n16;
            cybn_v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
            for (; i < end; i += 16) {
                cybn_v8f g0 = cybn_ld8(gk + i), g1 = cybn_ld8(gk + i + 8);
                a0 += g0;
                a1 += g1;
                b0 += g0 * ((cybn_ld8(xk + i) - vh) - vl);
                b1 += g1 * ((cybn_ld8(xk + i + 8) - vh) - vl);
            }
            cybn_flush8(a0 + a1, &a_lo, &a_hi);
            cybn_flush8(b0 + b1, &b_lo, &b_hi);
        }
        if (i + 8 <= n) {
            cybn_v8f g0 = cybn_ld8(gk + i);
            cybn_flush8(g0, &a_lo, &a_hi);
            cybn_flush8(g0 * ((cybn_ld8(xk + i) - vh) - vl), &b_lo, &b_hi);
            i += 8;
        }
        for (; i < n; i++) {
            sa += (double)gk[i];
            sb += (double)gk[i] * ((double)xk[i] - m);
        }
    }
    *sum_dy = cybn_hsum(a_lo, a_hi) + sa;
    *sum_dy_xmu = cybn_hsum(b_lo, b_hi) + sb;
}

/* y = (x - mh) * scale + offset over n elements (offset already holds bias - ml * scale). */
static inline void cybn_f32_affine(const float* x, float* y, ptrdiff_t n, float mh, float scale,
                                   float offset, int nt) {
    const cybn_v8f vh = cybn_bc8(mh), vs = cybn_bc8(scale), vo = cybn_bc8(offset);
    ptrdiff_t i = 0;
    if (nt) {
        for (; i < n && ((uintptr_t)(y + i) & 31); i++) y[i] = (x[i] - mh) * scale + offset;
        if (i + 32 <= n) {
            cybn_v8f a0 = cybn_ld8(x + i), a1 = cybn_ld8(x + i + 8);
            cybn_v8f a2 = cybn_ld8(x + i + 16), a3 = cybn_ld8(x + i + 24);
            for (; i + 64 <= n; i += 32) {
                cybn_v8f n0 = cybn_ld8(x + i + 32), n1 = cybn_ld8(x + i + 40);
                cybn_v8f n2 = cybn_ld8(x + i + 48), n3 = cybn_ld8(x + i + 56);
                cybn_st8_nt(y + i, (a0 - vh) * vs + vo);
                cybn_st8_nt(y + i + 8, (a1 - vh) * vs + vo);
                cybn_st8_nt(y + i + 16, (a2 - vh) * vs + vo);
                cybn_st8_nt(y + i + 24, (a3 - vh) * vs + vo);
                a0 = n0; a1 = n1; a2 = n2; a3 = n3;
            }
            cybn_st8_nt(y + i, (a0 - vh) * vs + vo);
            cybn_st8_nt(y + i + 8, (a1 - vh) * vs + vo);
            cybn_st8_nt(y + i + 16, (a2 - vh) * vs + vo);
            cybn_st8_nt(y + i + 24, (a3 - vh) * vs + vo);
            i += 32;
        }
        for (; i + 8 <= n; i += 8) cybn_st8_nt(y + i, (cybn_ld8(x + i) - vh) * vs + vo);
    } else {
        for (; i + 16 <= n; i += 16) {
            cybn_v8f a0 = cybn_ld8(x + i), a1 = cybn_ld8(x + i + 8);
            cybn_st8(y + i, (a0 - vh) * vs + vo);
            cybn_st8(y + i + 8, (a1 - vh) * vs + vo);
        }
        for (; i + 8 <= n; i += 8) cybn_st8(y + i, (cybn_ld8(x + i) - vh) * vs + vo);
    }
    for (; i < n; i++) y[i] = (x[i] - mh) * scale + offset;
}

/* dx = k1 * dy + k2 * (x - mh) + k3 over n elements (k3 already holds k3 - k2 * ml). */
static inline void cybn_f32_grad_apply(const float* g, const float* x, float* dx, ptrdiff_t n,
                                       float mh, float k1, float k2, float k3, int nt) {
    const cybn_v8f vh = cybn_bc8(mh), a = cybn_bc8(k1), b = cybn_bc8(k2), c = cybn_bc8(k3);
    ptrdiff_t i = 0;
    if (nt) {
        for (; i < n && ((uintptr_t)(dx + i) & 31); i++) dx[i] = k1 * g[i] + k2 * (x[i] - mh) + k3;
        if (i + 16 <= n) {
            cybn_v8f g0 = cybn_ld8(g + i), g1 = cybn_ld8(g + i + 8);
            cybn_v8f x0 = cybn_ld8(x + i), x1 = cybn_ld8(x + i + 8);
            for (; i + 32 <= n; i += 16) {
                cybn_v8f ng0 = cybn_ld8(g + i + 16), ng1 = cybn_ld8(g + i + 24);
                cybn_v8f nx0 = cybn_ld8(x + i + 16), nx1 = cybn_ld8(x + i + 24);
                cybn_st8_nt(dx + i, a * g0 + b * (x0 - vh) + c);
                cybn_st8_nt(dx + i + 8, a * g1 + b * (x1 - vh) + c);
                g0 = ng0; g1 = ng1; x0 = nx0; x1 = nx1;
            }
            cybn_st8_nt(dx + i, a * g0 + b * (x0 - vh) + c);
            cybn_st8_nt(dx + i + 8, a * g1 + b * (x1 - vh) + c);
            i += 16;
        }
        for (; i + 8 <= n; i += 8)
            cybn_st8_nt(dx + i, a * cybn_ld8(g + i) + b * (cybn_ld8(x + i) - vh) + c);
    } else {
        for (; i + 8 <= n; i += 8)
            cybn_st8(dx + i, a * cybn_ld8(g + i) + b * (cybn_ld8(x + i) - vh) + c);
    }
    for (; i < n; i++) dx[i] = k1 * g[i] + k2 * (x[i] - mh) + k3;
}

/* ------------------------------------------------------------------ rows (channels-last) */

/* Per-column mean and M2 of rows x[0:nr, 0:L] (row stride L), two passes with the column
 * accumulators of a tile of 32 (then 8) columns held in registers over the block's rows.
 * The first row is the pivot: a constant column gives exactly its value and M2 0. nr is small
 * (a block of rows), so float accumulation over it keeps full accuracy. */
static inline void cybn_f32_rows_moments(const float* x, ptrdiff_t nr, ptrdiff_t L, double* mean,
                                         double* m2, const float* next, ptrdiff_t next_rows) {
    const double inv = 1.0 / (double)nr;
    ptrdiff_t j0 = 0, r;
    int k, l;
    for (; j0 + 32 <= L; j0 += 32) {
        cybn_v8f p[4], a[4], h[4], lo[4];
        if (next) /* the same columns of the next block, while this one is computed */
            for (r = 0; r < next_rows; r++) {
                __builtin_prefetch(next + r * L + j0, 0, 3);
                __builtin_prefetch(next + r * L + j0 + 16, 0, 3);
            }
        for (k = 0; k < 4; k++) {
            p[k] = cybn_ld8(x + j0 + 8 * k);
            a[k] = (cybn_v8f){0};
        }
        for (r = 1; r < nr; r++)
            for (k = 0; k < 4; k++) a[k] += cybn_ld8(x + r * L + j0 + 8 * k) - p[k];
        for (k = 0; k < 4; k++)
            for (l = 0; l < 8; l++) {
                double m = (double)p[k][l] + (double)a[k][l] * inv;
                float mh, ml;
                cybn_split(m, &mh, &ml);
                mean[j0 + 8 * k + l] = m;
                h[k][l] = mh;
                lo[k][l] = ml;
            }
        for (k = 0; k < 4; k++) a[k] = (cybn_v8f){0};
        for (r = 0; r < nr; r++)
            for (k = 0; k < 4; k++) {
                cybn_v8f d = (cybn_ld8(x + r * L + j0 + 8 * k) - h[k]) - lo[k];
                a[k] += d * d;
            }
        for (k = 0; k < 4; k++)
            for (l = 0; l < 8; l++) m2[j0 + 8 * k + l] = (double)a[k][l];
    }
    for (; j0 + 8 <= L; j0 += 8) {
        cybn_v8f p = cybn_ld8(x + j0), a = {0}, h, lo;
        for (r = 1; r < nr; r++) a += cybn_ld8(x + r * L + j0) - p;
        for (l = 0; l < 8; l++) {
            double m = (double)p[l] + (double)a[l] * inv;
            float mh, ml;
            cybn_split(m, &mh, &ml);
            mean[j0 + l] = m;
            h[l] = mh;
            lo[l] = ml;
        }
        a = (cybn_v8f){0};
        for (r = 0; r < nr; r++) {
            cybn_v8f d = (cybn_ld8(x + r * L + j0) - h) - lo;
            a += d * d;
        }
        for (l = 0; l < 8; l++) m2[j0 + l] = (double)a[l];
    }
    if (next && j0 < L)
        for (r = 0; r < next_rows; r++) __builtin_prefetch(next + r * L + j0, 0, 3);
    for (; j0 < L; j0++) {
        double s = 0.0, pivot = (double)x[j0], m, d;
        for (r = 0; r < nr; r++) s += (double)x[r * L + j0] - pivot;
        m = pivot + s * inv;
        s = 0.0;
        for (r = 0; r < nr; r++) {
            d = (double)x[r * L + j0] - m;
            s += d * d;
        }
        mean[j0] = m;
        m2[j0] = s;
    }
}

/* sum_dy[j] += sum over rows of dy[r, j]; sum_dy_xmu[j] += sum of dy * (x - mean[j]) with the
 * column means split into hi[j] + lo[j]. Rows are read in order, four at a time (sequential
 * streams the hardware prefetches), into float column accumulators (scratch: 2 * L floats,
 * L1-resident) that are added into the double sums at the end of the block. */
static inline void cybn_f32_rows_grad_sums(const float* g, const float* x, ptrdiff_t nr,
                                           ptrdiff_t L, const float* hi, const float* lo,
                                           double* sum_dy, double* sum_dy_xmu, float* scratch) {
    float* fa = scratch;
    float* fb = scratch + L;
    ptrdiff_t r = 0, j;
    memset(scratch, 0, 2 * (size_t)L * sizeof(float));
    for (; r + 4 <= nr; r += 4) {
        const float* g0 = g + r * L;
        const float* x0 = x + r * L;
        for (j = 0; j + 8 <= L; j += 8) {
            cybn_v8f h = cybn_ld8(hi + j), l = cybn_ld8(lo + j);
            cybn_v8f a = cybn_ld8(g0 + j), b = cybn_ld8(g0 + L + j);
            cybn_v8f c = cybn_ld8(g0 + 2 * L + j), d = cybn_ld8(g0 + 3 * L + j);
            cybn_v8f pa = (cybn_ld8(x0 + j) - h) - l, pb = (cybn_ld8(x0 + L + j) - h) - l;
            cybn_v8f pc = (cybn_ld8(x0 + 2 * L + j) - h) - l, pd = (cybn_ld8(x0 + 3 * L + j) - h) - l;
            cybn_st8(fa + j, cybn_ld8(fa + j) + ((a + b) + (c + d)));
            cybn_st8(fb + j, cybn_ld8(fb + j) + ((a * pa + b * pb) + (c * pc + d * pd)));
        }
        for (; j < L; j++) {
            float a = g0[j], b = g0[L + j], c = g0[2 * L + j], d = g0[3 * L + j];
            fa[j] += (a + b) + (c + d);
            fb[j] += (a * ((x0[j] - hi[j]) - lo[j]) + b * ((x0[L + j] - hi[j]) - lo[j]))
                     + (c * ((x0[2 * L + j] - hi[j]) - lo[j]) + d * ((x0[3 * L + j] - hi[j]) - lo[j]));
        }
    }
    for (; r < nr; r++) {
        const float* g0 = g + r * L;
        const float* x0 = x + r * L;
        for (j = 0; j + 8 <= L; j += 8) {
            cybn_v8f a = cybn_ld8(g0 + j);
            cybn_st8(fa + j, cybn_ld8(fa + j) + a);
            cybn_st8(fb + j, cybn_ld8(fb + j)
                                 + a * ((cybn_ld8(x0 + j) - cybn_ld8(hi + j)) - cybn_ld8(lo + j)));
        }
        for (; j < L; j++) {
            fa[j] += g0[j];
            fb[j] += g0[j] * ((x0[j] - hi[j]) - lo[j]);
        }
    }
    for (j = 0; j < L; j++) {
        sum_dy[j] += (double)fa[j];
        sum_dy_xmu[j] += (double)fb[j];
    }
}

/* Elements [e0, e1) of a row-major array whose per-column constants repeat with period W
 * (a multiple of the row length and of 8; the constant arrays hold W + 8 values, so 8
 * consecutive elements always read 8 consecutive constants):
 * y = (x - hi[k]) * scale[k] + offset[k], k = e % W. */
static inline void cybn_f32_flat_affine(const float* x, float* y, ptrdiff_t e0, ptrdiff_t e1,
                                        ptrdiff_t W, const float* hi, const float* scale,
                                        const float* offset, int nt) {
    ptrdiff_t e = e0, k = e0 % W;
    if (nt) {
        for (; e < e1 && ((uintptr_t)(y + e) & 31); e++) {
            y[e] = (x[e] - hi[k]) * scale[k] + offset[k];
            if (++k == W) k = 0;
        }
        if (e + 16 <= e1) {
            cybn_v8f a0 = cybn_ld8(x + e), a1 = cybn_ld8(x + e + 8);
            for (; e + 32 <= e1; e += 16) {
                cybn_v8f n0 = cybn_ld8(x + e + 16), n1 = cybn_ld8(x + e + 24);
                ptrdiff_t k1 = k + 8 >= W ? k + 8 - W : k + 8;
                cybn_st8_nt(y + e, (a0 - cybn_ld8(hi + k)) * cybn_ld8(scale + k) + cybn_ld8(offset + k));
                cybn_st8_nt(y + e + 8,
                            (a1 - cybn_ld8(hi + k1)) * cybn_ld8(scale + k1) + cybn_ld8(offset + k1));
                k = k1 + 8 >= W ? k1 + 8 - W : k1 + 8;
                a0 = n0; a1 = n1;
            }
            ptrdiff_t k1 = k + 8 >= W ? k + 8 - W : k + 8;
            cybn_st8_nt(y + e, (a0 - cybn_ld8(hi + k)) * cybn_ld8(scale + k) + cybn_ld8(offset + k));
            cybn_st8_nt(y + e + 8,
                        (a1 - cybn_ld8(hi + k1)) * cybn_ld8(scale + k1) + cybn_ld8(offset + k1));
            k = k1 + 8 >= W ? k1 + 8 - W : k1 + 8;
            e += 16;
        }
        for (; e + 8 <= e1; e += 8) {
            cybn_st8_nt(y + e, (cybn_ld8(x + e) - cybn_ld8(hi + k)) * cybn_ld8(scale + k)
                                   + cybn_ld8(offset + k));
            k += 8;
            if (k >= W) k -= W;
        }
    } else {
        for (; e + 8 <= e1; e += 8) {
            cybn_st8(y + e, (cybn_ld8(x + e) - cybn_ld8(hi + k)) * cybn_ld8(scale + k)
                                + cybn_ld8(offset + k));
            k += 8;
            if (k >= W) k -= W;
        }
    }
    for (; e < e1; e++) {
        y[e] = (x[e] - hi[k]) * scale[k] + offset[k];
        if (++k == W) k = 0;
    }
}

/* dx = k1[k] * dy + k2[k] * (x - hi[k]) + k3[k] over elements [e0, e1), constants as above. */
static inline void cybn_f32_flat_grad_apply(const float* g, const float* x, float* dx,
                                            ptrdiff_t e0, ptrdiff_t e1, ptrdiff_t W,
                                            const float* hi, const float* k1, const float* k2,
                                            const float* k3, int nt) {
    ptrdiff_t e = e0, k = e0 % W;
    if (nt) {
        for (; e < e1 && ((uintptr_t)(dx + e) & 31); e++) {
            dx[e] = k1[k] * g[e] + k2[k] * (x[e] - hi[k]) + k3[k];
            if (++k == W) k = 0;
        }
        if (e + 8 <= e1) {
            cybn_v8f g0 = cybn_ld8(g + e), x0 = cybn_ld8(x + e);
            for (; e + 16 <= e1; e += 8) {
                cybn_v8f ng = cybn_ld8(g + e + 8), nx = cybn_ld8(x + e + 8);
                cybn_st8_nt(dx + e, cybn_ld8(k1 + k) * g0 + cybn_ld8(k2 + k) * (x0 - cybn_ld8(hi + k))
                                        + cybn_ld8(k3 + k));
                k += 8;
                if (k >= W) k -= W;
                g0 = ng; x0 = nx;
            }
            cybn_st8_nt(dx + e, cybn_ld8(k1 + k) * g0 + cybn_ld8(k2 + k) * (x0 - cybn_ld8(hi + k))
                                    + cybn_ld8(k3 + k));
            k += 8;
            if (k >= W) k -= W;
            e += 8;
        }
    } else {
        for (; e + 8 <= e1; e += 8) {
            cybn_st8(dx + e, cybn_ld8(k1 + k) * cybn_ld8(g + e)
                                 + cybn_ld8(k2 + k) * (cybn_ld8(x + e) - cybn_ld8(hi + k))
                                 + cybn_ld8(k3 + k));
            k += 8;
            if (k >= W) k -= W;
        }
    }
    for (; e < e1; e++) {
        dx[e] = k1[k] * g[e] + k2[k] * (x[e] - hi[k]) + k3[k];
        if (++k == W) k = 0;
    }
}

#endif
