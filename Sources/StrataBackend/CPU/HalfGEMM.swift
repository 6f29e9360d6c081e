import COpenBLAS
import CStrataKernels
import StrataCore

/// out[m, n] = beta * out[m, n] + sum_k x[m, k] * w[n, k] with w stored as f16 (or bf16) and
/// widened on the fly, or f32, for decode-sized batches where OpenBLAS would first need a full
/// f32 copy of the weight (and packs even an f32 one whole on every call):
/// `strata_half_gemm` (AVX-512: 4 x 4 dot-product tiles below 12 rows, outer-product tiles over
/// panels of widened weight rows from 12 on, see `multiply`) where `CPUSetup.avx512Kernels`, else
/// `strata_dot_gemm` (AVX2, 4 x 3 tiles).
enum HalfGEMM {
    /// How far ahead (in weight elements) the weight stream is prefetched while the first row
    /// group runs: far enough to cover DRAM latency, so weight loads overlap the FMAs instead of
    /// adding to them (decode batches are half memory-bound on f16 weights).
    static let prefetchDistance = 16384

    /// Up to this many rows the fused kernel beats widen-then-sgemm (measured with
    /// `strata bench-gemm`); above it the weight is reused enough for OpenBLAS to win.
    static let maxRows = 64

    /// The kernel `multiply` uses on this machine, by name (for `strata bench-gemm`).
    static var kernel: String { CPUSetup.avx512Kernels ? "avx512" : "avx2" }

    /// The C kernels' name for a weight element type (STRATA_DOT_*).
    static func kernelType(_ dtype: DType) -> Int32 {
        switch dtype {
        case .f16: return Int32(STRATA_DOT_F16)
        case .bf16: return Int32(STRATA_DOT_BF16)
        case .f32: return Int32(STRATA_DOT_F32)
        case .u8: preconditionFailure("HalfGEMM: u8 codes go through QuantGEMM")
        }
    }

    /// out[m, n] (row stride n) for weight rows of `dtype`, exact in f32. From
    /// STRATA_HALF_PACKED_ROWS rows on, on AVX-512: x is packed once, and the workers take chunks
    /// of a few panels of weight rows in turn (`parallelChunks`). With one half per worker, a
    /// worker that woke late held up the whole call: two workers ran a 16-row 1024 x 1024 product
    /// at about a third of their FMA peak. Otherwise each worker runs the kernel on its half.
    static func multiply(m: Int, n: Int, k: Int, x: UnsafePointer<Float>, w: UnsafeRawPointer, dtype: DType,
                         out: UnsafeMutablePointer<Float>, beta: Float, threads: Int) {
        let type = kernelType(dtype), accumulate: Int32 = beta == 0 ? 0 : 1
        guard CPUSetup.avx512Kernels, m >= Int(STRATA_HALF_PACKED_ROWS) else {
            parallelFor(n, threads: threads, minimumPerThread: 64) { columns in
                if CPUSetup.avx512Kernels {
                    strata_half_gemm(Int32(m), Int32(k), x, nil, w, type, columns.lowerBound, columns.upperBound, out, n, accumulate)
                } else {
                    strata_dot_gemm(Int32(m), Int32(k), x, w, type, columns.lowerBound, columns.upperBound, out, n, accumulate,
                                    prefetchDistance * dtype.byteSize)
                }
            }
            return
        }
        let floats = strata_half_packed_floats(Int32(m), Int32(k))
        let packed = UnsafeMutableRawPointer.allocate(byteCount: max(floats, 1) * MemoryLayout<Float>.size, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(floats, 1))
        defer { packed.deallocate() }
        strata_half_pack(Int32(m), Int32(k), x, packed)
        let panel = Int(STRATA_HALF_PANEL_ROWS)
        let grain = max(panel, (n / (threads * 4) + panel - 1) / panel * panel)
        parallelChunks(n, threads: threads, grain: grain) { columns in
            strata_half_gemm(Int32(m), Int32(k), x, packed, w, type, columns.lowerBound, columns.upperBound, out, n, accumulate)
        }
    }

    /// Pairwise horizontal sum: three dependent vector adds instead of `sum()`'s serial chain.
    @inline(__always)
    static func reduce(_ v: SIMD8<Float>) -> Float {
        let four = v.lowHalf + v.highHalf
        let two = four.lowHalf + four.highHalf
        return two[0] + two[1]
    }
}
