import COpenBLAS
import CStrataKernels
import StrataCore

/// out[m, n] = beta * out[m, n] + sum_k x[m, k] * w[n, k] for a group-quantized w whose groups
/// run along k. Each triple of weight rows is decoded into a small f32 scratch (L1-sized) and
/// then multiplied by every row group of x with the 4 x 3 register tile of `strata_dot_gemm`, so
/// decoding costs one pass over the packed weight per call and the weight never exists in f32
/// in full.
enum QuantGEMM {
    /// Up to this many rows the fused path beats decode-a-slab-then-sgemm (`strata bench-gemm`).
    static let maxRows = 64
    /// Packed bytes prefetched ahead of the triple being decoded.
    static let prefetchBytes = 4096
    /// Weight rows decoded at a time: the tile's width.
    static let rowsPerStep = 3

    static func supports(_ layout: QuantizedLayout) -> Bool { layout.geometry.inner == 1 }

    static func run(m: Int, k: Int, x: UnsafePointer<Float>, weight: Tensor, columns: Range<Int>,
                    out: UnsafeMutablePointer<Float>, ldc: Int, beta: Float) {
        let layout = weight.quantization!
        let rowBytes = layout.geometry.groupsAlongAxis * layout.scheme.bytesPerGroup
        let data = UnsafePointer(weight.buffer.pointer.assumingMemoryBound(to: UInt8.self))
        let scheme = layout.scheme
        if m == 1, layout.hasWholeRowGroups {
            // A batch-1 step: decoding each weight to f32 and reading it back for a single FMA
            // cost more than the FMA; the codes multiply x as they are, scaled once per group.
            let base = UnsafeRawPointer(weight.buffer.pointer)
            strata_quantized_dot_row(Int32(k), x, data, (base + layout.stepsOffset).assumingMemoryBound(to: UInt16.self),
                                     (base + layout.minsOffset).assumingMemoryBound(to: UInt16.self), Int32(layout.zero ?? -1),
                                     Int32(scheme.bits), Int32(scheme.groupSize), columns.lowerBound, columns.upperBound, out,
                                     beta == 0 ? 0 : 1)
            return
        }
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rowsPerStep * k)
        defer { scratch.deallocate() }
        var n = columns.lowerBound
        while n < columns.upperBound {
            let count = min(rowsPerStep, columns.upperBound - n)
            for p in stride(from: 0, to: rowsPerStep * rowBytes, by: 64) {
                strata_prefetch(data + (n + rowsPerStep) * rowBytes + prefetchBytes + p)
            }
            CPUBackend.dequantizeRows(weight, rows: n..<(n + count), into: scratch)
            strata_dot_gemm(Int32(m), Int32(k), x, scratch, Int32(STRATA_DOT_F32), 0, count, out + n, ldc, beta == 0 ? 0 : 1, 0)
            n += count
        }
    }
}
