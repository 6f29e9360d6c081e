/// The CUDA backend's kernels as CUDA C, compiled by NVRTC at first use (one module). They
/// mirror the CPU backend's ops and formats: activations f32 row-major [rows, cols]; dense GEMMs
/// are cuBLAS's, not here; 2/3/4/8-bit groups as `GroupQuantizer` packs them (for 4 bits byte j
/// of a group holds values j and j + g/2; f16 step and minimum per group); the KV cache
/// [batch, kvHeads, capacity, headDim] with left padding per row.
public enum CUDAKernels {
    public static let names = [
        "layer_norm", "rms_norm", "add_inplace", "activate", "gated_activate", "rope_rotate_half",
        "store_kv", "attention_decode", "attention_prefill",
        "convert_f32", "fill_bias_rows", "embedding_gather", "dequantize_groups", "store_kv_q", "gather_rows",
        "linear_q_small",
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

    __device__ __forceinline__ float bf2f(half_t h) { return __int_as_float(((unsigned)h) << 16); }
    __device__ __forceinline__ half_t f2bf(float f) {
        unsigned u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (half_t)((u >> 16) | 0x40);   // NaN stays NaN
        u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
        return (half_t)(u >> 16);
    }
    // Element types of weights and embedding tables: 0 f32, 1 f16, 2 bf16.
    __device__ __forceinline__ float load_any(const void* p, size_t i, int kind) {
        if (kind == 0) return ((const float*)p)[i];
        if (kind == 1) return h2f(((const half_t*)p)[i]);
        return bf2f(((const half_t*)p)[i]);
    }

    // GEMM inputs in the weight's element type (cuBLAS multiplies like types).
    extern "C" __global__ void convert_f32(const float* x, void* out, size_t n, int kind) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= n) return;
        if (kind == 0) ((float*)out)[i] = x[i];
        else if (kind == 1) ((half_t*)out)[i] = f2h(x[i]);
        else ((half_t*)out)[i] = f2bf(x[i]);
    }

    // out[r, :] = bias before a GEMM that adds into it (beta = 1).
    extern "C" __global__ void fill_bias_rows(float* out, const float* bias, int rows, int cols) {
        size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i < (size_t)rows * cols) out[i] = bias[i % cols];
    }

    extern "C" __global__ void embedding_gather(const void* table, const int* ids, float* out, int dim, int kind) {
        size_t base = (size_t)ids[blockIdx.x] * dim;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) out[(size_t)blockIdx.x * dim + i] = load_any(table, base + i, kind);
    }

    // Value j of group `group` (any of 2, 3, 4, 8 bits), packed as GroupQuantizer packs it.
    __device__ __forceinline__ float q_decode(const unsigned char* data, const half_t* steps, const half_t* mins, size_t group,
                                              int j, int gs, int bits) {
        const unsigned char* b = data + group * (size_t)(gs * bits / 8);
        int code;
        if (bits == 8) code = b[j];
        else if (bits == 4) { int h = gs / 2; code = j < h ? (b[j] & 15) : (b[j - h] >> 4); }
        else if (bits == 2) { int q = gs / 4; code = (b[j % q] >> (2 * (j / q))) & 3; }
        else { int bit = 3 * j; int v = b[bit >> 3] >> (bit & 7); if ((bit & 7) > 5) v |= b[(bit >> 3) + 1] << (8 - (bit & 7)); code = v & 7; }
        return code * h2f(steps[group]) + h2f(mins[group]);
    }

    // Element (o, e, i) of a tensor viewed [outer, extent, inner] around its group axis.
    __device__ __forceinline__ float q_element(const unsigned char* data, const half_t* steps, const half_t* mins,
                                               size_t o, int e, size_t i, int extent, size_t inner, int gs, int bits) {
        int groupsAlong = (extent + gs - 1) / gs;
        size_t group = ((size_t)o * groupsAlong + e / gs) * inner + i;
        return q_decode(data, steps, mins, group, e % gs, gs, bits);
    }

    // A whole quantized tensor [outer, extent, inner] (or the first `limitExtent` of its extent,
    // for a cache read up to its filled positions) into f32/f16/bf16 [outer, limitExtent, inner].
    extern "C" __global__ void dequantize_groups(const unsigned char* data, const half_t* steps, const half_t* mins, void* out,
                                                 size_t outer, int extent, size_t inner, int limitExtent, int gs, int bits, int kind,
                                                 int groupAxisIsExtent) {
        size_t n = outer * (size_t)limitExtent * inner;
        for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
            size_t i = idx % inner, rest = idx / inner;
            int e = rest % limitExtent; size_t o = rest / limitExtent;
            float v;
            if (groupAxisIsExtent) v = q_element(data, steps, mins, o, e, i, extent, inner, gs, bits);
            else {
                // Groups along the last axis of a [outer * extent, inner] view (the KV cache:
                // rows are positions, groups run along head_dim).
                size_t row = o * extent + e;
                v = q_element(data, steps, mins, row, (int)i, 0, (int)inner, 1, gs, bits);
            }
            if (kind == 0) ((float*)out)[idx] = v;
            else if (kind == 1) ((half_t*)out)[idx] = f2h(v);
            else ((half_t*)out)[idx] = f2bf(v);
        }
    }

    // One thread per (row, head, group): quantizes this step's keys and values into the
    // cache's groups exactly as GroupQuantizer.quantizeGroup does (min rounded down, step up).
    __device__ void quantize_group(const float* v, int count, int gs, int bits, unsigned char* out, half_t* step, half_t* minimum) {
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < count; ++j) { lo = fminf(lo, v[j]); hi = fmaxf(hi, v[j]); }
        if (count == 0 || isinf(lo) || isinf(hi) || isnan(lo) || isnan(hi)) { lo = 0.f; hi = 0.f; }
        float levels = (float)((1 << bits) - 1);
        half_t mh = f2h_down(lo);
        float m = h2f(mh);
        half_t sh = f2h_up((hi - m) / levels);
        while (m + h2f(sh) * levels < hi) sh += 1;
        float s = h2f(sh), inv = s > 0.f ? 1.f / s : 0.f;
        *step = sh; *minimum = mh;
        int bytes = gs * bits / 8;
        for (int j = 0; j < bytes; ++j) out[j] = 0;
        for (int j = 0; j < count; ++j) {
            int code = (int)fminf(levels, fmaxf(0.f, roundf((v[j] - m) * inv)));
            if (bits == 8) out[j] = (unsigned char)code;
            else if (bits == 4) out[j % (gs / 2)] |= code << (4 * (j / (gs / 2)));
            else if (bits == 2) out[j % (gs / 4)] |= code << (2 * (j / (gs / 4)));
            else { int bit = 3 * j; out[bit >> 3] |= (unsigned char)(code << (bit & 7)); if ((bit & 7) > 5) out[(bit >> 3) + 1] |= code >> (8 - (bit & 7)); }
        }
    }

    extern "C" __global__ void store_kv_q(const float* key, const float* value,
                                          unsigned char* kd, half_t* ks, half_t* km, unsigned char* vd, half_t* vs, half_t* vm,
                                          int rows, int length, int past, int kvHeads, int headDim, int capacity, int gs, int bits) {
        int groups = (headDim + gs - 1) / gs;
        size_t n = (size_t)rows * kvHeads * groups;
        size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (idx >= n) return;
        int a = idx % groups; size_t rest = idx / groups;
        int h = rest % kvHeads; int row = rest / kvHeads;
        int b = row / length, t = row % length;
        size_t position = ((size_t)b * kvHeads + h) * capacity + past + t;
        size_t group = position * groups + a;
        int first = a * gs, count = min(gs, headDim - first);
        size_t src = (size_t)row * kvHeads * headDim + (size_t)h * headDim + first;
        int bytes = gs * bits / 8;
        quantize_group(key + src, count, gs, bits, kd + group * bytes, ks + group, km + group);
        quantize_group(value + src, count, gs, bits, vd + group * bytes, vs + group, vm + group);
    }

    extern "C" __global__ void gather_rows(const float* x, const int* indices, float* out, int cols) {
        const float* src = x + (size_t)indices[blockIdx.x] * cols;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(size_t)blockIdx.x * cols + i] = src[i];
    }

    // Decode-sized products with group-quantized weights (groups along k): one warp per output
    // column decodes each weight value once for all (<= 8) rows, so the weight is read at its
    // packed size instead of being expanded to f16 first.
    extern "C" __global__ void linear_q_small(const float* x, const unsigned char* data, const half_t* steps, const half_t* mins,
                                              const float* bias, float* out, int m, int n, int k, int gs, int bits) {
        int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
        if (warp >= n) return;
        float acc[8];
        for (int r = 0; r < 8; ++r) acc[r] = 0.f;
        int groups = (k + gs - 1) / gs;
        for (int a = 0; a < groups; ++a) {
            size_t group = (size_t)warp * groups + a;
            for (int j = lane; j < gs; j += 32) {
                int c = a * gs + j;
                if (c >= k) break;
                float w = q_decode(data, steps, mins, group, j, gs, bits);
                for (int r = 0; r < m; ++r) acc[r] += w * x[(size_t)r * k + c];
            }
        }
        for (int r = 0; r < m; ++r) {
            float v = acc[r];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffff, v, o);
            if (lane == 0) out[(size_t)r * n + warp] = v + (bias ? bias[warp] : 0.f);
        }
    }
    """#
}
