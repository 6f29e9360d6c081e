import CStrataKernels
import Foundation
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime
import Testing

/// `--int8-activations`: 4/8-bit weights times int8-quantized activations (AVX512-VNNI, or AVX2
/// for 4-bit weights).
@Suite struct Int8GEMMTests {
    /// Against the exact product of the dequantized weight (double precision): every output is
    /// within the bound the activation rounding allows (half a step of each group's int8 scale
    /// times the group's |w|), and the typical relative error is far below it. Bias and beta
    /// (outputs accumulated onto the bias) are covered.
    @Test(arguments: [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64)], [1, 3, 4])
    func matchesTheDequantizedProductWithinTheRoundingBound(scheme: (Int, Int), rows m: Int) throws {
        let backend = CPUBackend(threads: 2, int8Activations: true)
        let (bits, groupSize) = scheme
        let n = 99, k = 256   // 99: whole 4-row weight tiles and a tail of 3
        let x = BackendOpTests.randoms(m * k, seed: 11), w = BackendOpTests.randoms(n * k, seed: 12), bias = BackendOpTests.randoms(n, seed: 13)
        let q = backend.quantize(backend.upload(floats: w, shape: [n, k]), scheme: try QuantizationScheme(bits: bits, groupSize: groupSize))
        let dequantized = backend.download(q)
        let reference = MatrixUnitTests.reference(x, dequantized, bias, m: m, n: n, k: k)
        let got = backend.download(backend.linear(backend.upload(floats: x, shape: [m, k]), weight: q, bias: backend.upload(floats: bias, shape: [n])))
        var worstRelative = 0.0, total = 0.0
        for r in 0..<m {
            for c in 0..<n {
                var bound = 0.0
                // Per 32-value block of activations (the block's values, as the kernel forms them).
                let half = groupSize / 2
                for g in 0..<(k / groupSize) {
                    for b in 0..<(groupSize / 32) {
                        let members = (0..<32).map { i in g * groupSize + (bits == 8 ? 32 * b + i : i < 16 ? 16 * b + i : half + 16 * b + i - 16) }
                        let top = members.map { abs(x[r * k + $0]) }.max()!
                        bound += Double(top) / 254 * members.reduce(0) { $0 + Double(abs(dequantized[c * k + $1])) }
                    }
                }
                let error = Double(abs(got[r * n + c] - reference[r * n + c]))
                #expect(error <= bound * 1.01 + 1e-4, "row \(r) column \(c): error \(error) over the bound \(bound)")
                worstRelative = max(worstRelative, error / bound)
                total += error / max(bound, 1e-9)
            }
        }
        // Rounding errors are random in sign, so they mostly cancel: on average well inside the bound.
        #expect(total / Double(m * n) < 0.2, "mean error / bound = \(total / Double(m * n))")
        // Where the CPU has the instructions the int8 path must have run (an exact f32 result
        // would mean the flag was ignored).
        if CPUBackend.int8DotProducts(bits: bits, rows: m) { #expect(worstRelative > 0) }
    }

    /// On the trained demo model with 4-bit and 8-bit weights, token by token (one-row decode
    /// steps, the rows the int8 path serves) over 159 tokens of held-out text: every step's
    /// logits stay within 3% of the largest logit of the f32 path's (measured 2.3% at worst), and
    /// the mean negative log-likelihood moves by less than 0.1% (measured 0.019% at 4 bits,
    /// 0.0012% at 8). A wrong kernel misses both by far.
    @Test(arguments: [4, 8])
    func theTrainedModelPredictsAsBefore(bits: Int) throws {
        let dir = Fixtures.model("opt-licenses")
        let layers = try ModelConfig(directory: dir).numLayers
        let compression = Compression(weights: PrecisionMap.uniform(layers: layers, bits: bits, groupSize: 64))
        let exact = try ModelBundle(directory: dir, backend: CPUBackend(threads: 2), compression: compression)
        let int8 = try ModelBundle(directory: dir, backend: CPUBackend(threads: 2, int8Activations: true), compression: compression)
        let text = try String(contentsOfFile: Fixtures.root + "/text/heldout.txt", encoding: .utf8)
        let ids = Array(exact.tokenizer.encode(String(text.prefix(2000))).prefix(160))
        func walk(_ b: ModelBundle) -> (nll: Double, logits: [[Float]]) {
            let cache = b.model.makeCache(batch: 1, capacity: ids.count)
            var nll = 0.0
            var all: [[Float]] = []
            for t in 0..<(ids.count - 1) {
                let step = ForwardStep(tokens: [Int32(ids[t])], batch: 1, length: 1, pastLength: t, padding: [0])
                let logits = b.model.backend.download(b.model.forward(step, cache: cache))
                let top = logits.max()!
                nll += log(logits.reduce(0.0) { $0 + exp(Double($1 - top)) }) + Double(top - logits[ids[t + 1]])
                all.append(logits)
            }
            return (nll / Double(ids.count - 1), all)
        }
        let (a, b) = (walk(exact), walk(int8))
        var worst: Float = 0
        for (x, y) in zip(a.logits, b.logits) {
            let ratio = zip(x, y).map { abs($0 - $1) }.max()! / x.map(abs).max()!
            worst = max(worst, ratio)
        }
        #expect(worst <= 0.03, "\(bits)-bit: a step's logits moved by \(worst) of the largest")
        if CPUBackend.int8DotProducts(bits: bits, rows: 1) { #expect(worst > 0, "the int8 path did not run") }
        let change = abs(b.nll - a.nll) / a.nll
        #expect(change < 0.001, "\(bits)-bit: mean NLL \(a.nll) -> \(b.nll) (\(change))")
    }

    /// The AVX2 form gives the VNNI form's results bit for bit (4-bit codes: no 16-bit pair can
    /// saturate), on every row count and a weight-row tail; where there is no VNNI it is checked
    /// against the dequantized product by the test above instead.
    @Test func avx2FormMatchesVNNIBitForBit() throws {
        guard strata_int8_supported() != 0 else {
            try Test.cancel("this CPU has no AVX512-VNNI to compare with; the AVX2 form is checked against the dequantized product")
        }
        let (n, k, groupSize) = (13, 256, 64)
        let q = GroupQuantizer.quantize(BackendOpTests.randoms(n * k, seed: 21), shape: [n, k],
                                        scheme: try QuantizationScheme(bits: 4, groupSize: groupSize))
        for m in 1...4 {
            let x = BackendOpTests.randoms(m * k, seed: 22 + UInt64(m))
            var codes = [Int8](repeating: 0, count: m * k), scales = [Float](repeating: 0, count: m * k / 32)
            var sums = [Float](repeating: 0, count: m * k / groupSize)
            var outputs: [[Float]] = []
            for vnni: Int32 in [1, 0] {
                var out = [Float](repeating: 0, count: m * n)
                codes.withUnsafeMutableBufferPointer { c in
                    scales.withUnsafeMutableBufferPointer { s in
                        sums.withUnsafeMutableBufferPointer { u in
                            let rows = strata_int8_rows(codes: c.baseAddress!, scales: s.baseAddress!, sums: u.baseAddress!)
                            strata_int8_quantize_rows(x, Int32(m), Int32(k), Int32(k), Int32(groupSize), 4, rows)
                            withUnsafePointer(to: rows) { r in
                                strata_int8_gemm(r, Int32(m), Int32(k), Int32(groupSize), 4, q.data, q.steps.map(\.bitPattern),
                                                 q.mins.map(\.bitPattern), 0, Int32(n), &out, Int32(n), 0, vnni)
                            }
                        }
                    }
                }
                outputs.append(out)
            }
            #expect(outputs[0].map(\.bitPattern) == outputs[1].map(\.bitPattern), "\(m) rows")
        }
    }

    /// `STRATA_CPU_ISA=baseline` (the AVX2 forms) with batch-1 generation: one-row decode steps
    /// take the exact f32 row kernel (faster there than the AVX2 integer form) and a prompt of
    /// more than 4 tokens is above the integer path's rows, so the flag changes nothing for
    /// 4-bit or 8-bit weights; and the binary still starts.
    @Test func forcedBaselineKeepsBatchOneGenerationExact() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary), "no binary (swift build first)")
        let common = ["generate", "--model", Fixtures.model("opt-licenses"), "--prompt", "The license grants every recipient of a copy",
                      "--max-new-tokens", "24", "--backend", "cpu"]
        let layers = try ModelConfig(directory: Fixtures.model("opt-licenses")).numLayers
        let map = FileManager.default.temporaryDirectory.appendingPathComponent("strata-int8-eight-\(getpid()).json").path
        try "{\"group_size\": 64, \"bits\": [\(Array(repeating: "8", count: layers).joined(separator: ", "))]}"
            .write(toFile: map, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: map) }
        for weights in [["--compress-weight"], ["--precision", map]] {
            let plain = try CommandLineTests.run(common + weights)
            let forced = try CommandLineTests.run(common + weights + ["--int8-activations"], environment: ["STRATA_CPU_ISA": "baseline"])
            #expect(plain.status == 0 && forced.status == 0, "\(plain.stderr) \(forced.stderr)")
            #expect(plain.stdout == forced.stdout && !plain.stdout.isEmpty, "\(weights)")
        }
    }
}
