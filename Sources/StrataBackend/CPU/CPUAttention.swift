import CStrataKernels
import COpenBLAS
import StrataCore
#if canImport(Glibc)
import Glibc
#endif

extension CPUBackend {
    public func applyRotary(_ x: Tensor, heads: Int, headDim: Int, cos: Tensor, sin: Tensor) {
        let half = headDim / 2
        let p = x.floats, c = cos.floats, s = sin.floats
        let width = heads * headDim
        for r in 0..<x.rows {
            let cr = c + r * half, sr = s + r * half
            for h in 0..<heads {
                let v = p + r * width + h * headDim
                for i in 0..<half {
                    let x1 = v[i], x2 = v[i + half]
                    v[i] = x1 * cr[i] - x2 * sr[i]
                    v[i + half] = x2 * cr[i] + x1 * sr[i]
                }
            }
        }
    }

    public func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) {
        let d = layout.headDim, kvh = layout.kvHeads, capacity = keyCache.shape[2]
        precondition(layout.pastLength + layout.length <= capacity, "KV cache overflow")
        for b in 0..<layout.batch {
            for t in 0..<layout.length {
                let row = b * layout.length + t
                let position = layout.pastLength + t
                for h in 0..<kvh {
                    let cacheRow = (b * kvh + h) * capacity + position
                    let k = key.floats + row * kvh * d + h * d, v = value.floats + row * kvh * d + h * d
                    if keyCache.quantization != nil {
                        Self.storeQuantizedRow(keyCache, row: cacheRow, from: k)
                        Self.storeQuantizedRow(valueCache, row: cacheRow, from: v)
                    } else if keyCache.dtype == .bf16 || keyCache.dtype == .f16 {
                        let keys = keyCache.buffer.pointer.assumingMemoryBound(to: UInt16.self) + cacheRow * d
                        let values = valueCache.buffer.pointer.assumingMemoryBound(to: UInt16.self) + cacheRow * d
                        if keyCache.dtype == .f16 {
                            strata_f16_round(k, d, keys)
                            strata_f16_round(v, d, values)
                        } else {
                            BF16GEMM.roundToBF16(k, keys, count: d)
                            BF16GEMM.roundToBF16(v, values, count: d)
                        }
                    } else {
                        (keyCache.floats + cacheRow * d).update(from: k, count: d)
                        (valueCache.floats + cacheRow * d).update(from: v, count: d)
                    }
                }
            }
        }
    }

    /// Up to this many queries per row (decode steps), attention runs as SIMD dot products:
    /// two tiny sgemm calls per (row, head) cost more in call overhead than in arithmetic.
    static let directAttentionMaxQueries = 4
    /// Queries per causal block of a prefill's attention.
    static let causalBlock = 32

    /// One query against `visible` cached keys: out = softmax(scale * q K^T) V.
    @inline(__always)
    static func attendDirect(query: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                             visible: Int, headDim d: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                             out: UnsafeMutablePointer<Float>) {
        for i in 0..<d { out[i] = 0 }
        guard visible > 0 else { return }
        let dVector = d & ~7
        @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
            UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
        }
        // Scores four keys at a time: four independent FMA chains instead of one.
        var j = 0
        while j + 4 <= visible {
            let k0 = keys + j * d, k1 = k0 + d, k2 = k1 + d, k3 = k2 + d
            var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
            var i = 0
            while i < dVector {
                let q = load(query + i)
                a0 = a0.addingProduct(q, load(k0 + i)); a1 = a1.addingProduct(q, load(k1 + i))
                a2 = a2.addingProduct(q, load(k2 + i)); a3 = a3.addingProduct(q, load(k3 + i))
                i += 8
            }
            var dots = (HalfGEMM.reduce(a0), HalfGEMM.reduce(a1), HalfGEMM.reduce(a2), HalfGEMM.reduce(a3))
            while i < d {
                dots.0 += query[i] * k0[i]; dots.1 += query[i] * k1[i]; dots.2 += query[i] * k2[i]; dots.3 += query[i] * k3[i]
                i += 1
            }
            scores[j] = dots.0 * scale; scores[j + 1] = dots.1 * scale; scores[j + 2] = dots.2 * scale; scores[j + 3] = dots.3 * scale
            j += 4
        }
        while j < visible {
            let key = keys + j * d
            var dot: Float = 0
            for i in 0..<d { dot += query[i] * key[i] }
            scores[j] = dot * scale
            j += 1
        }
        Softmax.normalize(scores, count: visible)
        // P V in 32-column chunks: four accumulators stay in registers across all keys.
        var c = 0
        while c + 32 <= dVector {
            var o0 = SIMD8<Float>(), o1 = SIMD8<Float>(), o2 = SIMD8<Float>(), o3 = SIMD8<Float>()
            for j in 0..<visible {
                let p = SIMD8<Float>(repeating: scores[j]), v = values + j * d + c
                o0 = o0.addingProduct(p, load(v)); o1 = o1.addingProduct(p, load(v + 8))
                o2 = o2.addingProduct(p, load(v + 16)); o3 = o3.addingProduct(p, load(v + 24))
            }
            let o = UnsafeMutableRawPointer(out + c)
            o.storeBytes(of: o0, as: SIMD8<Float>.self); o.storeBytes(of: o1, toByteOffset: 32, as: SIMD8<Float>.self)
            o.storeBytes(of: o2, toByteOffset: 64, as: SIMD8<Float>.self); o.storeBytes(of: o3, toByteOffset: 96, as: SIMD8<Float>.self)
            c += 32
        }
        for j in 0..<visible {
            let p = scores[j], value = values + j * d
            for i in c..<d { out[i] += p * value[i] }
        }
    }

    /// Per (row, head): scores = q K^T, masked softmax, then P V; OpenBLAS for prefill-sized query
    /// blocks, `attendDirect` for decode steps.
    public func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        let B = layout.batch, T = layout.length, H = layout.heads, D = layout.headDim
        let group = H / layout.kvHeads
        let capacity = keyCache.shape[2]
        let total = layout.pastLength + T
        let width = H * D
        let out = zeros(shape: [B * T, width])
        let q = query.floats, kc = keyCache.floats, vc = valueCache.floats, o = out.floats
        let padding = layout.padding
        let scale = layout.scale
        let compressed = keyCache.quantization != nil
        // A 16-bit (bf16 or f16) cache is read as it is by decode steps and widened for prefill
        // blocks.
        let halves = (keyCache.dtype == .bf16 || keyCache.dtype == .f16) && !compressed
        let f16: Int32 = keyCache.dtype == .f16 ? 1 : 0
        let wide = CPUSetup.avx512Kernels && D % 16 == 0
        // Chunks taken in turn (`parallelChunks`): a decode step's attention lasts about as long
        // as GCD takes to wake the second worker.
        parallelChunks(B * H, threads: threads, grain: max(1, B * H / (threads * 8))) { range in
            let scores = scratch(T * total)
            // A compressed cache is decoded per (row, head) into f32 just before use.
            let decoded = compressed || (halves && T > Self.directAttentionMaxQueries) ? scratch(2 * total * D) : nil
            defer { release(scores, T * total); if let decoded { release(decoded, 2 * total * D) } }
            for task in range {
                let b = task / H, h = task % H
                let kvOffset = (b * layout.kvHeads + h / group) * capacity * D
                let pad = padding[b]
                let valid = total - pad
                guard valid > 0 else { continue }
                let qBase = q + b * T * width + h * D
                // (f32 pointers into the cache; a bf16 or compressed cache replaces them below)
                var keys = UnsafePointer(kc + kvOffset + pad * D), values = UnsafePointer(vc + kvOffset + pad * D)
                if halves {
                    let keyHalves = keyCache.buffer.pointer.assumingMemoryBound(to: UInt16.self) + kvOffset + pad * D
                    let valueHalves = valueCache.buffer.pointer.assumingMemoryBound(to: UInt16.self) + kvOffset + pad * D
                    if let decoded {
                        strata_cache_widen(keyHalves, f16, valid * D, decoded)
                        strata_cache_widen(valueHalves, f16, valid * D, decoded + total * D)
                        keys = UnsafePointer(decoded)
                        values = UnsafePointer(decoded + total * D)
                    } else {
                        for t in 0..<T {
                            let visible = layout.pastLength + t + 1 - pad
                            let output = o + (b * T + t) * width + h * D
                            guard visible > 0 else { continue }
                            if wide {
                                strata_cache_scores_avx512(qBase + t * width, keyHalves, f16, Int32(visible), Int32(D), scale, scores)
                                Softmax.normalize(scores, count: visible)
                                strata_cache_weighted_sum_avx512(scores, valueHalves, f16, Int32(visible), Int32(D), output)
                            } else {
                                strata_cache_scores(qBase + t * width, keyHalves, f16, Int32(visible), Int32(D), scale, scores)
                                Softmax.normalize(scores, count: visible)
                                strata_cache_weighted_sum(scores, valueHalves, f16, Int32(visible), Int32(D), output)
                            }
                        }
                        continue
                    }
                } else if let decoded {
                    let firstRow = kvOffset / D + pad
                    Self.dequantizeRows(keyCache, rows: firstRow..<(firstRow + valid), into: decoded)
                    Self.dequantizeRows(valueCache, rows: firstRow..<(firstRow + valid), into: decoded + total * D)
                    keys = UnsafePointer(decoded)
                    values = UnsafePointer(decoded + total * D)
                }
                if T <= Self.directAttentionMaxQueries {
                    for t in 0..<T {
                        let visible = layout.pastLength + t + 1 - pad
                        Self.attendDirect(query: qBase + t * width, keys: keys, values: values, visible: visible, headDim: D,
                                          scale: scale, scores: scores, out: o + (b * T + t) * width + h * D)
                    }
                    continue
                }
                // Causal: a block of queries sees the keys up to its last query's position, so
                // the products run over blocks of `causalBlock` queries, each over those keys
                // only (5/8 of the full products at 4 blocks).
                var t0 = 0
                while t0 < T {
                    let rows = min(Self.causalBlock, T - t0)
                    let seen = min(valid, max(0, layout.pastLength + t0 + rows - pad))
                    let output = o + (b * T + t0) * width + h * D
                    guard seen > 0 else {
                        t0 += rows
                        continue
                    }
                    // scores[rows, seen] = scale * Q[t0..., D] x K[pad..<pad + seen, D]^T
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(seen), Int32(D),
                                scale, qBase + t0 * width, Int32(width), keys, Int32(D), 0, scores, Int32(seen))
                    for t in 0..<rows {
                        let row = scores + t * seen
                        // Query t0 + t sits at cache position pastLength + t0 + t; later keys are masked.
                        let visible = layout.pastLength + t0 + t + 1 - pad
                        if visible <= 0 {
                            for j in 0..<seen { row[j] = 0 }
                            continue
                        }
                        Softmax.normalize(row, count: visible)
                        for j in visible..<seen { row[j] = 0 }
                    }
                    // out[rows, D] = P[rows, seen] x V[pad..<pad + seen, D]
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(D), Int32(seen),
                                1, scores, Int32(seen), values, Int32(D), 0, output, Int32(width))
                    t0 += rows
                }
            }
        }
        return out
    }
}
