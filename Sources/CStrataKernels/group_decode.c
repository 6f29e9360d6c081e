// Group-quantized weight rows decoded to f32 for the fused quantized matmul (QuantGEMM.swift)
// and the decode-then-sgemm path. Swift decoded them one 32-value group per call across a
// module boundary; at batch 1 on AVX2 that call and its set-up per group were a large share
// of a Q4_0 decode step (10.7 tokens/s on a Zen 3, llama.cpp 56.5; issue 15, sixth round).
#include "strata_group_decode.h"
#include <string.h>
// code * step, then + minimum: two roundings, as the Swift decoder does (no fused multiply-add).
#pragma STDC FP_CONTRACT OFF
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX2 __attribute__((target("avx2,f16c")))
#else
#define STRATA_AVX2
#endif

static inline float half_to_float(uint16_t h) {
    _Float16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

STRATA_AVX2
void strata_dequantize_rows(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                            int k, long n0, int rows, float *out) {
    const long groups = k / group_size, bytes = (long)group_size * bits / 8;
    for (int r = 0; r < rows; r++) {
        for (long g = 0; g < groups; g++) {
            const long index = (n0 + r) * groups + g;
            const uint8_t *p = codes + index * bytes;
            const float step = half_to_float(steps[index]), minimum = half_to_float(mins[index]);
            float *o = out + (long)r * k + g * group_size;
            // j: the values (8-bit) or code bytes (4-bit) the vector loop has done.
            int j = 0;
#if defined(__x86_64__)
            const __m256 s = _mm256_set1_ps(step), m = _mm256_set1_ps(minimum);
            if (bits == 8) {
                for (; j + 8 <= group_size; j += 8) {
                    __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + j)));
                    _mm256_storeu_ps(o + j, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c), s), m));
                }
            } else {
                const __m256i nibble = _mm256_set1_epi32(0xF);
                for (; j + 8 <= group_size / 2; j += 8) {
                    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + j)));
                    __m256 low = _mm256_cvtepi32_ps(_mm256_and_si256(b, nibble));
                    __m256 high = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                    _mm256_storeu_ps(o + j, _mm256_add_ps(_mm256_mul_ps(low, s), m));
                    _mm256_storeu_ps(o + j + group_size / 2, _mm256_add_ps(_mm256_mul_ps(high, s), m));
                }
            }
#endif
            if (bits == 8) {
                for (; j < group_size; j++) o[j] = (float)p[j] * step + minimum;
            } else {
                const int half = group_size / 2;
                for (; j < half; j++) {
                    o[j] = (float)(p[j] & 0xF) * step + minimum;
                    o[j + half] = (float)(p[j] >> 4) * step + minimum;
                }
            }
        }
    }
}
