import ArgumentParser
import StrataBackend
import StrataCore
import StrataRuntime

/// `strata bench-gemm`: GFLOP/s of each way the CPU backend can multiply by a stored f16 weight
/// (and its bf16 and group-quantized forms), per batch size, so the per-shape choice in
/// `CPUBackend.linear` rests on measurements; the last columns name the kernels that serve
/// `--weight-format bf16` (f16 and group-quantized weights) and `int8` for the shape.
struct BenchGEMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-gemm",
        abstract: "Measure weight matmul paths (f16 and group-quantized: fused kernels vs widen/decode + sgemm) per batch size.")

    @Option(help: "Comma-separated row counts (batch x tokens).") var rows = "1,2,4,8,16,32,64,128,256"
    @Option(help: "Comma-separated weight shapes OUTxIN.") var shapes = "768x768,3072x768,768x3072"
    @Option(help: "Compute threads.") var threads = 2
    @Option(help: "Bits of the group-quantized weight measured beside f16 (2, 3, 4 or 8; group 64 along the input).")
    var bits = 4
    @Option(help: "Measured calls per point; the median is reported.") var `repeat` = 7
    @Flag(help: "Print one JSON object per point.") var json = false

    func run() throws {
        try reportingErrors {
            let rowCounts = try parseList(rows, name: "--rows").map { try positive($0, "--rows") }
            let weightShapes = try shapes.split(separator: ",").map { spec -> (Int, Int) in
                let parts = spec.split(separator: "x").compactMap { Int($0) }
                guard parts.count == 2, parts.allSatisfy({ $0 > 0 }) else {
                    throw StrataError.invalidRequest("--shapes: '\(spec)' is not OUTxIN")
                }
                return (parts[0], parts[1])
            }
            let half = CPUBackend(threads: threads, weightFormat: .asStored)
            let matrix = CPUBackend(threads: threads, weightFormat: .bf16)
            let rowMajor = CPUBackend(threads: threads, weightFormat: .bf16, packsWeights: false)
            let int8 = CPUBackend(threads: threads, weightFormat: .int8)
            let int8Serves = int8.int8Kernel
            let units = MatrixUnits.status
            let unitName = units.kind?.rawValue ?? "none"
            var rng = SeededGenerator(seed: 1)
            let scheme = try QuantizationScheme(bits: bits, groupSize: 64)
            if !json {
                print("bf16 matrix units: \(unitName) (\(units.detail))")
                print("int8 (W8A8): \(int8Serves)")
                print("shape      rows  f16-fused  f16-widen-sgemm  f16-bf16x3  sgemm-f32  q\(bits)-fused  q\(bits)-decode-sgemm  q\(bits)-bf16  bf16-fused  bf16-rowmajor  bf16-matrix  int8  bf16-serves  q\(bits)-bf16-serves   (GFLOP/s, median of \(`repeat`))")
            }
            for (n, k) in weightShapes {
                let values = (0..<(n * k)).map { _ in Float16(Float.random(in: -1...1, using: &rng)) }
                let weightHalf = values.withUnsafeBytes { half.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
                let weightFloat = half.upload(floats: values.map(Float.init), shape: [n, k])
                let weightQuantized = half.quantize(weightHalf, scheme: scheme)
                let weightBF16 = values.withUnsafeBytes { matrix.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
                let weightRowMajor = values.withUnsafeBytes { rowMajor.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
                let weightInt8 = values.withUnsafeBytes { int8.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
                for m in rowCounts {
                    let x = half.upload(floats: (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [m, k])
                    let flops = 2.0 * Double(m * n * k)
                    func rate(_ body: () -> Void) -> Double {
                        body()
                        var times: [Double] = []
                        for _ in 0..<max(1, `repeat`) {
                            let start = Clock.now(); body(); times.append(Clock.now() - start)
                        }
                        return flops / times.sorted()[times.count / 2] / 1e9
                    }
                    let fused = rate { _ = half.linear(x, weight: weightHalf, bias: nil, path: .fusedHalf) }
                    let widen = rate { _ = half.linear(x, weight: weightHalf, bias: nil, path: .widenThenBLAS) }
                    let sgemm = rate { _ = half.linear(x, weight: weightFloat, bias: nil) }
                    // `--matmul-precision bf16x3`'s kernel, the f16 weight as stored (0 without AMX).
                    let split = SplitBF16GEMM.available ? rate { _ = half.linear(x, weight: weightHalf, bias: nil, path: .splitBF16) } : 0
                    let qFused = rate { _ = half.linear(x, weight: weightQuantized, bias: nil, path: .fusedHalf) }
                    let qDecode = rate { _ = half.linear(x, weight: weightQuantized, bias: nil, path: .widenThenBLAS) }
                    // What `--weight-format bf16` runs for the quantized weight (decoded panels on the
                    // matrix units where they serve).
                    let qBF16 = rate { _ = matrix.linear(x, weight: weightQuantized, bias: nil) }
                    let qServes = matrix.quantizedKernel(weightQuantized, rows: m)
                    let bFused = rate { _ = rowMajor.linear(x, weight: weightRowMajor, bias: nil, path: .fusedHalf) }
                    let bRowMajor = units.kind == nil ? 0 : rate { _ = rowMajor.linear(x, weight: weightRowMajor, bias: nil, path: .matrixUnits) }
                    let bMatrix = units.kind == nil ? 0 : rate { _ = matrix.linear(x, weight: weightBF16, bias: nil, path: .matrixUnits) }
                    // int8: the activations' quantization included, as `linear` runs it.
                    let i8 = rate { _ = int8.linear(x, weight: weightInt8, bias: nil) }
                    // What `--weight-format bf16` runs for this shape.
                    let serves = matrix.bf16Kernel(rows: m, n: n, k: k)
                    if json {
                        print(JSONValue.object([
                            "out": .number(Double(n)), "in": .number(Double(k)), "rows": .number(Double(m)),
                            "fused_gflops": .number(fused), "widen_sgemm_gflops": .number(widen), "f16_serves": .string(half.halfKernel(rows: m)),
                            "f16_bf16x3_gflops": .number(split), "sgemm_f32_gflops": .number(sgemm), "bits": .number(Double(bits)),
                            "quantized_fused_gflops": .number(qFused), "quantized_decode_sgemm_gflops": .number(qDecode),
                            "quantized_bf16_gflops": .number(qBF16), "quantized_bf16_serves": .string(qServes),
                            "bf16_fused_gflops": .number(bFused), "bf16_matrix_row_major_gflops": .number(bRowMajor),
                            "bf16_matrix_gflops": .number(bMatrix), "bf16_packed": .bool(weightBF16.panels != nil),
                            "bf16_serves": .string(serves), "matrix_units": .string(unitName),
                            "int8_gflops": .number(i8), "int8_serves": .string(int8Serves),
                        ]).serialized())
                    } else {
                        let cells = [(fused, 9), (widen, 16), (split, 11), (sgemm, 10), (qFused, 10), (qDecode, 18), (qBF16, 8), (bFused, 10), (bRowMajor, 13), (bMatrix, 11), (i8, 6)]
                            .map { $0.0.formatted(1).padding($0.1, left: true) }
                        print("\("\(n)x\(k)".padding(10)) \(String(m).padding(4)) " + cells.joined(separator: " ") + "  " + serves + "  " + qServes)
                    }
                }
            }
        }
    }

    private func parseList(_ text: String, name: String) throws -> [Int] {
        try text.split(separator: ",").map {
            guard let v = Int($0) else {
                throw StrataError.invalidRequest("\(name): '\($0)' is not an integer")
            }
            return v
        }
    }

    private func positive(_ v: Int, _ name: String) throws -> Int {
        guard v > 0 else { throw StrataError.invalidRequest("\(name) values must be positive") }
        return v
    }
}
