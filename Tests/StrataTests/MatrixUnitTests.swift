import Foundation
import StrataBackend
import StrataCore
import StrataModels
import StrataRuntime
import Testing

/// `--weight-format bf16`: matmuls on the CPU's bf16 matrix units (oneDNN on AMX or
/// AVX512-BF16) where there are some, the fused bf16 kernel where there are none.
@Suite struct MatrixUnitTests {
    static func bf16(_ v: Float) -> Float { Precision.bf16ToFloat(Precision.floatToBF16(v)) }

    /// x [m, k] * w[n, k]^T + bias in double precision.
    static func reference(_ x: [Float], _ w: [Float], _ bias: [Float]?, m: Int, n: Int, k: Int) -> [Float] {
        var out = [Float](repeating: 0, count: m * n)
        for r in 0..<m {
            for c in 0..<n {
                var s = Double(bias?[c] ?? 0)
                for i in 0..<k { s += Double(x[r * k + i]) * Double(w[c * k + i]) }
                out[r * n + c] = Float(s)
            }
        }
        return out
    }

    static func maxError(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }

    /// Every path against the reference on awkward shapes (columns not a multiple of the 64-column
    /// panel, k not a multiple of the 32-deep block), with and without bias, for row-major and
    /// panel-packed weights. The weights are rounded to bf16 at upload; the matrix units also
    /// round the inputs, the fused kernel does not. Tolerance 2e-4: only the f32 summation order
    /// differs from the double reference.
    @Test(arguments: [(1, 1, 1), (3, 7, 9), (5, 65, 67), (17, 130, 64), (70, 200, 130), (16, 64, 768)])
    func bf16LinearMatchesRoundedReference(shape: (Int, Int, Int)) {
        let (m, n, k) = shape
        let packing = CPUBackend(threads: 2, weightFormat: .bf16)
        let rowMajor = CPUBackend(threads: 2, weightFormat: .bf16, packsWeights: false)
        let x = BackendOpTests.randoms(m * k, seed: 3), w = BackendOpTests.randoms(n * k, seed: 4)
        let bias = BackendOpTests.randoms(n, seed: 5)
        let halves = w.map(Float16.init)
        let plain = halves.withUnsafeBytes { rowMajor.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
        let packed = halves.withUnsafeBytes { packing.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
        let onUnits = MatrixUnits.status.kind != nil
        #expect(plain.dtype == .bf16 && plain.panels == nil && packed.dtype == .bf16)
        // Packed exactly where oneDNN runs (and takes panels): never on the fallback.
        #expect(packed.panels == nil || onUnits)
        let wRounded = w.map { Self.bf16(Float(Float16($0))) }
        #expect(packing.download(packed) == wRounded && rowMajor.download(plain) == wRounded)
        let input = rowMajor.upload(floats: x, shape: [m, k]), biasTensor = rowMajor.upload(floats: bias, shape: [n])
        for useBias in [false, true] {
            let b = useBias ? bias : nil, bt = useBias ? biasTensor : nil
            let exact = Self.reference(x, wRounded, b, m: m, n: n, k: k)
            let unitsReference = onUnits ? Self.reference(x.map(Self.bf16), wRounded, b, m: m, n: n, k: k) : exact
            let fused = rowMajor.download(rowMajor.linear(input, weight: plain, bias: bt, path: .fusedHalf))
            #expect(Self.maxError(fused, exact) < 2e-4, "fused bf16 \(shape) bias \(useBias)")
            for (name, backend, weight) in [("row-major", rowMajor, plain), ("packed", packing, packed)] {
                let forced = backend.download(backend.linear(input, weight: weight, bias: bt, path: .matrixUnits))
                #expect(Self.maxError(forced, unitsReference) < 2e-4, "\(name) matrix units \(shape) bias \(useBias)")
                let automatic = backend.download(backend.linear(input, weight: weight, bias: bt))
                #expect(Self.maxError(automatic, unitsReference) < 2e-4, "\(name) automatic \(shape) bias \(useBias)")
            }
        }
        // A packed table serves embedding lookups (OPT ties its LM head to the embedding).
        let ids: [Int32] = [Int32(n - 1), 0, Int32(n / 2)]
        let rows = packing.download(packing.embedding(packed, ids: ids))
        #expect(rows == ids.flatMap { id in wRounded[(Int(id) * k)..<(Int(id) * k + k)] })
    }

    /// Inputs against a group-quantized weight under `--weight-format bf16`: the codes are
    /// decoded to bf16 for the matrix units (at every row count where the AVX-512 panel decoder
    /// runs, `QuantizedPanelTests`; for prefills only where it does not); otherwise the fused
    /// kernel reads the codes. Same 2e-4 tolerance against the matching rounded reference.
    @Test(arguments: [8, 65, 130])
    func quantizedWeightsUseTheMatrixUnitsForPrefill(rows m: Int) throws {
        let (n, k) = (96, 128)
        let backend = CPUBackend(threads: 2, weightFormat: .bf16)
        let plain = CPUBackend(threads: 2, weightFormat: .f32)
        let x = BackendOpTests.randoms(m * k, seed: 6), w = BackendOpTests.randoms(n * k, seed: 7)
        let weight = plain.quantize(plain.upload(floats: w, shape: [n, k]), scheme: try QuantizationScheme(bits: 4, groupSize: 64))
        let decoded = plain.download(weight)
        let input = backend.upload(floats: x, shape: [m, k])
        let out = backend.download(backend.linear(input, weight: weight, bias: nil))
        let onUnits = MatrixUnits.status.kind != nil && (m > 64 || CPUBackend.decodesQuantizedOnMatrixUnits)
        // Up to 8 rows the AVX512-BF16 dot kernel multiplies the codes themselves: exact weights.
        let exactWeights = m <= 8 && CPUBackend.decodesQuantizedOnMatrixUnits
        let reference = onUnits ? Self.reference(x.map(Self.bf16), exactWeights ? decoded : decoded.map(Self.bf16), nil, m: m, n: n, k: k)
                                : Self.reference(x, decoded, nil, m: m, n: n, k: k)
        #expect(Self.maxError(out, reference) < 2e-4, "\(m) rows")
    }

    /// The panel layout is oneDNN's BA16a64b2a of the k x n matrix: spot checks of the index.
    @Test func panelLayoutIndex() {
        let layout = PanelLayout(n: 130, k: 67)
        #expect(layout.panels == 3 && layout.blocks == 3 && layout.panelElements == 3 * 32 * 64)
        #expect(layout.byteCount == 3 * 3 * 32 * 64 * 2)
        #expect(layout.index(row: 0, column: 0) == 0 && layout.index(row: 0, column: 1) == 1)
        #expect(layout.index(row: 1, column: 0) == 2 && layout.index(row: 0, column: 2) == 128)
        #expect(layout.index(row: 0, column: 32) == 2048 && layout.index(row: 64, column: 0) == 3 * 2048)
        #expect(layout.index(row: 129, column: 66) == 2 * 6144 + 2 * 2048 + 1 * 128 + 1 * 2 + 0)
    }

    /// Weights stored as f32, f16 or bf16 become the same bf16 values (round to nearest even).
    @Test func uploadRoundsEveryStoredTypeToBF16() {
        let backend = CPUBackend(threads: 1, weightFormat: .bf16)
        let values: [Float] = [1, -2.5, 1.00390625, 1.01171875, 3.14159, -0.0001, 65504, 1e-8]
        let asF32 = values.withUnsafeBytes { backend.upload(weight: $0, dtype: .f32, shape: [2, 4], owner: nil) }
        #expect(asF32.dtype == .bf16)
        // 1 + 2^-8 is a tie and rounds to even (1.0); 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
        #expect(backend.download(asF32) == values.map(Self.bf16))
        #expect(Self.bf16(1.00390625) == 1 && Self.bf16(1.01171875) == 1.015625)
        let bits = values.map(Precision.floatToBF16)
        let asBF16 = bits.withUnsafeBytes { backend.upload(weight: $0, dtype: .bf16, shape: [2, 4], owner: nil) }
        #expect(backend.download(asBF16) == values.map(Self.bf16))
        // Vectors (norm weights, biases) stay f32.
        let vector = values.withUnsafeBytes { backend.upload(weight: $0, dtype: .f32, shape: [8], owner: nil) }
        #expect(vector.dtype == .f32 && backend.download(vector) == values)
    }

    /// On the fixture models the bf16 path stays close to transformers' fp32 logits: stated
    /// tolerance 5% of the largest logit (measured up to 3.1%, gguf-tiny with its quantized
    /// layers decoded to bf16 for prefill). bf16 keeps 8 significant bits of every matmul input
    /// and the tiny random fixtures have no trained margin to absorb it; the tight checks are
    /// per matmul above (2e-4 against the rounded reference) and the trained model's perplexity.
    @Test(arguments: Fixtures.modelNames)
    func fixtureLogitsStayCloseInBF16(model name: String) throws {
        let (logits, reference) = try ModelReferenceTests.prefillLogits(name, weights: .bf16)
        let error = Self.maxError(logits, reference.lastLogits)
        let scale = reference.lastLogits.map(abs).max() ?? 1
        #expect(error / scale < 5e-2, "max |bf16 - transformers fp32| = \(error), max |logit| \(scale) for \(name)")
    }

    /// The dispatch with the matrix units forced off (what a CPU without AVX-512 runs): the
    /// binary starts, reports the fallback, and bf16 and quantized weights go through the fused
    /// kernels, the bf16 ones with the same greedy tokens as f32 weights on the trained demo model.
    @Test func forcedFallbackRunsTheFusedKernel() throws {
        try #require(FileManager.default.isExecutableFile(atPath: CommandLineTests.binary), "no binary (swift build first)")
        let baseline = ["STRATA_CPU_ISA": "baseline"]
        let gemm = try CommandLineTests.run(["bench-gemm", "--rows", "4", "--shapes", "64x64", "--repeat", "1", "--json"],
                                            environment: baseline)
        #expect(gemm.status == 0, "\(gemm.stderr)")
        let firstLine = gemm.stdout.split(separator: "\n").first.map(String.init) ?? ""
        let point = try #require(try JSONValue.parse(Data(firstLine.utf8), path: "bench-gemm stdout").object)
        #expect(point["matrix_units"]?.string == "none")
        #expect(point["bf16_serves"]?.string == "fused-bf16")
        // f16 weights held as stored: the AVX2 tile, not strata_half_gemm's AVX-512 one.
        #expect(point["f16_serves"]?.string == "fused-avx2")
        #expect((point["bf16_fused_gflops"]?.double ?? 0) > 0)
        // Group-quantized weights under bf16 keep the fused f32 kernel too (no panel decoder).
        #expect(point["quantized_bf16_serves"]?.string == "fused-q4")

        let prompt = ["generate", "--model", Fixtures.model("opt-licenses"), "--prompt", "The GNU General Public License is",
                      "--max-new-tokens", "16"]
        let fallback = try CommandLineTests.run(prompt + ["--weight-format", "bf16"], environment: baseline)
        let exact = try CommandLineTests.run(prompt + ["--weight-format", "f32"])
        #expect(fallback.status == 0 && exact.status == 0, "\(fallback.stderr) \(exact.stderr)")
        #expect(!fallback.stdout.isEmpty && fallback.stdout == exact.stdout)

        let unknown = try CommandLineTests.run(["bench-gemm", "--rows", "1", "--shapes", "64x64", "--repeat", "1"],
                                               environment: ["STRATA_CPU_ISA": "sse9"])
        #expect(unknown.stdout.contains("STRATA_CPU_ISA=sse9 is not one of"))
    }
}
