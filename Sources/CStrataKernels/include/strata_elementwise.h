#ifndef STRATA_ELEMENTWISE_H
#define STRATA_ELEMENTWISE_H

/// Whether this CPU runs the AVX-512 kernels below (AVX512F, BW and VL).
int strata_elementwise_supported(void);

/// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i], e^x as Softmax.exp.
void strata_silu_mul(const float *gate, const float *up, long count, float *out);

/// row[0..<count] = e^(row - max) / sum, in place, e^x as Softmax.exp.
void strata_softmax_row(float *row, int count);
#endif
