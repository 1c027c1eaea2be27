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
#include "half.h"

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

/* ------------------------------------------------------------------ element kinds
 * The elementwise kernels below read and write their data arrays through cybn_ldk / cybn_stk:
 * float32 as is, float16 and bfloat16 (half.h) converted in registers, so half-precision
 * data moves half the bytes with the float32 arithmetic unchanged. kind is a constant in
 * every instantiation (the *_impl functions are inlined by dispatchers), so each kind
 * compiles to its own loop. Streaming stores apply to float32 data only. */
#define CYBN_INLINE static inline __attribute__((always_inline))
enum { CYBN_KIND_F32 = 0, CYBN_KIND_F16 = 1, CYBN_KIND_BF16 = 2 };

typedef int cybn_v8i __attribute__((vector_size(32)));

CYBN_INLINE cybn_v8f cybn_ldk(const void* p, ptrdiff_t i, int kind) {
    if (kind == CYBN_KIND_F32) return cybn_ld8((const float*)p + i);
    if (kind == CYBN_KIND_F16) {
#if defined(__F16C__)
        return (cybn_v8f)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)p + i)));
#else
        cybn_v8f v;
        int l;
        for (l = 0; l < 8; l++) v[l] = cybn_f16_to_f32(((const uint16_t*)p)[i + l]);
        return v;
#endif
    }
    {
#if defined(__AVX2__)
        __m256i u = _mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)p + i))), 16);
        return (cybn_v8f)_mm256_castsi256_ps(u);
#else
        cybn_v8h h;
        cybn_v8f v;
        memcpy(&h, (const uint16_t*)p + i, 16);
        cybn_v8u u = __builtin_convertvector(h, cybn_v8u) << 16;
        memcpy(&v, &u, 32);
        return v;
#endif
    }
}

CYBN_INLINE void cybn_stk(void* p, ptrdiff_t i, cybn_v8f v, int kind) {
    if (kind == CYBN_KIND_F32) {
        cybn_st8((float*)p + i, v);
    } else if (kind == CYBN_KIND_F16) {
#if defined(__F16C__)
        _mm_storeu_si128((__m128i*)((uint16_t*)p + i),
                         _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#else
        int l;
        for (l = 0; l < 8; l++) ((uint16_t*)p)[i + l] = cybn_f32_to_f16(v[l]);
#endif
    } else {
        cybn_v8u u, r, nan;
        memcpy(&u, &v, 32);
        nan = (cybn_v8u)((u & 0x7fffffffu) > 0x7f800000u);
        r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        r = (r & ~nan) | (((u >> 16) | 0x40u) & nan);
#if defined(__AVX512VL__) && defined(__AVX512BW__)
        _mm_storeu_si128((__m128i*)((uint16_t*)p + i), _mm256_cvtepi32_epi16((__m256i)r));
#elif defined(__AVX2__)
        __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32((__m256i)r, (__m256i)r), 0x08);
        _mm_storeu_si128((__m128i*)((uint16_t*)p + i), _mm256_castsi256_si128(w));
#else
        cybn_v8h h = __builtin_convertvector(r, cybn_v8h);
        memcpy((uint16_t*)p + i, &h, 16);
#endif
    }
}

CYBN_INLINE float cybn_ldk1(const void* p, ptrdiff_t i, int kind) {
    if (kind == CYBN_KIND_F32) return ((const float*)p)[i];
    if (kind == CYBN_KIND_F16) return cybn_f16_to_f32(((const uint16_t*)p)[i]);
    return cybn_bf16_to_f32(((const uint16_t*)p)[i]);
}

