// Group-quantized weights under `--weight-format bf16`, decoded to bf16 as they are used: rows
// straight into oneDNN's panel layout (BA16a64b2a, see PanelLayout in Tensor.swift), so the
// matrix units multiply a few L2-sized panels at a time, and, for decode steps of a few rows,
// blocks straight into AVX512-BF16 dot products. AVX-512 with BF16, chosen at run time like
// int8_gemm.c: the binary's baseline is Haswell.
#include "strata_panels.h"
#include "cpu_features.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))
#endif

// Each value is code * step + minimum in f32 (a multiply, then an add: what
// GroupQuantizer.dequantizeGroup computes) and then rounded to bf16, nearest even, so the
// panels hold exactly what decoding to f32 and rounding would.
#pragma STDC FP_CONTRACT OFF

int strata_panels_supported(void) {
#if defined(__x86_64__)
    unsigned ecx = 0, a, b, c, d;
    if (!strata_avx512_base(&ecx) || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1;  // AVX512-BF16: CPUID leaf 7 subleaf 1, eax bit 5
#else
    return 0;
#endif
}

#if defined(__x86_64__)
// 32 bf16 values (16 pairs of consecutive k) of block `s` of one group: `bytes` its codes,
// `step` and `minimum` its f16 scale and offset.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline __m512i decode_block(const uint8_t *bytes, float step32, float minimum32, int bits, int group_size, int s) {
    __m512 step = _mm512_set1_ps(step32), minimum = _mm512_set1_ps(minimum32);
    __m512i low, high;
    if (bits == 8) {
        const uint8_t *p = bytes + 32 * s;
        low = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
        high = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
    } else {
        // Byte j of a group holds value j (low nibble) and value j + group_size / 2 (high).
        int half = group_size / 2;
        const __m128i nibble = _mm_set1_epi8(0x0F);
        if (group_size == 32) {
            __m128i x = _mm_loadu_si128((const __m128i *)bytes);
            low = _mm512_cvtepu8_epi32(_mm_and_si128(x, nibble));
            high = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(x, 4), nibble));
        } else {
            int first = 32 * s, shift = first < half ? 0 : 4;
            const uint8_t *p = bytes + (first < half ? first : first - half);
            __m128i a = _mm_loadu_si128((const __m128i *)p), b = _mm_loadu_si128((const __m128i *)(p + 16));
            low = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(a, shift), nibble));
            high = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, shift), nibble));
        }
    }
    __m512 vlow = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(low), step), minimum);
    __m512 vhigh = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(high), step), minimum);
    // Low 16 results from the second operand: values 0-15 first, as consecutive k pairs.
    return (__m512i)_mm512_cvtne2ps_pbh(vhigh, vlow);
}

// r[i] holds 16 words of row i; afterwards r[j] holds word j of rows 0..15.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline void transpose16(__m512i r[16]) {
    __m512i a[16], b[16];
    for (int j = 0; j < 8; j++) {
        a[2 * j] = _mm512_unpacklo_epi32(r[2 * j], r[2 * j + 1]);
        a[2 * j + 1] = _mm512_unpackhi_epi32(r[2 * j], r[2 * j + 1]);
    }
    for (int j = 0; j < 4; j++) {
        b[4 * j] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
        b[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
    }
    // b[4j + c], 128-bit lane l: word 4l + c of rows 4j..4j+3.
    for (int c = 0; c < 4; c++) {
        __m512i s0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), s1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
        __m512i s2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), s3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
        r[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
    }
}

