#ifndef STRATA_HALF_H
#define STRATA_HALF_H
#include <stdint.h>

/// Runs where strata_avx512_supported() (strata_cpu.h) says so; F16C comes with AVX-512.

/// From this many rows on, strata_half_gemm multiplies a packed (transposed) copy of x, and
/// widens STRATA_HALF_PANEL_ROWS weight rows at a time into a panel (column ranges that are
/// multiples of it split the work without partial panels).
enum { STRATA_HALF_PACKED_ROWS = 12, STRATA_HALF_PANEL_ROWS = 24 };

/// Floats strata_half_pack writes for m rows of k (0 below STRATA_HALF_PACKED_ROWS rows); the
/// buffer must be 64-byte aligned.
long strata_half_packed_floats(int m, int k);

/// x (m rows of k, row stride k) in the layout strata_half_gemm's tiles read, so that callers
/// splitting one product's columns over several calls pack it once.
void strata_half_pack(int m, int k, const float *x, float *packed);

/// out[r, n] = (accumulate ? out[r, n] : 0) + sum_k x[r, k] * w[n, k] for rows r < m and weight
/// rows n in [n0, n1), exactly in f32: w is row-major with row stride k, of `type`
/// (STRATA_DOT_F32, STRATA_DOT_F16 or STRATA_DOT_BF16 from strata_dot.h), 16-bit values widened
/// to f32; x f32 with row stride k; out row stride ldc. From STRATA_HALF_PACKED_ROWS rows on,
/// the call reads `packed` (strata_half_pack's x; NULL: it packs x itself) and allocates a panel
/// of STRATA_HALF_PANEL_ROWS widened weight rows (96 bytes per k).
void strata_half_gemm(int m, int k, const float *x, const float *packed, const void *w, int type, long n0, long n1,
                      float *out, long ldc, int accumulate);
#endif