CYBN_INLINE void cybn_stk1(void* p, ptrdiff_t i, float v, int kind) {
    if (kind == CYBN_KIND_F32) ((float*)p)[i] = v;
    else if (kind == CYBN_KIND_F16) ((uint16_t*)p)[i] = cybn_f32_to_f16(v);
    else ((uint16_t*)p)[i] = cybn_f32_to_bf16(v);
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

/* sum(dy) and sum(dy * (x - mean)) over a block of nplanes runs of n elements, x's runs
 * stride apart and g's gstride apart; mean = mh + ml (split). */
CYBN_INLINE void cybn_block_grad_sums_impl(const void* g, const void* x, ptrdiff_t n,
                                           ptrdiff_t nplanes, ptrdiff_t stride,
                                           ptrdiff_t gstride, float mh, float ml,
                                           double* sum_dy, double* sum_dy_xmu, int kind) {
    const cybn_v8f vh = cybn_bc8(mh), vl = cybn_bc8(ml);
    const double m = (double)mh + (double)ml;
    cybn_v4d a_lo = {0, 0, 0, 0}, a_hi = {0, 0, 0, 0}, b_lo = {0, 0, 0, 0}, b_hi = {0, 0, 0, 0};
    double sa = 0.0, sb = 0.0;
    ptrdiff_t k, i, n16 = n & ~(ptrdiff_t)15;
    for (k = 0; k < nplanes; k++) {
        const ptrdiff_t gk = k * gstride, xk = k * stride;
        i = 0;
        while (i < n16) {
            ptrdiff_t end = i + CYBN_FLUSH < n16 ? i + CYBN_FLUSH : n16;
            cybn_v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
            for (; i < end; i += 16) {
                cybn_v8f g0 = cybn_ldk(g, gk + i, kind), g1 = cybn_ldk(g, gk + i + 8, kind);
                a0 += g0;
                a1 += g1;
                b0 += g0 * ((cybn_ldk(x, xk + i, kind) - vh) - vl);
                b1 += g1 * ((cybn_ldk(x, xk + i + 8, kind) - vh) - vl);
            }
            cybn_flush8(a0 + a1, &a_lo, &a_hi);
            cybn_flush8(b0 + b1, &b_lo, &b_hi);
        }
        if (i + 8 <= n) {
            cybn_v8f g0 = cybn_ldk(g, gk + i, kind);
            cybn_flush8(g0, &a_lo, &a_hi);
            cybn_flush8(g0 * ((cybn_ldk(x, xk + i, kind) - vh) - vl), &b_lo, &b_hi);
            i += 8;
        }
        for (; i < n; i++) {
            double gv = (double)cybn_ldk1(g, gk + i, kind);
            sa += gv;
            sb += gv * ((double)cybn_ldk1(x, xk + i, kind) - m);
        }
    }
    *sum_dy = cybn_hsum(a_lo, a_hi) + sa;
    *sum_dy_xmu = cybn_hsum(b_lo, b_hi) + sb;
}

/* sum(dy) and sum(dy * (x - mean)) over a block of nplanes runs of n elements, x's runs
 * stride apart and g's gstride apart; mean = mh + ml (split); data of element kind kind. */
static inline void cybn_block_grad_sums(const void* g, const void* x, ptrdiff_t n,
                                        ptrdiff_t nplanes, ptrdiff_t stride, ptrdiff_t gstride,
                                        float mh, float ml, double* sum_dy, double* sum_dy_xmu,
                                        int kind) {
    switch (kind) {
    case CYBN_KIND_F16:
        cybn_block_grad_sums_impl(g, x, n, nplanes, stride, gstride, mh, ml, sum_dy, sum_dy_xmu,
                                  CYBN_KIND_F16);
        break;
    case CYBN_KIND_BF16:
        cybn_block_grad_sums_impl(g, x, n, nplanes, stride, gstride, mh, ml, sum_dy, sum_dy_xmu,
                                  CYBN_KIND_BF16);
        break;
    default:
        cybn_block_grad_sums_impl(g, x, n, nplanes, stride, gstride, mh, ml, sum_dy, sum_dy_xmu,
                                  CYBN_KIND_F32);
    }
}

static inline void cybn_f32_block_grad_sums(const float* g, const float* x, ptrdiff_t n,
                                            ptrdiff_t nplanes, ptrdiff_t stride,
                                            ptrdiff_t gstride, float mh, float ml,
                                            double* sum_dy, double* sum_dy_xmu) {
    cybn_block_grad_sums_impl(g, x, n, nplanes, stride, gstride, mh, ml, sum_dy, sum_dy_xmu,
                              CYBN_KIND_F32);
}

/* ------------------------------------------------------------------ fused epilogues
 * The elementwise passes can finish each value v with post-operations (ep bits):
 * CYBN_EP_RESIDUAL adds r[i] (in float32, as a separate add would), CYBN_EP_RELU then takes
 * relu(v) = 0 where v <= 0 (so -inf gives 0) and v elsewhere (NaN stays NaN), as PyTorch.
 * The backward keeps dy where the forward's pre-activation value was not <= 0 and puts an exact
 * 0 elsewhere (also for an infinite or NaN dy), recomputing that value with the forward's
 * arithmetic, so forward and backward agree bit for bit. The *_impl functions are inlined
 * with constant ep, so every combination compiles to its own loop. */
#define CYBN_EP_RESIDUAL 1
#define CYBN_EP_RELU 2

/* Instantiate call(EP, KIND) for the run-time (ep, kind): every combination its own loop. */
#define CYBN_DISPATCH(ep, kind, call)                                                        \
    do {                                                                                      \
        switch ((kind) * 4 + (ep)) {                                                          \
        case 0: call(0, CYBN_KIND_F32); break;                                                \
        case 1: call(1, CYBN_KIND_F32); break;                                                \
        case 2: call(2, CYBN_KIND_F32); break;                                                \
        case 3: call(3, CYBN_KIND_F32); break;                                                \
        case 4: call(0, CYBN_KIND_F16); break;                                                \
        case 5: call(1, CYBN_KIND_F16); break;                                                \
        case 6: call(2, CYBN_KIND_F16); break;                                                \
        case 7: call(3, CYBN_KIND_F16); break;                                                \
        case 8: call(0, CYBN_KIND_BF16); break;                                               \
        case 9: call(1, CYBN_KIND_BF16); break;                                               \
        case 10: call(2, CYBN_KIND_BF16); break;                                              \
        default: call(3, CYBN_KIND_BF16); break;                                              \
        }                                                                                     \
    } while (0)

/* v where keep is not <= 0, else +0. */
CYBN_INLINE cybn_v8f cybn_keep8(cybn_v8f v, cybn_v8f keep) {
    return (cybn_v8f)((cybn_v8i)v & ~(keep <= cybn_bc8(0.0f)));
}

CYBN_INLINE float cybn_keep1(float v, float keep) { return keep <= 0.0f ? 0.0f : v; }

CYBN_INLINE cybn_v8f cybn_ep8(cybn_v8f v, const void* r, ptrdiff_t i, int ep, int kind) {
    if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk(r, i, kind);
    if (ep & CYBN_EP_RELU) v = cybn_keep8(v, v);
    return v;
}

CYBN_INLINE float cybn_ep1(float v, const void* r, ptrdiff_t i, int ep, int kind) {
    if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk1(r, i, kind);
    if (ep & CYBN_EP_RELU) v = cybn_keep1(v, v);
    return v;
}

/* y = ep((x - mh) * scale + offset) over n elements (offset already holds bias - ml * scale). */
CYBN_INLINE void cybn_affine_impl(const void* x, void* y, ptrdiff_t n, float mh, float scale,
                                  float offset, int nt, const void* r, int ep, int kind) {
    const cybn_v8f vh = cybn_bc8(mh), vs = cybn_bc8(scale), vo = cybn_bc8(offset);
    float* yf = (float*)y;
    ptrdiff_t i = 0;
    if (nt && kind == CYBN_KIND_F32) {
        for (; i < n && ((uintptr_t)(yf + i) & 31); i++)
            yf[i] = cybn_ep1((cybn_ldk1(x, i, kind) - mh) * scale + offset, r, i, ep, kind);
        if (i + 32 <= n) {
            cybn_v8f a0 = cybn_ldk(x, i, kind), a1 = cybn_ldk(x, i + 8, kind);
            cybn_v8f a2 = cybn_ldk(x, i + 16, kind), a3 = cybn_ldk(x, i + 24, kind);
            for (; i + 64 <= n; i += 32) {
                cybn_v8f n0 = cybn_ldk(x, i + 32, kind), n1 = cybn_ldk(x, i + 40, kind);
                cybn_v8f n2 = cybn_ldk(x, i + 48, kind), n3 = cybn_ldk(x, i + 56, kind);
                cybn_st8_nt(yf + i, cybn_ep8((a0 - vh) * vs + vo, r, i, ep, kind));
                cybn_st8_nt(yf + i + 8, cybn_ep8((a1 - vh) * vs + vo, r, i + 8, ep, kind));
                cybn_st8_nt(yf + i + 16, cybn_ep8((a2 - vh) * vs + vo, r, i + 16, ep, kind));
                cybn_st8_nt(yf + i + 24, cybn_ep8((a3 - vh) * vs + vo, r, i + 24, ep, kind));
                a0 = n0; a1 = n1; a2 = n2; a3 = n3;
            }
            cybn_st8_nt(yf + i, cybn_ep8((a0 - vh) * vs + vo, r, i, ep, kind));
            cybn_st8_nt(yf + i + 8, cybn_ep8((a1 - vh) * vs + vo, r, i + 8, ep, kind));
            cybn_st8_nt(yf + i + 16, cybn_ep8((a2 - vh) * vs + vo, r, i + 16, ep, kind));
            cybn_st8_nt(yf + i + 24, cybn_ep8((a3 - vh) * vs + vo, r, i + 24, ep, kind));
            i += 32;
        }
        for (; i + 8 <= n; i += 8)
            cybn_st8_nt(yf + i, cybn_ep8((cybn_ldk(x, i, kind) - vh) * vs + vo, r, i, ep, kind));
    } else {
        for (; i + 16 <= n; i += 16) {
            cybn_v8f a0 = cybn_ldk(x, i, kind), a1 = cybn_ldk(x, i + 8, kind);
            cybn_stk(y, i, cybn_ep8((a0 - vh) * vs + vo, r, i, ep, kind), kind);
            cybn_stk(y, i + 8, cybn_ep8((a1 - vh) * vs + vo, r, i + 8, ep, kind), kind);
        }
        for (; i + 8 <= n; i += 8)
            cybn_stk(y, i, cybn_ep8((cybn_ldk(x, i, kind) - vh) * vs + vo, r, i, ep, kind), kind);
    }
    for (; i < n; i++)
        cybn_stk1(y, i, cybn_ep1((cybn_ldk1(x, i, kind) - mh) * scale + offset, r, i, ep, kind),
                  kind);
}

/* The affine pass of data of element kind `kind` with the epilogue ep (r: the residual run,
 * of the same kind, read when ep has RESIDUAL). */
static inline void cybn_affine_ep(const void* x, void* y, ptrdiff_t n, float mh, float scale,
                                  float offset, int nt, const void* r, int ep, int kind) {
#define CYBN_CALL(EP, KIND) cybn_affine_impl(x, y, n, mh, scale, offset, nt, r, EP, KIND)
    CYBN_DISPATCH(ep, kind, CYBN_CALL);
#undef CYBN_CALL
}

static inline void cybn_f32_affine_ep(const float* x, float* y, ptrdiff_t n, float mh,
                                      float scale, float offset, int nt, const float* r,
                                      int ep) {
    cybn_affine_ep(x, y, n, mh, scale, offset, nt, r, ep, CYBN_KIND_F32);
}

/* The forward's pre-activation value (x - mh) * s + o (+ r) as the backward recomputes it. */
CYBN_INLINE cybn_v8f cybn_pre8(cybn_v8f xm, cybn_v8f vs, cybn_v8f vo, const void* r,
                               ptrdiff_t i, int ep, int kind) {
    cybn_v8f v = xm * vs + vo;
    if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk(r, i, kind);
    return v;
}

CYBN_INLINE float cybn_pre1(float xm, float s, float o, const void* r, ptrdiff_t i, int ep,
                            int kind) {
    float v = xm * s + o;
    if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk1(r, i, kind);
    return v;
}

/* dx = k1 * g + k2 * (x - mh) + k3 over n elements (k3 already holds k3 - k2 * ml), where
 * g = dy, or with relu != 0 dy masked by the forward's ReLU: 0 where (x - mh) * s + o <= 0. */
CYBN_INLINE void cybn_grad_apply_impl(const void* g, const void* x, void* dx, ptrdiff_t n,
                                      float mh, float k1, float k2, float k3, int nt, float s,
                                      float o, int relu, int kind) {
    const cybn_v8f vh = cybn_bc8(mh), a = cybn_bc8(k1), b = cybn_bc8(k2), c = cybn_bc8(k3);
    const cybn_v8f vs = cybn_bc8(s), vo = cybn_bc8(o);
    float* dxf = (float*)dx;
#define CYBN_G8(gv, xm) (relu ? cybn_keep8((gv), (xm) * vs + vo) : (gv))
#define CYBN_G1(gv, xm) (relu ? cybn_keep1((gv), (xm) * s + o) : (gv))
    ptrdiff_t i = 0;
    if (nt && kind == CYBN_KIND_F32) {
        for (; i < n && ((uintptr_t)(dxf + i) & 31); i++) {
            float xm = cybn_ldk1(x, i, kind) - mh;
            dxf[i] = k1 * CYBN_G1(cybn_ldk1(g, i, kind), xm) + k2 * xm + k3;
        }
        if (i + 16 <= n) {
            cybn_v8f g0 = cybn_ldk(g, i, kind), g1 = cybn_ldk(g, i + 8, kind);
            cybn_v8f x0 = cybn_ldk(x, i, kind), x1 = cybn_ldk(x, i + 8, kind);
            for (; i + 32 <= n; i += 16) {
                cybn_v8f ng0 = cybn_ldk(g, i + 16, kind), ng1 = cybn_ldk(g, i + 24, kind);
                cybn_v8f nx0 = cybn_ldk(x, i + 16, kind), nx1 = cybn_ldk(x, i + 24, kind);
                cybn_v8f m0 = x0 - vh, m1 = x1 - vh;
                cybn_st8_nt(dxf + i, a * CYBN_G8(g0, m0) + b * m0 + c);
                cybn_st8_nt(dxf + i + 8, a * CYBN_G8(g1, m1) + b * m1 + c);
                g0 = ng0; g1 = ng1; x0 = nx0; x1 = nx1;
            }
            cybn_v8f m0 = x0 - vh, m1 = x1 - vh;
            cybn_st8_nt(dxf + i, a * CYBN_G8(g0, m0) + b * m0 + c);
            cybn_st8_nt(dxf + i + 8, a * CYBN_G8(g1, m1) + b * m1 + c);
            i += 16;
        }
        for (; i + 8 <= n; i += 8) {
            cybn_v8f m0 = cybn_ldk(x, i, kind) - vh;
            cybn_st8_nt(dxf + i, a * CYBN_G8(cybn_ldk(g, i, kind), m0) + b * m0 + c);
        }
    } else {
        for (; i + 8 <= n; i += 8) {
            cybn_v8f m0 = cybn_ldk(x, i, kind) - vh;
            cybn_stk(dx, i, a * CYBN_G8(cybn_ldk(g, i, kind), m0) + b * m0 + c, kind);
        }
    }
    for (; i < n; i++) {
        float xm = cybn_ldk1(x, i, kind) - mh;
        cybn_stk1(dx, i, k1 * CYBN_G1(cybn_ldk1(g, i, kind), xm) + k2 * xm + k3, kind);
    }
#undef CYBN_G8
#undef CYBN_G1
}

static inline void cybn_f32_grad_apply(const float* g, const float* x, float* dx, ptrdiff_t n,
                                       float mh, float k1, float k2, float k3, int nt) {
    cybn_grad_apply_impl(g, x, dx, n, mh, k1, k2, k3, nt, 0.0f, 0.0f, 0, CYBN_KIND_F32);
}

static inline void cybn_f32_relu_grad_apply(const float* g, const float* x, float* dx,
                                            ptrdiff_t n, float mh, float k1, float k2, float k3,
                                            int nt, float s, float o) {
    cybn_grad_apply_impl(g, x, dx, n, mh, k1, k2, k3, nt, s, o, 1, CYBN_KIND_F32);
}

/* The backward's elementwise pass for data of element kind `kind`; relu != 0: through the
 * forward's ReLU (no residual), the mask recomputed from x. */
static inline void cybn_grad_apply_k(const void* g, const void* x, void* dx, ptrdiff_t n,
                                     float mh, float k1, float k2, float k3, int nt, float s,
                                     float o, int relu, int kind) {
#define CYBN_CALL(RELU, KIND) \
    cybn_grad_apply_impl(g, x, dx, n, mh, k1, k2, k3, nt, s, o, (RELU) >> 1, KIND)
    CYBN_DISPATCH(relu ? 2 : 0, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* g = dy where the forward's ReLU passed, else 0: over n elements, the pre-activation
 * (x - mh) * s + o (+ r[i] with ep's RESIDUAL bit) recomputed as the forward did; g of the
 * same kind as dy. */
CYBN_INLINE void cybn_relu_mask_impl(const void* dy, const void* x, const void* r, void* g,
                                     ptrdiff_t n, float mh, float s, float o, int ep, int kind) {
    const cybn_v8f vh = cybn_bc8(mh), vs = cybn_bc8(s), vo = cybn_bc8(o);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        cybn_stk(g, i, cybn_keep8(cybn_ldk(dy, i, kind),
                                  cybn_pre8(cybn_ldk(x, i, kind) - vh, vs, vo, r, i, ep, kind)),
                 kind);
    for (; i < n; i++)
        cybn_stk1(g, i, cybn_keep1(cybn_ldk1(dy, i, kind),
                                   cybn_pre1(cybn_ldk1(x, i, kind) - mh, s, o, r, i, ep, kind)),
                  kind);
}

static inline void cybn_relu_mask(const void* dy, const void* x, const void* r, void* g,
                                  ptrdiff_t n, float mh, float s, float o, int ep, int kind) {
#define CYBN_CALL(EP, KIND) cybn_relu_mask_impl(dy, x, r, g, n, mh, s, o, (EP) & 1, KIND)
    CYBN_DISPATCH(ep & CYBN_EP_RESIDUAL, kind, CYBN_CALL);
#undef CYBN_CALL
}

static inline void cybn_f32_relu_mask(const float* dy, const float* x, const float* r, float* g,
                                      ptrdiff_t n, float mh, float s, float o, int ep) {
    cybn_relu_mask(dy, x, r, g, n, mh, s, o, ep, CYBN_KIND_F32);
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
CYBN_INLINE void cybn_rows_grad_sums_impl(const void* g, const void* x, ptrdiff_t nr,
                                          ptrdiff_t L, const float* hi, const float* lo,
                                          double* sum_dy, double* sum_dy_xmu, float* scratch,
                                          int kind) {
    float* fa = scratch;
    float* fb = scratch + L;
    ptrdiff_t r = 0, j;
    memset(scratch, 0, 2 * (size_t)L * sizeof(float));
#define G(i) cybn_ldk(g, (i), kind)
#define X(i) cybn_ldk(x, (i), kind)
#define G1(i) cybn_ldk1(g, (i), kind)
#define X1(i) cybn_ldk1(x, (i), kind)
    for (; r + 4 <= nr; r += 4) {
        const ptrdiff_t o = r * L;
        for (j = 0; j + 8 <= L; j += 8) {
            cybn_v8f h = cybn_ld8(hi + j), l = cybn_ld8(lo + j);
            cybn_v8f a = G(o + j), b = G(o + L + j);
            cybn_v8f c = G(o + 2 * L + j), d = G(o + 3 * L + j);
            cybn_v8f pa = (X(o + j) - h) - l, pb = (X(o + L + j) - h) - l;
            cybn_v8f pc = (X(o + 2 * L + j) - h) - l, pd = (X(o + 3 * L + j) - h) - l;
            cybn_st8(fa + j, cybn_ld8(fa + j) + ((a + b) + (c + d)));
            cybn_st8(fb + j, cybn_ld8(fb + j) + ((a * pa + b * pb) + (c * pc + d * pd)));
        }
        for (; j < L; j++) {
            float a = G1(o + j), b = G1(o + L + j), c = G1(o + 2 * L + j), d = G1(o + 3 * L + j);
            fa[j] += (a + b) + (c + d);
            fb[j] += (a * ((X1(o + j) - hi[j]) - lo[j]) + b * ((X1(o + L + j) - hi[j]) - lo[j]))
                     + (c * ((X1(o + 2 * L + j) - hi[j]) - lo[j])
                        + d * ((X1(o + 3 * L + j) - hi[j]) - lo[j]));
        }
    }
    for (; r < nr; r++) {
        const ptrdiff_t o = r * L;
        for (j = 0; j + 8 <= L; j += 8) {
            cybn_v8f a = G(o + j);
            cybn_st8(fa + j, cybn_ld8(fa + j) + a);
            cybn_st8(fb + j, cybn_ld8(fb + j)
                                 + a * ((X(o + j) - cybn_ld8(hi + j)) - cybn_ld8(lo + j)));
        }
        for (; j < L; j++) {
            fa[j] += G1(o + j);
            fb[j] += G1(o + j) * ((X1(o + j) - hi[j]) - lo[j]);
        }
    }
#undef G
#undef X
#undef G1
#undef X1
    for (j = 0; j < L; j++) {
        sum_dy[j] += (double)fa[j];
        sum_dy_xmu[j] += (double)fb[j];
    }
}

static inline void cybn_rows_grad_sums(const void* g, const void* x, ptrdiff_t nr, ptrdiff_t L,
                                       const float* hi, const float* lo, double* sum_dy,
                                       double* sum_dy_xmu, float* scratch, int kind) {
    switch (kind) {
    case CYBN_KIND_F16:
        cybn_rows_grad_sums_impl(g, x, nr, L, hi, lo, sum_dy, sum_dy_xmu, scratch, CYBN_KIND_F16);
        break;
    case CYBN_KIND_BF16:
        cybn_rows_grad_sums_impl(g, x, nr, L, hi, lo, sum_dy, sum_dy_xmu, scratch,
                                 CYBN_KIND_BF16);
        break;
    default:
        cybn_rows_grad_sums_impl(g, x, nr, L, hi, lo, sum_dy, sum_dy_xmu, scratch, CYBN_KIND_F32);
    }
}

static inline void cybn_f32_rows_grad_sums(const float* g, const float* x, ptrdiff_t nr,
                                           ptrdiff_t L, const float* hi, const float* lo,
                                           double* sum_dy, double* sum_dy_xmu, float* scratch) {
    cybn_rows_grad_sums_impl(g, x, nr, L, hi, lo, sum_dy, sum_dy_xmu, scratch, CYBN_KIND_F32);
}

/* n elements of a row-major array whose per-column constants repeat with period W (a
 * multiple of the row length and of 8; the constant arrays hold W + 8 values, so 8
 * consecutive elements always read 8 consecutive constants), the first at constant index k0:
 * y[e] = ep((x[e] - hi[k]) * scale[k] + offset[k]), k = (k0 + e) % W, r indexed as x. */
CYBN_INLINE void cybn_flat_affine_impl(const void* x, void* y, ptrdiff_t n, ptrdiff_t k0,
                                       ptrdiff_t W, const float* hi, const float* scale,
                                       const float* offset, int nt, const void* r, int ep,
                                       int kind) {
    ptrdiff_t e = 0, e1 = n, k = k0;
    float* yf = (float*)y;
#define CYBN_AFF8(v, k, i)                                                                      \
    cybn_ep8(((v) - cybn_ld8(hi + (k))) * cybn_ld8(scale + (k)) + cybn_ld8(offset + (k)), r,   \
             (i), ep, kind)
#define CYBN_AFF1(e, k) \
    cybn_ep1((cybn_ldk1(x, e, kind) - hi[k]) * scale[k] + offset[k], r, e, ep, kind)
    if (nt && kind == CYBN_KIND_F32) {
        for (; e < e1 && ((uintptr_t)(yf + e) & 31); e++) {
            yf[e] = CYBN_AFF1(e, k);
            if (++k == W) k = 0;
        }
        if (e + 16 <= e1) {
            cybn_v8f a0 = cybn_ldk(x, e, kind), a1 = cybn_ldk(x, e + 8, kind);
            for (; e + 32 <= e1; e += 16) {
                cybn_v8f n0 = cybn_ldk(x, e + 16, kind), n1 = cybn_ldk(x, e + 24, kind);
                ptrdiff_t k1 = k + 8 >= W ? k + 8 - W : k + 8;
                cybn_st8_nt(yf + e, CYBN_AFF8(a0, k, e));
                cybn_st8_nt(yf + e + 8, CYBN_AFF8(a1, k1, e + 8));
                k = k1 + 8 >= W ? k1 + 8 - W : k1 + 8;
                a0 = n0; a1 = n1;
            }
            ptrdiff_t k1 = k + 8 >= W ? k + 8 - W : k + 8;
            cybn_st8_nt(yf + e, CYBN_AFF8(a0, k, e));
            cybn_st8_nt(yf + e + 8, CYBN_AFF8(a1, k1, e + 8));
            e += 16;
            k = k1 + 8 >= W ? k1 + 8 - W : k1 + 8;
        }
        for (; e + 8 <= e1; e += 8) {
            cybn_st8_nt(yf + e, CYBN_AFF8(cybn_ldk(x, e, kind), k, e));
            k += 8;
            if (k >= W) k -= W;
        }
    } else {
        for (; e + 8 <= e1; e += 8) {
            cybn_stk(y, e, CYBN_AFF8(cybn_ldk(x, e, kind), k, e), kind);
            k += 8;
            if (k >= W) k -= W;
        }
    }
    for (; e < e1; e++) {
        cybn_stk1(y, e, CYBN_AFF1(e, k), kind);
        if (++k == W) k = 0;
    }
#undef CYBN_AFF8
#undef CYBN_AFF1
}

static inline void cybn_flat_affine_ep(const void* x, void* y, ptrdiff_t n, ptrdiff_t k0,
                                       ptrdiff_t W, const float* hi, const float* scale,
                                       const float* offset, int nt, const void* r, int ep,
                                       int kind) {
#define CYBN_CALL(EP, KIND) \
    cybn_flat_affine_impl(x, y, n, k0, W, hi, scale, offset, nt, r, EP, KIND)
    CYBN_DISPATCH(ep, kind, CYBN_CALL);
#undef CYBN_CALL
}

static inline void cybn_f32_flat_affine_ep(const float* x, float* y, ptrdiff_t n, ptrdiff_t k0,
                                           ptrdiff_t W, const float* hi, const float* scale,
                                           const float* offset, int nt, const float* r, int ep) {
    cybn_flat_affine_ep(x, y, n, k0, W, hi, scale, offset, nt, r, ep, CYBN_KIND_F32);
}

/* dx = k1[k] * g + k2[k] * (x - hi[k]) + k3[k] over n elements, constants as above;
 * g = dy, or with relu != 0 dy masked where (x - hi[k]) * s[k] + o[k] <= 0. */
CYBN_INLINE void cybn_flat_grad_apply_impl(const void* g, const void* x, void* dx, ptrdiff_t n,
                                           ptrdiff_t k0, ptrdiff_t W, const float* hi,
                                           const float* k1, const float* k2, const float* k3,
                                           int nt, const float* s, const float* o, int relu,
                                           int kind) {
    ptrdiff_t e = 0, e1 = n, k = k0;
    float* dxf = (float*)dx;
#define CYBN_GA8(gv, xv, k) __extension__({ \
        cybn_v8f m_ = (xv) - cybn_ld8(hi + (k)); \
        cybn_v8f g_ = relu ? cybn_keep8((gv), m_ * cybn_ld8(s + (k)) + cybn_ld8(o + (k))) : (gv); \
        cybn_ld8(k1 + (k)) * g_ + cybn_ld8(k2 + (k)) * m_ + cybn_ld8(k3 + (k)); })
#define CYBN_GA1(e, k) __extension__({ \
        float m_ = cybn_ldk1(x, e, kind) - hi[k]; \
        float gv_ = cybn_ldk1(g, e, kind); \
        float g_ = relu ? cybn_keep1(gv_, m_ * s[k] + o[k]) : gv_; \
        k1[k] * g_ + k2[k] * m_ + k3[k]; })
    if (nt && kind == CYBN_KIND_F32) {
        for (; e < e1 && ((uintptr_t)(dxf + e) & 31); e++) {
            dxf[e] = CYBN_GA1(e, k);
            if (++k == W) k = 0;
        }
        if (e + 8 <= e1) {
            cybn_v8f g0 = cybn_ldk(g, e, kind), x0 = cybn_ldk(x, e, kind);
            for (; e + 16 <= e1; e += 8) {
                cybn_v8f ng = cybn_ldk(g, e + 8, kind), nx = cybn_ldk(x, e + 8, kind);
                cybn_st8_nt(dxf + e, CYBN_GA8(g0, x0, k));
                k += 8;
                if (k >= W) k -= W;
                g0 = ng; x0 = nx;
            }
            cybn_st8_nt(dxf + e, CYBN_GA8(g0, x0, k));
            k += 8;
            if (k >= W) k -= W;
            e += 8;
        }
    } else {
        for (; e + 8 <= e1; e += 8) {
            cybn_stk(dx, e, CYBN_GA8(cybn_ldk(g, e, kind), cybn_ldk(x, e, kind), k), kind);
            k += 8;
            if (k >= W) k -= W;
        }
    }
    for (; e < e1; e++) {
        cybn_stk1(dx, e, CYBN_GA1(e, k), kind);
        if (++k == W) k = 0;
    }
#undef CYBN_GA8
#undef CYBN_GA1
}

static inline void cybn_flat_grad_apply_k(const void* g, const void* x, void* dx, ptrdiff_t n,
                                          ptrdiff_t k0, ptrdiff_t W, const float* hi,
                                          const float* k1, const float* k2, const float* k3,
                                          int nt, const float* s, const float* o, int relu,
                                          int kind) {
#define CYBN_CALL(RELU, KIND) \
    cybn_flat_grad_apply_impl(g, x, dx, n, k0, W, hi, k1, k2, k3, nt, s, o, (RELU) >> 1, KIND)
    CYBN_DISPATCH(relu ? 2 : 0, kind, CYBN_CALL);
#undef CYBN_CALL
}

static inline void cybn_f32_flat_grad_apply(const float* g, const float* x, float* dx,
                                            ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                            const float* hi, const float* k1, const float* k2,
                                            const float* k3, int nt) {
    cybn_flat_grad_apply_impl(g, x, dx, n, k0, W, hi, k1, k2, k3, nt, NULL, NULL, 0,
                              CYBN_KIND_F32);
}

static inline void cybn_f32_flat_relu_grad_apply(const float* g, const float* x, float* dx,
                                                 ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                                 const float* hi, const float* k1,
                                                 const float* k2, const float* k3, int nt,
                                                 const float* s, const float* o) {
    cybn_flat_grad_apply_impl(g, x, dx, n, k0, W, hi, k1, k2, k3, nt, s, o, 1, CYBN_KIND_F32);
}

/* g = dy where the forward's ReLU passed, else 0, over n elements with the tiled constants
 * above (the first at index k0); the residual r (ep's RESIDUAL bit) indexed as x; g float32
 * (scratch) whatever the kind of dy, x and r. */
CYBN_INLINE void cybn_flat_relu_mask_impl(const void* dy, const void* x, const void* r, float* g,
                                          ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                          const float* hi, const float* s, const float* o,
                                          int ep, int kind) {
    ptrdiff_t e = 0, k = k0;
    for (; e + 8 <= n; e += 8) {
        cybn_v8f m = cybn_ldk(x, e, kind) - cybn_ld8(hi + k);
        cybn_st8(g + e, cybn_keep8(cybn_ldk(dy, e, kind),
                                   cybn_pre8(m, cybn_ld8(s + k), cybn_ld8(o + k), r, e, ep, kind)));
        k += 8;
        if (k >= W) k -= W;
    }
    for (; e < n; e++) {
        g[e] = cybn_keep1(cybn_ldk1(dy, e, kind),
                          cybn_pre1(cybn_ldk1(x, e, kind) - hi[k], s[k], o[k], r, e, ep, kind));
        if (++k == W) k = 0;
    }
}

static inline void cybn_flat_relu_mask(const void* dy, const void* x, const void* r, float* g,
                                       ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W, const float* hi,
                                       const float* s, const float* o, int ep, int kind) {
#define CYBN_CALL(EP, KIND) cybn_flat_relu_mask_impl(dy, x, r, g, n, k0, W, hi, s, o, EP, KIND)
    CYBN_DISPATCH(ep & CYBN_EP_RESIDUAL, kind, CYBN_CALL);
#undef CYBN_CALL
}

static inline void cybn_f32_flat_relu_mask(const float* dy, const float* x, const float* r,
                                           float* g, ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                           const float* hi, const float* s, const float* o,
                                           int ep) {
    cybn_flat_relu_mask(dy, x, r, g, n, k0, W, hi, s, o, ep, CYBN_KIND_F32);
}

/* ------------------------------------------------------------------ half precision, exactly
 * For float16 and bfloat16 data the affine value (x - m) * s + o is computed as
 * x * S + T with S = s, T = o - m * s (in double) each split into two floats:
 * fma(x, S_hi, T_hi) + fma(x, S_lo, T_lo). The product in the first FMA is exact and x is
 * exact in float32, so the value has a float32 rounding error relative to itself, not to its
 * terms: rounded once more to the half type (after the epilogue's residual add and ReLU, in
 * float32) y is within one ulp of the exact result even where it nearly cancels, which plain
 * float32 coefficients cannot promise at the half types' ulps. The backward recomputes the
 * ReLU's mask with the same arithmetic (the *_d mask and apply functions). FMA instructions
 * on the avx2 and avx512 variants, C's correctly rounded fmaf on the baseline one: the same
 * bits everywhere. */
CYBN_INLINE cybn_v8f cybn_fma8(cybn_v8f a, cybn_v8f b, cybn_v8f c) {
#if defined(__FMA__)
    return (cybn_v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    cybn_v8f r;
    int l;
    for (l = 0; l < 8; l++) r[l] = fmaf(a[l], b[l], c[l]);
    return r;
#endif
}

CYBN_INLINE cybn_v8f cybn_aff8x(cybn_v8f x, cybn_v8f sh, cybn_v8f sl, cybn_v8f th,
                                cybn_v8f tl) {
    return cybn_fma8(x, sh, th) + cybn_fma8(x, sl, tl);
}

CYBN_INLINE float cybn_aff1x(float x, float sh, float sl, float th, float tl) {
    return fmaf(x, sh, th) + fmaf(x, sl, tl);
}

/* The split coefficients of x * S + T for the affine value (x - m) * s + o. */
static inline void cybn_exact_coef(double m, double s, double o, float* sh, float* sl,
                                   float* th, float* tl) {
    cybn_split(s, sh, sl);
    cybn_split(o - m * s, th, tl);
}

/* y = ep(x * S + T) over n elements of kind `kind`, (m, s, o) as above. */
CYBN_INLINE void cybn_affine_d_impl(const void* x, void* y, ptrdiff_t n, double m, double s,
                                    double o, const void* r, int ep, int kind) {
    float sh, sl, th, tl;
    cybn_exact_coef(m, s, o, &sh, &sl, &th, &tl);
    const cybn_v8f vsh = cybn_bc8(sh), vsl = cybn_bc8(sl), vth = cybn_bc8(th), vtl = cybn_bc8(tl);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        cybn_v8f a0 = cybn_ldk(x, i, kind), a1 = cybn_ldk(x, i + 8, kind);
        cybn_stk(y, i, cybn_ep8(cybn_aff8x(a0, vsh, vsl, vth, vtl), r, i, ep, kind), kind);
        cybn_stk(y, i + 8, cybn_ep8(cybn_aff8x(a1, vsh, vsl, vth, vtl), r, i + 8, ep, kind),
                 kind);
    }
    for (; i + 8 <= n; i += 8)
        cybn_stk(y, i, cybn_ep8(cybn_aff8x(cybn_ldk(x, i, kind), vsh, vsl, vth, vtl), r, i, ep,
                                kind), kind);
    for (; i < n; i++)
        cybn_stk1(y, i, cybn_ep1(cybn_aff1x(cybn_ldk1(x, i, kind), sh, sl, th, tl), r, i, ep,
                                 kind), kind);
}

static inline void cybn_affine_d(const void* x, void* y, ptrdiff_t n, double m, double s,
                                 double o, const void* r, int ep, int kind) {
#define CYBN_CALL(EP, KIND) cybn_affine_d_impl(x, y, n, m, s, o, r, EP, KIND)
    CYBN_DISPATCH(ep, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* g = dy where the pre-activation x * S + T (+ r) is not <= 0, else 0. */
CYBN_INLINE void cybn_relu_mask_d_impl(const void* dy, const void* x, const void* r, void* g,
                                       ptrdiff_t n, double m, double s, double o, int ep,
                                       int kind) {
    float sh, sl, th, tl;
    cybn_exact_coef(m, s, o, &sh, &sl, &th, &tl);
    const cybn_v8f vsh = cybn_bc8(sh), vsl = cybn_bc8(sl), vth = cybn_bc8(th), vtl = cybn_bc8(tl);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        cybn_v8f v = cybn_aff8x(cybn_ldk(x, i, kind), vsh, vsl, vth, vtl);
        if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk(r, i, kind);
        cybn_stk(g, i, cybn_keep8(cybn_ldk(dy, i, kind), v), kind);
    }
    for (; i < n; i++) {
        float v = cybn_aff1x(cybn_ldk1(x, i, kind), sh, sl, th, tl);
        if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk1(r, i, kind);
        cybn_stk1(g, i, cybn_keep1(cybn_ldk1(dy, i, kind), v), kind);
    }
}

static inline void cybn_relu_mask_d(const void* dy, const void* x, const void* r, void* g,
                                    ptrdiff_t n, double m, double s, double o, int ep,
                                    int kind) {
#define CYBN_CALL(EP, KIND) cybn_relu_mask_d_impl(dy, x, r, g, n, m, s, o, (EP) & 1, KIND)
    CYBN_DISPATCH(ep & CYBN_EP_RESIDUAL, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* dx = k1 * g + k2 * (x - mh) + k3, g = dy masked where x * S + T <= 0. */
CYBN_INLINE void cybn_relu_grad_apply_d_impl(const void* g, const void* x, void* dx,
                                             ptrdiff_t n, float mh, float k1, float k2,
                                             float k3, double m, double s, double o,
                                             int kind) {
    float sh, sl, th, tl;
    cybn_exact_coef(m, s, o, &sh, &sl, &th, &tl);
    const cybn_v8f vsh = cybn_bc8(sh), vsl = cybn_bc8(sl), vth = cybn_bc8(th), vtl = cybn_bc8(tl);
    const cybn_v8f vh = cybn_bc8(mh), a = cybn_bc8(k1), b = cybn_bc8(k2), c = cybn_bc8(k3);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        cybn_v8f xv = cybn_ldk(x, i, kind), m0 = xv - vh;
        cybn_v8f gv = cybn_keep8(cybn_ldk(g, i, kind), cybn_aff8x(xv, vsh, vsl, vth, vtl));
        cybn_stk(dx, i, a * gv + b * m0 + c, kind);
    }
    for (; i < n; i++) {
        float xv = cybn_ldk1(x, i, kind), m0 = xv - mh;
        float gv = cybn_keep1(cybn_ldk1(g, i, kind), cybn_aff1x(xv, sh, sl, th, tl));
        cybn_stk1(dx, i, k1 * gv + k2 * m0 + k3, kind);
    }
}

static inline void cybn_relu_grad_apply_d(const void* g, const void* x, void* dx, ptrdiff_t n,
                                          float mh, float k1, float k2, float k3, double m,
                                          double s, double o, int kind) {
#define CYBN_CALL(EP, KIND) cybn_relu_grad_apply_d_impl(g, x, dx, n, mh, k1, k2, k3, m, s, o, KIND)
    CYBN_DISPATCH(0, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* The flat (per-column) versions: tiles xt of 4 * (W + 8) floats (S_hi, S_lo, T_hi, T_lo,
 * each tiled as the float tiles above), the first element at tile index k0. */
#define CYBN_XT8(xv, xt, k, P)                                                                \
    cybn_aff8x((xv), cybn_ld8((xt) + (k)), cybn_ld8((xt) + (P) + (k)),                       \
               cybn_ld8((xt) + 2 * (P) + (k)), cybn_ld8((xt) + 3 * (P) + (k)))
#define CYBN_XT1(xv, xt, k, P) \
    cybn_aff1x((xv), (xt)[k], (xt)[(P) + (k)], (xt)[2 * (P) + (k)], (xt)[3 * (P) + (k)])

CYBN_INLINE void cybn_flat_affine_d_impl(const void* x, void* y, ptrdiff_t n, ptrdiff_t k0,
                                         ptrdiff_t W, const float* xt, const void* r, int ep,
                                         int kind) {
    const ptrdiff_t P = W + 8;
    ptrdiff_t e = 0, k = k0;
    for (; e + 8 <= n; e += 8) {
        cybn_stk(y, e, cybn_ep8(CYBN_XT8(cybn_ldk(x, e, kind), xt, k, P), r, e, ep, kind), kind);
        k += 8;
        if (k >= W) k -= W;
    }
    for (; e < n; e++) {
        cybn_stk1(y, e, cybn_ep1(CYBN_XT1(cybn_ldk1(x, e, kind), xt, k, P), r, e, ep, kind),
                  kind);
        if (++k == W) k = 0;
    }
}

static inline void cybn_flat_affine_d(const void* x, void* y, ptrdiff_t n, ptrdiff_t k0,
                                      ptrdiff_t W, const float* xt, const void* r, int ep,
                                      int kind) {
#define CYBN_CALL(EP, KIND) cybn_flat_affine_d_impl(x, y, n, k0, W, xt, r, EP, KIND)
    CYBN_DISPATCH(ep, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* g (float32 scratch) = dy masked where x * S + T (+ r) <= 0, per column. */
CYBN_INLINE void cybn_flat_relu_mask_d_impl(const void* dy, const void* x, const void* r,
                                            float* g, ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                            const float* xt, int ep, int kind) {
    const ptrdiff_t P = W + 8;
    ptrdiff_t e = 0, k = k0;
    for (; e + 8 <= n; e += 8) {
        cybn_v8f v = CYBN_XT8(cybn_ldk(x, e, kind), xt, k, P);
        if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk(r, e, kind);
        cybn_st8(g + e, cybn_keep8(cybn_ldk(dy, e, kind), v));
        k += 8;
        if (k >= W) k -= W;
    }
    for (; e < n; e++) {
        float v = CYBN_XT1(cybn_ldk1(x, e, kind), xt, k, P);
        if (ep & CYBN_EP_RESIDUAL) v += cybn_ldk1(r, e, kind);
        g[e] = cybn_keep1(cybn_ldk1(dy, e, kind), v);
        if (++k == W) k = 0;
    }
}

static inline void cybn_flat_relu_mask_d(const void* dy, const void* x, const void* r, float* g,
                                         ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                         const float* xt, int ep, int kind) {
#define CYBN_CALL(EP, KIND) cybn_flat_relu_mask_d_impl(dy, x, r, g, n, k0, W, xt, (EP) & 1, KIND)
    CYBN_DISPATCH(ep & CYBN_EP_RESIDUAL, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* dx = k1[k] * g + k2[k] * (x - hi[k]) + k3[k], g = dy masked where x * S + T <= 0. */
CYBN_INLINE void cybn_flat_relu_grad_apply_d_impl(const void* g, const void* x, void* dx,
                                                  ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                                  const float* hi, const float* k1,
                                                  const float* k2, const float* k3,
                                                  const float* xt, int kind) {
    const ptrdiff_t P = W + 8;
    ptrdiff_t e = 0, k = k0;
    for (; e + 8 <= n; e += 8) {
        cybn_v8f xv = cybn_ldk(x, e, kind), m0 = xv - cybn_ld8(hi + k);
        cybn_v8f gv = cybn_keep8(cybn_ldk(g, e, kind), CYBN_XT8(xv, xt, k, P));
        cybn_stk(dx, e, cybn_ld8(k1 + k) * gv + cybn_ld8(k2 + k) * m0 + cybn_ld8(k3 + k), kind);
        k += 8;
        if (k >= W) k -= W;
    }
    for (; e < n; e++) {
        float xv = cybn_ldk1(x, e, kind), m0 = xv - hi[k];
        float gv = cybn_keep1(cybn_ldk1(g, e, kind), CYBN_XT1(xv, xt, k, P));
        cybn_stk1(dx, e, k1[k] * gv + k2[k] * m0 + k3[k], kind);
        if (++k == W) k = 0;
    }
}

static inline void cybn_flat_relu_grad_apply_d(const void* g, const void* x, void* dx,
                                               ptrdiff_t n, ptrdiff_t k0, ptrdiff_t W,
                                               const float* hi, const float* k1,
                                               const float* k2, const float* k3,
                                               const float* xt, int kind) {
#define CYBN_CALL(EP, KIND) \
    cybn_flat_relu_grad_apply_d_impl(g, x, dx, n, k0, W, hi, k1, k2, k3, xt, KIND)
    CYBN_DISPATCH(0, kind, CYBN_CALL);
#undef CYBN_CALL
}

/* Layer / RMS norm backward, float32 rows (norms.pxi).
 *
 * One row of n elements: a = sum(w * dy) and b = sum(w * dy * (x - m)), m = mh + ml split,
 * float products over runs of at most CYBN_FLUSH elements per lane, flushed into double. */
static inline void cybn_f32_row_grad_sums(const float* dy, const float* x, const float* w,
                                          ptrdiff_t n, float mh, float ml, double* a,
                                          double* b) {
    const cybn_v8f vh = cybn_bc8(mh), vl = cybn_bc8(ml);
    cybn_v4d a_lo = {0, 0, 0, 0}, a_hi = {0, 0, 0, 0}, b_lo = {0, 0, 0, 0}, b_hi = {0, 0, 0, 0};
    double sa = 0.0, sb = 0.0;
    ptrdiff_t i = 0, n16 = n & ~(ptrdiff_t)15;
    while (i < n16) {
        ptrdiff_t end = i + CYBN_FLUSH < n16 ? i + CYBN_FLUSH : n16;
        cybn_v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        for (; i < end; i += 16) {
            cybn_v8f g0 = cybn_ld8(w + i) * cybn_ld8(dy + i);
            cybn_v8f g1 = cybn_ld8(w + i + 8) * cybn_ld8(dy + i + 8);
            a0 += g0;
            a1 += g1;
            b0 += g0 * ((cybn_ld8(x + i) - vh) - vl);
            b1 += g1 * ((cybn_ld8(x + i + 8) - vh) - vl);
        }
        cybn_flush8(a0 + a1, &a_lo, &a_hi);
        cybn_flush8(b0 + b1, &b_lo, &b_hi);
    }
    for (; i < n; i++) {
        float g = w[i] * dy[i];
        sa += (double)g;
        sb += (double)(g * ((x[i] - mh) - ml));
    }
    *a = cybn_hsum(a_lo, a_hi) + sa;
    *b = cybn_hsum(b_lo, b_hi) + sb;
}

/* dx of nrows (1 to 4) consecutive rows of n elements, dx = inv * ((w * dy - mg) - xm * c)
 * with xm = (x - mh) - ml and the row's k = (inv, c, mg): mean(w * dy) is taken off before
 * the scaling (a row whose terms cancel gives 0, not inv times a rounding error); and the
 * rows' dy * (xm * inv) and dy, summed over the rows in order in float, added into the
 * double column sums col_xhat and col_dy. dx may be dy or x itself (each element is read
 * before it is written). */
static inline void cybn_f32_rows_grad_apply(const float* dy, const float* x, float* dx,
                                            ptrdiff_t nrows, ptrdiff_t n, const float* w,
                                            const float* mh, const float* ml,
                                            const float* inv, const float* k,
                                            double* col_xhat, double* col_dy) {
    ptrdiff_t i = 0, r, n8 = n & ~(ptrdiff_t)7;
    for (; i < n8; i += 8) {
        const cybn_v8f wv = cybn_ld8(w + i);
        cybn_v8f sx = {0}, sd = {0};
        for (r = 0; r < nrows; r++) {
            const cybn_v8f g = cybn_ld8(dy + r * n + i);
            const cybn_v8f xm = (cybn_ld8(x + r * n + i) - cybn_bc8(mh[r])) - cybn_bc8(ml[r]);
            sx += g * (xm * cybn_bc8(inv[r]));
            sd += g;
            cybn_st8(dx + r * n + i, cybn_bc8(k[3 * r]) * ((wv * g - cybn_bc8(k[3 * r + 2]))
                                                           - xm * cybn_bc8(k[3 * r + 1])));
        }
        cybn_v4d lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
        cybn_flush8(sx, &lo, &hi);
        cybn_v4d lo2 = {0, 0, 0, 0}, hi2 = {0, 0, 0, 0};
        cybn_flush8(sd, &lo2, &hi2);
        for (r = 0; r < 4; r++) {
            col_xhat[i + r] += lo[r];
            col_xhat[i + 4 + r] += hi[r];
            col_dy[i + r] += lo2[r];
            col_dy[i + 4 + r] += hi2[r];
        }
    }
    for (; i < n; i++) {
        float sxs = 0.0f, sds = 0.0f;
        for (r = 0; r < nrows; r++) {
            const float g = dy[r * n + i];
            const float xm = (x[r * n + i] - mh[r]) - ml[r];
            sxs += g * (xm * inv[r]);
            sds += g;
            dx[r * n + i] = k[3 * r] * ((w[i] * g - k[3 * r + 2]) - xm * k[3 * r + 1]);
        }
        col_xhat[i] += (double)sxs;
        col_dy[i] += (double)sds;
    }
}

/* ------------------------------------------------------------------ max pooling taps
 * Channels-last max pooling's per-tap passes over C channels, 8 at a time: the values are
 * float32 and the taps uint8, and a plain loop mixing the two is vectorized by the byte
 * type (64 lanes with AVX-512), so C = 24 ran scalar (8x PyTorch's time, 2026-12-07). */
typedef signed char cybn_v8c __attribute__((vector_size(8)));

/* y, a = x, t where x wins over y (larger, or the first NaN), else unchanged. */
static inline void cybn_f32_max_tap(const float* x, float* y, unsigned char* a, ptrdiff_t C,
                                    unsigned char t) {
    ptrdiff_t c = 0;
    const cybn_v8c tv = {(signed char)t, (signed char)t, (signed char)t, (signed char)t,
                         (signed char)t, (signed char)t, (signed char)t, (signed char)t};
    for (; c + 8 <= C; c += 8) {
        cybn_v8f v = cybn_ld8(x + c), b = cybn_ld8(y + c);
        cybn_v8i take = (v > b) | ((v != v) & (b == b));
        cybn_v8c m = __builtin_convertvector(take, cybn_v8c), old;
        cybn_st8(y + c, (cybn_v8f)(((cybn_v8i)v & take) | ((cybn_v8i)b & ~take)));
        memcpy(&old, a + c, 8);
        old = (tv & m) | (old & ~m);
        memcpy(a + c, &old, 8);
    }
    for (; c < C; c++) {
        float v = x[c], b = y[c];
        int take = v > b || (v != v && b == b);
        y[c] = take ? v : b;
        a[c] = take ? t : a[c];
    }
}

/* dx += dy where the tap t held the maximum (adds 0 elsewhere, as the scalar rule). */
static inline void cybn_f32_max_tap_back(const float* g, const unsigned char* a, float* dx,
                                         ptrdiff_t C, unsigned char t) {
    ptrdiff_t c = 0;
    const cybn_v8c tv = {(signed char)t, (signed char)t, (signed char)t, (signed char)t,
                         (signed char)t, (signed char)t, (signed char)t, (signed char)t};
    for (; c + 8 <= C; c += 8) {
        cybn_v8c av;
        memcpy(&av, a + c, 8);
        cybn_v8i hit = __builtin_convertvector(av == tv, cybn_v8i);
        cybn_st8(dx + c, cybn_ld8(dx + c) + (cybn_v8f)((cybn_v8i)cybn_ld8(g + c) & hit));
    }
    for (; c < C; c++) dx[c] = dx[c] + (a[c] == t ? g[c] : 0.0f);
}

#endif
