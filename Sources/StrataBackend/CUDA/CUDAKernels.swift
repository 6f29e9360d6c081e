/// The CUDA backend's kernels as CUDA C, compiled by NVRTC at first use (one module). They
/// mirror the CPU backend's ops and formats: activations f32 row-major [rows, cols]; weights
/// f16 for cuBLAS (GEMMs are not here); 4-bit groups as `GroupQuantizer` packs them (byte j of
/// a group holds values j and j + g/2; f16 step and minimum per group); the KV cache
/// [batch, kvHeads, capacity, headDim] with left padding per row.
public enum CUDAKernels {
    public static let names = [
        "layer_norm", "rms_norm", "add_inplace", "activate", "gated_activate", "rope_rotate_half", "embedding_gather_f16",
        "store_kv", "attention_decode", "attention_prefill", "dequantize_q4", "quantize_kv_q4", "argmax_rows",
    ]

    public static let source = #"""
    // f16 as raw 16-bit storage with PTX conversions: NVRTC then needs no CUDA headers at all.
    typedef unsigned short half_t;
    __device__ __forceinline__ float h2f(half_t h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
    __device__ __forceinline__ half_t f2h(float f) { half_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
    __device__ __forceinline__ half_t f2h_down(float f) { half_t h; asm("cvt.rm.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
    __device__ __forceinline__ half_t f2h_up(float f) { half_t h; asm("cvt.rp.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
    #define INFINITY __int_as_float(0x7f800000)

    __device__ float block_sum(float v, float* shared) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        v = (threadIdx.x < (blockDim.x + 31) / 32) ? shared[lane] : 0.f;
        if (warp == 0) for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
        if (threadIdx.x == 0) shared[0] = v;
        __syncthreads();
        float r = shared[0];
        __syncthreads();
        return r;
    }

    // One block per row. weight/bias may be null (OPT-350m's post-LN without affine).
    extern "C" __global__ void layer_norm(const float* x, const float* weight, const float* bias, float* out, int cols, float eps) {
        __shared__ float shared[32];
        const float* row = x + (size_t)blockIdx.x * cols;
        float s = 0.f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) s += row[i];
        float mean = block_sum(s, shared) / cols;
        float v = 0.f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) { float d = row[i] - mean; v += d * d; }
        float inv = rsqrtf(block_sum(v, shared) / cols + eps);
        float* o = out + (size_t)blockIdx.x * cols;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            float y = (row[i] - mean) * inv;
            if (weight) y *= weight[i];
            if (bias) y += bias[i];
            o[i] = y;
        }
    }

    extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out, int cols, float eps) {
        __shared__ float shared[32];
        const float* row = x + (size_t)blockIdx.x * cols;
        float s = 0.f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) s += row[i] * row[i];
        float inv = rsqrtf(block_sum(s, shared) / cols + eps);
        float* o = out + (size_t)blockIdx.x * cols;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = row[i] * inv * weight[i];
    }

