// Symmetric int8 quantization of one row for `--weight-format int8` (Int8Weights.swift). Swift's
// generic SIMD float-to-integer conversion is not vectorized; this is AVX2, the baseline the
// whole binary is built for (Haswell), so it needs no run-time check.
#include "strata_int8.h"
#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
#endif
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
    for (int j = i; j < count; j++) {
        if (isnan(x[j])) unordered = 1;
        largest = fmaxf(largest, fabsf(x[j]));
    }
    if (unordered || isinf(largest) || largest == 0) {
        for (int j = 0; j < count; j++) codes[j] = 0;
        return largest == 0 && !unordered ? 0.0f : NAN;
    }
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

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
#endif
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
