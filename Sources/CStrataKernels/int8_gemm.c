// Integer dot-product kernels for group-quantized weights: AVX512-VNNI, chosen at run time
// where strata_int8_supported() says the CPU has it, else AVX2 for 4-bit groups. The rest of
// Strata targets Haswell, so these functions carry their own target attributes.
#include "strata_int8.h"
#include "cpu_features.h"
#include "lanes.h"
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

int strata_int8_supported(void) {
#if defined(__x86_64__)
    unsigned ecx = 0;
    return strata_avx512_base(&ecx) && ((ecx >> 11) & 1);  // AVX512-VNNI
#else
    return 0;
#endif
}

/// The index within its group of value `i` (0..31) of block `s`: 8-bit blocks are 32
/// consecutive values; 4-bit blocks take 16 from the low nibbles and 16 from the high ones.
static inline int block_value(int bits, int half, int s, int i) {
    if (bits == 8) return 32 * s + i;
    return i < 16 ? 16 * s + i : half + 16 * s + (i - 16);
}

void strata_int8_quantize_rows(const float *x, int rows, int k, int ldx, int group_size, int bits, strata_int8_rows out) {
    int groups = k / group_size, blocks = group_size / 32, half = group_size / 2;
    for (int r = 0; r < rows; r++) {
        const float *row = x + (long)r * ldx;
        for (int g = 0; g < groups; g++) {
            const float *v = row + g * group_size;
            int8_t *q = out.codes + (long)r * k + g * group_size;
            float sum = 0;
            for (int i = 0; i < group_size; i++) sum += v[i];
            out.sums[r * groups + g] = sum;
            for (int s = 0; s < blocks; s++) {
                float top = 0;
                for (int i = 0; i < 32; i++) { float a = fabsf(v[block_value(bits, half, s, i)]); if (a > top) top = a; }
                float inverse = top > 0 ? 127.0f / top : 0;
                for (int i = 0; i < 32; i++) { int at = block_value(bits, half, s, i); q[at] = (int8_t)lrintf(v[at] * inverse); }
                out.scales[((long)r * k + g * group_size) / 32 + s] = top / 127.0f;
            }
        }
    }
}

#if defined(__x86_64__)
#define STRATA_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))
#define STRATA_AVX2_INT8 __attribute__((target("avx2,f16c,fma")))

