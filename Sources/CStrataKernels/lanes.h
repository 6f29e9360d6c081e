// Small helpers the AVX2 kernels share (dot_gemm.c, group_decode.c, int8_gemm.c): widening one
// 16-bit float to f32, and the horizontal sum of eight f32 lanes.
#ifndef STRATA_LANES_H
#define STRATA_LANES_H
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
// AVX2 is a subset of every target that calls this (AVX2 and AVX-512 kernels), so it inlines.
__attribute__((target("avx2"), always_inline)) static inline float strata_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif
#endif
