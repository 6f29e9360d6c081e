// CPUID checks shared by the AVX-512 kernels (private to this target).
#ifndef STRATA_CPU_FEATURES_H
#define STRATA_CPU_FEATURES_H
#if defined(__x86_64__)
#include <cpuid.h>

/// AVX512F, BW and VL, with the OS saving the AVX-512 state (XCR0 bits 1, 2, 5, 6, 7);
/// `leaf7_ecx` gets CPUID leaf 7 subleaf 0's ecx for the caller's own extensions.
static inline int strata_avx512_base(unsigned *leaf7_ecx) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    *leaf7_ecx = c;
    int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return avx512f && avx512bw && avx512vl && (lo & 0xE6) == 0xE6;
}
#endif
#endif
