// The scalar part of per-row int8 quantization that the AVX2 (row_kernels.c) and AVX-512
// (int8_rows.c) forms share, so both settle tails and degenerate rows the same way.
#ifndef STRATA_INT8_ROW_H
#define STRATA_INT8_ROW_H
#include <math.h>
#include <stdint.h>

// Folds x[first..<count] into `largest` (max |x|, from the vector lanes) and `unordered` (a NaN
// seen). A row with a NaN or an infinity gets codes 0 and a NaN scale, a row of zeros codes 0
// and scale 0: then it returns 1 with the scale in *scale. Otherwise 0 and *largest is final.
static inline int strata_int8_row_settle(const float *x, int first, int count, float *largest, int unordered, int8_t *codes,
                                         float *scale) {
    for (int j = first; j < count; j++) {
        if (isnan(x[j])) unordered = 1;
        *largest = fmaxf(*largest, fabsf(x[j]));
    }
    if (!unordered && !isinf(*largest) && *largest != 0) return 0;
    for (int j = 0; j < count; j++) codes[j] = 0;
    *scale = *largest == 0 && !unordered ? 0.0f : NAN;
    return 1;
}
#endif
