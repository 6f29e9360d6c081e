// Integer dot-product kernels for group-quantized weights (AVX512-VNNI), chosen at run time:
// the rest of Strata targets Haswell, so these functions carry their own target attributes
// and run only where strata_int8_supported() says the CPU has the instructions.
#include "strata_int8.h"
#include "cpu_features.h"
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

STRATA_VNNI static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

STRATA_VNNI static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// 32 weight codes of sub-block s of a group as unsigned bytes in value order, and the 32
/// matching activation codes (4-bit: the low nibbles are values 16s.., the high ones
/// half + 16s..; 8-bit: 32 consecutive values).
STRATA_VNNI static inline __m256i weight_block(const uint8_t *group, int bits, int half, int s) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i *)(group + 32 * s));
    __m128i packed = _mm_loadu_si128((const __m128i *)(group + 16 * s));
    __m128i mask = _mm_set1_epi8(0x0F);
    __m128i low = _mm_and_si128(packed, mask), high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    (void)half;
    return _mm256_set_m128i(high, low);
}

STRATA_VNNI static inline __m256i activation_block(const int8_t *group, int bits, int half, int s) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i *)(group + 32 * s));
    __m128i low = _mm_loadu_si128((const __m128i *)(group + 16 * s));
    __m128i high = _mm_loadu_si128((const __m128i *)(group + half + 16 * s));
    return _mm256_set_m128i(high, low);
}

/// One tile: weight rows n..n+NR against activation rows r0..r0+MR, every group of k. The tile
/// sizes are compile-time constants at each call (always inlined), so the MR x NR accumulators
/// live in registers: each weight block is decoded once per tile and each activation block
/// loaded once per tile, which is where a one-row loop spends its time.
STRATA_VNNI __attribute__((always_inline)) static inline void
tile(const strata_int8_rows *x, int r0, const int MR, int k, int group_size, int bits,
     const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int n, const int NR, float *out, int ldc, float beta) {
    int groups = k / group_size, half = group_size / 2;
    int bytes_per_group = group_size * bits / 8, blocks = group_size / 32;
    __m256 acc[4][4];
    float offset[4][4];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) { acc[r][j] = _mm256_setzero_ps(); offset[r][j] = 0; }
    for (int g = 0; g < groups; g++) {
        float step[4], minimum[4];
        for (int j = 0; j < NR; j++) {
            long at = (long)(n + j) * groups + g;
            step[j] = f16(steps[at]);
            minimum[j] = f16(mins[at]);
            _mm_prefetch((const char *)(codes + at * bytes_per_group + 1024), _MM_HINT_T0);
        }
        for (int s = 0; s < blocks; s++) {
            __m256i w[4];
            for (int j = 0; j < NR; j++) w[j] = weight_block(codes + ((long)(n + j) * groups + g) * bytes_per_group, bits, half, s);
            for (int r = 0; r < MR; r++) {
                long row = r0 + r;
                __m256i a = activation_block(x->codes + row * k + g * group_size, bits, half, s);
                float scale = x->scales[(row * k + g * group_size) / 32 + s];
                for (int j = 0; j < NR; j++) {
                    __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w[j], a);
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(step[j] * scale), acc[r][j]);
                }
            }
        }
        for (int r = 0; r < MR; r++) {
            float sum = x->sums[(r0 + r) * groups + g];
            for (int j = 0; j < NR; j++) offset[r][j] += minimum[j] * sum;
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float v = hsum(acc[r][j]) + offset[r][j];
            float *o = out + (long)(r0 + r) * ldc + n + j;
            *o = beta == 0 ? v : beta * *o + v;
        }
}

#define STRATA_TILE_ROWS(MR_) \
    STRATA_VNNI static void rows_##MR_(const strata_int8_rows *x, int r0, int k, int group_size, int bits, const uint8_t *codes, \
                                       const uint16_t *steps, const uint16_t *mins, int n0, int n1, float *out, int ldc, float beta) { \
        int n = n0; \
        for (; n + 4 <= n1; n += 4) tile(x, r0, MR_, k, group_size, bits, codes, steps, mins, n, 4, out, ldc, beta); \
        for (; n < n1; n++) tile(x, r0, MR_, k, group_size, bits, codes, steps, mins, n, 1, out, ldc, beta); \
    }
STRATA_TILE_ROWS(1)
STRATA_TILE_ROWS(2)
STRATA_TILE_ROWS(3)
STRATA_TILE_ROWS(4)

STRATA_VNNI static void gemm_vnni(const strata_int8_rows *x, int rows, int k, int group_size, int bits,
                                  const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                                  int n0, int n1, float *out, int ldc, float beta) {
    for (int r0 = 0; r0 < rows; r0 += 4) {
        switch (rows - r0 < 4 ? rows - r0 : 4) {
        case 1: rows_1(x, r0, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;
        case 2: rows_2(x, r0, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;
        case 3: rows_3(x, r0, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;
        default: rows_4(x, r0, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta); break;
        }
    }
}
#endif

void strata_int8_gemm(const strata_int8_rows *x, int rows, int k, int group_size, int bits,
                      const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                      int n0, int n1, float *out, int ldc, float beta) {
#if defined(__x86_64__)
    gemm_vnni(x, rows, k, group_size, bits, codes, steps, mins, n0, n1, out, ldc, beta);
#endif
}
