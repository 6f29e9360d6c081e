// Group-quantized weights under `--weight-format bf16`, decoded to bf16 as they are used: rows
// straight into oneDNN's panel layout (BA16a64b2a, see PanelLayout in Tensor.swift), so the
// matrix units multiply a few L2-sized panels at a time; for decode steps of a few rows the
// codes enter AVX512-BF16 dot products as they are (exact bf16 numbers) instead. AVX-512 with
// BF16, chosen at run time like int8_gemm.c: the binary's baseline is Haswell.
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
// values 0-15 scaled by `step_low` and `min_low`, 16-31 by the high pair (the same group's
// unless groups are 16 values, 8-bit only, when a block holds two groups).
STRATA_AVX512BF16 __attribute__((always_inline))
static inline __m512i decode_block(const uint8_t *bytes, float step_low, float min_low, float step_high, float min_high, int bits,
                                   int group_size, int s) {
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
    __m512 vlow = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(low), _mm512_set1_ps(step_low)), _mm512_set1_ps(min_low));
    __m512 vhigh = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(high), _mm512_set1_ps(step_high)), _mm512_set1_ps(min_high));
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
    // A block is 32 k values: part of a group, one group, or two groups of 16.
    int blocks = k / 32, blocks_per_group = group_size >= 32 ? group_size / 32 : 1, pairs = group_size == 16;
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
            int g = pairs ? 2 * block : block / blocks_per_group, s = pairs ? 0 : block % blocks_per_group, high = g + pairs;
            if (high >= tile_first + 64) {
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
            long t = g - tile_first, u = t + pairs;
            __m512i r[16];
#pragma clang loop unroll(full)
            for (int i = 0; i < 16; i++)
                r[i] = decode_block(row_codes[i] + g * group_bytes, step_tile[i][t], min_tile[i][t], step_tile[i][u], min_tile[i][u], bits,
                                    group_size, s);
            for (long i = live; i < 16; i++) r[i] = _mm512_setzero_si512();
            transpose16(r);
            uint32_t *destination = panel + (long)block * 16 * 64;
#pragma clang loop unroll(full)
            for (int j = 0; j < 16; j++) _mm512_storeu_si512((void *)(destination + j * 64), r[j]);
        }
    }
}

// Decode steps: out[r, n] = bias[n] + sum_k a[r, k] * w[n, k] for a few rows, with `vdpbf16ps`
// dot products along k against the codes themselves. A code c (0-15) with 0x4300 in its upper
// bits is the bf16 number 128 + c exactly (exponent 2^7, c in the mantissa), so a block costs a
// widening, a shift, one ternary-logic op and one dot product per row, where decoding to
// c * step + min costs two conversions, a multiply, an add and a rounding per 16 values. An
// 8-bit code (0-255) is converted to bf16 as a whole number, which bf16 holds exactly, and its
// one conversion per block serves every row. With the f32 sums of a's groups, sx_g:
//   sum_k a w = sum_g step_g (D_g - offset sx_g) + min_g sx_g,   D_g = sum (offset + c) a,
// offset 128 (4-bit) or 0 (8-bit). The weights enter exactly
// (not rounded to bf16 as in the panels); the subtraction costs a few bits of f32, far below
// the activations' bf16 rounding.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline __m512i nibbles_as_bf16(__m512i words, __m512i shifts) {
    // (words >> shift) & 0xF | 0x4300 (ternary logic: A & B | C).
    return _mm512_ternarylogic_epi32(_mm512_srlv_epi16(words, shifts), _mm512_set1_epi16(0x0F), _mm512_set1_epi16(0x4300), 0xEA);
}

// d[i] = sum over group g of (offset + c) a[i] for `rows` rows (see above).
STRATA_AVX512BF16 __attribute__((always_inline))
static inline void group_products(const uint16_t *a, const int rows, int k, const uint8_t *group_codes, int bits, int group_size,
                                  long g, __m512 d[8]) {
    // Q4_0-style groups of 32: 16 bytes hold values 0-15 (low nibbles) and 16-31 (high).
    const __m512i split = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i none = _mm512_setzero_si512(), four = _mm512_set1_epi16(4);
    int blocks_per_group = group_size / 32, half = group_size / 2;
#pragma clang loop unroll(full)
    for (int i = 0; i < rows; i++) d[i] = _mm512_setzero_ps();
    for (int s = 0; s < blocks_per_group; s++) {
        const uint16_t *x = a + g * group_size + s * 32;
        __m512i codes_bf16;
        if (bits == 8) {
            const uint8_t *p = group_codes + 32 * s;
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
            codes_bf16 = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        } else if (group_size == 32) {
            __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)group_codes));
            codes_bf16 = nibbles_as_bf16(_mm512_cvtepu8_epi16(both), split);
        } else {
            int first = 32 * s;
            const uint8_t *p = group_codes + (first < half ? first : first - half);
            __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
            codes_bf16 = nibbles_as_bf16(words, first < half ? none : four);
        }
