// Decode-step attention over a 16-bit KV cache (CPUAttention.swift), AVX-512: a key or value
// row is widened to f32 16 lanes at a time (a 16-bit shift for bf16, vcvtph2ps for f16) and
// multiplied in f32, as the AVX2 loops in row_kernels.c do at 8 lanes. At batch 32 those loops
// took 16% of a Llama-250M run's samples; this halves their instructions. Chosen at run time
// (strata_avx512_supported).
#include "strata_cache_attention.h"
#if defined(__x86_64__)
#define STRATA_AVX512_ENTRY __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#else
#define STRATA_AVX512_ENTRY
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

STRATA_AVX512 __attribute__((always_inline))
static inline __m512 widen16(const uint16_t *p, int f16) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return f16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// The 16 lanes of x folded to 8 (for the 4-key horizontal sum below).
STRATA_AVX512 __attribute__((always_inline))
static inline __m256 fold(__m512 x) {
    return _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
}

// Inlined into each public entry twice, with `f16` a constant: one widening per loop.
STRATA_AVX512 __attribute__((always_inline))
static inline void scores_avx512(const float *query, const uint16_t *keys, int f16, int visible, int d, float scale, float *scores) {
    int j = 0;
    // Four keys at a time: four independent FMA chains, one horizontal sum for the four.
    for (; j + 4 <= visible; j += 4) {
        const uint16_t *k0 = keys + (long)j * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int i = 0; i < d; i += 16) {
            const __m512 q = _mm512_loadu_ps(query + i);
            a0 = _mm512_fmadd_ps(q, widen16(k0 + i, f16), a0);
            a1 = _mm512_fmadd_ps(q, widen16(k1 + i, f16), a1);
            a2 = _mm512_fmadd_ps(q, widen16(k2 + i, f16), a2);
            a3 = _mm512_fmadd_ps(q, widen16(k3 + i, f16), a3);
        }
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(fold(a0), fold(a1)), _mm256_hadd_ps(fold(a2), fold(a3)));
        __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        _mm_storeu_ps(scores + j, _mm_mul_ps(four, _mm_set1_ps(scale)));
    }
    for (; j < visible; j++) {
        const uint16_t *key = keys + (long)j * d;
        __m512 a = _mm512_setzero_ps();
        for (int i = 0; i < d; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(query + i), widen16(key + i, f16), a);
        scores[j] = _mm512_reduce_add_ps(a) * scale;
    }
}

STRATA_AVX512 __attribute__((always_inline))
static inline void weighted_sum_avx512(const float *weights, const uint16_t *values, int f16, int visible, int d, float *out) {
    // 64 output columns at a time in four registers, with positions taken two at a time into
    // two sets of sums: one set's four multiply-add chains left the FMA units half idle.
    for (int c = 0; c < d; c += 64) {
        const int width = d - c < 64 ? d - c : 64;  // 16, 32, 48 or 64
        __m512 a[4], b[4];
        for (int u = 0; u < 4; u++) a[u] = b[u] = _mm512_setzero_ps();
        int j = 0;
        for (; j + 2 <= visible; j += 2) {
            const __m512 p = _mm512_set1_ps(weights[j]), r = _mm512_set1_ps(weights[j + 1]);
            const uint16_t *v = values + (long)j * d + c, *w = v + d;
#pragma clang loop unroll(full)
            for (int u = 0; u < 4; u++) {
                if (16 * u < width) {
                    a[u] = _mm512_fmadd_ps(p, widen16(v + 16 * u, f16), a[u]);
                    b[u] = _mm512_fmadd_ps(r, widen16(w + 16 * u, f16), b[u]);
                }
            }
        }
        for (; j < visible; j++) {
            const __m512 p = _mm512_set1_ps(weights[j]);
            const uint16_t *v = values + (long)j * d + c;
            for (int u = 0; u < 4; u++)
                if (16 * u < width) a[u] = _mm512_fmadd_ps(p, widen16(v + 16 * u, f16), a[u]);
        }
        for (int u = 0; u < 4; u++)
            if (16 * u < width) _mm512_storeu_ps(out + c + 16 * u, _mm512_add_ps(a[u], b[u]));
    }
}
#endif

STRATA_AVX512_ENTRY
void strata_cache_scores_avx512(const float *query, const uint16_t *keys, int f16, int visible, int d, float scale,
                                float *scores) {
#if defined(__x86_64__)
    if (f16)
        scores_avx512(query, keys, 1, visible, d, scale, scores);
    else
        scores_avx512(query, keys, 0, visible, d, scale, scores);
#else
    (void)query; (void)keys; (void)f16; (void)visible; (void)d; (void)scale; (void)scores;
#endif
}

STRATA_AVX512_ENTRY
void strata_cache_weighted_sum_avx512(const float *weights, const uint16_t *values, int f16, int visible, int d, float *out) {
#if defined(__x86_64__)
    if (f16)
        weighted_sum_avx512(weights, values, 1, visible, d, out);
    else
        weighted_sum_avx512(weights, values, 0, visible, d, out);
#else
    (void)weights; (void)values; (void)f16; (void)visible; (void)d; (void)out;
#endif
}
