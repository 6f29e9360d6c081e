import CStrataKernels
import StrataBackend
import StrataCore
import Testing

/// `strata_half_gemm`, the AVX-512 kernel behind weights held as stored (f32, f16, bf16) at
/// decode-sized batches, called directly: below 12 rows its 4 x 4 dot-product tile, from 12 on
/// the outer-product tiles over a panel of widened weight rows (16 x 24 on paired columns up to
/// 16 rows, 32 x 12 above), with x packed by the call or by the caller.
@Suite struct HalfGEMMTests {
    /// Every tail of the tiles: rows 1-9 (4 x 4), 12-16 (16 x 24), 23, 32 and 70 (32 x 12, a
    /// partial or zero-padded last pair of blocks), panels of 24 columns with 1-23 left over,
    /// and the 4 x 4 tile's 1-3 leftover weight rows, k below, at and past 16 lanes, and a
    /// column range that starts past 0, with and without accumulation. Products are exact in
    /// f32, so only the f32 summation order differs from a double reference: 1e-6 per term.
    @Test(arguments: [(1, 1, 1), (5, 7, 13), (7, 6, 67), (9, 5, 17), (12, 3, 16), (16, 50, 1030), (13, 25, 33), (23, 4, 48),
                      (32, 49, 100), (70, 11, 130)])
    func matchesReferenceForEachWeightType(shape: (Int, Int, Int)) throws {
        guard strata_avx512_supported() != 0 else {
            try Test.cancel("this CPU has no AVX-512; strata_dot_gemm (DotGEMMTests) serves these weights here")
        }
        let (m, n, k) = shape
        let o = DenseOperands(m: m, n: n, k: k, seed: 11)
        // x packed by the caller (what CPULinear does, once for all its workers), from 12 rows on.
        let floats = strata_half_packed_floats(Int32(m), Int32(k))
        #expect((floats > 0) == (m >= 12))
        let packed = UnsafeMutableRawPointer.allocate(byteCount: max(Int(floats), 1) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: max(Int(floats), 1))
        defer { packed.deallocate() }
        strata_half_pack(Int32(m), Int32(k), o.x, packed)
        for (label, type) in [("f32", STRATA_DOT_F32), ("f16", STRATA_DOT_F16), ("bf16", STRATA_DOT_BF16)] {
            for (accumulate, prepacked) in [(false, false), (true, false), (false, true), (true, true)] {
                var out = o.old
                o.withWeight(type) { w in
                    strata_half_gemm(Int32(m), Int32(k), o.x, prepacked && floats > 0 ? packed : nil, w, Int32(type), o.first, n, &out,
                                     n, accumulate ? 1 : 0)
                }
                let (worst, kept) = o.worstError(out, type: type, accumulate: accumulate)
                #expect(kept, "\(label): a column outside the range was written")
                #expect(worst <= 1e-6 * Double(k + 1),
                        "\(label) m=\(m) n=\(n) k=\(k) accumulate \(accumulate) packed \(prepacked): max error \(worst)")
            }
        }
    }
}
