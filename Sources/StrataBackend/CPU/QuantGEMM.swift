import COpenBLAS
import StrataCore

/// out[m, n] = beta * out[m, n] + sum_k x[m, k] * w[n, k] for a group-quantized w whose groups
/// run along k. Each pair of weight rows is decoded into a small f32 scratch (L1-sized) and then
/// multiplied by every row group of x with the same 4x2 register tile as `HalfGEMM`, so decoding
/// costs one pass over the packed weight per call and the weight never exists in f32 in full.
enum QuantGEMM {
    /// Up to this many rows the fused path beats decode-a-slab-then-sgemm (`strata bench-gemm`).
    static let maxRows = 64
    /// Packed bytes prefetched ahead of the pair being decoded.
    static let prefetchBytes = 4096

    static func supports(_ layout: QuantizedLayout) -> Bool { layout.geometry.inner == 1 }

    static func run(m: Int, k: Int, x: UnsafePointer<Float>, weight: Tensor, columns: Range<Int>,
                    out: UnsafeMutablePointer<Float>, ldc: Int, beta: Float) {
        let layout = weight.quantization!
        let rowBytes = layout.geometry.groupsAlongAxis * layout.scheme.bytesPerGroup
        let data = UnsafePointer(weight.buffer.pointer.assumingMemoryBound(to: UInt8.self))
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * k)
        defer { scratch.deallocate() }
        var n = columns.lowerBound
        while n < columns.upperBound {
            let pair = min(2, columns.upperBound - n)
            for p in stride(from: 0, to: 2 * rowBytes, by: 64) { strata_prefetch(data + (n + 2) * rowBytes + prefetchBytes + p) }
            CPUBackend.dequantizeRows(weight, rows: n..<(n + pair), into: scratch)
            let w0 = UnsafePointer(scratch), w1 = UnsafePointer(scratch + (pair - 1) * k)
            var r = 0
            while r < m {
                HalfGEMM.tile(k: k, x: x + r * k, rows: min(4, m - r), w0: w0, w1: w1, out: out + r * ldc + n, ldc: ldc,
                              columns: pair, beta: beta, prefetch: false)
                r += 4
            }
            n += pair
        }
    }
}
