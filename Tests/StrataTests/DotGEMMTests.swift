import CStrataKernels
import StrataBackend
import StrataCore
import Testing

/// `strata_dot_gemm`, the AVX2 decode kernel behind f16/bf16 weights on CPUs without AVX-512
/// and behind every fused quantized matmul, called directly so it is checked on every CPU
/// (an AVX-512 machine's `linear` takes another kernel for f16 weights).
@Suite struct DotGEMMTests {
    static func randoms(_ count: Int, seed: UInt64) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Float(state % 2001) / 1000 - 1
        }
    }

    /// Every tail the 4 x 3 tile has: 1-3 leftover rows, 1-2 leftover weight rows, k not a
    /// multiple of 8 (and below 8), a column range that starts past 0, and accumulation. The
    /// products are exact in f32 (f16 and bf16 values widen exactly), so the result may differ
    /// from a double-precision reference only by f32 summation: 1e-6 per term of magnitude <= 1.
    @Test(arguments: [(1, 1, 1), (4, 3, 8), (5, 7, 13), (7, 5, 67), (16, 9, 1030), (3, 4, 5)])
    func matchesReferenceForEachWeightType(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let x = Self.randoms(m * k, seed: 1)
        let exact = Self.randoms(n * k, seed: 2).map { Float(Float16($0)) }
        let bf16Values = exact.map { Precision.bf16ToFloat(Precision.floatToBF16($0)) }
        let halves = exact.map { Float16($0).bitPattern }
        let bf16 = exact.map { Precision.floatToBF16($0) }
        let first = n > 2 ? 1 : 0
        let old = Self.randoms(m * n, seed: 3)
        for (label, values, type, accumulate) in [("f32", exact, STRATA_DOT_F32, false), ("f16", exact, STRATA_DOT_F16, true),
                                                 ("bf16", bf16Values, STRATA_DOT_BF16, false)] {
            var out = old
            let call = { (w: UnsafeRawPointer) in
                strata_dot_gemm(Int32(m), Int32(k), x, w, Int32(type), first, n, &out, n, accumulate ? 1 : 0, 4096)
            }
            switch type {
            case STRATA_DOT_F16: halves.withUnsafeBytes { call($0.baseAddress!) }
            case STRATA_DOT_BF16: bf16.withUnsafeBytes { call($0.baseAddress!) }
            default: exact.withUnsafeBytes { call($0.baseAddress!) }
            }
            var worst = 0.0
            for r in 0..<m {
                for c in 0..<n {
                    let got = Double(out[r * n + c])
                    if c < first {
                        #expect(out[r * n + c] == old[r * n + c], "\(label): column \(c) outside the range was written")
                        continue
                    }
                    var s = accumulate ? Double(old[r * n + c]) : 0
                    for i in 0..<k { s += Double(x[r * k + i]) * Double(values[c * k + i]) }
                    worst = max(worst, abs(got - s))
                }
            }
            #expect(worst <= 1e-6 * Double(k + 1), "\(label) m=\(m) n=\(n) k=\(k): max error \(worst)")
        }
    }

    /// `strata_dequantize_rows` (whole 4- and 8-bit groups along rows) gives bit for bit what
    /// the Swift group decoder does, so the fused quantized matmul's weights did not change.
    @Test(arguments: [(4, 32), (8, 32), (4, 64), (8, 16), (4, 128)])
    func rowDecoderMatchesTheGroupDecoder(bits: Int, groupSize: Int) throws {
        let (n, k) = (5, 4 * groupSize)
        let scheme = try QuantizationScheme(bits: bits, groupSize: groupSize)
        let q = GroupQuantizer.quantize(Self.randoms(n * k, seed: 7), shape: [n, k], scheme: scheme)
        var expected = [Float](repeating: .nan, count: n * k)
        expected.withUnsafeMutableBufferPointer { out in
            q.data.withUnsafeBufferPointer { data in
                for index in 0..<(n * k / groupSize) {
                    GroupQuantizer.dequantizeGroup(data.baseAddress! + index * scheme.bytesPerGroup, step: q.steps[index],
                                                   minimum: q.mins[index], scheme: scheme, into: out.baseAddress! + index * groupSize)
                }
            }
        }
        let backend = CPUBackend(threads: 1)
        let decoded = backend.download(backend.upload(quantized: q))
        #expect(decoded.map(\.bitPattern) == expected.map(\.bitPattern), "\(bits)-bit groups of \(groupSize)")
    }
}
