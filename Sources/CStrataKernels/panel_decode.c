// Group-quantized weight rows decoded straight into oneDNN's bf16 panel layout (BA16a64b2a, see
// PanelLayout in Tensor.swift), so that a quantized checkpoint run with `--weight-format bf16`
// multiplies on the matrix units from a few L2-sized panels at a time instead of through the
// f32 fused kernel. AVX-512 with BF16, chosen at run time like int8_gemm.c: the binary's
// baseline is Haswell.
#include "strata_panels.h"
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define STRATA_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))
#endif

// Each value is code * step + minimum in f32 (a multiply, then an add: what
// GroupQuantizer.dequantizeGroup computes) and then rounded to bf16, nearest even, so the
// panels hold exactly what decoding to f32 and rounding would.
#pragma STDC FP_CONTRACT OFF

int strata_panels_supported(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    unsigned a1, b1, c1, d1;
    if (!__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) return 0;
    int bf16 = (a1 >> 5) & 1;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    int os = (lo & 0xE6) == 0xE6;
    return avx512f && avx512bw && avx512vl && bf16 && os;
#else
    return 0;
#endif
}

#if defined(__x86_64__)
// 32 bf16 values (16 pairs of consecutive k) of block `block` of row `row`.
STRATA_AVX512BF16
static inline __m512i decode_block(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits,
                                   int group_size, long groups_per_row, long row, int block) {
    int blocks_per_group = group_size / 32;
    long group = row * groups_per_row + block / blocks_per_group;
    int s = block % blocks_per_group;
    __m512 step = _mm512_set1_ps(_cvtsh_ss(steps[group])), minimum = _mm512_set1_ps(_cvtsh_ss(mins[group]));
    __m512i low, high;
    if (bits == 8) {
        const uint8_t *p = codes + group * group_size + 32 * s;
        low = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
        high = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
    } else {
        // Byte j of a group holds value j (low nibble) and value j + group_size / 2 (high).
        const uint8_t *bytes = codes + group * (group_size / 2);
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
STRATA_AVX512BF16
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

STRATA_AVX512BF16
static void decode_panels(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                          int k, long n0, long n1, uint16_t *panels) {
    long groups_per_row = k / group_size, rows = n1 - n0;
    int blocks = k / 32;
    long panel_words = (long)blocks * 16 * 64;  // u32 words (k pairs) per 64-row panel
    uint32_t *out = (uint32_t *)panels;
    long padded = (rows + 63) / 64 * 64;  // rows past n1 in the last panel are zeros
    for (long first = 0; first < padded; first += 16) {
        uint32_t *panel = out + (first / 64) * panel_words + (first % 64);
        for (int block = 0; block < blocks; block++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                long row = first + i;
                r[i] = row < rows ? decode_block(codes, steps, mins, bits, group_size, groups_per_row, n0 + row, block)
                                  : _mm512_setzero_si512();
            }
            transpose16(r);
            uint32_t *destination = panel + (long)block * 16 * 64;
            for (int j = 0; j < 16; j++) _mm512_storeu_si512((void *)(destination + j * 64), r[j]);
        }
    }
}
#endif

void strata_decode_panels_bf16(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                               int k, long n0, long n1, uint16_t *panels) {
#if defined(__x86_64__)
    decode_panels(codes, steps, mins, bits, group_size, k, n0, n1, panels);
#else
    (void)codes; (void)steps; (void)mins; (void)bits; (void)group_size; (void)k; (void)n0; (void)n1; (void)panels;
#endif
}
