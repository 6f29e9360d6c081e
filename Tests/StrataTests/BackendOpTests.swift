import Foundation
import StrataBackend
import StrataCore
import StrataRuntime
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Backend kernels against plain double-precision references on awkward shapes (rows not a
/// multiple of the register tile, k not a multiple of the vector width, odd column counts).
@Suite struct BackendOpTests {
    static func randoms(_ count: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<count).map { _ in Float.random(in: -1...1, using: &rng) }
    }

    /// `parallelChunks` hands out every index exactly once, in chunks of `grain` (the last one
    /// short), whatever the thread count.
    @Test(arguments: [(0, 16, 2), (1, 16, 2), (1000, 16, 2), (1000, 64, 3), (33, 1, 4), (64, 64, 2)])
    func parallelChunksCoverEveryIndexOnce(case c: (Int, Int, Int)) {
        let (count, grain, threads) = c
        let seen = Mutex([Int](repeating: 0, count: count)), ranges = Mutex([Range<Int>]())
        parallelChunks(count, threads: threads, grain: grain) { range in
            ranges.withLock { $0.append(range) }
            seen.withLock { for i in range { $0[i] += 1 } }
        }
        #expect(seen.withLock { $0.allSatisfy { $0 == 1 } })
        #expect(ranges.withLock { $0.allSatisfy { $0.lowerBound % grain == 0 && ($0.count == grain || $0.upperBound == count) } })
    }

    /// (70, 9, 4100): x's rows split into L2-sized blocks in the AVX-512 kernel.
    @Test(arguments: [(1, 1, 1), (3, 7, 9), (5, 65, 67), (17, 3, 64), (70, 33, 130), (70, 9, 4100)])
    func linearPathsMatchReference(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let backend = CPUBackend(threads: 2, weightFormat: .asStored)
        let weights = Self.randoms(n * k, seed: 1).map { Float(Float16($0)) }   // exactly representable in f16
        let input = Self.randoms(m * k, seed: 2), biasValues = Self.randoms(n, seed: 3)
        let half = weights.map(Float16.init).withUnsafeBytes { backend.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
        // The same values as bf16 held as stored (exact f32 arithmetic): bf16 keeps 8 bits, so
        // the weights are rounded to bf16 here and the reference uses the rounded values.
        let bf16Values = weights.map { Precision.bf16ToFloat(Precision.floatToBF16($0)) }
        let bf16 = weights.map { Precision.floatToBF16($0) }.withUnsafeBytes {
            backend.upload(weight: $0, dtype: .bf16, shape: [n, k], owner: nil)
        }
        let full = backend.upload(floats: weights, shape: [n, k])
        let x = backend.upload(floats: input, shape: [m, k]), bias = backend.upload(floats: biasValues, shape: [n])
        func reference(_ w: [Float]) -> [Double] {
            var expected = [Double](repeating: 0, count: m * n)
            for r in 0..<m {
                for c in 0..<n {
                    var s = Double(biasValues[c])
                    for i in 0..<k { s += Double(input[r * k + i]) * Double(w[c * k + i]) }
                    expected[r * n + c] = s
                }
            }
            return expected
        }
        let expectedHalf = reference(weights), expectedBF16 = reference(bf16Values)
        // f32 accumulation over k terms of magnitude <= 1: 1e-5 * k is a generous, still failing bound.
        let tolerance = 1e-5 * Double(k) + 1e-6
        for (label, result, expected) in [
            ("fused", backend.linear(x, weight: half, bias: bias, path: .fusedHalf), expectedHalf),
            ("widen-sgemm", backend.linear(x, weight: half, bias: bias, path: .widenThenBLAS), expectedHalf),
            ("f32 sgemm", backend.linear(x, weight: full, bias: bias), expectedHalf),
            ("fused bf16", backend.linear(x, weight: bf16, bias: bias, path: .fusedHalf), expectedBF16),
            ("widen-sgemm bf16", backend.linear(x, weight: bf16, bias: bias, path: .widenThenBLAS), expectedBF16),
        ] {
            let got = backend.download(result)
            let worst = zip(got, expected).map { abs(Double($0) - $1) }.max() ?? 0
            #expect(worst <= tolerance, "\(label) m=\(m) n=\(n) k=\(k): max error \(worst)")
        }
    }

    /// Decode-sized query blocks take the direct SIMD path, longer ones OpenBLAS; both must equal
    /// a reference softmax attention with left padding and grouped KV heads.
    /// 40 past keys: softmax rows longer than one 16-lane vector, with a tail. 70 and 33
    /// queries: causal blocks of 32 queries over a growing share of the keys, the last partial.
    @Test(arguments: [(1, 5), (3, 5), (9, 5), (1, 40), (9, 40), (70, 5), (33, 40)])
    func attentionMatchesReference(queries: Int, past: Int) {
        let backend = CPUBackend(threads: 2)
        let batch = 2, heads = 4, kvHeads = 2, d = 12, capacity = past + queries + 2
        let padding = [0, 3]
        let layout = AttentionLayout(batch: batch, length: queries, pastLength: past, padding: padding, heads: heads,
                                     kvHeads: kvHeads, headDim: d, scale: 0.3)
        let keys = Self.randoms(batch * kvHeads * capacity * d, seed: 4)
        let values = Self.randoms(batch * kvHeads * capacity * d, seed: 5)
        let query = Self.randoms(batch * queries * heads * d, seed: 6)
        let out = backend.download(backend.attention(
            query: backend.upload(floats: query, shape: [batch * queries, heads * d]),
            keyCache: backend.upload(floats: keys, shape: [batch, kvHeads, capacity, d]),
            valueCache: backend.upload(floats: values, shape: [batch, kvHeads, capacity, d]), layout: layout))
        var worst = 0.0
        for b in 0..<batch {
            for t in 0..<queries {
                for h in 0..<heads {
                    let kvBase = (b * kvHeads + h / (heads / kvHeads)) * capacity * d
                    let qBase = (b * queries + t) * heads * d + h * d
                    let visible = padding[b]..<(past + t + 1)
                    let scores = visible.map { j in
                        (0..<d).reduce(0.0) { $0 + Double(query[qBase + $1]) * Double(keys[kvBase + j * d + $1]) } * 0.3
                    }
                    let top = scores.max()!
                    let weights = scores.map { exp($0 - top) }
                    let total = weights.reduce(0, +)
                    for i in 0..<d {
                        let ref = zip(visible, weights).reduce(0.0) { $0 + $1.1 / total * Double(values[kvBase + $1.0 * d + i]) }
                        worst = max(worst, abs(ref - Double(out[qBase + i])))
                    }
                }
            }
        }
        #expect(worst < 1e-5, "attention with \(queries) queries: max error \(worst)")
    }

    /// RMSNorm and gated activations against double-precision references, on rows with a
    /// vector tail and a 2816 + 5 wide row (Llama's MLP width), values up to +-20 (e^x's range
    /// reduction and the gate's saturation).
    @Test(arguments: [1, 37, 2821])
    func normsAndGatesMatchReference(width: Int) {
        let backend = CPUBackend(threads: 2)
        let rows = 3
        let x = Self.randoms(rows * width, seed: 7).map { $0 * 20 }, up = Self.randoms(rows * width, seed: 8)
        let w = Self.randoms(width, seed: 9)
        let tx = backend.upload(floats: x, shape: [rows, width]), tu = backend.upload(floats: up, shape: [rows, width])
        let normed = backend.download(backend.rmsNorm(tx, weight: backend.upload(floats: w, shape: [width]), eps: 1e-6))
        var worstNorm = 0.0
        for r in 0..<rows {
            let row = x[(r * width)..<((r + 1) * width)].map(Double.init)
            let inv = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(width) + 1e-6).squareRoot()
            for i in 0..<width {
                let ref = Double(w[i]) * row[i] * inv
                worstNorm = max(worstNorm, abs(ref - Double(normed[r * width + i])) / max(1, abs(ref)))
            }
        }
        #expect(worstNorm < 1e-5, "rmsNorm width \(width): max relative error \(worstNorm)")
        for (activation, reference) in [(Activation.silu, { (v: Double) in v / (1 + Foundation.exp(-v)) }),
                                        (.gelu, { (v: Double) in 0.5 * v * (1 + Foundation.erf(v / 2.0.squareRoot())) })] {
            let gated = backend.download(backend.gatedActivate(gate: tx, up: tu, activation))
            let worst = zip(zip(x, up), gated).map { pair, got in
                let ref = reference(Double(pair.0)) * Double(pair.1)
                return abs(ref - Double(got)) / max(1, abs(ref))
            }.max() ?? 0
            #expect(worst < 1e-5, "gated \(activation) width \(width): max relative error \(worst)")
        }
    }
}
