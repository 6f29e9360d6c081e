#ifndef STRATA_CPU_H
#define STRATA_CPU_H

/// Whether this CPU (and its OS) runs AVX512F, BW and VL code: strata_half_gemm,
/// strata_silu_mul and strata_softmax_row.
int strata_avx512_supported(void);
#endif
