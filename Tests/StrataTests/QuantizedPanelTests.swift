@testable import StrataBackend
import StrataCore
import StrataRuntime
import Testing

/// Group-quantized weights under `--weight-format bf16` on the matrix units: the codes decoded
/// to bf16 straight into oneDNN's panel layout (`QuantizedPanels`, AVX-512), at every row count.
@Suite struct QuantizedPanelTests {
    /// Schemes the decoder serves: GGUF's Q4_0 / Q8_0 groups of 32, Strata's own groups of 64
    /// and 128 (4-bit groups wider than 32 split their low and high nibbles into blocks), and
    /// 8-bit groups of 16 (a GGUF Q6_K head), two to a block.
    static let schemes = [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 16)]

    static func quantized(_ backend: CPUBackend, n: Int, k: Int, bits: Int, groupSize: Int, seed: UInt64) throws -> Tensor {
        let w = BackendOpTests.randoms(n * k, seed: seed)
        return backend.quantize(backend.upload(floats: w, shape: [n, k]), scheme: try QuantizationScheme(bits: bits, groupSize: groupSize))
    }

    /// The panels are bit for bit what decoding to f32, rounding to bf16 and packing give,
    /// including the zero rows that pad the last panel. k = 2176 gives rows of 17 to 68 groups:
    /// the decoder widens steps and minimums 64 groups at a time, 16 per instruction.
    @Test(arguments: schemes, [256, 2176])
    func panelsHoldTheRoundedDecode(scheme: (Int, Int), k: Int) throws {
        if !QuantizedPanels.available { try Test.cancel("this CPU has no AVX512-BF16: the panel decoder does not run here") }
        let n = 130
        let backend = CPUBackend(threads: 1, weightFormat: .f32)
        let weight = try Self.quantized(backend, n: n, k: k, bits: scheme.0, groupSize: scheme.1, seed: 11)
        let q = try #require(weight.quantization)
        #expect(QuantizedPanels.supports(q, k: k))
        let decoded = backend.download(weight)
        let rounded = decoded.map { Precision.floatToBF16($0) }
        let layout = PanelLayout(n: n, k: k)
        var expected = [UInt16](repeating: 0, count: layout.byteCount / 2)
        rounded.withUnsafeBufferPointer { source in
            expected.withUnsafeMutableBufferPointer { BF16GEMM.pack(source.baseAddress!, layout: layout, into: $0.baseAddress!, threads: 1) }
        }
        // Whole weight, then rows 64..<130 alone (a run starting on its second panel).
        var panels = [UInt16](repeating: 0xFFFF, count: layout.byteCount / 2)
        panels.withUnsafeMutableBufferPointer { QuantizedPanels.decode(weight, rows: 0..<n, into: $0.baseAddress!) }
        #expect(panels == expected, "\(scheme) k \(k)")
        let tail = PanelLayout(n: n - 64, k: k)
        var part = [UInt16](repeating: 0xFFFF, count: tail.byteCount / 2)
        part.withUnsafeMutableBufferPointer { QuantizedPanels.decode(weight, rows: 64..<n, into: $0.baseAddress!) }
        #expect(part == Array(expected[layout.panelElements...]), "\(scheme) k \(k) from row 64")
    }

    /// linear against a quantized weight at decode and prefill row counts (up to 8 rows the
    /// dot-product kernel, above that the panels), with and without bias, on 1 and 2 workers and
    /// on a run that spans several oneDNN calls: the result for bf16-rounded inputs and, in the
    /// panels, bf16-rounded weights (the dot-product kernel multiplies the codes themselves, so
    /// its weights are exact). Tolerance 2e-4: only the f32 summation order differs from the
    /// double reference (the rounding that the reference does not share is 1e-3).
    @Test(arguments: [1, 4, 16, 33, 130])
    func linearMatchesTheRoundedReference(rows m: Int) throws {
        if !CPUBackend.decodesQuantizedOnMatrixUnits { try Test.cancel("no matrix units with AVX512-BF16 here: quantized weights take the fused kernel") }
        let backends = [1, 2].map { CPUBackend(threads: $0, weightFormat: .bf16) }
        // k = 2048 makes one panel 256 KiB, so a decode step's slab of 320 columns takes several
        // oneDNN calls (a prefill decodes the whole weight for one call either way).
        let shapes = m < 128 ? [(200, 128), (320, 2048)] : [(200, 128)]
        for (bits, groupSize) in Self.schemes {
            for (n, k) in shapes {
                let weight = try Self.quantized(backends[0], n: n, k: k, bits: bits, groupSize: groupSize, seed: 12)
                let decoded = backends[0].download(weight)
                let w = m <= QuantizedPanels.dotMaxRows ? decoded : decoded.map(MatrixUnitTests.bf16)
                let x = BackendOpTests.randoms(m * k, seed: 13), bias = BackendOpTests.randoms(n, seed: 14)
                let product = MatrixUnitTests.reference(x.map(MatrixUnitTests.bf16), w, nil, m: m, n: n, k: k)
                let scale = max(1, product.map(abs).max() ?? 1)
                for backend in backends {
                    let kernel = backend.quantizedKernel(weight, rows: m)
                    #expect(m <= QuantizedPanels.dotMaxRows ? kernel == "avx512-bf16-dot" : kernel.hasPrefix("panels+onednn"), "\(kernel) for \(m) rows")
                    let input = backend.upload(floats: x, shape: [m, k]), biasTensor = backend.upload(floats: bias, shape: [n])
                    for useBias in [false, true] {
                        let out = backend.download(backend.linear(input, weight: weight, bias: useBias ? biasTensor : nil))
                        let reference = useBias ? product.enumerated().map { $0.element + bias[$0.offset % n] } : product
                        #expect(MatrixUnitTests.maxError(out, reference) / scale < 2e-4,
                                "\(m) rows, \(backend.threads) threads, \(bits)-bit groups of \(groupSize), \(n)x\(k), bias \(useBias)")
                    }
                }
            }
        }
    }

    /// Symmetric groups (every minimum -z * step: GGUF Q4_0, Q8_0 and the Q6_K head's 8-bit
    /// groups of 16) are found at upload, and the dot-product kernel then never reads the
    /// minimums: its results are bit for bit those of the same weight with them read, and match
    /// the exact reference. A single group off the pattern turns the shortcut off.
    @Test(arguments: [(4, 32, 8), (8, 32, 128), (8, 16, 32)])
    func symmetricGroupsSkipTheMinimums(scheme: (Int, Int, Int)) throws {
        let (bits, groupSize, zero) = scheme
        let (n, k) = (70, 1024)
        let s = try QuantizationScheme(bits: bits, groupSize: groupSize)
        let groups = n * k / groupSize
        var rng = SeededGenerator(seed: 40)
        let data = (0..<(groups * s.bytesPerGroup)).map { _ in UInt8(truncatingIfNeeded: rng.next()) & (bits == 8 && zero == 32 ? 63 : 255) }
        let steps = (0..<groups).map { _ in Float16(Float(rng.next() % 1000 + 1) * 1e-5 * (rng.next() % 2 == 0 ? 1 : -1)) }
        let symmetric = QuantizedTensor(shape: [n, k], scheme: s, data: data, steps: steps, mins: steps.map { -Float16(Float(zero)) * $0 })
        #expect(symmetric.zeroCode == zero)
        var skewed = symmetric
        skewed.mins[groups / 2] = skewed.mins[groups / 2].nextUp
        #expect(skewed.zeroCode == nil)
        if !CPUBackend.decodesQuantizedOnMatrixUnits { try Test.cancel("no matrix units with AVX512-BF16 here: the dot-product kernel does not run") }
        let backend = CPUBackend(threads: 2, weightFormat: .bf16)
        let weight = backend.upload(quantized: symmetric)
        #expect(weight.quantization?.zero == zero)
        var layout = try #require(weight.quantization)
        layout.zero = nil
        let readingMinimums = Tensor(shape: weight.shape, dtype: weight.dtype, buffer: weight.buffer, quantization: layout)
        let decoded = GroupQuantizer.dequantize(symmetric)
        for m in [1, 3, 8] {
            let x = BackendOpTests.randoms(m * k, seed: 41)
            let input = backend.upload(floats: x, shape: [m, k])
            let fast = backend.download(backend.linear(input, weight: weight, bias: nil))
            let full = backend.download(backend.linear(input, weight: readingMinimums, bias: nil))
            #expect(zip(fast, full).filter { $0 != $1 }.isEmpty && fast.count == full.count, "\(scheme), \(m) rows")
            let product = MatrixUnitTests.reference(x.map(MatrixUnitTests.bf16), decoded, nil, m: m, n: n, k: k)
            let scale = max(1, product.map(abs).max() ?? 1)
            #expect(MatrixUnitTests.maxError(fast, product) / scale < 2e-4, "\(scheme), \(m) rows")
        }
    }

    /// Projections of one input (q/k/v) share one rounding and give what each alone gives.
    @Test func sharedProjectionsMatchSingleOnes() throws {
        if !CPUBackend.decodesQuantizedOnMatrixUnits { try Test.cancel("no matrix units with AVX512-BF16 here") }
        let backend = CPUBackend(threads: 2, weightFormat: .bf16)
        let weights = try (0..<3).map { try Self.quantized(backend, n: 96, k: 128, bits: 4, groupSize: 32, seed: UInt64(20 + $0)) }
        for m in [3, 140] {
            let input = backend.upload(floats: BackendOpTests.randoms(m * 128, seed: 30), shape: [m, 128])
            let shared = backend.linear(input, weights: weights, biases: [nil, nil, nil]).map(backend.download)
            let single = weights.map { backend.download(backend.linear(input, weight: $0, bias: nil)) }
            #expect(shared == single, "\(m) rows")
        }
    }
}
