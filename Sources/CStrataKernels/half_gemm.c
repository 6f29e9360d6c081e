// Matmuls against weights kept as stored (`--weight-format as-stored`): f16 or bf16 widened to
// f32 on the fly, or f32, exact in f32 arithmetic, so no f32 copy of a 16-bit weight is ever
// made. AVX-512, chosen at run time like int8_gemm.c (the binary's baseline is Haswell, where
// dot_gemm.c's AVX2 tile serves).
//
// Two kinds of register tile, 16 lanes each:
// - below 12 rows (bandwidth-bound decode): dot products along k, 4 rows of x by 4 weight rows,
//   each weight vector widened in a register. 16 FMAs per 4 widenings; a widening (vcvtph2ps)
//   takes a slot on the FMA ports, so this tile can reach at most 2/3 of the FMA rate, which is
//   enough where the weight stream from memory is the limit.
// - from 12 rows on: outer products over a panel of widened weight rows (see wide_gemm), where
//   the FMA ports are the bound: its tiles run at about 0.9 of the FMA peak with their operands
//   in L1, where the 4 x 4 tile reached about 0.5.
#include "strata_half.h"
#include "strata_dot.h"
#include "lanes.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#endif

#if defined(__x86_64__)
static inline long element_size(int type) { return type == STRATA_DOT_F32 ? 4 : 2; }

// One 4 x 4 tile over all of k. Missing rows or weight rows repeat the last valid one (their
// sums are dropped), which keeps the loop free of branches. `w` is the tile's first weight row,
// rows `stride` bytes apart.
STRATA_AVX512
static void tile4x4(int k, const float *x, int rows, const char *w, long stride, int type, int columns, float *out,
                    long ldc, int accumulate, int prefetch) {
    const float *x0 = x, *x1 = x + (long)(rows > 1 ? 1 : 0) * k, *x2 = x + (long)(rows > 2 ? 2 : rows - 1) * k,
                *x3 = x + (long)(rows > 3 ? 3 : rows - 1) * k;
    const char *w0 = w, *w1 = w + (columns > 1 ? 1 : 0) * stride, *w2 = w + (columns > 2 ? 2 : columns - 1) * stride,
               *w3 = w + (columns > 3 ? 3 : columns - 1) * stride;
    long esize = element_size(type);
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int i = 0; i < k; i += 16) {
        __mmask16 mask = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1);
        long at = i * esize;
        if (prefetch && (at & 63) == 0) {
            // The lines these weight rows' successors will need: the stream runs ahead of the
            // FMAs instead of stalling them (decode steps are half memory-bound on weights).
            const char *ahead = w3 + at + 4 * stride;
            _mm_prefetch(ahead, _MM_HINT_T0);
            _mm_prefetch(ahead - stride, _MM_HINT_T0);
            _mm_prefetch(ahead - 2 * stride, _MM_HINT_T0);
            _mm_prefetch(ahead - 3 * stride, _MM_HINT_T0);
        }
        __m512 v0 = strata_widen16(w0 + at, type, mask), v1 = strata_widen16(w1 + at, type, mask);
        __m512 v2 = strata_widen16(w2 + at, type, mask), v3 = strata_widen16(w3 + at, type, mask);
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

// From 12 rows on: outer products. 24 weight rows are widened once into a panel, x is
// transposed, and x vectors (16 rows, or 8 rows with each value twice) are multiplied by
// weight values broadcast from the panel. No widening in the loop and no horizontal sums, and
// both streams are read front to back. The panel holds, for each 16-value block of k, 12 pairs
// of weight rows, each pair's values interleaved (w[2q][i], w[2q + 1][i], ...): one 64-bit
// broadcast then carries a value of both rows of the pair.
enum { PANEL_COLUMNS = STRATA_HALF_PANEL_ROWS, PANEL_BLOCK = PANEL_COLUMNS * 16 };

