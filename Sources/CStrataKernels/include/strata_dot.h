#ifndef STRATA_DOT_H
#define STRATA_DOT_H

/// Weight element types strata_dot_gemm widens in registers.
enum { STRATA_DOT_F32 = 0, STRATA_DOT_F16 = 1, STRATA_DOT_BF16 = 2 };

/// out[r, n] = (accumulate ? out[r, n] : 0) + sum_k x[r, k] * w[n, k] for rows r < m and weight
/// rows n in [n0, n1): w row-major with row stride k, elements of `type`, each widened to f32 in
/// a register, so the products are exact and only the f32 summation order differs from a plain
/// loop. x is f32 with row stride k; out has row stride ldc. While the first group of x rows runs,
/// the weight stream is prefetched `prefetch` bytes ahead (0: not at all).
///
/// AVX2 + FMA + F16C, which every x86-64 CPU this binary runs on has (a scalar loop elsewhere).
/// Meant for decode-sized m: each weight row is read once per call and x comes from L2.
void strata_dot_gemm(int m, int k, const float *x, const void *w, int type, long n0, long n1, float *out, long ldc,
                     int accumulate, long prefetch);
#endif
