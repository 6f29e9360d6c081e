// Decode-sized matmuls against weights widened in registers (f16, bf16, or f32 rows a quantized
// weight was just decoded into), as dot products along k on AVX2.
//
// Register tile: 4 rows of x by 3 weight rows, 8 lanes along k: 12 accumulators, 3 widened
// weight vectors and one x vector fill AVX2's 16 registers. Per step that is 4 x loads (from
// L2: x is reused by every weight triple) for 12 FMAs, where the 4 x 2 tile this replaces read
// x at 4 loads per 8 FMAs. On a Zen 3, one thread, the per-thread shapes of a Llama-250M decode
// step, min of 15 alternating calls: 1.04-1.17x the 4 x 2 tile at 16 rows, 1.54x at one row,
// 0.91x at exactly four (BENCHMARKS.md, issue 15, sixth round).
#include "strata_dot.h"
#include "lanes.h"
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline

STRATA_AVX2 INLINE __m256 load8(const void *w, const int type, long i) {
    if (type == STRATA_DOT_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (type == STRATA_DOT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

static inline float widen1(const void *w, const int type, long i) {
    if (type == STRATA_DOT_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return type == STRATA_DOT_BF16 ? strata_bf16_to_float(h) : strata_f16_to_float(h);
}

static inline long element_bytes(int type) { return type == STRATA_DOT_F32 ? 4 : 2; }

#if defined(__x86_64__)
// MR rows of x against NR weight rows over all of k (MR <= 4, NR <= 3, both compile-time at every
// call, so the arrays below live in registers). The last k % 8 values go through a scalar loop.
STRATA_AVX2 INLINE void tile(const int MR, const int NR, const int type, int k, const float *x, const void *w, float *out,
                             long ldc, int accumulate, long prefetch) {
    const long bytes = element_bytes(type), rowBytes = (long)k * bytes;
    const char *rows = (const char *)w;
    __m256 acc[4][3];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_ps();
    const int vectorEnd = k & ~7;
    // One 64-byte line of each weight row per `lineStep` elements.
    const int lineStep = (int)(64 / bytes);
    for (int i = 0; i < vectorEnd; i += 8) {
        if (prefetch && (i & (lineStep - 1)) == 0)
            for (int j = 0; j < NR; j++) _mm_prefetch(rows + j * rowBytes + i * bytes + prefetch, _MM_HINT_T0);
        __m256 v[3];
        for (int j = 0; j < NR; j++) v[j] = load8(rows + j * rowBytes, type, i);
        for (int r = 0; r < MR; r++) {
            __m256 u = _mm256_loadu_ps(x + (long)r * k + i);
            for (int j = 0; j < NR; j++) acc[r][j] = _mm256_fmadd_ps(u, v[j], acc[r][j]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float s = strata_hsum8(acc[r][j]);
            for (int i = vectorEnd; i < k; i++) s += x[(long)r * k + i] * widen1(rows + j * rowBytes, type, i);
            float *o = out + (long)r * ldc + j;
            *o = accumulate ? *o + s : s;
        }
}

// Tail shapes: every (MR, NR) a call can need, each its own specialization.
#define TILE_ROWS(MR, type)                                                                                              \
    switch (columns) {                                                                                                   \
    case 3: tile(MR, 3, type, k, xr, wn, o, ldc, accumulate, pf); break;                                                 \
    case 2: tile(MR, 2, type, k, xr, wn, o, ldc, accumulate, pf); break;                                                 \
    default: tile(MR, 1, type, k, xr, wn, o, ldc, accumulate, pf); break;                                                \
    }

// The weight triple is the outer loop: it stays in L1 while every group of x rows passes over it,
// so each weight row is read from memory once per call.
#define DOT_GEMM(name, type)                                                                                             \
    STRATA_AVX2 static void name(int m, int k, const float *x, const void *w, long n0, long n1, float *out, long ldc,     \
                                 int accumulate, long prefetch) {                                                        \
        const long rowBytes = (long)k * element_bytes(type);                                                             \
        for (long n = n0; n < n1; n += 3) {                                                                              \
            const int columns = n1 - n < 3 ? (int)(n1 - n) : 3;                                                          \
            const void *wn = (const char *)w + n * rowBytes;                                                             \
            for (int r = 0; r < m; r += 4) {                                                                             \
                const float *xr = x + (long)r * k;                                                                       \
                float *o = out + (long)r * ldc + n;                                                                      \
                const long pf = r == 0 ? prefetch : 0;                                                                   \
                switch (m - r < 4 ? m - r : 4) {                                                                         \
                case 4: TILE_ROWS(4, type) break;                                                                        \
                case 3: TILE_ROWS(3, type) break;                                                                        \
                case 2: TILE_ROWS(2, type) break;                                                                        \
                default: TILE_ROWS(1, type) break;                                                                       \
                }                                                                                                        \
            }                                                                                                            \
        }                                                                                                                \
    }

DOT_GEMM(dot_f32, STRATA_DOT_F32)
DOT_GEMM(dot_f16, STRATA_DOT_F16)
DOT_GEMM(dot_bf16, STRATA_DOT_BF16)
#endif

void strata_dot_gemm(int m, int k, const float *x, const void *w, int type, long n0, long n1, float *out, long ldc,
                     int accumulate, long prefetch) {
    if (m <= 0 || n1 <= n0) return;
#if defined(__x86_64__)
    if (type == STRATA_DOT_F16) dot_f16(m, k, x, w, n0, n1, out, ldc, accumulate, prefetch);
    else if (type == STRATA_DOT_BF16) dot_bf16(m, k, x, w, n0, n1, out, ldc, accumulate, prefetch);
    else dot_f32(m, k, x, w, n0, n1, out, ldc, accumulate, prefetch);
#else
    (void)prefetch;
    const long bytes = element_bytes(type);
    for (int r = 0; r < m; r++)
        for (long n = n0; n < n1; n++) {
            const void *row = (const char *)w + n * (long)k * bytes;
            float s = 0;
            for (int i = 0; i < k; i++) s += x[(long)r * k + i] * widen1(row, type, i);
            float *o = out + (long)r * ldc + n;
            *o = accumulate ? *o + s : s;
        }
#endif
}