// The kernels below exist twice: with AVX512-VNNI's `vpdpbusd`, and for CPUs without it with
// AVX2's `vpmaddubsw` (unsigned weight codes times int8 activations into 16-bit pair sums)
// then `vpmaddwd` against ones. For 4-bit codes a pair is at most 2 * 15 * 127 = 3810, so
// nothing saturates and the integer sums are exactly vpdpbusd's; the float steps that follow
// are the same operations, so both give the same bits. 8-bit codes could saturate 16 bits:
// without VNNI they stay on the f32 path (strata_int8_avx2_supports).
#define STRATA_INT8_KERNELS(TARGET, SUFFIX, DOT)                                                                       \
    /* 32 weight codes of sub-block s of a group as unsigned bytes in value order (4-bit: the low */                    \
    /* nibbles are values 16s.., the high ones half + 16s..; 8-bit: 32 consecutive values). */                         \
    TARGET static inline __m256i weight_block_##SUFFIX(const uint8_t *group, int bits, int s) {                        \
        if (bits == 8) return _mm256_loadu_si256((const __m256i *)(group + 32 * s));                                   \
        __m128i packed = _mm_loadu_si128((const __m128i *)(group + 16 * s));                                            \
        __m128i mask = _mm_set1_epi8(0x0F);                                                                              \
        __m128i low = _mm_and_si128(packed, mask), high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);              \
        return _mm256_set_m128i(high, low);                                                                              \
    }                                                                                                                    \
    /* The 32 activation codes matching weight_block. */                                                                 \
    TARGET static inline __m256i activation_block_##SUFFIX(const int8_t *group, int bits, int half, int s) {          \
        if (bits == 8) return _mm256_loadu_si256((const __m256i *)(group + 32 * s));                                   \
        __m128i low = _mm_loadu_si128((const __m128i *)(group + 16 * s));                                               \
        __m128i high = _mm_loadu_si128((const __m128i *)(group + half + 16 * s));                                       \
        return _mm256_set_m128i(high, low);                                                                              \
    }                                                                                                                    \
    /* One tile: weight rows n..n+NR against activation rows r0..r0+MR, every group of k. The tile */                  \
    /* sizes are compile-time constants at each call (always inlined), so the MR x NR accumulators */                  \
    /* live in registers: each weight block is decoded once per tile and each activation block */                      \
    /* loaded once per tile, which is where a one-row loop spends its time. */                                          \
    TARGET __attribute__((always_inline)) static inline void                                                           \
    tile_##SUFFIX(const strata_int8_rows *x, int r0, const int MR, int k, int group_size, int bits,                   \
                  const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int n, const int NR, float *out,  \
                  int ldc, float beta) {                                                                                 \
        int groups = k / group_size, half = group_size / 2;                                                              \
        int bytes_per_group = group_size * bits / 8, blocks = group_size / 32;                                           \
        __m256 acc[4][4];                                                                                                \
        float offset[4][4];                                                                                              \
        for (int r = 0; r < MR; r++)                                                                                     \
            for (int j = 0; j < NR; j++) { acc[r][j] = _mm256_setzero_ps(); offset[r][j] = 0; }                        \
        for (int g = 0; g < groups; g++) {                                                                               \
            float step[4], minimum[4];                                                                                   \
            for (int j = 0; j < NR; j++) {                                                                               \
                long at = (long)(n + j) * groups + g;                                                                    \
                step[j] = _cvtsh_ss(steps[at]);                                                                          \
                minimum[j] = _cvtsh_ss(mins[at]);                                                                        \
                /* The next tile's rows at this group: 1 KiB ahead fell inside this tile for */                      \
                /* rows of up to 1 KiB (Q4_0 at k = 1024), and the code loads waited on memory. */                     \
                _mm_prefetch((const char *)(codes + (at + (long)NR * groups) * bytes_per_group), _MM_HINT_T0);        \
            }                                                                                                            \
            for (int s = 0; s < blocks; s++) {                                                                           \
                __m256i w[4];                                                                                            \
                for (int j = 0; j < NR; j++)                                                                             \
                    w[j] = weight_block_##SUFFIX(codes + ((long)(n + j) * groups + g) * bytes_per_group, bits, s);     \
                for (int r = 0; r < MR; r++) {                                                                           \
                    long row = r0 + r;                                                                                   \
                    __m256i a = activation_block_##SUFFIX(x->codes + row * k + g * group_size, bits, half, s);          \
                    float scale = x->scales[(row * k + g * group_size) / 32 + s];                                       \
                    for (int j = 0; j < NR; j++) {                                                                       \
                        __m256i dot = DOT(w[j], a);                                                                      \
                        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(step[j] * scale), acc[r][j]); \
                    }                                                                                                    \
                }                                                                                                        \
            }                                                                                                            \
            for (int r = 0; r < MR; r++) {                                                                               \
                float sum = x->sums[(r0 + r) * groups + g];                                                              \
                for (int j = 0; j < NR; j++) offset[r][j] += minimum[j] * sum;                                          \
            }                                                                                                            \
        }                                                                                                                \
        for (int r = 0; r < MR; r++)                                                                                     \
            for (int j = 0; j < NR; j++) {                                                                               \
                float v = strata_hsum8(acc[r][j]) + offset[r][j];                                                       \
                float *o = out + (long)(r0 + r) * ldc + n + j;                                                           \
                *o = beta == 0 ? v : beta * *o + v;                                                                      \
            }                                                                                                            \
    }                                                                                                                    \
    TARGET static void rows_##SUFFIX(const strata_int8_rows *x, int r0, const int MR, int k, int group_size, int bits, \
                                     const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int n0, int n1, \
                                     float *out, int ldc, float beta) {                                                  \
        int n = n0;                                                                                                      \
        for (; n + 4 <= n1; n += 4) tile_##SUFFIX(x, r0, MR, k, group_size, bits, codes, steps, mins, n, 4, out, ldc, beta); \
        for (; n < n1; n++) tile_##SUFFIX(x, r0, MR, k, group_size, bits, codes, steps, mins, n, 1, out, ldc, beta);   \
    }                                                                                                                    \
    TARGET static void gemm_##SUFFIX(const strata_int8_rows *x, int rows, int k, int group_size, int bits,             \
                                     const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int n0, int n1, \
                                     float *out, int ldc, float beta) {                                                  \
        for (int r0 = 0; r0 < rows; r0 += 4) {                                                                           \
            switch (rows - r0 < 4 ? rows - r0 : 4) {                                                                     \
            case 1: rows_##SUFFIX(x, r0, 1, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;    \
            case 2: rows_##SUFFIX(x, r0, 2, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;    \
            case 3: rows_##SUFFIX(x, r0, 3, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;    \
            default: rows_##SUFFIX(x, r0, 4, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;   \
            }                                                                                                            \
        }                                                                                                                \
    }

#define STRATA_DOT_VNNI(w, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (w), (a))
#define STRATA_DOT_AVX2(w, a) _mm256_madd_epi16(_mm256_maddubs_epi16((w), (a)), _mm256_set1_epi16(1))
STRATA_INT8_KERNELS(STRATA_VNNI, vnni, STRATA_DOT_VNNI)
STRATA_INT8_KERNELS(STRATA_AVX2_INT8, avx2, STRATA_DOT_AVX2)
#endif

int strata_int8_avx2_supports(int bits) {
#if defined(__x86_64__)
    return bits == 4;
#else
    (void)bits;
    return 0;
#endif
}

void strata_int8_gemm(const strata_int8_rows *x, int rows, int k, int group_size, int bits,
                      const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                      int n0, int n1, float *out, int ldc, float beta, int vnni) {
#if defined(__x86_64__)
    if (vnni) gemm_vnni(x, rows, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta);
    else gemm_avx2(x, rows, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta);
#else
    (void)x; (void)rows; (void)k; (void)group_size; (void)bits; (void)codes; (void)steps; (void)mins;
    (void)n0; (void)n1; (void)out; (void)ldc; (void)beta; (void)vnni;
#endif
}
