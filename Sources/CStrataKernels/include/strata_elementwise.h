#ifndef STRATA_ELEMENTWISE_H
#define STRATA_ELEMENTWISE_H

/// AVX-512 kernels: they run where strata_avx512_supported() (strata_cpu.h) says so.

/// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i], e^x as Softmax.exp.
void strata_silu_mul(const float *gate, const float *up, long count, float *out);

/// row[0..<count] = e^(row - max) / sum, in place, e^x as Softmax.exp.
void strata_softmax_row(float *row, int count);
#endif
