#ifndef STRATA_PANELS_H
#define STRATA_PANELS_H
#include <stdint.h>

/// Whether this CPU runs strata_decode_panels_bf16 (AVX512F, BW, VL and BF16).
int strata_panels_supported(void);

/// Weight rows [n0, n1) of a group-quantized weight (groups of `group_size` along k, a multiple
/// of 32 dividing k, or 16 for 8-bit codes with k a multiple of 32; `bits` 4 or 8; codes, then
/// f16 steps and minimums per group as Strata lays them out: w = code * step + minimum; 4-bit
/// byte j of a group holds values j and j + group_size / 2) decoded to bf16 into
/// ceil((n1 - n0) / 64) consecutive 64-row panels of PanelLayout(n: n1 - n0, k: k) (k / 32
/// blocks of 16 k pairs by 64 rows); rows past n1 are zero.
void strata_decode_panels_bf16(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                               int k, long n0, long n1, uint16_t *panels);

/// sums[r * (k / group_size) + g] = the f32 sum of group g of row r of bf16 activations `a`
/// [rows, k] (what strata_quantized_dot_bf16 applies each group's minimum to).
void strata_bf16_group_sums(const uint16_t *a, int rows, int k, int group_size, float *sums);

/// out[r, n] = bias[n] + sum_k a[r, k] * w[n, k] for `rows` rows of bf16 activations `a` (row
/// stride k, group sums `sums` from strata_bf16_group_sums) and weight rows [n0, n1) of the same
/// layouts as strata_decode_panels_bf16, with AVX512-BF16 dot products of the codes themselves
/// (exact weights, f32 sums); `bias` may be NULL; `out` has row stride `ldc`. `zero` >= 0 says
/// every group's minimum is -zero * step (symmetric groups: Q4_0 8, Q8_0 128), and `mins` is
/// then not read; -1 reads them.
void strata_quantized_dot_bf16(const uint16_t *a, int rows, int k, const float *sums, const uint8_t *codes, const uint16_t *steps,
                               const uint16_t *mins, int zero, int bits, int group_size, long n0, long n1, const float *bias, float *out,
                               long ldc);
#endif
