// Small helpers the kernels share (dot_gemm.c, group_decode.c, int8_gemm.c, half_gemm.c,
// amx_gemm.c): widening 16-bit floats to f32, and the horizontal sum of eight f32 lanes.
#ifndef STRATA_LANES_H
#define STRATA_LANES_H
#include "strata_dot.h"
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline float strata_f16_to_float(uint16_t h) {
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

static inline float strata_bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#if defined(__x86_64__)
// 16 values of a weight row (STRATA_DOT_F32 / F16 / BF16), masked,
// widened to f32 (half_gemm.c's tiles, amx_gemm.c's split). AVX512F/BW/VL + F16C are a subset of
// both callers' targets.
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"), always_inline))
static inline __m512 strata_widen16(const void *p, int type, __mmask16 mask) {
    if (type == STRATA_DOT_F32) return _mm512_maskz_loadu_ps(mask, p);
    __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    if (type == STRATA_DOT_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

// AVX2 is a subset of every target that calls this (AVX2 and AVX-512 kernels), so it inlines.
__attribute__((target("avx2"), always_inline)) static inline float strata_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif
#endif
