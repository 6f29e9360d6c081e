// Row kernels that convert between number formats: int8 quantization and rescaling for
// `--weight-format int8` (Int8Weights.swift), the bf16 KV cache's attention loops, f32 <-> bf16,
// and greedy argmax. Swift's generic SIMD conversions between float and integer vectors compile
// to scalar code; these are AVX2, the baseline the whole binary is built for (Haswell), so they
// need no run-time check.
#include "strata_int8.h"
#include "int8_row.h"
#include "lanes.h"
#include <string.h>
#include <math.h>
// Scalar tails round each multiply and add as the vector lanes do (no fused multiply-adds).
#pragma STDC FP_CONTRACT OFF
#if defined(__x86_64__)
#include <immintrin.h>
// Each kernel's own target: the C target is built for baseline x86-64.
#define STRATA_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define STRATA_AVX2
#endif

STRATA_AVX2
float strata_quantize_row_s8(const float *x, int count, int8_t *codes) {
    float largest = 0;
    int unordered = 0, i = 0;
#if defined(__x86_64__)
    __m256 peak = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (; i + 8 <= count; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        peak = _mm256_max_ps(peak, _mm256_and_ps(v, magnitude));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, peak);
    for (int l = 0; l < 8; l++) largest = fmaxf(largest, lanes[l]);
    unordered = _mm256_movemask_ps(nan) != 0;
#endif
    float settled;
    if (strata_int8_row_settle(x, i, count, &largest, unordered, codes, &settled)) return settled;
    const float inverse = 127.0f / largest;
    i = 0;
#if defined(__x86_64__)
    const __m256 scale = _mm256_set1_ps(inverse);
    // Packing interleaves 128-bit lanes; this puts the 32 codes back in order.
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= count; i += 32) {
        // Round to nearest even (the default rounding mode), as the scalar tail does with rintf.
        __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale));
        __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), scale));
        __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), scale));
        __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), scale));
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        _mm256_storeu_si256((__m256i *)(codes + i), _mm256_permutevar8x32_epi32(packed, order));
    }
#endif
    for (; i < count; i++) codes[i] = (int8_t)rintf(x[i] * inverse);
    return largest / 127.0f;
}

STRATA_AVX2
void strata_rescale_s32(const int32_t *sums, int count, float row_scale, const float *column_scales, const float *bias,
                        float *out) {
    int i = 0;
#if defined(__x86_64__)
    const __m256 r = _mm256_set1_ps(row_scale);
    for (; i + 8 <= count; i += 8) {
        __m256 s = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(sums + i)));
        __m256 v = _mm256_mul_ps(s, _mm256_mul_ps(_mm256_loadu_ps(column_scales + i), r));
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + i));
        _mm256_storeu_ps(out + i, v);
    }
#endif
    for (; i < count; i++) out[i] = (float)sums[i] * (column_scales[i] * row_scale) + (bias ? bias[i] : 0.0f);
}

// 16-bit KV caches (CPUAttention.swift): bf16 widens to f32 by a 16-bit shift, f16 by F16C's
// conversion, so the cache is read at half the bytes of an f32 one and multiplied in f32. `f16`
// picks the format (0: bf16).
#if defined(__x86_64__)
STRATA_AVX2
static inline __m256 widen8(const uint16_t *p, int f16) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return f16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#endif

static inline float half_value(uint16_t h, int f16) { return f16 ? strata_f16_to_float(h) : strata_bf16_to_float(h); }

STRATA_AVX2
void strata_cache_scores(const float *query, const uint16_t *keys, int f16, int visible, int d, float scale, float *scores) {
    int j = 0;
#if defined(__x86_64__)
    // Four keys at a time: four independent FMA chains, and one horizontal reduction for the four.
    if (d % 8 == 0) {
        for (; j + 4 <= visible; j += 4) {
            const uint16_t *k0 = keys + (long)j * d, *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int i = 0; i < d; i += 8) {
                const __m256 q = _mm256_loadu_ps(query + i);
                a0 = _mm256_fmadd_ps(q, widen8(k0 + i, f16), a0);
                a1 = _mm256_fmadd_ps(q, widen8(k1 + i, f16), a1);
                a2 = _mm256_fmadd_ps(q, widen8(k2 + i, f16), a2);
                a3 = _mm256_fmadd_ps(q, widen8(k3 + i, f16), a3);
            }
            // hadd pairs lanes within 128-bit halves: [a0 a1 a2 a3] partial sums, then fold halves.
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(scores + j, _mm_mul_ps(four, _mm_set1_ps(scale)));
        }
    }
