/* cybn: half-precision storage (IEEE float16 and bfloat16) to and from float32.
 *
 * Half-precision arrays are stored as 16-bit words; the kernels convert runs of them into
 * float32 scratch, do the float32 work there (simd_f32.h), and convert results back.
 * float32 -> half rounds to nearest, ties to even (float16: overflow gives +-inf, results
 * below the normal range become subnormals or 0; bfloat16: NaN stays a quiet NaN of the same
 * sign). half -> float32 is exact. With F16C (the avx2 and avx512 variants) float16 runs
 * convert 8 at a time in hardware; bfloat16 uses integer vector operations on every variant.
 */
#ifndef CYBN_HALF_H
#define CYBN_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Distinct element types, so that the Cython kernels can specialize on them. */
typedef struct { uint16_t bits; } cybn_f16;
typedef struct { uint16_t bits; } cybn_bf16;

enum { CYBN_HALF_F16 = 0, CYBN_HALF_BF16 = 1 };

static inline float cybn_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    uint32_t u;
    float f;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);             /* inf, NaN (payload kept) */
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);     /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        u = sign;                                          /* +-0 */
    } else {                                               /* subnormal: man * 2^-24 */
        f = (float)man * (1.0f / 16777216.0f);
        memcpy(&u, &f, 4);
        u |= sign;
    }
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t cybn_f32_to_f16(float f) {
    uint32_t u, sign, a;
    memcpy(&u, &f, 4);
    sign = (u >> 16) & 0x8000u;
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to >= 65520: inf */
    if (a >= 0x38800000u) {                                    /* normal half */
        a += 0x0fffu + ((a >> 13) & 1u);                       /* round to nearest even */
        return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
    }
    if (a < 0x33000000u) return (uint16_t)sign;                /* below half the smallest */
    {                                                          /* subnormal half */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
        /* value = m * 2^(e - 150); in units of 2^-24: m >> (126 - e) */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
}

static inline float cybn_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t cybn_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

typedef uint32_t cybn_v8u __attribute__((vector_size(32)));
typedef uint16_t cybn_v8h __attribute__((vector_size(16)));
typedef float cybn_v8f_h __attribute__((vector_size(32)));

/* dst[0:n] = src[0:n] as float32. */
static inline void cybn_half_load(const void* src_, float* dst, ptrdiff_t n, int kind) {
    const uint16_t* src = (const uint16_t*)src_;
    ptrdiff_t i = 0;
    if (kind == CYBN_HALF_BF16) {
#if defined(__AVX2__)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_si256((__m256i*)(dst + i),
                                _mm256_slli_epi32(_mm256_cvtepu16_epi32(
                                    _mm_loadu_si128((const __m128i*)(src + i))), 16));
#endif
        for (; i + 8 <= n; i += 8) {
            cybn_v8h h;
            memcpy(&h, src + i, 16);
            cybn_v8u u = __builtin_convertvector(h, cybn_v8u) << 16;
            memcpy(dst + i, &u, 32);
        }
        for (; i < n; i++) dst[i] = cybn_bf16_to_f32(src[i]);
        return;
    }
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
#endif
    for (; i < n; i++) dst[i] = cybn_f16_to_f32(src[i]);
}

/* dst[0:n] = src[0:n] rounded to the half type (nearest, ties to even). */
static inline void cybn_half_store(const float* src, void* dst_, ptrdiff_t n, int kind) {
    uint16_t* dst = (uint16_t*)dst_;
    ptrdiff_t i = 0;
    if (kind == CYBN_HALF_BF16) {
        const cybn_v8u mag = {0x7fffffffu, 0x7fffffffu, 0x7fffffffu, 0x7fffffffu,
                              0x7fffffffu, 0x7fffffffu, 0x7fffffffu, 0x7fffffffu};
        const cybn_v8u inf = {0x7f800000u, 0x7f800000u, 0x7f800000u, 0x7f800000u,
                              0x7f800000u, 0x7f800000u, 0x7f800000u, 0x7f800000u};
        for (; i + 8 <= n; i += 8) {
            cybn_v8u u, r, nan;
            memcpy(&u, src + i, 32);
            nan = (cybn_v8u)((u & mag) > inf);                       /* all ones where NaN */
            r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            r = (r & ~nan) | (((u >> 16) | 0x40u) & nan);
            cybn_v8h h = __builtin_convertvector(r, cybn_v8h);
            memcpy(dst + i, &h, 16);
        }
        for (; i < n; i++) dst[i] = cybn_f32_to_bf16(src[i]);
        return;
    }
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = cybn_f32_to_f16(src[i]);
}

#endif
