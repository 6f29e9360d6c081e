// A CPU stand-in for the CUDA driver API, cuBLAS and NVRTC, for testing the CUDA backend on a
// machine without a GPU. The backend's own kernel source is compiled as C++ (by
// make_emulator.py) and each launch runs every block's threads as cooperative fibers, so
// __syncthreads and warp shuffles behave as on a GPU (threads of a block interleave at every
// barrier). It checks what a GPU would not forgive: launches beyond 1024 threads or past the
// dynamic shared memory, overlapping device-to-device copies, GEMM leading dimensions too small,
// unknown kernels, frees of unknown addresses. It is a test device, never a product path.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>
#include <setjmp.h>
#include <ucontext.h>

using std::isinf;
using std::isnan;

namespace emu {
struct Dim { unsigned x = 0, y = 1, z = 1; };
Dim threadIdx, blockIdx, blockDim, gridDim;
void* dynamicShared = nullptr;
[[noreturn]] void fail(const char* what, const char* detail = "") {
    fprintf(stderr, "CUDA emulator: %s %s\n", what, detail);
    abort();
}
void syncthreads();
float shuffle(int kind, float value, int lane);
}  // namespace emu

// ---- The device-side vocabulary the kernels use ----
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static
#define threadIdx emu::threadIdx
#define blockIdx emu::blockIdx
#define blockDim emu::blockDim
#define gridDim emu::gridDim
#define __syncthreads() emu::syncthreads()
#define __shfl_down_sync(mask, v, d) emu::shuffle(0, (v), (d))
#define __shfl_xor_sync(mask, v, d) emu::shuffle(1, (v), (d))
#define __expf expf
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __float2int_rn(float f) { return (int)nearbyintf(f); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
typedef unsigned short half_t;
static inline float h2f(half_t h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
static inline half_t f2h(float f) { _Float16 v = (_Float16)f; half_t h; memcpy(&h, &v, 2); return h; }
static inline half_t half_step(half_t h, bool up) {   // the next f16 up or down
    if ((h & 0x7fff) == 0) return up ? 0x0001 : 0x8001;
    bool negative = h & 0x8000;
    return (up != negative) ? h + 1 : h - 1;
}
static inline half_t f2h_down(float f) { half_t h = f2h(f); return h2f(h) > f ? half_step(h, false) : h; }
static inline half_t f2h_up(float f) { half_t h = f2h(f); return h2f(h) < f ? half_step(h, true) : h; }

#include "kernels.inc"   // the backend's kernels and their launch trampolines (make_emulator.py)
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

// ---- Fibers: one per thread of the running block ----
namespace emu {
enum Wait { running, atBlockBarrier, atShuffle, finished };
// A fiber starts through makecontext/swapcontext once; every later switch is _setjmp/_longjmp,
// which unlike swapcontext does not save the signal mask (a system call per switch).
struct Fiber {
    ucontext_t context;
    jmp_buf resume;
    bool started = false;
    Wait wait = running;
    int kind = 0, lane = 0;
    float value = 0, result = 0;
};
static std::vector<Fiber> fibers;
static std::vector<std::vector<char>> stacks;
static ucontext_t scheduler;
static jmp_buf schedulerResume;
static int current = 0;
static void (*currentKernel)(void**) = nullptr;
static void** currentArguments = nullptr;

static void fiberMain(int) {
    currentKernel(currentArguments);
    fibers[current].wait = finished;
    _longjmp(schedulerResume, 1);
}

static void yield() {
    if (!_setjmp(fibers[current].resume)) _longjmp(schedulerResume, 1);
}

void syncthreads() {
    fibers[current].wait = atBlockBarrier;
    yield();
}

float shuffle(int kind, float value, int lane) {
    Fiber& f = fibers[current];
    f.wait = atShuffle; f.kind = kind; f.value = value; f.lane = lane;
    yield();
    return fibers[current].result;
}

static void resume(int t) {
    if (_setjmp(schedulerResume)) return;
    Fiber& f = fibers[t];
    if (!f.started) { f.started = true; swapcontext(&scheduler, &f.context); }
    _longjmp(f.resume, 1);
}

static void runBlock(int threads) {
    if ((int)stacks.size() < threads) stacks.resize(threads, std::vector<char>(128 * 1024));
    fibers.assign(threads, Fiber());
    for (int t = 0; t < threads; ++t) {
        getcontext(&fibers[t].context);
        fibers[t].context.uc_stack.ss_sp = stacks[t].data();
        fibers[t].context.uc_stack.ss_size = stacks[t].size();
        fibers[t].context.uc_link = nullptr;
        makecontext(&fibers[t].context, (void (*)())fiberMain, 1, t);
    }
    while (true) {
        bool ran = false;
        for (int t = 0; t < threads; ++t) {
            if (fibers[t].wait != running) continue;
            current = t;
            threadIdx.x = t;
            resume(t);
            ran = true;
        }
        // Release complete warps waiting to shuffle (every live lane of the warp must be there).
        bool released = false;
        for (int w = 0; w * 32 < threads; ++w) {
            int first = w * 32, end = std::min(threads, first + 32), waiting = 0, live = 0;
            for (int t = first; t < end; ++t) {
                if (fibers[t].wait != finished) ++live;
                if (fibers[t].wait == atShuffle) ++waiting;
            }
            if (waiting == 0 || waiting != live) continue;
            if (end - first != 32) fail("warp shuffle in a partial warp");
            for (int t = first; t < end; ++t) {
                Fiber& f = fibers[t];
                int lane = t - first, source = f.kind == 0 ? lane + f.lane : (lane ^ f.lane);
                f.result = (source >= 0 && source < 32 && fibers[first + source].wait == atShuffle) ? fibers[first + source].value : f.value;
            }
            for (int t = first; t < end; ++t) fibers[t].wait = running;
            released = true;
        }
        if (released) continue;
        int atBarrier = 0, live = 0;
        for (auto& f : fibers) {
            if (f.wait != finished) ++live;
            if (f.wait == atBlockBarrier) ++atBarrier;
        }
        if (live == 0) return;
        if (atBarrier == live) { for (auto& f : fibers) if (f.wait == atBlockBarrier) f.wait = running; continue; }
        if (!ran) fail("deadlock: threads wait at different barriers");
    }
}
}  // namespace emu

// ---- Memory ----
static std::mutex memoryLock, launchLock;
static std::map<uint64_t, size_t> deviceBlocks;
static size_t deviceLive = 0;
static int maxDynamicShared = 99 * 1024;

static bool isDevice(uint64_t address, size_t count) {
    std::lock_guard<std::mutex> g(memoryLock);
    auto it = deviceBlocks.upper_bound(address);
    if (it == deviceBlocks.begin()) return false;
    --it;
    return address >= it->first && address + count <= it->first + it->second;
}

extern "C" {
typedef int CUresult;
CUresult cuInit(unsigned) { return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetAttribute(int* v, int attribute, int) {
    switch (attribute) {
    case 75: *v = 9; break;    // compute capability 9.0
    case 76: *v = 0; break;
    case 16: *v = 4; break;    // multiprocessors
    case 97: *v = maxDynamicShared; break;
    default: *v = 0;
    }
    return 0;
}
CUresult cuDeviceGetName(char* name, int length, int) { snprintf(name, length, "Strata CUDA emulator (CPU)"); return 0; }
CUresult cuDevicePrimaryCtxRetain(void** context, int) { static int c; *context = &c; return 0; }
CUresult cuCtxSetCurrent(void*) { return 0; }
CUresult cuMemAlloc_v2(uint64_t* address, size_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return 2;
    memset(p, 0xA5, bytes);   // fresh device memory is garbage, not zeros
    std::lock_guard<std::mutex> g(memoryLock);
    *address = (uint64_t)p;
    deviceBlocks[*address] = bytes;
    deviceLive += bytes;
    return 0;
}
CUresult cuMemFree_v2(uint64_t address) {
    std::lock_guard<std::mutex> g(memoryLock);
    auto it = deviceBlocks.find(address);
    if (it == deviceBlocks.end()) emu::fail("cuMemFree of an address never allocated");
    deviceLive -= it->second;
    deviceBlocks.erase(it);
    free((void*)address);
    return 0;
}
CUresult cuMemGetInfo_v2(size_t* freeBytes, size_t* total) { *total = 8ull << 30; *freeBytes = *total - deviceLive; return 0; }
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) { return posix_memalign(p, 4096, bytes ? bytes : 1) == 0 ? 0 : 2; }
CUresult cuMemFreeHost(void* p) { free(p); return 0; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void*) {
    if (n && !isDevice(dst, n)) emu::fail("host-to-device copy into memory that is not device memory");
    memcpy((void*)dst, src, n); return 0;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void*) {
    if (n && !isDevice(src, n)) emu::fail("device-to-host copy from memory that is not device memory");
    memcpy(dst, (void*)src, n); return 0;
}
CUresult cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void*) {
    if (n && (!isDevice(dst, n) || !isDevice(src, n))) emu::fail("device-to-device copy outside device memory");
    if (n && dst < src + n && src < dst + n) emu::fail("overlapping device-to-device copy");
    memcpy((void*)dst, (void*)src, n); return 0;
}
CUresult cuMemsetD8Async(uint64_t dst, unsigned char value, size_t n, void*) {
    if (n && !isDevice(dst, n)) emu::fail("memset outside device memory");
    memset((void*)dst, value, n); return 0;
}
CUresult cuStreamCreate(void** s, unsigned) { static int n; *s = &n; return 0; }
CUresult cuStreamSynchronize(void*) { return 0; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return 0; }
CUresult cuEventCreate(void** e, unsigned) { *e = malloc(1); return 0; }
CUresult cuEventRecord(void*, void*) { return 0; }
CUresult cuEventSynchronize(void*) { return 0; }
CUresult cuEventElapsedTime(float* ms, void*, void*) { *ms = 0.001f; return 0; }
CUresult cuEventDestroy_v2(void* e) { free(e); return 0; }
CUresult cuModuleLoadData(void** module, const void* image) {
    if (!strstr((const char*)image, ".entry")) emu::fail("module image has no kernel entries");
    static int m; *module = &m; return 0;
}
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    for (auto& k : emulatedKernels) if (strcmp(k.name, name) == 0) { *f = (void*)&k; return 0; }
    return 500;   // CUDA_ERROR_NOT_FOUND
}
CUresult cuFuncSetAttribute(void*, int attribute, int value) {
    if (attribute == 8 && value > maxDynamicShared) emu::fail("dynamic shared memory asked beyond the device's");
    return 0;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void*,
                        void** params, void** extra) {
    auto* kernel = (EmulatedKernel*)f;
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || extra) emu::fail("unexpected launch shape", kernel->name);
    if (bx == 0 || bx > 1024 || gx == 0 || gx > 2147483647u) emu::fail("launch out of range", kernel->name);
    if ((int)shared > maxDynamicShared) emu::fail("launch with more dynamic shared memory than allowed", kernel->name);
    std::lock_guard<std::mutex> g(launchLock);
    std::vector<char> sharedMemory(shared + 16);
    emu::dynamicShared = sharedMemory.data();
    emu::gridDim = {gx, 1, 1};
    emu::blockDim = {bx, 1, 1};
    emu::currentKernel = kernel->call;
    emu::currentArguments = params;
    for (unsigned b = 0; b < gx; ++b) {
        emu::blockIdx = {b, 0, 0};
        emu::runBlock((int)bx);
    }
    return 0;
}
CUresult cuGetErrorName(CUresult, const char** name) { *name = "CUDA_ERROR_EMULATED"; return 0; }