// 16 rows by the panel's 24 columns. x comes as two vectors per k, rows 0-7 and rows 8-15 with
// each value twice; lane 2r + c of a pair's sum is row r and the pair's column c. Per k, 24
// FMAs take 12 broadcasts and 2 loads: a plain 16 x 24 tile (one broadcast per FMA) ran at
// about 0.75 of the FMA peak in L1, and no faster than the 4 x 4 dot-product tile at 16 rows.
STRATA_AVX512
static void tile16x24(long kBlocks, const float *xd, const float *panel, int rows, int columns, float *out, long ldc,
                      int accumulate, const char *next, long nextBlock) {
    __m512 z = _mm512_setzero_ps();
    __m512 a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z, a8 = z, a9 = z, a10 = z, a11 = z;
    __m512 b0 = z, b1 = z, b2 = z, b3 = z, b4 = z, b5 = z, b6 = z, b7 = z, b8 = z, b9 = z, b10 = z, b11 = z;
    for (long kb = 0; kb < kBlocks; kb++) {
        const float *p = panel + kb * PANEL_BLOCK, *xb = xd + kb * 512;
        if (next)
            for (long at = 0; at < nextBlock; at += 64) _mm_prefetch(next + kb * nextBlock + at, _MM_HINT_T1);
        for (int kk = 0; kk < 16; kk++) {
            __m512 u = _mm512_load_ps(xb + kk * 32), v = _mm512_load_ps(xb + kk * 32 + 16);
#define STRATA_FMA(q)                                                                              \
    {                                                                                              \
        double pair;                                                                               \
        memcpy(&pair, p + (q) * 32 + kk * 2, sizeof pair);                                         \
        __m512 wq = _mm512_castpd_ps(_mm512_set1_pd(pair));                                        \
        a##q = _mm512_fmadd_ps(u, wq, a##q);                                                       \
        b##q = _mm512_fmadd_ps(v, wq, b##q);                                                       \
    }
            STRATA_FMA(0) STRATA_FMA(1) STRATA_FMA(2) STRATA_FMA(3) STRATA_FMA(4) STRATA_FMA(5)
            STRATA_FMA(6) STRATA_FMA(7) STRATA_FMA(8) STRATA_FMA(9) STRATA_FMA(10) STRATA_FMA(11)
#undef STRATA_FMA
        }
    }
    // s[q][h][2r + c] is out[8h + r, 2q + c]; out is row-major, so the tile leaves through it.
    float s[12][2][16] __attribute__((aligned(64)));
#define STRATA_STORE(q)               \
    _mm512_store_ps(s[q][0], a##q);   \
    _mm512_store_ps(s[q][1], b##q);
    STRATA_STORE(0) STRATA_STORE(1) STRATA_STORE(2) STRATA_STORE(3) STRATA_STORE(4) STRATA_STORE(5)
    STRATA_STORE(6) STRATA_STORE(7) STRATA_STORE(8) STRATA_STORE(9) STRATA_STORE(10) STRATA_STORE(11)
#undef STRATA_STORE
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < columns; c++) {
            float v = s[c >> 1][r >> 3][2 * (r & 7) + (c & 1)];
            out[r * ldc + c] = accumulate ? out[r * ldc + c] + v : v;
        }
}

// 32 rows (two blocks of 16 rows of x, one vector each per k) by 12 of the panel's columns
// from `first` (even) on: each broadcast weight value serves both vectors, so per k 24 FMAs
// take 14 loads (about 0.9 of the FMA peak in L1).
STRATA_AVX512
static void tile32x12(long kBlocks, const float *xt0, const float *xt1, const float *panel, int first, int rows,
                      int columns, float *out, long ldc, int accumulate, const char *next, long nextBlock) {
    __m512 z = _mm512_setzero_ps();
    __m512 a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z, a8 = z, a9 = z, a10 = z, a11 = z;
    __m512 b0 = z, b1 = z, b2 = z, b3 = z, b4 = z, b5 = z, b6 = z, b7 = z, b8 = z, b9 = z, b10 = z, b11 = z;
    for (long kb = 0; kb < kBlocks; kb++) {
        const float *p = panel + kb * PANEL_BLOCK + first * 16, *u0 = xt0 + kb * 256, *u1 = xt1 + kb * 256;
        if (next)
            for (long at = 0; at < nextBlock; at += 64) _mm_prefetch(next + kb * nextBlock + at, _MM_HINT_T1);
        for (int kk = 0; kk < 16; kk++) {
            __m512 u = _mm512_load_ps(u0 + kk * 16), v = _mm512_load_ps(u1 + kk * 16);
#define STRATA_FMA(j)                                                        \
    {                                                                        \
        __m512 wj = _mm512_set1_ps(p[((j) >> 1) * 32 + ((j) & 1) + kk * 2]); \
        a##j = _mm512_fmadd_ps(u, wj, a##j);                                 \
        b##j = _mm512_fmadd_ps(v, wj, b##j);                                 \
    }
            STRATA_FMA(0) STRATA_FMA(1) STRATA_FMA(2) STRATA_FMA(3) STRATA_FMA(4) STRATA_FMA(5)
            STRATA_FMA(6) STRATA_FMA(7) STRATA_FMA(8) STRATA_FMA(9) STRATA_FMA(10) STRATA_FMA(11)
#undef STRATA_FMA
        }
    }
    float s[12][32] __attribute__((aligned(64)));
#define STRATA_STORE(j)            \
    _mm512_store_ps(s[j], a##j);   \
    _mm512_store_ps(s[j] + 16, b##j);
    STRATA_STORE(0) STRATA_STORE(1) STRATA_STORE(2) STRATA_STORE(3) STRATA_STORE(4) STRATA_STORE(5)
    STRATA_STORE(6) STRATA_STORE(7) STRATA_STORE(8) STRATA_STORE(9) STRATA_STORE(10) STRATA_STORE(11)
#undef STRATA_STORE
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < columns; c++) out[r * ldc + c] = accumulate ? out[r * ldc + c] + s[c][r] : s[c][r];
}

// Widens weight rows [0, columns) at `w` (`stride` bytes apart) into the panel's pairs, zeros
// past k and in the rows past `columns`. Inlined per weight type, so the loop holds one
// widening, not all three and a select.
STRATA_AVX512 __attribute__((always_inline))
static inline void fill_panel(int k, long kBlocks, const char *w, long stride, int columns, int type, float *panel) {
    long esize = element_size(type);
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int q = 0; q < PANEL_COLUMNS / 2; q++) {
        const char *even = w + 2L * q * stride, *odd = even + stride;
        for (long kb = 0; kb < kBlocks; kb++) {
            long i = kb * 16;
            __mmask16 mask = k - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - i)) - 1);
            __m512 e = 2 * q < columns ? strata_widen16(even + i * esize, type, mask) : _mm512_setzero_ps();
            __m512 o = 2 * q + 1 < columns ? strata_widen16(odd + i * esize, type, mask) : _mm512_setzero_ps();
            float *to = panel + kb * PANEL_BLOCK + q * 32;
            _mm512_store_ps(to, _mm512_permutex2var_ps(e, low, o));
            _mm512_store_ps(to + 16, _mm512_permutex2var_ps(e, high, o));
        }
    }
}

