/// out[m, n] = beta * out[m, n] + sum_k x[m, k] * w[n, k] with w stored as f16 and widened in
/// registers (F16C), for decode-sized batches where OpenBLAS would first need a full f32 copy
/// of the weight. Four rows of x share each widened weight vector.
enum HalfGEMM {
    /// Up to this many rows the fused kernel beats widen-then-sgemm (measured in
    /// BENCHMARKS.md); above it the weight is reused enough for OpenBLAS to win.
    static let maxRows = 16

    static func run(m: Int, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float16>, columns: Range<Int>,
                    out: UnsafeMutablePointer<Float>, ldc: Int, beta: Float) {
        let kVector = k & ~15
        var r = 0
        while r < m {
            let rows = min(4, m - r)
            let x0 = x + r * k
            let x1 = x + min(r + 1, m - 1) * k
            let x2 = x + min(r + 2, m - 1) * k
            let x3 = x + min(r + 3, m - 1) * k
            for n in columns {
                let wr = w + n * k
                var a0 = SIMD16<Float>(), a1 = SIMD16<Float>(), a2 = SIMD16<Float>(), a3 = SIMD16<Float>()
                var i = 0
                while i < kVector {
                    let wv = SIMD16<Float>(UnsafeRawPointer(wr + i).loadUnaligned(as: SIMD16<Float16>.self))
                    a0 = a0.addingProduct(UnsafeRawPointer(x0 + i).loadUnaligned(as: SIMD16<Float>.self), wv)
                    a1 = a1.addingProduct(UnsafeRawPointer(x1 + i).loadUnaligned(as: SIMD16<Float>.self), wv)
                    a2 = a2.addingProduct(UnsafeRawPointer(x2 + i).loadUnaligned(as: SIMD16<Float>.self), wv)
                    a3 = a3.addingProduct(UnsafeRawPointer(x3 + i).loadUnaligned(as: SIMD16<Float>.self), wv)
                    i += 16
                }
                var s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
                while i < k {
                    let wv = Float(wr[i])
                    s0 += x0[i] * wv; s1 += x1[i] * wv; s2 += x2[i] * wv; s3 += x3[i] * wv
                    i += 1
                }
                let o = out + r * ldc + n
                if beta == 0 { o[0] = s0 } else { o[0] += s0 }
                if rows > 1 { if beta == 0 { o[ldc] = s1 } else { o[ldc] += s1 } }
                if rows > 2 { if beta == 0 { o[2 * ldc] = s2 } else { o[2 * ldc] += s2 } }
                if rows > 3 { if beta == 0 { o[3 * ldc] = s3 } else { o[3 * ldc] += s3 } }
            }
            r += 4
        }
    }
}
