#ifndef STRATA_CACHE_ATTENTION_H
#define STRATA_CACHE_ATTENTION_H
#include <stdint.h>

/// AVX-512 forms of strata_cache_scores and strata_cache_weighted_sum (strata_int8.h) for head
/// sizes that are multiples of 16: they run where strata_avx512_supported() (strata_cpu.h) says
/// so. Same products in f32; the sums are grouped differently (16 lanes, two position chains).
/// `f16` nonzero: f16 values, zero: bf16.

/// scores[j] = scale * sum_i query[i] * keys[j * d + i] for j < visible.
void strata_cache_scores_avx512(const float *query, const uint16_t *keys, int f16, int visible, int d, float scale,
                                float *scores);

/// out[i] = sum_j weights[j] * values[j * d + i] for i < d.
void strata_cache_weighted_sum_avx512(const float *weights, const uint16_t *values, int f16, int visible, int d, float *out);
#endif
