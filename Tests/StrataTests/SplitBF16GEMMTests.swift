import CStrataKernels
import Foundation
@testable import StrataBackend
import StrataCore
import StrataModels
import StrataRuntime
import Testing

/// `--matmul-precision bf16x3`: `strata_amx_split_weights` and `strata_amx_split_product` (x
/// and w each split into two bf16 parts, three AMX tile products summed in f32) called directly and through the backend, and
/// its accuracy on the trained demo model. Without AMX the kernel tests skip with the reason;
/// the model tests then check that the option falls back to the exact path.
@Suite struct SplitBF16GEMMTests {
    static func requireTiles() throws {
        guard SplitBF16GEMM.available else {
            try Test.cancel("no AMX-BF16 tiles here (or STRATA_CPU_ISA forces a CPU without them); --matmul-precision bf16x3 runs exact f32")
        }
    }

    /// Tails of every kind: rows past a 32-row block (1, 33, 70), weight rows past 16- and
    /// 32-column blocks, k past a 32-input block, a column range starting past 0, with and
    /// without accumulation, rows in two ranges (one call each, as the workers take them). Bound: the split drops x's bits past ~16 and the lo*lo term, about
    /// 2^-17 of each |x w| product (measured 6e-7 to 2e-6 of sum |x w|); stated 1e-5 of it plus
    /// the f32 sums' 1e-6 per term.
    @Test(arguments: [(1, 1, 1), (33, 17, 70), (70, 50, 300), (32, 48, 1024), (65, 33, 32)])
    func matchesExactProductWithinTheSplitsRounding(shape: (Int, Int, Int)) throws {
        try Self.requireTiles()
        let (m, n, k) = shape
        let o = DenseOperands(m: m, n: n, k: k, seed: 5)
        let width = strata_amx_split_width(Int32(k)), rows = (m + 31) / 32 * 32
        var a = [UInt16](repeating: 0, count: rows * width)
        a.withUnsafeMutableBufferPointer { strata_amx_split_x(o.x, Int32(m), Int32(k), $0.baseAddress!) }
        for (label, type) in [("f32", STRATA_DOT_F32), ("f16", STRATA_DOT_F16), ("bf16", STRATA_DOT_BF16)] {
            for accumulate in [false, true] {
                var out = o.old
                let columns = n - o.first, panelValues = strata_amx_panel_values(Int32(k))
                var panels = [UInt16](repeating: 0, count: (columns + 15) / 16 * panelValues)
                o.withWeight(type) { w in strata_amx_split_weights(w, Int32(type), Int32(k), o.first, n, &panels) }
                out.withUnsafeMutableBufferPointer { out in
                    for (r0, r1) in m > 32 ? [(0, 32), (32, m)] : [(0, m)] {
                        strata_amx_split_product(Int32(r0), Int32(r1), Int32(k), a, panels, columns, out.baseAddress! + o.first, n,
                                                 accumulate ? 1 : 0)
                    }
                }
                let values = type == STRATA_DOT_BF16 ? o.bf16Values : o.exact
                var worst = 0.0, kept = true
                for r in 0..<m {
                    for c in 0..<n {
                        if c < o.first { kept = kept && out[r * n + c] == o.old[r * n + c]; continue }
                        var s = accumulate ? Double(o.old[r * n + c]) : 0, magnitude = 0.0
                        for i in 0..<k {
                            let p = Double(o.x[r * k + i]) * Double(values[c * k + i])
                            (s, magnitude) = (s + p, magnitude + abs(p))
                        }
                        worst = max(worst, abs(Double(out[r * n + c]) - s) - 1e-5 * magnitude - 1e-6 * Double(k + 1))
                    }
                }
                #expect(kept, "\(label): a column outside the range was written")
                #expect(worst <= 0, "\(label) m=\(m) n=\(n) k=\(k) accumulate \(accumulate): error past the bound by \(worst)")
            }
        }
    }

    /// Through the backend: the split path with a bias against exact f32, and projections of one
    /// input sharing one split (`linear(_:weights:biases:)`) give what each product gives alone.
    /// 300 rows and 300 weight rows of 1024 inputs: two 256-row pieces by two column groups.
    /// Bound 1e-3 against f32 for sums of 1024 products whose magnitudes add up to ~250
    /// (measured 1.4e-4 and 1.6e-4: ~6e-7 of it, as in the kernel test above).
    @Test func backendSharesOneSplitAcrossProjections() throws {
        try Self.requireTiles()
        let backend = CPUBackend(threads: 2, matmulPrecision: .bf16x3)
        let (m, k) = (300, 1024)
        #expect(strata_amx_group_columns(Int32(k)) < 300)
        let x = backend.upload(floats: DotGEMMTests.randoms(m * k, seed: 3), shape: [m, k])
        let weights = [300, 24].enumerated().map { i, n in
            let values = DotGEMMTests.randoms(n * k, seed: UInt64(10 + i)).map { Float16($0) }
            return values.withUnsafeBytes { backend.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
        }
        let biases: [Tensor?] = [backend.upload(floats: DotGEMMTests.randoms(300, seed: 20), shape: [300]), nil]
        #expect(backend.splitsToBF16(weights[0], rows: m, path: .automatic))
        #expect(!backend.splitsToBF16(weights[0], rows: HalfGEMM.maxRows, path: .automatic), "decode sizes keep the fused kernel")
        let shared = backend.linear(x, weights: weights, biases: biases)
        for i in 0..<2 {
            let alone = backend.linear(x, weight: weights[i], bias: biases[i])
            let exact = backend.linear(x, weight: weights[i], bias: biases[i], path: .widenThenBLAS)
            let (a, b, e) = (alone.floats, shared[i].floats, exact.floats)
            var worst = 0.0
            for j in 0..<(m * weights[i].shape[0]) {
                #expect(a[j] == b[j], "shared split differs at \(j)")
                worst = max(worst, Double(abs(a[j] - e[j])))
            }
            #expect(worst > 0 && worst < 1e-3, "projection \(i): max |bf16x3 - f32| = \(worst)")
        }
    }

    /// The trained demo model: perplexity on held-out text (windows of 512 rows, so every
    /// projection takes the split) within 0.01% of exact f32, and the same greedy text from the
    /// command line for a prompt long enough to take it. Without tiles the option runs f32.
    @Test func demoModelKeepsPerplexityAndGreedyText() throws {
        let exact = try Int8WeightTests.demoPerplexity(CPUBackend(threads: 2))
        let split = try Int8WeightTests.demoPerplexity(CPUBackend(threads: 2, matmulPrecision: .bf16x3))
        #expect(abs(split - exact) / exact < 1e-4, "bf16x3 \(split) vs f32 \(exact)")
        #expect((split != exact) == SplitBF16GEMM.available)
        let text = String(decoding: try #require(FileManager.default.contents(atPath: Fixtures.root + "/text/heldout.txt")), as: UTF8.self)
        let prompt = ["generate", "--model", Fixtures.model("opt-licenses"), "--prompt", String(text.prefix(600)), "--max-new-tokens", "24"]
        let f32 = try CommandLineTests.run(prompt), bf16x3 = try CommandLineTests.run(prompt + ["--matmul-precision", "bf16x3"])
        #expect(f32.status == 0 && bf16x3.status == 0, "\(f32.stderr) \(bf16x3.stderr)")
        #expect(!f32.stdout.isEmpty && bf16x3.stdout == f32.stdout)
        let bad = try CommandLineTests.run(prompt + ["--matmul-precision", "tf32"])
        #expect(bad.status != 0 && bad.stderr.contains("--matmul-precision must be one of f32, bf16x3"))
    }
}
