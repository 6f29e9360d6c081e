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
        let o = DenseOperands(m: m, n: n, k: k, seed: 1)
        for (label, type, accumulate) in [("f32", STRATA_DOT_F32, false), ("f16", STRATA_DOT_F16, true), ("bf16", STRATA_DOT_BF16, false)] {
            var out = o.old
            o.withWeight(type) { w in
                strata_dot_gemm(Int32(m), Int32(k), o.x, w, Int32(type), o.first, n, &out, n, accumulate ? 1 : 0, 4096)
            }
            let (worst, kept) = o.worstError(out, type: type, accumulate: accumulate)
            #expect(kept, "\(label): a column outside the range was written")
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

    /// `strata_quantized_dot_row` (batch-1 steps on 4/8-bit groups) against a double reference of
    /// the decoded weights: asymmetric groups (minimums read) and symmetric ones whose zero code
    /// is known (Q4_0's 8, Q8_0's 128; minimums never read: they are NaN here), weight-row counts
    /// that leave 1-3 rows past the 4-row tile, and accumulation.
    @Test(arguments: [(4, 32, -1), (8, 16, -1), (4, 32, 8), (8, 32, 128), (4, 64, 0), (8, 64, 128)])
    func rowKernelMatchesDecodedWeights(bits: Int, groupSize: Int, zero: Int) throws {
        let (n, k) = (7, 3 * groupSize)
        let scheme = try QuantizationScheme(bits: bits, groupSize: groupSize)
        var q = GroupQuantizer.quantize(Self.randoms(n * k, seed: 11), shape: [n, k], scheme: scheme)
        if zero >= 0 {
            // Symmetric groups: minimum = -zero * step exactly; the kernel must not read them.
            q.steps = q.steps.enumerated().map { Float16(Float(1 + $0.offset % 5) / 64) }
            q.mins = q.steps.map { Float16(-Float(zero) * Float($0)) }
        }
        let groups = k / groupSize
        var weights = [Float](repeating: 0, count: n * k)
        weights.withUnsafeMutableBufferPointer { out in
            q.data.withUnsafeBufferPointer { data in
                for index in 0..<(n * groups) {
                    GroupQuantizer.dequantizeGroup(data.baseAddress! + index * scheme.bytesPerGroup, step: q.steps[index],
                                                   minimum: q.mins[index], scheme: scheme, into: out.baseAddress! + index * groupSize)
                }
            }
        }
        let mins = zero >= 0 ? [UInt16](repeating: Float16.nan.bitPattern, count: q.mins.count) : q.mins.map(\.bitPattern)
        let x = Self.randoms(k, seed: 12), old = Self.randoms(n, seed: 13)
        for accumulate in [false, true] {
            var out = old
            q.data.withUnsafeBufferPointer { data in
                strata_quantized_dot_row(Int32(k), x, data.baseAddress!, q.steps.map(\.bitPattern), mins, Int32(zero), Int32(bits),
                                         Int32(groupSize), 0, n, &out, accumulate ? 1 : 0)
            }
            for c in 0..<n {
                var expected = accumulate ? Double(old[c]) : 0, magnitude = 0.0
                for i in 0..<k {
                    expected += Double(x[i]) * Double(weights[c * k + i])
                    magnitude += abs(Double(x[i]) * Double(weights[c * k + i]))
                }
                // f32 rounding of sums whose terms total `magnitude`: 1e-6 of it per 16 terms is generous.
                #expect(abs(Double(out[c]) - expected) <= 1e-6 * magnitude * Double(k / 16 + 1) + 1e-6,
                        "\(bits)-bit g\(groupSize) zero \(zero) row \(c): \(out[c]) vs \(expected)")
            }
        }
    }
}

/// Operands for the dense-weight kernel tests (DotGEMMTests, HalfGEMMTests): x [m, k], a weight
/// [n, k] of values exact in f16 (as f32, f16 and bf16 bit patterns, the bf16 ones rounded),
/// earlier output values, and a column range that starts past 0 where n allows.
struct DenseOperands {
    let m: Int, n: Int, k: Int, first: Int
    let x: [Float], exact: [Float], bf16Values: [Float], old: [Float]
    let halves: [UInt16], bf16: [UInt16]

    init(m: Int, n: Int, k: Int, seed: UInt64) {
        (self.m, self.n, self.k, first) = (m, n, k, n > 2 ? 1 : 0)
        x = DotGEMMTests.randoms(m * k, seed: seed)
        exact = DotGEMMTests.randoms(n * k, seed: seed + 1).map { Float(Float16($0)) }
        bf16Values = exact.map { Precision.bf16ToFloat(Precision.floatToBF16($0)) }
        halves = exact.map { Float16($0).bitPattern }
        bf16 = exact.map { Precision.floatToBF16($0) }
        old = DotGEMMTests.randoms(m * n, seed: seed + 2)
    }

    /// Calls `body` with the weight's bytes in `type` (STRATA_DOT_F32 / F16 / BF16).
    func withWeight(_ type: Int, _ body: (UnsafeRawPointer) -> Void) {
        switch type {
        case STRATA_DOT_F16: halves.withUnsafeBytes { body($0.baseAddress!) }
        case STRATA_DOT_BF16: bf16.withUnsafeBytes { body($0.baseAddress!) }
        default: exact.withUnsafeBytes { body($0.baseAddress!) }
        }
    }

    /// The largest |out - reference| over columns from `first` (reference in double, plus `old`
    /// when accumulating), and whether the columns before `first` kept their old values.
    func worstError(_ out: [Float], type: Int, accumulate: Bool) -> (worst: Double, kept: Bool) {
        let values = type == STRATA_DOT_BF16 ? bf16Values : exact
        var worst = 0.0, kept = true
        for r in 0..<m {
            for c in 0..<n {
                if c < first {
                    kept = kept && out[r * n + c] == old[r * n + c]
                    continue
                }
                var s = accumulate ? Double(old[r * n + c]) : 0
                for i in 0..<k { s += Double(x[r * k + i]) * Double(values[c * k + i]) }
                worst = max(worst, abs(Double(out[r * n + c]) - s))
            }
        }
        return (worst, kept)
    }
}
