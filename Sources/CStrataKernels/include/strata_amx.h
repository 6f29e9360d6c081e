#ifndef STRATA_AMX_H
#define STRATA_AMX_H
#include <stdint.h>

/// Matmuls on AMX tiles with f32-grade accuracy from bf16 pieces ("bf16x3", as JAX's
/// bfloat16_3x): every operand is split into hi = bf16(v) and lo = bf16(v - hi), and
/// x * w = x_hi w_hi + x_hi w_lo + x_lo w_hi, summed in f32. An f16 weight is exactly hi + lo
/// (11 significant bits in two 8-bit pieces), so the only rounding is x's beyond 16 bits and the
/// dropped x_lo w_lo term: about 2^-17 relative per product, against 2^-24 for f32 and 2^-9 for
/// x rounded to bf16.

/// Rows of x a split block holds (two 16-row tiles); strata_amx_split_x's buffer has this many
/// rows per block, the missing ones zero.
enum { STRATA_AMX_ROWS = 32 };

/// Whether the CPU has AMX-TILE, AMX-BF16 and AVX512-BF16, the OS saves tile state, and this
/// process was granted the tile data (Linux's arch_prctl ARCH_REQ_XCOMP_PERM; asked once).
int strata_amx_bf16_supported(void);

/// bf16 values per split row of k inputs: hi and lo for each block of 32 (zero-padded), and a
/// 64-byte pad (the row stride of strata_amx_split_x's buffer).
long strata_amx_split_width(int k);

/// `rows` rows of x (row stride k) split into `a` (row stride strata_amx_split_width(k)).
/// A row range at a time, so callers split in parallel; rows past m up to a multiple of
/// STRATA_AMX_ROWS must be zero in `a` (the caller clears them).
void strata_amx_split_x(const float *x, int rows, int k, uint16_t *a);

/// bf16 values of one tile panel: 16 weight rows, split, for all of k.
long strata_amx_panel_values(int k);

/// Weight rows per group whose panels stay in L2 (~1 MiB) while row blocks pass over them; a
/// multiple of 32.
long strata_amx_group_columns(int k);

/// Weight rows [n0, n1) of w (row-major, row stride k, type STRATA_DOT_F32 / F16 / BF16) split
/// into tile panels of 16 rows, the last one zero-padded: panel p at panels + p *
/// strata_amx_panel_values(k).
void strata_amx_split_weights(const void *w, int type, int k, long n0, long n1, uint16_t *panels);

/// out[r, c] = (accumulate ? out[r, c] : 0) + sum_k x[r, k] * w[c, k] for rows [r0, r1) (r0 a
/// multiple of STRATA_AMX_ROWS) and the first `columns` weight rows of `panels`
/// (strata_amx_split_weights), x split into `a`; out has row stride ldc. Rows and column
/// groups can go to different threads.
void strata_amx_split_product(int r0, int r1, int k, const uint16_t *a, const uint16_t *panels, long columns, float *out, long ldc,
                              int accumulate);

#endif
