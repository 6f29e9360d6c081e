#ifndef STRATA_HALF_H
#define STRATA_HALF_H
#include <stdint.h>

/// Runs where strata_avx512_supported() (strata_cpu.h) says so; F16C comes with AVX-512.

/// out[r, n] = (accumulate ? out[r, n] : 0) + sum_k x[r, k] * w[n, k] for rows r < m and weight
/// rows n in [n0, n1), exactly in f32: w is f16 (`bf16` 0) or bf16 (`bf16` 1) row-major with row
/// stride k, widened in registers; x f32 with row stride k; out row stride ldc.
void strata_half_gemm(int m, int k, const float *x, const uint16_t *w, int bf16, long n0, long n1, float *out, long ldc,
                      int accumulate);
#endif