STRATA_AVX512BF16 __attribute__((always_inline))
static inline void decode_panels(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                          int k, long n0, long n1, uint16_t *panels) {
    long groups_per_row = k / group_size, rows = n1 - n0, group_bytes = (long)group_size * bits / 8;
    int blocks = k / 32, blocks_per_group = group_size / 32;
    long panel_words = (long)blocks * 16 * 64;  // u32 words (k pairs) per 64-row panel
    uint32_t *out = (uint32_t *)panels;
    long padded = (rows + 63) / 64 * 64;  // rows past n1 in the last panel are zeros
    for (long first = 0; first < padded; first += 16) {
        uint32_t *panel = out + (first / 64) * panel_words + (first % 64);
        long live = rows - first < 0 ? 0 : (rows - first > 16 ? 16 : rows - first);
        if (live == 0) {
            for (int block = 0; block < blocks; block++)
                for (int j = 0; j < 16; j++) _mm512_storeu_si512((void *)(panel + (long)block * 1024 + j * 64), _mm512_setzero_si512());
            continue;
        }
        // Sixteen rows side by side (a missing row repeats the last one and is zeroed below).
        const uint8_t *row_codes[16];
        const uint16_t *row_steps[16], *row_mins[16];
        for (int i = 0; i < 16; i++) {
            long row = n0 + first + (i < live ? i : live - 1);
            row_codes[i] = codes + row * groups_per_row * group_bytes;
            row_steps[i] = steps + row * groups_per_row;
            row_mins[i] = mins + row * groups_per_row;
        }
        // Steps and minimums of 16 rows by up to 64 groups, widened to f32 16 at a time: per block
        // they are then broadcast from memory (a load) instead of converted one by one on the
        // shuffle port that the decode and the transpose already keep busy.
        float step_tile[16][64], min_tile[16][64];
        long tile_first = -64;
        for (int block = 0; block < blocks; block++) {
            int g = block / blocks_per_group, s = block % blocks_per_group;
            if (g >= tile_first + 64) {
                tile_first = g;
                long count = groups_per_row - g < 64 ? groups_per_row - g : 64;
                for (int i = 0; i < 16; i++) {
                    long c = 0;
                    for (; c + 16 <= count; c += 16) {
                        _mm512_storeu_ps(step_tile[i] + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row_steps[i] + g + c))));
                        _mm512_storeu_ps(min_tile[i] + c, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row_mins[i] + g + c))));
                    }
                    for (; c < count; c++) {
                        step_tile[i][c] = _cvtsh_ss(row_steps[i][g + c]);
                        min_tile[i][c] = _cvtsh_ss(row_mins[i][g + c]);
                    }
                }
            }
            long t = g - tile_first;
            __m512i r[16];
#pragma clang loop unroll(full)
            for (int i = 0; i < 16; i++) r[i] = decode_block(row_codes[i] + g * group_bytes, step_tile[i][t], min_tile[i][t], bits, group_size, s);
            for (long i = live; i < 16; i++) r[i] = _mm512_setzero_si512();
            transpose16(r);
            uint32_t *destination = panel + (long)block * 16 * 64;
#pragma clang loop unroll(full)
            for (int j = 0; j < 16; j++) _mm512_storeu_si512((void *)(destination + j * 64), r[j]);
        }
    }
}

// Decode steps: out[r, n] = bias[n] + sum_k a[r, k] * w[n, k] for up to 16 rows at a time, with
// `vdpbf16ps` dot products along k. Each weight block is decoded once per 16 rows and never
// reordered (both operands keep k order), so the work per weight is a decode and 16 / 32 of an
// instruction per row, where the panel path also transposes every block for the matrix units.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline void dot_rows(const uint16_t *a, const int rows, int k, const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                            int bits, int group_size, long n0, long n1, const float *bias, float *out, long ldc) {
    long groups_per_row = k / group_size, group_bytes = (long)group_size * bits / 8;
    int blocks = k / 32, blocks_per_group = group_size / 32;
    for (long n = n0; n < n1; n++) {
        const uint8_t *row_codes = codes + n * groups_per_row * group_bytes;
        const uint16_t *row_steps = steps + n * groups_per_row, *row_mins = mins + n * groups_per_row;
        __m512 acc[16];
#pragma clang loop unroll(full)
        for (int i = 0; i < rows; i++) acc[i] = _mm512_setzero_ps();
        for (int block = 0; block < blocks; block++) {
            int g = block / blocks_per_group, s = block % blocks_per_group;
            __m512bh w = (__m512bh)decode_block(row_codes + g * group_bytes, _cvtsh_ss(row_steps[g]), _cvtsh_ss(row_mins[g]), bits,
                                                group_size, s);
#pragma clang loop unroll(full)
            for (int i = 0; i < rows; i++)
                acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512((const void *)(a + (long)i * k + block * 32)), w);
        }
        float b = bias ? bias[n] : 0.0f;
