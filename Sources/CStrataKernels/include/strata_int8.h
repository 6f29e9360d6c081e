#ifndef STRATA_INT8_H
#define STRATA_INT8_H
#include <stdint.h>

/// Activations quantized for the int8 dot-product kernels: int8 codes q with one scale per
/// block of 32 values that one weight-code load meets (x ~ scale * q; for 4-bit weights a
/// block is the 16 values of a group's low nibbles and the 16 of its high nibbles that share
/// those bytes), and the exact f32 sum of each weight group's values (for the groups' minimums).
typedef struct {
    int8_t *codes;     // rows * k
    float *scales;     // rows * k / 32
    float *sums;       // rows * k / group_size
} strata_int8_rows;

/// Whether this CPU runs the AVX512-VNNI kernels (AVX512F, BW, VL and VNNI).
int strata_int8_supported(void);

/// Quantizes `rows` rows of `k` floats (row stride `ldx`) for weights of `bits` (4 or 8) in
/// groups of `group_size` (a multiple of 32 dividing k).
void strata_int8_quantize_rows(const float *x, int rows, int k, int ldx, int group_size, int bits, strata_int8_rows out);

/// out[r, n] = beta * out[r, n] + sum_k x[r, k] * w[n, k] for weight rows n in [n0, n1) of a
/// group-quantized weight (groups along k, `bits` 4 or 8, codes then f16 steps and mins as
/// Strata lays them out: w = min + code * step; 4-bit byte j of a group holds values j and
/// j + group_size / 2). rows <= 16. `vnni` nonzero: AVX512-VNNI (strata_int8_supported);
/// zero: AVX2, 4-bit codes only (strata_int8_avx2_supports), the same results bit for bit.
void strata_int8_gemm(const strata_int8_rows *x, int rows, int k, int group_size, int bits,
                      const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                      int n0, int n1, float *out, int ldc, float beta, int vnni);

/// Whether strata_int8_gemm's AVX2 form serves weights of `bits`: 4 (an 8-bit code times an
/// int8 activation could saturate vpmaddubsw's 16-bit pair sums).
int strata_int8_avx2_supports(int bits);

/// sums[r * ldc + c] = sum_i a[r, i] * w[c, i] for weight rows c in [n0, n1): m rows of k int8
/// codes against row-major int8 weight rows, codes in [-127, 127] on both sides, exact s32 sums
/// (AVX2 on x86-64, a scalar loop elsewhere, s8_gemm.c; exact for k up to 133,000, where
/// 127 * 127 * k reaches 2^31).
void strata_s8_gemm_avx2(const int8_t *a, int m, int k, const int8_t *w, int n0, int n1, int32_t *sums, long ldc);

/// Symmetric int8 codes of one row, x ~ scale * code, code = round-to-nearest-even(x * 127 / max|x|);
/// returns the scale (max|x| / 127). A row of zeros gets codes 0 and scale 0; a row with a NaN
/// or an infinity, codes 0 and a NaN scale (so the product is NaN, as in f32).
float strata_quantize_row_s8(const float *x, int count, int8_t *codes);

/// out[i] = sums[i] * (column_scales[i] * row_scale) + bias[i] (bias may be NULL); `out` may be
/// `sums` itself (the s32 sums are read before each f32 is written).
void strata_rescale_s32(const int32_t *sums, int count, float row_scale, const float *column_scales, const float *bias,
                        float *out);

/// The two above in AVX-512, bit for bit the same results: only where strata_avx512_supported()
/// (strata_cpu.h) says so.
float strata_quantize_row_s8_avx512(const float *x, int count, int8_t *codes);
void strata_rescale_s32_avx512(const int32_t *sums, int count, float row_scale, const float *column_scales, const float *bias,
                               float *out);

/// 16-bit KV caches: `f16` nonzero for f16 values, zero for bf16; either widens to f32 exactly.
/// scores[j] = scale * dot(query, keys[j]) for `visible` keys of `d` values each.
void strata_cache_scores(const float *query, const uint16_t *keys, int f16, int visible, int d, float scale, float *scores);
/// out[i] = sum_j weights[j] * values[j][i] over `visible` value rows of `d` values.
void strata_cache_weighted_sum(const float *weights, const uint16_t *values, int f16, int visible, int d, float *out);
/// 16-bit -> f32 (exact).
void strata_cache_widen(const uint16_t *source, int f16, long count, float *destination);
/// f32 -> f16, round to nearest even (F16C; magnitudes past 65504 become infinities).
void strata_f16_round(const float *source, long count, uint16_t *destination);
/// Index of the first largest value (0 when none is above -infinity, e.g. all NaN).
long strata_argmax(const float *values, long count);
/// f32 -> bf16, round to nearest even (NaN payloads are not preserved).
void strata_bf16_round(const float *source, long count, uint16_t *destination);
#endif
