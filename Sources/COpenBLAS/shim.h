#include <cblas.h>
// mallopt: the CPU backend tunes glibc's allocator (Swift's Glibc module leaves malloc.h out).
#if defined(__linux__)
#include <malloc.h>
#endif
