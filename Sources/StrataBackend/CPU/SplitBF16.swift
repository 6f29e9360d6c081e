import CStrataKernels

/// f16 weights on the bf16 matrix units at near-f32 accuracy (`--weight-format split-bf16`):
/// the bf16x3 scheme. Each weight w is split into bf16 hi + lo, which hold an f16 value exactly,
/// and each input x into bf16 xh + xl (16 of f32's 24 significant bits); one matmul of depth 3k
/// over [xh | xh | xl] and [hi; lo; hi] sums xh hi + xh lo + xl hi in f32. What it leaves out,
/// xl lo and x's last 8 bits, is about 2^-17 of each product, where rounding x to bf16 (what
/// `--weight-format bf16` does) costs 2^-9. Three times the matrix-unit work of bf16, which AMX
/// has to spare: for batches past `minRows` rows it beats the exact f32 kernels; up to there
/// the exact AVX-512 tile (`HalfGEMM`) serves. The weights stay f16 in memory and are split into
/// panels as they are used (`QuantizedPanels.runPanels`: L2-sized runs per worker, or the whole
/// weight once for a prefill).
enum SplitBF16 {
    /// Where this runs: oneDNN on packed panels and the AVX512-BF16 splitter.
    static var available: Bool { BF16GEMM.packsPanels && QuantizedPanels.available }

    /// Up to this many rows the exact f32 tile serves (at a few rows the weight's bytes bound the
    /// step either way, and three matmul passes would only add work).
    static let minRows = 8

    static func serves(_ weight: Tensor, rows: Int) -> Bool {
        available && rows > minRows && weight.dtype == .f16 && weight.quantization == nil && weight.shape.count == 2
            && weight.columns % 32 == 0 && weight.columns > 0
    }

    /// x [m, k] as [xh | xh | xl] rows in a scratch of `splitFloats` values the caller releases.
    static func split(_ x: UnsafePointer<Float>, m: Int, k: Int, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>)
        -> UnsafeMutablePointer<Float> {
        let storage = scratch(splitFloats(m: m, k: k))
        let halves = UnsafeMutableRawPointer(storage).assumingMemoryBound(to: UInt16.self)
        parallelFor(m, threads: threads, minimumPerThread: max(1, 8192 / max(k, 1))) { rows in
            strata_bf16_split3(x + rows.lowerBound * k, rows.count, Int32(k), halves + rows.lowerBound * 3 * k)
        }
        return storage
    }

    static func splitFloats(m: Int, k: Int) -> Int { (3 * m * k + 1) / 2 }

    /// out = x * weight^T (+ bias) for inputs already split by `split`.
    static func multiply(m: Int, n: Int, k: Int, split: UnsafeMutablePointer<Float>, weight: Tensor, bias: UnsafePointer<Float>?,
                         out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                         release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard m > 0, n > 0 else { return }
        let w = weight.buffer.pointer.assumingMemoryBound(to: UInt16.self)
        QuantizedPanels.runPanels(m: m, n: n, depth: 3 * k, a: UnsafeRawPointer(split), decode: { rows, panels in
            strata_split_f16_panels(w, Int32(k), rows.lowerBound, rows.upperBound, panels)
        }, bias: bias, out: out, threads: threads, scratch: scratch, release: release)
    }
}
