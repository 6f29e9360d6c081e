// Matmuls against f16/bf16 weights kept half-size in memory (`--weight-format as-stored`),
// exact in f32: each weight is widened in a register (F16C, or a shift for bf16) and multiplied
// in f32, so no f32 copy of the weight is ever made. AVX-512, chosen at run time like
// int8_gemm.c (the binary's baseline is Haswell, where HalfGEMM.swift's AVX2 tile serves).
//
// Register tile: 4 rows of x by 4 weight rows, 16 lanes along k: 16 accumulators, 4 x vectors
// and 4 widened weight vectors (24 of the 32 registers) per 16 FMAs. Blocked for the caches
// (see strata_half_gemm): each weight row is read from memory once per L2-sized block of x
// rows, and the x vectors come from L1.
#include "strata_half.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
#endif

#if defined(__x86_64__)
STRATA_AVX512 __attribute__((always_inline))
static inline __m512 widen(const uint16_t *p, int bf16, __mmask16 mask) {
    __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    if (bf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

// One 4 x 4 tile over all of k. Missing rows or weight rows repeat the last valid one (their
// sums are dropped), which keeps the loop free of branches.
STRATA_AVX512
static void tile(int k, const float *x, int rows, const uint16_t *w, int bf16, int columns, float *out, long ldc,
                 int accumulate, int prefetch) {
    const float *x0 = x, *x1 = x + (long)(rows > 1 ? 1 : 0) * k, *x2 = x + (long)(rows > 2 ? 2 : rows - 1) * k,
                *x3 = x + (long)(rows > 3 ? 3 : rows - 1) * k;
    const uint16_t *w0 = w, *w1 = w + (long)(columns > 1 ? 1 : 0) * k, *w2 = w + (long)(columns > 2 ? 2 : columns - 1) * k,
                   *w3 = w + (long)(columns > 3 ? 3 : columns - 1) * k;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int i = 0; i < k; i += 16) {
        __mmask16 mask = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1);
        if (prefetch && (i & 31) == 0) {
            // The lines these weight rows' successors will need: the stream runs ahead of the
            // FMAs instead of stalling them (decode steps are half memory-bound on weights).
            const char *ahead = (const char *)(w3 + i) + 4 * 2 * (long)k;
            _mm_prefetch(ahead, _MM_HINT_T0);
            _mm_prefetch(ahead - 2 * (long)k, _MM_HINT_T0);
            _mm_prefetch(ahead - 4 * (long)k, _MM_HINT_T0);
            _mm_prefetch(ahead - 6 * (long)k, _MM_HINT_T0);
        }
        __m512 v0 = widen(w0 + i, bf16, mask), v1 = widen(w1 + i, bf16, mask);
        __m512 v2 = widen(w2 + i, bf16, mask), v3 = widen(w3 + i, bf16, mask);
        __m512 u = _mm512_maskz_loadu_ps(mask, x0 + i);
        a00 = _mm512_fmadd_ps(u, v0, a00); a01 = _mm512_fmadd_ps(u, v1, a01);
        a02 = _mm512_fmadd_ps(u, v2, a02); a03 = _mm512_fmadd_ps(u, v3, a03);
        u = _mm512_maskz_loadu_ps(mask, x1 + i);
        a10 = _mm512_fmadd_ps(u, v0, a10); a11 = _mm512_fmadd_ps(u, v1, a11);
        a12 = _mm512_fmadd_ps(u, v2, a12); a13 = _mm512_fmadd_ps(u, v3, a13);
        u = _mm512_maskz_loadu_ps(mask, x2 + i);
        a20 = _mm512_fmadd_ps(u, v0, a20); a21 = _mm512_fmadd_ps(u, v1, a21);
        a22 = _mm512_fmadd_ps(u, v2, a22); a23 = _mm512_fmadd_ps(u, v3, a23);
        u = _mm512_maskz_loadu_ps(mask, x3 + i);
        a30 = _mm512_fmadd_ps(u, v0, a30); a31 = _mm512_fmadd_ps(u, v1, a31);
        a32 = _mm512_fmadd_ps(u, v2, a32); a33 = _mm512_fmadd_ps(u, v3, a33);
    }
    float s[4][4] = {
        {_mm512_reduce_add_ps(a00), _mm512_reduce_add_ps(a01), _mm512_reduce_add_ps(a02), _mm512_reduce_add_ps(a03)},
        {_mm512_reduce_add_ps(a10), _mm512_reduce_add_ps(a11), _mm512_reduce_add_ps(a12), _mm512_reduce_add_ps(a13)},
        {_mm512_reduce_add_ps(a20), _mm512_reduce_add_ps(a21), _mm512_reduce_add_ps(a22), _mm512_reduce_add_ps(a23)},
        {_mm512_reduce_add_ps(a30), _mm512_reduce_add_ps(a31), _mm512_reduce_add_ps(a32), _mm512_reduce_add_ps(a33)}};
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < columns; c++) out[r * ldc + c] = accumulate ? out[r * ldc + c] + s[r][c] : s[r][c];
}
#endif

void strata_half_gemm(int m, int k, const float *x, const uint16_t *w, int bf16, long n0, long n1, float *out, long ldc,
                      int accumulate) {
#if defined(__x86_64__)
    if (m <= 0 || n1 <= n0) return;
    if (k <= 0) {
        if (!accumulate)
            for (int r = 0; r < m; r++)
                for (long n = n0; n < n1; n++) out[r * ldc + n] = 0;
        return;
    }
    // Rows in blocks whose x stays in L2 (about 1 MiB), weight rows in blocks of about 512 KiB
    // that the first 4 rows bring into L2 and the others reuse from there; inside a block each
    // 4-row group of x (in L1) meets every 4 weight rows in turn.
    long blockRows = (1L << 20) / (4L * k);
    blockRows = blockRows < 4 ? 4 : blockRows - blockRows % 4;
    long blockColumns = (1L << 19) / (2L * k);
    blockColumns = blockColumns < 4 ? 4 : blockColumns - blockColumns % 4;
    for (int r0 = 0; r0 < m; r0 += (int)blockRows) {
        int rowsInBlock = m - r0 < blockRows ? m - r0 : (int)blockRows;
        for (long c0 = n0; c0 < n1; c0 += blockColumns) {
            long c1 = n1 - c0 < blockColumns ? n1 : c0 + blockColumns;
            for (int r = 0; r < rowsInBlock; r += 4) {
                int rows = rowsInBlock - r < 4 ? rowsInBlock - r : 4;
                for (long n = c0; n < c1; n += 4) {
                    int columns = c1 - n < 4 ? (int)(c1 - n) : 4;
                    tile(k, x + (long)(r0 + r) * k, rows, w + n * k, bf16, columns, out + (long)(r0 + r) * ldc + n, ldc,
                         accumulate, r == 0);
                }
            }
        }
    }
#endif
}
