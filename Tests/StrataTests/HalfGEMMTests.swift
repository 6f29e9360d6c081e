import CStrataKernels
import StrataBackend
import StrataCore
import Testing

/// `strata_half_gemm`, the AVX-512 kernel behind weights held as stored (f32, f16, bf16) at
/// decode-sized batches, called directly: below 8 rows its 4 x 4 tile, from 8 rows on the
/// 8 x 3 tile over weight rows widened into a buffer, with its shuffle-tree reduction.
@Suite struct HalfGEMMTests {
    /// Every tail of both tiles: rows 1-7 (4 x 4), 8, 9, 16, 23 and 70 (8 x 3, a partial last
    /// group), 1-2 leftover weight rows of 3 and 1-3 of 4, k below, at and past 16 lanes, and a
    /// column range that starts past 0, with and without accumulation. Products are exact in
    /// f32, so only the f32 summation order differs from a double reference: 1e-6 per term.
    @Test(arguments: [(1, 1, 1), (5, 7, 13), (7, 6, 67), (8, 3, 16), (9, 5, 17), (16, 8, 1030), (23, 4, 48), (70, 11, 130)])
    func matchesReferenceForEachWeightType(shape: (Int, Int, Int)) throws {
        guard strata_avx512_supported() != 0 else {
            try Test.cancel("this CPU has no AVX-512; strata_dot_gemm (DotGEMMTests) serves these weights here")
        }
        let (m, n, k) = shape
        let x = DotGEMMTests.randoms(m * k, seed: 11)
        let exact = DotGEMMTests.randoms(n * k, seed: 12).map { Float(Float16($0)) }
        let bf16Values = exact.map { Precision.bf16ToFloat(Precision.floatToBF16($0)) }
        let halves = exact.map { Float16($0).bitPattern }
        let bf16 = exact.map { Precision.floatToBF16($0) }
        let first = n > 2 ? 1 : 0
        let old = DotGEMMTests.randoms(m * n, seed: 13)
        for (label, values, type) in [("f32", exact, STRATA_DOT_F32), ("f16", exact, STRATA_DOT_F16), ("bf16", bf16Values, STRATA_DOT_BF16)] {
            for accumulate in [false, true] {
                var out = old
                let call = { (w: UnsafeRawPointer) in
                    strata_half_gemm(Int32(m), Int32(k), x, w, Int32(type), first, n, &out, n, accumulate ? 1 : 0)
                }
                switch type {
                case STRATA_DOT_F16: halves.withUnsafeBytes { call($0.baseAddress!) }
                case STRATA_DOT_BF16: bf16.withUnsafeBytes { call($0.baseAddress!) }
                default: exact.withUnsafeBytes { call($0.baseAddress!) }
                }
                var worst = 0.0
                for r in 0..<m {
                    for c in 0..<n {
                        if c < first {
                            #expect(out[r * n + c] == old[r * n + c], "\(label): column \(c) outside the range was written")
                            continue
                        }
                        var s = accumulate ? Double(old[r * n + c]) : 0
                        for i in 0..<k { s += Double(x[r * k + i]) * Double(values[c * k + i]) }
                        worst = max(worst, abs(Double(out[r * n + c]) - s))
                    }
                }
                #expect(worst <= 1e-6 * Double(k + 1), "\(label) m=\(m) n=\(n) k=\(k) accumulate \(accumulate): max error \(worst)")
            }
        }
    }
}