STRATA_AVX512
static void fill_panel_f16(int k, long kBlocks, const char *w, long stride, int columns, float *panel) {
    fill_panel(k, kBlocks, w, stride, columns, STRATA_DOT_F16, panel);
}
STRATA_AVX512
static void fill_panel_bf16(int k, long kBlocks, const char *w, long stride, int columns, float *panel) {
    fill_panel(k, kBlocks, w, stride, columns, STRATA_DOT_BF16, panel);
}
STRATA_AVX512
static void fill_panel_f32(int k, long kBlocks, const char *w, long stride, int columns, float *panel) {
    fill_panel(k, kBlocks, w, stride, columns, STRATA_DOT_F32, panel);
}

// Up to 16 rows: one block with each value twice (tile16x24); more: blocks of 16 rows in pairs
// (tile32x12), an odd last block paired with zeros.
static int paired_rows(int m) { return m <= 16; }
static int row_blocks(int m) { return paired_rows(m) ? 1 : (m + 31) / 32 * 2; }

static long packed_floats(int m, int k) { return row_blocks(m) * ((k + 15) / 16) * (paired_rows(m) ? 512 : 256); }

// x transposed: one gather per k and block of 16 rows (rows past m and k past its end are
// zeros). A plain loop here was vectorized into scatters and took a tenth of a decode step.
STRATA_AVX512
static void pack_x(int m, int k, const float *x, float *xt) {
    long kBlocks = (k + 15) / 16;
    int paired = paired_rows(m), rowBlocks = row_blocks(m);
    const __m512i dupLow = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i dupHigh = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(k));
    for (int b = 0; b < rowBlocks; b++) {
        int rows = m - b * 16;
        __mmask16 valid = rows >= 16 ? (__mmask16)0xFFFF : rows <= 0 ? 0 : (__mmask16)((1u << rows) - 1);
        const float *from = x + (long)b * 16 * k;
        for (long i = 0; i < kBlocks * 16; i++) {
            __m512 g = i < k && valid ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, offsets, from + i, 4)
                                      : _mm512_setzero_ps();
            if (paired) {
                _mm512_store_ps(xt + i * 32, _mm512_permutexvar_ps(dupLow, g));
                _mm512_store_ps(xt + i * 32 + 16, _mm512_permutexvar_ps(dupHigh, g));
            } else {
                _mm512_store_ps(xt + ((long)b * kBlocks * 16 + i) * 16, g);
            }
        }
    }
}

