// Elementwise kernels of a prefill that are too slow at 8 lanes: SwiGLU's gate (one e^x and
// one division per element of the MLP's 2816-wide rows) and attention's softmax. AVX-512,
// chosen at run time (the binary's baseline is Haswell, where Softmax.swift and
// CPUBackend.gatedActivate's 8-lane loops serve). e^x is the same Cephes method as
// Softmax.exp, so both paths agree to rounding.
#include "strata_elementwise.h"
#if defined(__x86_64__)
#include <immintrin.h>
#define STRATA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

#if defined(__x86_64__)
// e^x, Cephes' single-precision method: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6
// polynomial, 2^n built in the exponent bits; lanes below -87.3 are 0 (what softmax wants).
STRATA_AVX512 __attribute__((always_inline))
static inline __m512 exp16(__m512 x) {
    const __m512 low = _mm512_set1_ps(-87.33654f), high = _mm512_set1_ps(88.37626f);
    __m512 c = _mm512_min_ps(_mm512_max_ps(x, low), high);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), c);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
    __m512i whole = _mm512_cvtps_epi32(n);
    __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(whole, _mm512_set1_epi32(127)), 23));
    __mmask16 under = _mm512_cmp_ps_mask(x, low, _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~under, e, scale);
}

STRATA_AVX512
static void silu_mul_avx512(const float *gate, const float *up, long count, float *out) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (long i = 0; i < count; i += 16) {
        __mmask16 m = count - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, u));
    }
}

STRATA_AVX512
static void softmax_avx512(float *row, int count) {
    __m512 largest = _mm512_set1_ps(-__builtin_inff());
    for (int j = 0; j < count; j += 16) {
        __mmask16 m = count - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - j)) - 1);
        largest = _mm512_mask_max_ps(largest, m, largest, _mm512_maskz_loadu_ps(m, row + j));
    }
    __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(largest));
    __m512 sums = _mm512_setzero_ps();
    for (int j = 0; j < count; j += 16) {
        __mmask16 m = count - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row + j), top)));
        _mm512_mask_storeu_ps(row + j, m, e);
        sums = _mm512_add_ps(sums, e);
    }
    __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sums));
    for (int j = 0; j < count; j += 16) {
        __mmask16 m = count - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - j)) - 1);
        _mm512_mask_storeu_ps(row + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + j), inverse));
    }
}
#endif

void strata_silu_mul(const float *gate, const float *up, long count, float *out) {
#if defined(__x86_64__)
    silu_mul_avx512(gate, up, count, out);
#endif
}

void strata_softmax_row(float *row, int count) {
#if defined(__x86_64__)
    if (count > 0) softmax_avx512(row, count);
#endif
}
