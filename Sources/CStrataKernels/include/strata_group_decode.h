#ifndef STRATA_GROUP_DECODE_H
#define STRATA_GROUP_DECODE_H
#include <stdint.h>

/// Weight rows [n0, n0 + rows) of a group-quantized weight, groups of `group_size` along k
/// (`bits` 4 or 8; group_size a multiple of 16 dividing k), decoded to f32 into out[rows, k].
/// Strata's layout (QuantizedLayout): each group's codes (4-bit: byte j holds values j and
/// j + group_size / 2), then one f16 step and one f16 minimum per group. Each value is
/// code * step + minimum, a multiply and then an add in f32, exactly what
/// GroupQuantizer.dequantizeGroup computes. AVX2 (scalar elsewhere).
void strata_dequantize_rows(const uint8_t *codes, const uint16_t *steps, const uint16_t *mins, int bits, int group_size,
                            int k, long n0, int rows, float *out);

/// out[n] = (accumulate ? out[n] : 0) + sum_k x[k] * w[n, k] for one row of activations and
/// weight rows [n0, n1) of the layout above (4 or 8 bits, group_size a multiple of 16 dividing
/// k), without decoding a weight to memory: within a group the codes (less `zero` when >= 0)
/// multiply x in f32, the group's sum is scaled by its step once, and when `zero` < 0 the
/// minimum is applied to the group's sum of x. Weights enter exactly (code - zero) * step; only
/// the f32 rounding order differs from decoding first. `zero` >= 0 says every minimum is
/// -zero * step (Q4_0: 8, Q8_0: 128) and `mins` is then not read. AVX2 (scalar elsewhere).
void strata_quantized_dot_row(int k, const float *x, const uint8_t *codes, const uint16_t *steps, const uint16_t *mins,
                              int zero, int bits, int group_size, long n0, long n1, float *out, int accumulate);
#endif
