#ifndef STRATA_HALF_H
#define STRATA_HALF_H
#include <stdint.h>

/// Runs where strata_avx512_supported() (strata_cpu.h) says so; F16C comes with AVX-512.

/// out[r, n] = (accumulate ? out[r, n] : 0) + sum_k x[r, k] * w[n, k] for rows r < m and weight
/// rows n in [n0, n1), exactly in f32: w is row-major with row stride k, of `type`
/// (STRATA_DOT_F32, STRATA_DOT_F16 or STRATA_DOT_BF16 from strata_dot.h), 16-bit values widened
/// to f32; x f32 with row stride k; out row stride ldc. From 12 rows on, the call allocates a
/// panel of 24 widened weight rows and a transposed copy of x (about 96k and 64k * ceil(m/16)
/// bytes).
void strata_half_gemm(int m, int k, const float *x, const void *w, int type, long n0, long n1, float *out, long ldc,
                      int accumulate);
#endif
