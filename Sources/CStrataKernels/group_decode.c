// Group-quantized weight rows decoded to f32 for the fused quantized matmul (QuantGEMM.swift)
// and the decode-then-sgemm path. Swift decoded them one 32-value group per call across a
// module boundary; at batch 1 on AVX2 that call and its set-up per group were a large share
// of a Q4_0 decode step (10.7 tokens/s on a Zen 3, llama.cpp 56.5; issue 15, sixth round).
#include "strata_group_decode.h"
#include "lanes.h"
#include <stdlib.h>
// code * step, then + minimum: two roundings, as the Swift decoder does (no fused multiply-add).
#pragma STDC FP_CONTRACT OFF
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define STRATA_AVX2
#endif

STRATA_AVX2
void strata_dequantize_rows(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                            int k, long n0, int rows, float *out) {
    const long groups = k / group_size, bytes = (long)group_size * bits / 8;
    for (int r = 0; r < rows; r++) {
        for (long g = 0; g < groups; g++) {
            const long index = (n0 + r) * groups + g;
            const uint8_t *p = codes + index * bytes;
            const float step = strata_f16_to_float(steps[index]), minimum = strata_f16_to_float(mins[index]);
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

// One activation row against NR weight rows of 4- or 8-bit groups (QuantGEMM's batch-1 decode
// step): per group, the codes less `zero` times x in f32 (two accumulators per weight row, so
// the FMA chains interleave), then one FMA by the group's step into the row's total.
#if defined(__x86_64__)
STRATA_AVX2 __attribute__((always_inline)) static inline __m256 codes8(const uint8_t *p, __m256i zero) {
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)), zero));
}

STRATA_AVX2 __attribute__((always_inline)) static inline void
dot_rows(const int NR, const int bits, int k, const float *x, const uint8_t *codes, const uint16_t *steps, int zero,
         int group_size, long n, float *totals) {
    const long groups = k / group_size, bytes = (long)group_size * bits / 8;
    const __m256i z = _mm256_set1_epi32(zero > 0 ? zero : 0), nibble = _mm256_set1_epi32(0xF);
    __m256 total[4];
    for (int j = 0; j < NR; j++) total[j] = _mm256_setzero_ps();
    const long rowBytes = groups * bytes;
    for (long g = 0; g < groups; g++) {
        const float *xg = x + g * group_size;
        // The next tile's rows, at the same place: without it the code loads waited on memory
        // (perf: the hottest instructions were the ones right after them).
        if ((g * bytes) % 64 == 0)
            for (int j = 0; j < NR; j++) {
                _mm_prefetch((const char *)(codes + (n + j + NR) * rowBytes + g * bytes), _MM_HINT_T0);
                if (g % 32 == 0) _mm_prefetch((const char *)(steps + (n + j + NR) * groups + g), _MM_HINT_T0);
            }
        __m256 low[4], high[4];
        for (int j = 0; j < NR; j++) low[j] = high[j] = _mm256_setzero_ps();
        if (bits == 4) {
            const int half = group_size / 2;
            for (int i = 0; i < half; i += 8) {
                __m256 xl = _mm256_loadu_ps(xg + i), xh = _mm256_loadu_ps(xg + half + i);
                for (int j = 0; j < NR; j++) {
                    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + ((n + j) * groups + g) * bytes + i)));
                    __m256 lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, nibble), z));
                    __m256 hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), z));
                    low[j] = _mm256_fmadd_ps(xl, lo, low[j]);
                    high[j] = _mm256_fmadd_ps(xh, hi, high[j]);
                }
            }
        } else {
            for (int i = 0; i < group_size; i += 16) {
                __m256 x0 = _mm256_loadu_ps(xg + i), x1 = _mm256_loadu_ps(xg + i + 8);
                for (int j = 0; j < NR; j++) {
                    const uint8_t *p = codes + ((n + j) * groups + g) * bytes + i;
                    low[j] = _mm256_fmadd_ps(x0, codes8(p, z), low[j]);
                    high[j] = _mm256_fmadd_ps(x1, codes8(p + 8, z), high[j]);
                }
            }
        }
        for (int j = 0; j < NR; j++) {
            const __m256 step = _mm256_set1_ps(strata_f16_to_float(steps[(n + j) * groups + g]));
            total[j] = _mm256_fmadd_ps(_mm256_add_ps(low[j], high[j]), step, total[j]);
        }
    }
    for (int j = 0; j < NR; j++) totals[j] = strata_hsum8(total[j]);
}
#endif

STRATA_AVX2
void strata_quantized_dot_row(int k, const float *x, const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                              int zero, int bits, int group_size, long n0, long n1, float *out, int accumulate) {
    const long groups = k / group_size;
    // With minimums to apply: each group's sum of x, once per call.
    float *xsums = NULL;
    if (zero < 0) {
        xsums = (float *)malloc(sizeof(float) * (size_t)(groups > 0 ? groups : 1));
        for (long g = 0; g < groups; g++) {
            float s = 0;
            for (int i = 0; i < group_size; i++) s += x[g * group_size + i];
            xsums[g] = s;
        }
    }
    for (long n = n0; n < n1;) {
        float sums[4];
        int rows = 1;
#if defined(__x86_64__)
        if (n1 - n >= 4) {
            rows = 4;
            if (bits == 4) dot_rows(4, 4, k, x, codes, steps, zero, group_size, n, sums);
            else dot_rows(4, 8, k, x, codes, steps, zero, group_size, n, sums);
        } else if (bits == 4) {
            dot_rows(1, 4, k, x, codes, steps, zero, group_size, n, sums);
        } else {
            dot_rows(1, 8, k, x, codes, steps, zero, group_size, n, sums);
        }
#else
        const long bytes = (long)group_size * bits / 8;
        sums[0] = 0;
        for (long g = 0; g < groups; g++) {
            const uint8_t *p = codes + (n * groups + g) * bytes;
            float s = 0;
            for (int i = 0; i < group_size; i++) {
                int c = bits == 8 ? p[i] : (i < group_size / 2 ? p[i] & 0xF : p[i - group_size / 2] >> 4);
                s += x[g * group_size + i] * (float)(c - (zero > 0 ? zero : 0));
            }
            sums[0] += s * strata_f16_to_float(steps[n * groups + g]);
        }
#endif
        for (int j = 0; j < rows; j++) {
            float v = sums[j];
            if (zero < 0)
                for (long g = 0; g < groups; g++) v += strata_f16_to_float(mins[(n + j) * groups + g]) * xsums[g];
            out[n + j] = accumulate ? out[n + j] + v : v;
        }
        n += rows;
    }
    free(xsums);
}