#pragma clang loop unroll(full)
        for (int i = 0; i < rows; i++) out[(long)i * ldc + n] = _mm512_reduce_add_ps(acc[i]) + b;
    }
}

// A fixed row count per copy keeps the accumulators in registers; any count is a sum of them.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline void dot_layout(const uint16_t *a, int rows, int k, const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                              int bits, int group_size, long n0, long n1, const float *bias, float *out, long ldc) {
    int first = 0;
    for (; first + 16 <= rows; first += 16)
        dot_rows(a + (long)first * k, 16, k, codes, steps, mins, bits, group_size, n0, n1, bias, out + (long)first * ldc, ldc);
    for (int chunk = 8; chunk >= 1; chunk /= 2) {
        if (rows - first < chunk) continue;
        const uint16_t *x = a + (long)first * k;
        float *o = out + (long)first * ldc;
        if (chunk == 8) dot_rows(x, 8, k, codes, steps, mins, bits, group_size, n0, n1, bias, o, ldc);
        else if (chunk == 4) dot_rows(x, 4, k, codes, steps, mins, bits, group_size, n0, n1, bias, o, ldc);
        else if (chunk == 2) dot_rows(x, 2, k, codes, steps, mins, bits, group_size, n0, n1, bias, o, ldc);
        else dot_rows(x, 1, k, codes, steps, mins, bits, group_size, n0, n1, bias, o, ldc);
        first += chunk;
    }
}

STRATA_AVX512BF16
static void dot_dispatch(const uint16_t *a, int rows, int k, const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                         int bits, int group_size, long n0, long n1, const float *bias, float *out, long ldc) {
    if (bits == 4 && group_size == 32) dot_layout(a, rows, k, codes, steps, mins, 4, 32, n0, n1, bias, out, ldc);
    else if (bits == 8 && group_size == 32) dot_layout(a, rows, k, codes, steps, mins, 8, 32, n0, n1, bias, out, ldc);
    else if (bits == 8) dot_layout(a, rows, k, codes, steps, mins, 8, group_size, n0, n1, bias, out, ldc);
    else dot_layout(a, rows, k, codes, steps, mins, 4, group_size, n0, n1, bias, out, ldc);
}

// One copy of the loop per common layout, so the per-block branches on bits and group size
// fold away (GGUF's Q4_0 and Q8_0 are groups of 32).
STRATA_AVX512BF16
static void decode_dispatch(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                            int k, long n0, long n1, uint16_t *panels) {
    if (bits == 4 && group_size == 32) decode_panels(codes, steps, mins, 4, 32, k, n0, n1, panels);
    else if (bits == 8 && group_size == 32) decode_panels(codes, steps, mins, 8, 32, k, n0, n1, panels);
    else if (bits == 8) decode_panels(codes, steps, mins, 8, group_size, k, n0, n1, panels);
    else decode_panels(codes, steps, mins, 4, group_size, k, n0, n1, panels);
}
#endif

void strata_decode_panels_bf16(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                               int k, long n0, long n1, uint16_t *panels) {
#if defined(__x86_64__)
    decode_dispatch(codes, steps, mins, bits, group_size, k, n0, n1, panels);
#else
    (void)codes; (void)steps; (void)mins; (void)bits; (void)group_size; (void)k; (void)n0; (void)n1; (void)panels;
#endif
}

void strata_quantized_dot_bf16(const uint16_t *a, int rows, int k, const uint8_t *codes, const uint16_t *steps,
                               const uint16_t *mins, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                               long ldc) {
#if defined(__x86_64__)
    dot_dispatch(a, rows, k, codes, steps, mins, bits, group_size, n0, n1, bias, out, ldc);
#else
    (void)a; (void)rows; (void)k; (void)codes; (void)steps; (void)mins; (void)bits; (void)group_size; (void)n0; (void)n1;
    (void)bias; (void)out; (void)ldc;
#endif
}
