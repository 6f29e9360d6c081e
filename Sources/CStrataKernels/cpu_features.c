// The run-time check behind every AVX-512 kernel that needs no extension past F/BW/VL.
#include "strata_cpu.h"
#include "cpu_features.h"

int strata_avx512_supported(void) {
#if defined(__x86_64__)
    unsigned ecx = 0;
    return strata_avx512_base(&ecx);
#else
    return 0;
#endif
}