    extern "C" __global__ void add_inplace(float* a, const float* b, size_t n) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) a[i] += b[i];
    }

    __device__ float act(float v, int kind) {
        switch (kind) {
        case 0: return v > 0.f ? v : 0.f;                                   // relu
        case 1: return 0.5f * v * (1.f + erff(v * 0.70710678f));            // gelu
        case 2: return 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));  // gelu_tanh
        default: return v / (1.f + __expf(-v));                             // silu
        }
    }

    extern "C" __global__ void activate(const float* x, float* out, size_t n, int kind) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = act(x[i], kind);
    }

    extern "C" __global__ void gated_activate(const float* gate, const float* up, float* out, size_t n, int kind) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = act(gate[i], kind) * up[i];
    }

    // x [rows, heads * headDim] in place; cos/sin [rows, headDim / 2]; rotate-half convention.
    extern "C" __global__ void rope_rotate_half(float* x, const float* cosT, const float* sinT, int heads, int headDim) {
        int row = blockIdx.x, half = headDim / 2;
        for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
            int h = k / half, i = k % half;
            float* v = x + ((size_t)row * heads + h) * headDim;
            float c = cosT[(size_t)row * half + i], s = sinT[(size_t)row * half + i];
            float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }

    extern "C" __global__ void embedding_gather_f16(const half_t* table, const int* ids, float* out, int dim) {
        const half_t* src = table + (size_t)ids[blockIdx.x] * dim;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) out[(size_t)blockIdx.x * dim + i] = h2f(src[i]);
    }

    // key/value [batch * length, kvHeads * headDim] -> cache [batch, kvHeads, capacity, headDim].
    extern "C" __global__ void store_kv(const float* key, const float* value, float* kc, float* vc, int length, int past,
                                        int kvHeads, int headDim, int capacity) {
        int row = blockIdx.x, b = row / length, t = row % length;
        for (int k = threadIdx.x; k < kvHeads * headDim; k += blockDim.x) {
            int h = k / headDim, d = k % headDim;
            size_t dst = (((size_t)b * kvHeads + h) * capacity + past + t) * headDim + d;
            kc[dst] = key[(size_t)row * kvHeads * headDim + k];
            vc[dst] = value[(size_t)row * kvHeads * headDim + k];
        }
    }

    // softmax(scale * q K[first..last]^T) V for one query, by one block; scores holds the
    // block's capacity floats of dynamic shared memory.
    __device__ void attend(const float* qv, const float* K, const float* V, float* o, int first, int last, int headDim, float scale,
                           float* scores, float* shared) {
        if (last < first) { for (int d = threadIdx.x; d < headDim; d += blockDim.x) o[d] = 0.f; return; }
        float localMax = -INFINITY;
        for (int j = first + threadIdx.x; j <= last; j += blockDim.x) {
            float s = 0.f;
            for (int d = 0; d < headDim; ++d) s += qv[d] * K[(size_t)j * headDim + d];
            scores[j] = s * scale;
            localMax = fmaxf(localMax, scores[j]);
        }
        for (int off = 16; off > 0; off >>= 1) localMax = fmaxf(localMax, __shfl_xor_sync(0xffffffff, localMax, off));
        if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = localMax;
        __syncthreads();
        float m = -INFINITY;
        for (int w = 0; w < (blockDim.x + 31) / 32; ++w) m = fmaxf(m, shared[w]);
        __syncthreads();
        float local = 0.f;
        for (int j = first + threadIdx.x; j <= last; j += blockDim.x) { float e = __expf(scores[j] - m); scores[j] = e; local += e; }
        float total = block_sum(local, shared);
        for (int d = threadIdx.x; d < headDim; d += blockDim.x) {
            float acc = 0.f;
            for (int j = first; j <= last; ++j) acc += scores[j] * V[(size_t)j * headDim + d];
            o[d] = acc / total;
        }
    }

    // One block per (row, head): the step's one query against positions padding[b] .. past.
    extern "C" __global__ void attention_decode(const float* q, const float* kc, const float* vc, float* out, const int* padding,
                                                int heads, int kvHeads, int headDim, int capacity, int past, float scale) {
        extern __shared__ float scores[];
        __shared__ float shared[32];
        int b = blockIdx.x / heads, h = blockIdx.x % heads, g = h / (heads / kvHeads);
        size_t cache = ((size_t)b * kvHeads + g) * capacity * headDim;
        size_t row = ((size_t)b * heads + h) * headDim;
        attend(q + row, kc + cache, vc + cache, out + row, padding[b], past, headDim, scale, scores, shared);
    }

    // One block per (row, head, query position): causal attention over the cache, left padding masked.
    extern "C" __global__ void attention_prefill(const float* q, const float* kc, const float* vc, float* out, const int* padding,
                                                 int length, int heads, int kvHeads, int headDim, int capacity, int past, float scale) {
        extern __shared__ float scores[];
        __shared__ float shared[32];
        int t = blockIdx.x % length, bh = blockIdx.x / length, b = bh / heads, h = bh % heads, g = h / (heads / kvHeads);
        size_t cache = ((size_t)b * kvHeads + g) * capacity * headDim;
        size_t row = (((size_t)b * length + t) * heads + h) * headDim;
        attend(q + row, kc + cache, vc + cache, out + row, padding[b], past + t, headDim, scale, scores, shared);
    }

    // 4-bit groups along the input dimension -> f16 weight [rows, cols] for cuBLAS.
    extern "C" __global__ void dequantize_q4(const unsigned char* data, const half_t* steps, const half_t* mins, half_t* out,
                                             int rows, int cols, int groupSize) {
        int groupsPerRow = (cols + groupSize - 1) / groupSize, half = groupSize / 2;
        size_t group = blockIdx.x;
        int r = group / groupsPerRow, a = group % groupsPerRow;
        float s = h2f(steps[group]), mn = h2f(mins[group]);
        const unsigned char* bytes = data + group * half;
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            unsigned char v = bytes[j];
            int c0 = a * groupSize + j, c1 = c0 + half;
            if (c0 < cols) out[(size_t)r * cols + c0] = f2h((v & 15) * s + mn);
            if (c1 < cols) out[(size_t)r * cols + c1] = f2h((v >> 4) * s + mn);
        }
    }

    // One warp per cache row of headDim values: min/max, f16 step rounded up and minimum rounded
    // down (every value within half a step), then packed codes.
    extern "C" __global__ void quantize_kv_q4(const float* rowsIn, unsigned char* data, half_t* steps, half_t* mins, int headDim,
                                              int groupSize) {
        int groups = (headDim + groupSize - 1) / groupSize, row = blockIdx.x, half = groupSize / 2;
        for (int a = threadIdx.x; a < groups; a += blockDim.x) {
            const float* v = rowsIn + (size_t)row * headDim + a * groupSize;
            int count = min(groupSize, headDim - a * groupSize);
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 0; j < count; ++j) { lo = fminf(lo, v[j]); hi = fmaxf(hi, v[j]); }
            half_t mh = f2h_down(lo);
            float m = h2f(mh);
            half_t sh = f2h_up((hi - m) / 15.f);
            float s = h2f(sh), inv = s > 0.f ? 1.f / s : 0.f;
            size_t g = (size_t)row * groups + a;
            steps[g] = sh; mins[g] = mh;
            unsigned char* out = data + g * half;
            for (int j = 0; j < half; ++j) {
                int lowCode = j < count ? min(15, max(0, __float2int_rn((v[j] - m) * inv))) : 0;
                int highCode = j + half < count ? min(15, max(0, __float2int_rn((v[j + half] - m) * inv))) : 0;
                out[j] = (unsigned char)(lowCode | (highCode << 4));
            }
        }
    }

    // Greedy sampling helper: index of the largest logit per row (ties: lowest index).
    extern "C" __global__ void argmax_rows(const float* logits, int* out, int vocab) {
        __shared__ float bestValue[256];
        __shared__ int bestIndex[256];
        const float* row = logits + (size_t)blockIdx.x * vocab;
        float v = -INFINITY; int idx = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) if (row[i] > v) { v = row[i]; idx = i; }
        bestValue[threadIdx.x] = v; bestIndex[threadIdx.x] = idx;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) {
                float ov = bestValue[threadIdx.x + s]; int oi = bestIndex[threadIdx.x + s];
                if (ov > bestValue[threadIdx.x] || (ov == bestValue[threadIdx.x] && oi < bestIndex[threadIdx.x])) {
                    bestValue[threadIdx.x] = ov; bestIndex[threadIdx.x] = oi;
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) out[blockIdx.x] = bestIndex[0];
    }
    """#
}