// cuBLAS: column-major C = alpha op(A) op(B) + beta C, f32/f16/bf16 inputs, f32 output.
static float element(const void* p, int type, size_t i) {
    if (type == 0) return ((const float*)p)[i];
    half_t h = ((const half_t*)p)[i];
    if (type == 2) return h2f(h);
    if (type == 14) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
    emu::fail("cublasGemmEx: unsupported data type");
}
int cublasCreate_v2(void** h) { static int n; *h = &n; return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasSetMathMode(void*, int) { return 0; }
int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, uint64_t A, int at, int lda, uint64_t B, int bt, int ldb,
                 const void* beta, uint64_t C, int ct, int ldc, int compute, int) {
    if (ct != 0 || compute != 68 || at != bt) emu::fail("cublasGemmEx: unexpected types");
    if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1) || m <= 0 || n <= 0 || k <= 0) emu::fail("cublasGemmEx: bad shape");
    if (lda < (ta == 0 ? m : k) || ldb < (tb == 0 ? k : n) || ldc < m) emu::fail("cublasGemmEx: leading dimension too small");
    size_t elementSize = at == 0 ? 4 : 2;
    if (!isDevice(A, ((size_t)(ta == 0 ? k : m) - 1) * lda * elementSize + (ta == 0 ? m : k) * elementSize)
        || !isDevice(B, ((size_t)(tb == 0 ? n : k) - 1) * ldb * elementSize + (tb == 0 ? k : n) * elementSize)
        || !isDevice(C, ((size_t)n - 1) * ldc * 4 + (size_t)m * 4)) emu::fail("cublasGemmEx: an operand lies outside device memory");
    float a = *(const float*)alpha, b = *(const float*)beta;
    float* c = (float*)C;
    // op(A) as rows of k and op(B) as columns of k, widened once, then plain dot products.
    std::vector<float> opA((size_t)m * k), opB((size_t)n * k);
    for (int i = 0; i < m; ++i)
        for (int p = 0; p < k; ++p) opA[(size_t)i * k + p] = element((const void*)A, at, ta == 0 ? (size_t)p * lda + i : (size_t)i * lda + p);
    for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p) opB[(size_t)j * k + p] = element((const void*)B, bt, tb == 0 ? (size_t)j * ldb + p : (size_t)p * ldb + j);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            const float* x = &opA[(size_t)i * k];
            const float* y = &opB[(size_t)j * k];
            float s = 0;
            for (int p = 0; p < k; ++p) s += x[p] * y[p];
            c[(size_t)j * ldc + i] = a * s + (b == 0 ? 0 : b * c[(size_t)j * ldc + i]);
        }
    return 0;
}
}  // extern "C"
