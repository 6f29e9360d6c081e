// Exact int8 x int8 products on AVX2, for `--weight-format int8` on CPUs without AMX-INT8
// (every x86-64 CPU this binary runs on has AVX2). `vpmaddubsw` multiplies unsigned by signed
// bytes, so each activation byte goes in as |a| and its sign moves onto the weight byte
// (`vpsignb`); with both sides' codes in [-127, 127] a pair of products is at most
// 2 * 127 * 127 = 32258, inside 16 bits, so nothing saturates, and `vpmaddwd` against ones
// widens the pairs into 32-bit sums. The results are the exact integer sums oneDNN's AMX-INT8
// kernel returns: no rounding anywhere before the rescale.
#include "strata_int8.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX2 __attribute__((target("avx2")))

STRATA_AVX2 static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/// MR rows of a against NR weight rows over k (MR <= 4, NR <= 2: 8 accumulators, the weight
/// vectors, |a|, its sign source and the constant fit AVX2's 16 registers). The last k % 32
/// values go through a scalar loop.
STRATA_AVX2 __attribute__((always_inline)) static inline void
tile(const int8_t *a, int r0, const int MR, int k, const int8_t *w, int n, const int NR, int32_t *sums, long ldc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_si256();
    int i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256i v[2];
        for (int j = 0; j < NR; j++) v[j] = _mm256_loadu_si256((const __m256i *)(w + (long)(n + j) * k + i));
        for (int r = 0; r < MR; r++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(a + (long)(r0 + r) * k + i));
            __m256i magnitude = _mm256_abs_epi8(x);
            for (int j = 0; j < NR; j++) {
                __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(v[j], x));
                acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            int32_t s = hsum_epi32(acc[r][j]);
            const int8_t *x = a + (long)(r0 + r) * k, *y = w + (long)(n + j) * k;
            for (int t = i; t < k; t++) s += (int32_t)x[t] * (int32_t)y[t];
            sums[(long)(r0 + r) * ldc + n + j] = s;
        }
}

#define STRATA_S8_TILE(MR_, NR_) \
    STRATA_AVX2 static void tile_##MR_##x##NR_(const int8_t *a, int r0, int k, const int8_t *w, int n, int32_t *sums, long ldc) { \
        tile(a, r0, MR_, k, w, n, NR_, sums, ldc); \
    }
STRATA_S8_TILE(1, 1) STRATA_S8_TILE(2, 1) STRATA_S8_TILE(3, 1) STRATA_S8_TILE(4, 1)
STRATA_S8_TILE(1, 2) STRATA_S8_TILE(2, 2) STRATA_S8_TILE(3, 2) STRATA_S8_TILE(4, 2)

typedef void (*strata_s8_tile)(const int8_t *, int, int, const int8_t *, int, int32_t *, long);
#endif

void strata_s8_gemm_avx2(const int8_t *a, int m, int k, const int8_t *w, int n0, int n1, int32_t *sums, long ldc) {
#if defined(__x86_64__)
    static const strata_s8_tile tiles[2][4] = {{tile_1x1, tile_2x1, tile_3x1, tile_4x1}, {tile_1x2, tile_2x2, tile_3x2, tile_4x2}};
    // Rows in chunks whose codes stay in L2 (about 256 KiB); inside a chunk each pair of weight
    // rows (in L1) meets every 4-row group in turn, so the weight streams from memory once per
    // chunk rather than once per row group.
    int chunk = (256 * 1024) / (k > 0 ? k : 1);
    chunk = chunk < 4 ? 4 : chunk - chunk % 4;
    for (int c0 = 0; c0 < m; c0 += chunk) {
        int c1 = m - c0 < chunk ? m : c0 + chunk;
        for (int n = n0; n < n1; n += 2) {
            int nr = n1 - n < 2 ? 1 : 2;
            for (int r0 = c0; r0 < c1; r0 += 4) {
                int mr = c1 - r0 < 4 ? c1 - r0 : 4;
                tiles[nr - 1][mr - 1](a, r0, k, w, n, sums, ldc);
            }
        }
    }
#else
    // Other architectures: the same exact sums, one product at a time.
    for (int r = 0; r < m; r++)
        for (int n = n0; n < n1; n++) {
            int32_t s = 0;
            for (int i = 0; i < k; i++) s += (int32_t)a[(long)r * k + i] * (int32_t)w[(long)n * k + i];
            sums[(long)r * ldc + n] = s;
        }
#endif
}