// Returns 0 (and computes nothing) when the panel cannot be had; the 4 x 4 tiles then serve.
STRATA_AVX512
static int wide_gemm(int m, int k, const float *xt, const char *w, int type, long n0, long n1, float *out, long ldc,
                     int accumulate) {
    long stride = (long)k * element_size(type), kBlocks = (k + 15) / 16;
    int paired = paired_rows(m), rowBlocks = row_blocks(m);
    float *panel = aligned_alloc(64, (size_t)kBlocks * PANEL_BLOCK * sizeof(float));
    if (!panel) return 0;
    void (*fill)(int, long, const char *, long, int, float *) =
        type == STRATA_DOT_F16 ? fill_panel_f16 : type == STRATA_DOT_BF16 ? fill_panel_bf16 : fill_panel_f32;
    // The next panel's weight rows are one run of 24 * stride bytes; the tiles prefetch a share
    // of it with each block of k, so it arrives while they compute instead of in one burst.
    long nextBlock = (PANEL_COLUMNS * stride / kBlocks + 63) / 64 * 64;
    for (long n = n0; n < n1; n += PANEL_COLUMNS) {
        int columns = n1 - n < PANEL_COLUMNS ? (int)(n1 - n) : PANEL_COLUMNS;
        fill(k, kBlocks, w + n * stride, stride, columns, panel);
        const char *next = n + 2 * PANEL_COLUMNS <= n1 ? w + (n + PANEL_COLUMNS) * stride : NULL;
        if (paired) {
            tile16x24(kBlocks, xt, panel, m, columns, out + n, ldc, accumulate, next, nextBlock);
            continue;
        }
        for (int b = 0; b < rowBlocks; b += 2) {
            int rows = m - b * 16 < 32 ? m - b * 16 : 32;
            const float *xb = xt + (long)b * kBlocks * 256;
            for (int first = 0; first < columns; first += 12)
                tile32x12(kBlocks, xb, xb + kBlocks * 256, panel, first, rows, columns - first < 12 ? columns - first : 12,
                          out + (long)b * 16 * ldc + n + first, ldc, accumulate, b == 0 && first == 0 ? next : NULL,
                          nextBlock);
        }
    }
    free(panel);
    return 1;
}
#endif

long strata_half_packed_floats(int m, int k) {
#if defined(__x86_64__)
    return m >= STRATA_HALF_PACKED_ROWS && k > 0 ? packed_floats(m, k) : 0;
#else
    (void)m; (void)k;
    return 0;
#endif
}

void strata_half_pack(int m, int k, const float *x, float *packed) {
#if defined(__x86_64__)
    if (m >= STRATA_HALF_PACKED_ROWS && k > 0) pack_x(m, k, x, packed);
#endif
}

void strata_half_gemm(int m, int k, const float *x, const float *packed, const void *w, int type, long n0, long n1,
                      float *out, long ldc, int accumulate) {
#if defined(__x86_64__)
    if (m <= 0 || n1 <= n0) return;
    if (k <= 0) {
        if (!accumulate)
            for (int r = 0; r < m; r++)
                for (long n = n0; n < n1; n++) out[r * ldc + n] = 0;
        return;
    }
    if (m >= STRATA_HALF_PACKED_ROWS) {
        float *own = NULL;
        if (!packed && (own = aligned_alloc(64, (size_t)packed_floats(m, k) * sizeof(float)))) pack_x(m, k, x, own);
        int done = (packed || own) && wide_gemm(m, k, packed ? packed : own, (const char *)w, type, n0, n1, out, ldc,
                                                accumulate);
        free(own);
        if (done) return;
    }
    // Rows in blocks whose x stays in L2 (about 1 MiB), weight rows in blocks of about 512 KiB
    // that the first 4 rows bring into L2 and the others reuse from there; inside a block each
    // 4-row group of x (in L1) meets every 4 weight rows in turn.
    long stride = (long)k * element_size(type);
    long blockRows = (1L << 20) / (4L * k);
    blockRows = blockRows < 4 ? 4 : blockRows - blockRows % 4;
    long blockColumns = (1L << 19) / stride;
    blockColumns = blockColumns < 4 ? 4 : blockColumns - blockColumns % 4;
    for (int r0 = 0; r0 < m; r0 += (int)blockRows) {
        int rowsInBlock = m - r0 < blockRows ? m - r0 : (int)blockRows;
        for (long c0 = n0; c0 < n1; c0 += blockColumns) {
            long c1 = n1 - c0 < blockColumns ? n1 : c0 + blockColumns;
            for (int r = 0; r < rowsInBlock; r += 4) {
                int rows = rowsInBlock - r < 4 ? rowsInBlock - r : 4;
                for (long n = c0; n < c1; n += 4) {
                    int columns = c1 - n < 4 ? (int)(c1 - n) : 4;
                    tile4x4(k, x + (long)(r0 + r) * k, rows, (const char *)w + n * stride, stride, type, columns,
                            out + (long)(r0 + r) * ldc + n, ldc, accumulate, r == 0);
                }
            }
        }
    }
#endif
}
