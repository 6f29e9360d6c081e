import COpenBLAS
import CStrataKernels
import StrataCore

/// The CPU backend's matmuls against weights: which kernel serves a weight's format and row
/// count (f32 sgemm, fused f16/bf16/quantized kernels, widen-then-sgemm, oneDNN's bf16 and
/// int8 matrix units), and projections of one input that share its preparation.
extension CPUBackend {
    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        linear(x, weight: weight, bias: bias, path: .automatic)
    }

    /// How a matmul against a stored f16/bf16 weight is computed. `automatic` picks per shape
    /// (the thresholds come from `strata bench-gemm`); the others exist to measure.
    public enum GEMMPath: String, Sendable, CaseIterable {
        case automatic
        /// Widening (f16, `HalfGEMM`) or decoding (quantized, `QuantGEMM`) next to the register tile.
        case fusedHalf = "fused"
        /// Widen or decode a slab of the weight to f32, then OpenBLAS sgemm.
        case widenThenBLAS = "widen-sgemm"
        /// bf16 weights only: oneDNN on the bf16 matrix units whatever the row count (where there
        /// are none, the `automatic` choice).
        case matrixUnits = "bf16-matrix"
        /// f16/bf16/f32 weights: the bf16x3 split on AMX tiles whatever the row count (where
        /// there are none, the `automatic` choice).
        case splitBF16 = "bf16x3"
    }

    /// Whether `linear` runs this weight at `rows` rows as a bf16x3 split on AMX tiles
    /// (`--matmul-precision bf16x3`, prefill sizes; `SplitBF16GEMM`).
    func splitsToBF16(_ weight: Tensor, rows: Int, path: GEMMPath) -> Bool {
        // Quantized and int8 weights are u8 codes; packed bf16 weights are oneDNN's.
        guard SplitBF16GEMM.available, weight.dtype != .u8, weight.panels == nil else { return false }
        return path == .splitBF16 || (path == .automatic && matmulPrecision == .bf16x3 && rows >= SplitBF16GEMM.minRows)
    }

    /// Whether `path` (with `rows` rows of input) uses a fused kernel for this weight.
    func usesFusedKernel(_ weight: Tensor, rows: Int, path: GEMMPath) -> Bool {
        let eligible: Bool, limit: Int
        if let q = weight.quantization {
            (eligible, limit) = (QuantGEMM.supports(q), QuantGEMM.maxRows)
        } else {
            (eligible, limit) = (weight.dtype == .f16 || weight.dtype == .bf16, HalfGEMM.maxRows)
        }
        return eligible && (path == .fusedHalf || (path == .automatic && rows <= limit))
    }

    /// The kernel `linear` runs for `rows` rows against an f16 weight held as stored.
    public func halfKernel(rows: Int) -> String { rows <= HalfGEMM.maxRows ? "fused-" + HalfGEMM.kernel : "widen-sgemm" }

    /// The kernel `linear` runs for `rows` rows against an n x k bf16 weight.
    public func bf16Kernel(rows: Int, n: Int, k: Int) -> String { BF16GEMM.kernel(rows: rows, n: n, k: k) }

    /// Whether group-quantized weights (4/8-bit groups along rows) run on the bf16 matrix units
    /// under `--weight-format bf16` on this machine (`QuantizedPanels`).
    public static var decodesQuantizedOnMatrixUnits: Bool { BF16GEMM.usesMatrixUnits && QuantizedPanels.available }

    /// The kernel `linear` runs for `rows` rows against a group-quantized weight, by name.
    public func quantizedKernel(_ weight: Tensor, rows m: Int) -> String {
        guard let q = weight.quantization else { return "not quantized" }
        let (n, k) = (weight.shape[0], weight.columns)
        if decodesToPanels(weight, rows: m) { return QuantizedPanels.kernel(rows: m, n: n, k: k) }
        if int8Activations, Int8GEMM.runs(q, k: k, rows: m) { return Int8GEMM.kernel }
        if usesFusedKernel(weight, rows: m, path: .automatic) { return "fused-q\(q.scheme.bits)" }
        if weightFormat == .bf16, BF16GEMM.usesMatrixUnits { return "decode+" + BF16GEMM.kernel(rows: m, n: n, k: k) }
        return "decode-sgemm"
    }

    /// The kernel that serves `--weight-format int8` weights.
    public var int8Kernel: String { Int8Weights.kernel }

    /// oneDNN's kernel for an int8 product of `rows` rows on a slab of n columns.
    public func int8Kernel(rows: Int, n: Int, k: Int) -> String { Int8Weights.kernel(rows: rows, n: n, k: k) }

    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?, path: GEMMPath) -> Tensor {
        let m = x.rows, k = x.columns, n = weight.shape[0]
        precondition(weight.columns == k, "linear: input has \(k) features, weight expects \(weight.columns)")
        let out = allocate(x.shape.dropLast() + [n])
        if weight.int8 != nil {
            multiplyInt8(x, weights: [weight], biases: [bias], into: [out])
            return out
        }
        // Only `--weight-format bf16` opts into rounded inputs; a checkpoint stored in bf16 and held
        // as stored keeps exact f32 arithmetic.
        // Packed weights exist only where oneDNN serves them.
        if weight.dtype == .bf16, weight.quantization == nil, BF16GEMM.usesMatrixUnits,
           weight.panels != nil || path == .matrixUnits || (path == .automatic && weightFormat == .bf16) {
            BF16GEMM.run(m: m, n: n, k: k, x: x.floats, w: weight.buffer.pointer, panels: weight.panels, bias: bias?.floats, out: out.floats,
                         threads: threads, scratch: scratch, release: release)
            return out
        }
        if path == .automatic, decodesToPanels(weight, rows: m) {
            let rounded = BF16GEMM.round(x.floats, m: m, k: k, threads: threads, scratch: scratch)
            defer { release(rounded, BF16GEMM.roundedFloats(m: m, k: k)) }
            QuantizedPanels.multiply(m: m, n: n, k: k, a: rounded, weight: weight, bias: bias?.floats, out: out.floats,
                                     threads: threads, scratch: scratch, release: release)
            return out
        }
        if weight.quantization != nil, weightFormat == .bf16, path == .automatic, m > QuantGEMM.maxRows, BF16GEMM.usesMatrixUnits {
            BF16GEMM.runDecoding(m: m, n: n, k: k, x: x.floats, weight: weight, bias: bias?.floats, out: out.floats,
                                 threads: threads, scratch: scratch, release: release)
            return out
        }
        let beta = Self.startFromBias(out.floats, bias, rows: m, columns: n)
        let xp = x.floats, op = out.floats
        if int8Activations, path == .automatic, let q = weight.quantization, Int8GEMM.runs(q, k: k, rows: m) {
            Int8GEMM.run(m: m, k: k, x: xp, weight: weight, out: op, ldc: n, beta: beta, threads: threads)
            return out
        }
        if splitsToBF16(weight, rows: m, path: path) {
            let split = SplitBF16GEMM.split(xp, m: m, k: k, threads: threads, scratch: scratch)
            defer { release(split.pointer, split.floats) }
            SplitBF16GEMM.multiply(m: m, n: n, k: k, split: split, w: weight.buffer.pointer, dtype: weight.dtype, out: op, beta: beta,
                                   threads: threads, scratch: scratch, release: release)
            return out
        }
        let fused = usesFusedKernel(weight, rows: m, path: path)
        // f16/bf16 weights on the fused kernel, and f32 weights at decode sizes, where sgemm would
        // copy (pack) the whole weight on every call: for an f32 LM head (a GGUF's Q6_K output,
        // decoded at load) 131 MB per step.
        if weight.quantization == nil, fused || (weight.dtype == .f32 && m <= HalfGEMM.maxRows) {
            HalfGEMM.multiply(m: m, n: n, k: k, x: xp, w: weight.buffer.pointer, dtype: weight.dtype, out: op, beta: beta,
                              threads: threads)
            return out
        }
        // Output columns are split across workers; each runs a single-threaded kernel on its slab.
        parallelFor(n, threads: threads, minimumPerThread: 64) { columns in
            if weight.dtype == .f32 {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(columns.count), Int32(k),
                            1, xp, Int32(k), weight.floats + columns.lowerBound * k, Int32(k), beta, op + columns.lowerBound, Int32(n))
                return
            }
            if fused, weight.quantization != nil {
                QuantGEMM.run(m: m, k: k, x: xp, weight: weight, columns: columns, out: op, ldc: n, beta: beta)
                return
            }
            // Widen the stored weight in slabs of about 4 MiB: large enough that OpenBLAS packs x
            // only a few times per call, small enough that an LM head never needs a full f32 copy.
            let slab = max(1, min(columns.count, (1 << 20) / max(k, 1)))
            let scratch = self.scratch(slab * k)
            defer { release(scratch, slab * k) }
            var row = columns.lowerBound
            while row < columns.upperBound {
                let rowsNow = min(slab, columns.upperBound - row)
                if weight.quantization != nil {
                    Self.dequantizeRows(weight, rows: row..<(row + rowsNow), into: scratch)
                } else {
                    let src = weight.buffer.pointer + row * k * weight.dtype.byteSize
                    Precision.convertToFloat(src, dtype: weight.dtype, count: rowsNow * k, into: scratch)
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(rowsNow), Int32(k),
                            1, xp, Int32(k), scratch, Int32(k), beta, op + row, Int32(n))
                row += rowsNow
            }
        }
        return out
    }

    /// Fills each of `rows` rows of `out` with the bias, for kernels that accumulate into it;
    /// returns their beta (1 with a bias, 0 without: the kernel writes the rows).
    private static func startFromBias(_ out: UnsafeMutablePointer<Float>, _ bias: Tensor?, rows m: Int, columns n: Int) -> Float {
        guard let bias else { return 0 }
        for r in 0..<m { (out + r * n).update(from: bias.floats, count: n) }
        return 1
    }

    /// Whether a quantized weight runs on the bf16 matrix units through `QuantizedPanels`
    /// (`--weight-format bf16`), unless `--int8-activations` asked for its integer kernel at
    /// this row count.
    func decodesToPanels(_ weight: Tensor, rows m: Int) -> Bool {
        guard let q = weight.quantization, weightFormat == .bf16, BF16GEMM.usesMatrixUnits,
              QuantizedPanels.supports(q, k: weight.columns) else { return false }
        return !(int8Activations && Int8GEMM.runs(q, k: weight.columns, rows: m))
    }

    /// Projections of one input: int8 weights share one quantization of it, bf16 weights on the
    /// matrix units (packed, or decoded from groups) one rounding, bf16x3 products one split
    /// (for a prefill, each pass over the activations costs about what a small projection's
    /// matmul does).
    public func linear(_ x: Tensor, weights: [Tensor], biases: [Tensor?]) -> [Tensor] {
        precondition(weights.count == biases.count, "one bias (or nil) per weight")
        let m = x.rows, k = x.columns
        for w in weights { precondition(w.columns == k, "linear: input has \(k) features, weight expects \(w.columns)") }
        let shared = m > 0 && k > 0 && weights.count > 1
        let int8 = weights.allSatisfy { $0.int8 != nil }
        let matrixUnits = weightFormat == .bf16 && BF16GEMM.usesMatrixUnits
            && weights.allSatisfy { ($0.dtype == .bf16 && $0.quantization == nil) || decodesToPanels($0, rows: m) }
        let splits = weights.allSatisfy { splitsToBF16($0, rows: m, path: .automatic) }
        guard shared, int8 || matrixUnits || splits else {
            return zip(weights, biases).map { linear(x, weight: $0, bias: $1) }
        }
        let outputs = weights.map { allocate(x.shape.dropLast() + [$0.shape[0]]) }
        if splits {
            let split = SplitBF16GEMM.split(x.floats, m: m, k: k, threads: threads, scratch: scratch)
            defer { release(split.pointer, split.floats) }
            for (i, w) in weights.enumerated() {
                let n = w.shape[0], out = outputs[i].floats
                let beta = Self.startFromBias(out, biases[i], rows: m, columns: n)
                SplitBF16GEMM.multiply(m: m, n: n, k: k, split: split, w: w.buffer.pointer, dtype: w.dtype, out: out,
                                       beta: beta, threads: threads, scratch: scratch, release: release)
            }
            return outputs
        }
        if int8 {
            multiplyInt8(x, weights: weights, biases: biases, into: outputs)
            return outputs
        }
        let rounded = BF16GEMM.round(x.floats, m: m, k: k, threads: threads, scratch: scratch)
        defer { release(rounded, BF16GEMM.roundedFloats(m: m, k: k)) }
        for (i, w) in weights.enumerated() where w.shape[0] > 0 {
            if w.quantization != nil {
                QuantizedPanels.multiply(m: m, n: w.shape[0], k: k, a: rounded, weight: w, bias: biases[i]?.floats,
                                         out: outputs[i].floats, threads: threads, scratch: scratch, release: release)
                continue
            }
            BF16GEMM.multiply(m: m, n: w.shape[0], k: k, a: rounded, w: w.buffer.pointer, panels: w.panels, bias: biases[i]?.floats,
                              out: outputs[i].floats, threads: threads, scratch: scratch, release: release)
        }
        return outputs
    }

    /// x against int8 weights into `outputs`: the activations quantized once for all of them.
    private func multiplyInt8(_ x: Tensor, weights: [Tensor], biases: [Tensor?], into outputs: [Tensor]) {
        let codes = Int8Weights.quantize(x.floats, m: x.rows, k: x.columns, threads: threads, scratch: scratch)
        defer { release(codes.storage, codes.floats) }
        for (i, w) in weights.enumerated() {
            Int8Weights.run(codes, n: w.shape[0], weight: w, bias: biases[i]?.floats, out: outputs[i].floats, threads: threads,
                            scratch: scratch, release: release)
        }
    }
}
