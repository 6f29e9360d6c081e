#include <cblas.h>
// mallopt: the CPU backend tunes glibc's allocator (Swift's Glibc module leaves malloc.h out).
#if defined(__linux__)
#include <malloc.h>
#endif
// Software prefetch for the fused kernels: Swift has no prefetch intrinsic, and a static inline
// function imported from C is inlined into the Swift loop in release builds.
static inline void strata_prefetch(const void *address) { __builtin_prefetch(address, 0, 2); }
