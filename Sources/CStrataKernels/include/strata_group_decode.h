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
#endif