#pragma clang loop unroll(full)
        for (int i = 0; i < rows; i++)
            d[i] = _mm512_dpbf16_ps(d[i], (__m512bh)codes_bf16, (__m512bh)_mm512_loadu_si512((const void *)(x + (long)i * k)));
    }
}

STRATA_AVX512BF16 __attribute__((always_inline))
static inline void dot_rows(const uint16_t *a, const int rows, int k, const float *sums, const uint8_t *codes, const uint16_t *steps,
                            const uint16_t *mins, int zero, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                            long ldc) {
    long groups = k / group_size, group_bytes = (long)group_size * bits / 8;
    const float offset = bits == 8 ? 0.0f : 128.0f;
    // Each group's step is applied with a multiply-add into a running sum; with few rows those
    // sums are too few to hide the multiply-add's latency (4 cycles, more than a Q4_0 block's
    // work), so groups rotate over `lanes` sums per row.
    const int lanes = rows <= 2 ? 4 : rows <= 4 ? 2 : 1;
    // 8-bit groups of 16 (a GGUF Q6_K head) go two to a 32-value dot product: its lanes 0-7
    // sum the first group's pairs and 8-15 the second's, so the step vector holds both steps.
    const int per = group_size == 16 ? 2 : 1, unit = group_size * per;
    const __m512i pair_lanes = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(1), 1);
    // Symmetric groups (min = -zero * step: Q4_0, Q8_0, Q6_K) need no minimums from memory.
    const float constant_factor = -(float)zero - offset;
    const long prefetch_bytes = 4096;
    for (long n = n0; n < n1; n++) {
        const uint8_t *row_codes = codes + n * groups * group_bytes;
        const uint16_t *row_steps = steps + n * groups, *row_mins = mins + n * groups;
        __m512 total[8][4], minimums[8];
#pragma clang loop unroll(full)
        for (int i = 0; i < rows; i++) {
            minimums[i] = _mm512_setzero_ps();
#pragma clang loop unroll(full)
            for (int u = 0; u < lanes; u++) total[i][u] = _mm512_setzero_ps();
        }
        for (long g0 = 0; g0 < groups; g0 += 16) {
            // 16 groups' steps widened at once, broadcast per group from memory; their
            // minimum terms (min - offset step) sx as 16-lane products.
            long count = groups - g0 < 16 ? groups - g0 : 16;
            __mmask16 live = count == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1);
            __m512 step16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, row_steps + g0));
            __m512 constant;
            if (zero >= 0) {
                constant = _mm512_mul_ps(step16, _mm512_set1_ps(constant_factor));
            } else {
                __m512 min16 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, row_mins + g0));
                constant = _mm512_fnmadd_ps(step16, _mm512_set1_ps(offset), min16);
            }
#pragma clang loop unroll(full)
            for (int i = 0; i < rows; i++)
                minimums[i] = _mm512_fmadd_ps(constant, _mm512_maskz_loadu_ps(live, sums + (long)i * groups + g0), minimums[i]);
            float step_tile[16];
            _mm512_storeu_ps(step_tile, step16);
            // The code stream runs ahead of the loads: a few rows' codes are read per
            // microsecond, too fast for the hardware prefetcher alone (the widening of each
            // block waited on its load).
            const char *ahead = (const char *)(row_codes + g0 * group_bytes) + prefetch_bytes;
            for (long line = 0; line < count * group_bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
            long t = 0;
            for (; t + lanes * per <= count; t += lanes * per) {
#pragma clang loop unroll(full)
                for (int u = 0; u < lanes; u++) {
                    long g = g0 + t + u * per;
                    __m512 d[8];
                    group_products(a, rows, k, row_codes + g * group_bytes, bits, unit, g / per, d);
                    __m512 step = per == 2 ? _mm512_permutexvar_ps(_mm512_add_epi32(pair_lanes, _mm512_set1_epi32((int)(t + u * per))), step16)
                                           : _mm512_set1_ps(step_tile[t + u]);
#pragma clang loop unroll(full)
                    for (int i = 0; i < rows; i++) total[i][u] = _mm512_fmadd_ps(d[i], step, total[i][u]);
                }
            }
            for (; t < count; t += per) {
                long g = g0 + t;
                __m512 d[8];
                group_products(a, rows, k, row_codes + g * group_bytes, bits, unit, g / per, d);
                __m512 step = per == 2 ? _mm512_permutexvar_ps(_mm512_add_epi32(pair_lanes, _mm512_set1_epi32((int)t)), step16)
                                       : _mm512_set1_ps(step_tile[t]);
#pragma clang loop unroll(full)
                for (int i = 0; i < rows; i++) total[i][0] = _mm512_fmadd_ps(d[i], step, total[i][0]);
            }
        }
        float b = bias ? bias[n] : 0.0f;