#endif
    for (; j < visible; j++) {
        const uint16_t *key = keys + (long)j * d;
        float dot = 0;
        for (int i = 0; i < d; i++) dot += query[i] * half_value(key[i], f16);
        scores[j] = dot * scale;
    }
}

STRATA_AVX2
void strata_cache_weighted_sum(const float *weights, const uint16_t *values, int f16, int visible, int d, float *out) {
    int c = 0;
#if defined(__x86_64__)
    // 32 output columns in four registers across all positions.
    for (; c + 32 <= d; c += 32) {
        __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps(), o2 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
        for (int j = 0; j < visible; j++) {
            const __m256 p = _mm256_set1_ps(weights[j]);
            const uint16_t *v = values + (long)j * d + c;
            o0 = _mm256_fmadd_ps(p, widen8(v, f16), o0);
            o1 = _mm256_fmadd_ps(p, widen8(v + 8, f16), o1);
            o2 = _mm256_fmadd_ps(p, widen8(v + 16, f16), o2);
            o3 = _mm256_fmadd_ps(p, widen8(v + 24, f16), o3);
        }
        _mm256_storeu_ps(out + c, o0);
        _mm256_storeu_ps(out + c + 8, o1);
        _mm256_storeu_ps(out + c + 16, o2);
        _mm256_storeu_ps(out + c + 24, o3);
    }
#endif
    for (int i = c; i < d; i++) out[i] = 0;
    for (int j = 0; j < visible; j++) {
        for (int i = c; i < d; i++) out[i] += weights[j] * half_value(values[(long)j * d + i], f16);
    }
}

STRATA_AVX2
void strata_cache_widen(const uint16_t *source, int f16, long count, float *destination) {
    long i = 0;
#if defined(__x86_64__)
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(destination + i, widen8(source + i, f16));
#endif
    for (; i < count; i++) destination[i] = half_value(source[i], f16);
}

STRATA_AVX2
void strata_f16_round(const float *source, long count, uint16_t *destination) {
    long i = 0;
#if defined(__x86_64__)
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(destination + i), _mm256_cvtps_ph(_mm256_loadu_ps(source + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < count; i++) {
        _Float16 h = (_Float16)source[i];
        memcpy(destination + i, &h, 2);
    }
}

STRATA_AVX2
void strata_bf16_round(const float *source, long count, uint16_t *destination) {
    long i = 0;
#if defined(__x86_64__)
    // Round to nearest even: add 0x7FFF plus the lowest kept bit, keep the high half. The vector
    // loop does not special-case NaN (activations and caches hold none unless the model has
    // already failed); the tail maps it to the canonical bf16 NaN as Precision.floatToBF16 does.
    const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
    for (; i + 16 <= count; i += 16) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(source + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(source + i + 8));
        a = _mm256_srli_epi32(_mm256_add_epi32(a, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(a, 16), one))), 16);
        b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(b, 16), one))), 16);
        // packus keeps 16-bit halves within 128-bit lanes; the permute restores element order.
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
        _mm256_storeu_si256((__m256i *)(destination + i), packed);
    }
#endif
    for (; i < count; i++) {
        union { float f; uint32_t u; } v = { .f = source[i] };
        destination[i] = isnan(source[i]) ? 0x7FC0 : (uint16_t)((v.u + 0x7FFF + ((v.u >> 16) & 1)) >> 16);
    }
}

STRATA_AVX2
long strata_argmax(const float *values, long count) {
    // The largest value (NaNs never win: an ordered greater-than keeps the running maximum),
    // then the first index that holds it: the scalar loop's answer, 8 lanes at a time.
    float best = -INFINITY;
    long i = 0;
#if defined(__x86_64__)
    __m256 peak = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= count; i += 8) {
        __m256 v = _mm256_loadu_ps(values + i);
        peak = _mm256_blendv_ps(peak, v, _mm256_cmp_ps(v, peak, _CMP_GT_OQ));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, peak);
    for (int l = 0; l < 8; l++) if (lanes[l] > best) best = lanes[l];
#endif
    for (; i < count; i++) if (values[i] > best) best = values[i];
    if (!(best > -INFINITY)) return 0;
    for (long j = 0; j < count; j++) if (values[j] == best) return j;
    return 0;
}
