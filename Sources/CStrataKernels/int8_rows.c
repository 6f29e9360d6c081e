// AVX-512 forms of the int8 path's row kernels (row_kernels.c has the AVX2 ones every x86-64
// CPU Strata runs on has): activations quantized per row, and int32 sums rescaled to f32. Each
// value goes through the same operations in the same order, so both give the same bits. Chosen
// at run time (strata_avx512_supported): they were 7.5% of a Llama-250M int8 run at batch 32.
#include "strata_int8.h"
#include "int8_row.h"
#include <math.h>
// Scalar tails round each multiply and add as the vector lanes do (no fused multiply-adds).
#pragma STDC FP_CONTRACT OFF
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

STRATA_AVX512
static float quantize_row(const float *x, int count, int8_t *codes) {
    float largest = 0;
    int unordered = 0, i = 0;
    __m512 peak = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        peak = _mm512_max_ps(peak, _mm512_abs_ps(v));
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    largest = _mm512_reduce_max_ps(peak);
    unordered = nan != 0;
    float settled;
    if (strata_int8_row_settle(x, i, count, &largest, unordered, codes, &settled)) return settled;
    const float inverse = 127.0f / largest;
    const __m512 scale = _mm512_set1_ps(inverse);
    i = 0;
    // Round to nearest even (the default rounding mode), as the scalar tail does with rintf.
    for (; i + 16 <= count; i += 16)
        _mm_storeu_si128((__m128i *)(codes + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), scale))));
    for (; i < count; i++) codes[i] = (int8_t)rintf(x[i] * inverse);
    return largest / 127.0f;
}

STRATA_AVX512
static void rescale(const int32_t *sums, int count, float row_scale, const float *column_scales, const float *bias, float *out) {
    int i = 0;
    const __m512 r = _mm512_set1_ps(row_scale);
    for (; i + 16 <= count; i += 16) {
        __m512 s = _mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(sums + i)));
        __m512 v = _mm512_mul_ps(s, _mm512_mul_ps(_mm512_loadu_ps(column_scales + i), r));
        if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + i));
        _mm512_storeu_ps(out + i, v);
    }
    for (; i < count; i++) out[i] = (float)sums[i] * (column_scales[i] * row_scale) + (bias ? bias[i] : 0.0f);
}
#endif

float strata_quantize_row_s8_avx512(const float *x, int count, int8_t *codes) {
#if defined(__x86_64__)
    return quantize_row(x, count, codes);
#else
    return strata_quantize_row_s8(x, count, codes);
#endif
}

void strata_rescale_s32_avx512(const int32_t *sums, int count, float row_scale, const float *column_scales, const float *bias,
                               float *out) {
#if defined(__x86_64__)
    rescale(sums, count, row_scale, column_scales, bias, out);
#else
    strata_rescale_s32(sums, count, row_scale, column_scales, bias, out);
#endif
}