#pragma clang loop unroll(full)
        for (int i = 0; i < rows; i++) {
            __m512 sum = minimums[i];
#pragma clang loop unroll(full)
            for (int u = 0; u < lanes; u++) sum = _mm512_add_ps(sum, total[i][u]);
            out[(long)i * ldc + n] = _mm512_reduce_add_ps(sum) + b;
        }
    }
}

// A fixed row count per copy keeps the accumulators in registers; any count is a sum of them.
STRATA_AVX512BF16 __attribute__((always_inline))
static inline void dot_layout(const uint16_t *a, int rows, int k, const float *sums, const uint8_t *codes, const uint16_t *steps,
                              const uint16_t *mins, int zero, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                              long ldc) {
    int first = 0;
    long groups = k / group_size;
    for (int chunk = 8; chunk >= 1; chunk /= 2) {
        while (rows - first >= chunk) {
            const uint16_t *x = a + (long)first * k;
            const float *sx = sums + (long)first * groups;
            float *o = out + (long)first * ldc;
            if (chunk == 8) dot_rows(x, 8, k, sx, codes, steps, mins, zero, bits, group_size, n0, n1, bias, o, ldc);
            else if (chunk == 4) dot_rows(x, 4, k, sx, codes, steps, mins, zero, bits, group_size, n0, n1, bias, o, ldc);
            else if (chunk == 2) dot_rows(x, 2, k, sx, codes, steps, mins, zero, bits, group_size, n0, n1, bias, o, ldc);
            else dot_rows(x, 1, k, sx, codes, steps, mins, zero, bits, group_size, n0, n1, bias, o, ldc);
            first += chunk;
        }
    }
}

STRATA_AVX512BF16
static void dot_dispatch(const uint16_t *a, int rows, int k, const float *sums, const uint8_t *codes, const uint16_t *steps,
                         const uint16_t *mins, int zero, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                         long ldc) {
    if (bits == 4 && group_size == 32) dot_layout(a, rows, k, sums, codes, steps, mins, zero, 4, 32, n0, n1, bias, out, ldc);
    else if (bits == 8 && group_size == 32) dot_layout(a, rows, k, sums, codes, steps, mins, zero, 8, 32, n0, n1, bias, out, ldc);
    else if (bits == 8 && group_size == 16) dot_layout(a, rows, k, sums, codes, steps, mins, zero, 8, 16, n0, n1, bias, out, ldc);
    else if (bits == 8) dot_layout(a, rows, k, sums, codes, steps, mins, zero, 8, group_size, n0, n1, bias, out, ldc);
    else dot_layout(a, rows, k, sums, codes, steps, mins, zero, 4, group_size, n0, n1, bias, out, ldc);
}

STRATA_AVX512BF16
static void group_sums(const uint16_t *a, int rows, int k, int group_size, float *sums) {
    long groups = k / group_size;
    for (int r = 0; r < rows; r++)
        for (long g = 0; g < groups; g++) {
            __m512 acc = _mm512_setzero_ps();
            for (int j = 0; j < group_size; j += 16) {
                __m256i h = _mm256_loadu_si256((const __m256i *)(a + (long)r * k + g * group_size + j));
                acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
            }
            sums[r * groups + g] = _mm512_reduce_add_ps(acc);
        }
}

// One copy of the loop per common layout, so the per-block branches on bits and group size
// fold away (GGUF's Q4_0 and Q8_0 are groups of 32).
STRATA_AVX512BF16
static void decode_dispatch(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                            int k, long n0, long n1, uint16_t *panels) {
    if (bits == 4 && group_size == 32) decode_panels(codes, steps, mins, 4, 32, k, n0, n1, panels);
    else if (bits == 8 && group_size == 32) decode_panels(codes, steps, mins, 8, 32, k, n0, n1, panels);
    else if (bits == 8 && group_size == 16) decode_panels(codes, steps, mins, 8, 16, k, n0, n1, panels);
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

void strata_bf16_group_sums(const uint16_t *a, int rows, int k, int group_size, float *sums) {
#if defined(__x86_64__)
    group_sums(a, rows, k, group_size, sums);
#else
    (void)a; (void)rows; (void)k; (void)group_size; (void)sums;
#endif
}

void strata_quantized_dot_bf16(const uint16_t *a, int rows, int k, const float *sums, const uint8_t *codes, const uint16_t *steps,
                               const uint16_t *mins, int zero, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                               long ldc) {
#if defined(__x86_64__)
    dot_dispatch(a, rows, k, sums, codes, steps, mins, zero, bits, group_size, n0, n1, bias, out, ldc);
#else
    (void)a; (void)rows; (void)k; (void)sums; (void)codes; (void)steps; (void)mins; (void)zero; (void)bits; (void)group_size; (void)n0;
    (void)n1; (void)bias; (void)out; (void)ldc;
#endif
}
