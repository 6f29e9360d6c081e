import CStrataKernels
import StrataCore

/// Matmuls against bf16 weights on the CPU's bf16 matrix units (`--weight-format bf16`):
/// AMX or AVX512-BF16 through oneDNN, the activations rounded to bf16 and f32 accumulation
/// (what transformers does in bf16, except that everything outside the matmuls stays f32 here).
/// Without oneDNN, `CPUBackend.linear` keeps bf16 weights on its own kernels (the fused kernel
/// widens bf16 in registers).
enum BF16GEMM {
    /// Whether oneDNN serves bf16 weights: at every row count where it runs at all. Measured
    /// with `strata bench-gemm` on AMX, 2 threads, OPT-125m's shapes: 31-33 vs 10-18 GFLOP/s
    /// for the fused kernel at one row, 120-290 vs 65-78 at 16, 400-530 vs 41-78 from 128.
    static var usesMatrixUnits: Bool { MatrixUnits.oneDNN != nil }

    /// The kernel that serves `rows` rows against an n x k bf16 weight, by name.
    static func kernel(rows: Int, n: Int, k: Int) -> String {
        guard let dnnl = MatrixUnits.oneDNN else { return rows <= HalfGEMM.maxRows ? "fused-bf16" : "widen-sgemm" }
        return "onednn " + dnnl.kernel(m: rows, n: n, k: k)
    }

    /// out[m, n] = x[m, k] * w[n, k]^T (+ bias), w bf16 row-major; `out` is fully written.
    /// `panels`: w is packed in that layout (only made when oneDNN takes it, see `pack`).
    /// Callers check `usesMatrixUnits` first.
    static func run(m: Int, n: Int, k: Int, x: UnsafePointer<Float>, w: UnsafeRawPointer, panels: PanelLayout? = nil,
                    bias: UnsafePointer<Float>?,
                    out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                    release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard m > 0, n > 0 else { return }
        guard k > 0 else {
            // No inputs to sum: the bias, or zeros.
            for r in 0..<m {
                if let bias { (out + r * n).update(from: bias, count: n) } else { (out + r * n).update(repeating: 0, count: n) }
            }
            return
        }
        let floats = roundedFloats(m: m, k: k)
        let rounded = round(x, m: m, k: k, threads: threads, scratch: scratch)
        defer { release(rounded, floats) }
        multiply(m: m, n: n, k: k, a: rounded, w: w, panels: panels, bias: bias, out: out, threads: threads, scratch: scratch, release: release)
    }

    /// Rounded activations: 2 bytes per element, held in an f32 scratch of this many values.
    static func roundedFloats(m: Int, k: Int) -> Int { (m * k + 1) / 2 }

    /// x [m, k] rounded to bf16 (rows in parallel) into a scratch of `roundedFloats` values that
    /// the caller releases; one rounding serves every weight it meets.
    static func round(_ x: UnsafePointer<Float>, m: Int, k: Int, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>)
        -> UnsafeMutablePointer<Float> {
        let rounded = scratch(roundedFloats(m: m, k: k))
        let a = UnsafeMutableRawPointer(rounded).assumingMemoryBound(to: UInt16.self)
        parallelFor(m, threads: threads, minimumPerThread: max(1, 8192 / max(k, 1))) { rows in
            roundToBF16(x + rows.lowerBound * k, a + rows.lowerBound * k, count: rows.count * k)
        }
        return rounded
    }

    /// out = a * w^T (+ bias) for activations already rounded by `round`.
    static func multiply(m: Int, n: Int, k: Int, a rounded: UnsafeMutablePointer<Float>, w: UnsafeRawPointer, panels: PanelLayout?,
                         bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int,
                         scratch: (Int) -> UnsafeMutablePointer<Float>, release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard let dnnl = MatrixUnits.oneDNN else { preconditionFailure("BF16GEMM runs only where oneDNN serves (usesMatrixUnits)") }
        let a = UnsafeRawPointer(rounded)
        // oneDNN takes dense outputs only (see `OneDNN.matmul`). Prefill-sized
        // products are one call threaded by oneDNN's OpenMP team (it splits rows and columns
        // for the matrix units: 687 vs ~500 GFLOP/s for a row split over Strata's workers, 2048 x
        // 2816 x 1024 on 2 cores; the team sleeps between calls, see `MatrixUnits`). Decode-sized
        // ones are split over Strata's workers by 64-column panels into a dense scratch each,
        // copied into place: no team wake-up per call.
        if m >= minTeamRows || threads == 1 {
            dnnl.matmul(m: m, n: n, k: k, a: a, b: w, panels: panels != nil, bias: bias, c: out, threads: threads)
            return
        }
        PanelLayout.forEachSlab(n: n, threads: threads) { first, width in
            let slab = panels.map { w + (first / PanelLayout.panelWidth) * $0.panelElements * 2 } ?? w + first * k * 2
            if width == n {
                dnnl.matmul(m: m, n: n, k: k, a: a, b: slab, panels: panels != nil, bias: bias, c: out, threads: 1)
                return
            }
            let dense = scratch(m * width)
            defer { release(dense, m * width) }
            dnnl.matmul(m: m, n: width, k: k, a: a, b: slab, panels: panels != nil, bias: bias.map { $0 + first },
                        c: dense, threads: 1)
            for r in 0..<m { (out + r * n + first).update(from: dense + r * width, count: width) }
        }
    }

    /// Prefill against a group-quantized weight that `QuantizedPanels` does not serve (2 or 3
    /// bits, groups not made of 32-value blocks, or a CPU without AVX512-BF16): the codes decoded
    /// once to row-major bf16 (amortized over the rows; decode steps keep the fused kernel).
    static func runDecoding(m: Int, n: Int, k: Int, x: UnsafePointer<Float>, weight: Tensor, bias: UnsafePointer<Float>?,
                            out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                            release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        let halves = scratch((n * k + 1) / 2)
        defer { release(halves, (n * k + 1) / 2) }
        let decoded = UnsafeMutableRawPointer(halves).assumingMemoryBound(to: UInt16.self)
        parallelFor(n, threads: threads, minimumPerThread: 64) { rows in
            let chunk = 64, floats = scratch(chunk * k)
            defer { release(floats, chunk * k) }
            var row = rows.lowerBound
            while row < rows.upperBound {
                let count = min(chunk, rows.upperBound - row)
                CPUBackend.dequantizeRows(weight, rows: row..<(row + count), into: floats)
                roundToBF16(floats, decoded + row * k, count: count * k)
                row += count
            }
        }
        run(m: m, n: n, k: k, x: x, w: UnsafeRawPointer(decoded), bias: bias, out: out, threads: threads,
            scratch: scratch, release: release)
    }

    /// From this many rows a matmul is one oneDNN call on its own thread team.
    static let minTeamRows = 128

    /// f32 -> bf16, round to nearest even (torch's cast; `strata_bf16_round`, AVX2: Swift's
    /// generic SIMD narrowing was not vectorized).
    static func roundToBF16(_ source: UnsafePointer<Float>, _ destination: UnsafeMutablePointer<UInt16>, count: Int) {
        strata_bf16_round(source, count, destination)
    }

    /// Whether `--weight-format bf16` packs weights in `PanelLayout` on this machine.
    static var packsPanels: Bool { MatrixUnits.oneDNN?.takesPanels ?? false }

    /// A row-major bf16 weight [n, k] into `layout`, padding zeroed; panels in parallel.
    static func pack(_ plain: UnsafePointer<UInt16>, layout: PanelLayout, into destination: UnsafeMutablePointer<UInt16>,
                     threads: Int) {
        let n = layout.n, k = layout.k, width = PanelLayout.panelWidth
        parallelFor(layout.panels, threads: threads) { panels in
            let start = destination + panels.lowerBound * layout.panelElements
            start.initialize(repeating: 0, count: panels.count * layout.panelElements)
            for row in (panels.lowerBound * width)..<min(n, panels.upperBound * width) {
                let source = plain + row * k
                for column in 0..<k { destination[layout.index(row: row, column: column)] = source[column] }
            }
        }
    }

    /// Row `row` of a packed weight as f32.
    static func unpackRow(_ packed: UnsafePointer<UInt16>, layout: PanelLayout, row: Int, into destination: UnsafeMutablePointer<Float>) {
        for column in 0..<layout.k {
            destination[column] = Precision.bf16ToFloat(packed[layout.index(row: row, column: column)])
        }
    }

    /// A stored weight (f32, f16 or bf16) as bf16, converted in chunks through an f32 buffer.
    static func convert(_ source: UnsafeRawPointer, dtype: DType, count: Int, into destination: UnsafeMutablePointer<UInt16>) {
        if dtype == .bf16 {
            destination.update(from: source.assumingMemoryBound(to: UInt16.self), count: count)
            return
        }
        let chunk = 1 << 16
        withUnsafeTemporaryAllocation(of: Float.self, capacity: chunk) { buffer in
            var i = 0
            while i < count {
                let n = min(chunk, count - i)
                Precision.convertToFloat(source + i * dtype.byteSize, dtype: dtype, count: n, into: buffer.baseAddress!)
                roundToBF16(buffer.baseAddress!, destination + i, count: n)
                i += n
            }
        }
    }
}

extension PanelLayout {
    /// Decode-sized matmuls against panel-packed weights: the output columns in whole 64-column
    /// panels, spread over the workers (a slab starts on a panel boundary, so its weight is one
    /// contiguous run of panels; row-major weights split the same way).
    static func forEachSlab(n: Int, threads: Int, _ body: (_ first: Int, _ width: Int) -> Void) {
        let blocks = (n + panelWidth - 1) / panelWidth
        // About four slabs per worker, taken in turn (`parallelChunks`): GCD's late wake of the
        // second worker then costs it slabs instead of costing the step its whole share.
        let grain = max(1, (blocks + 4 * threads - 1) / (4 * threads))
        parallelChunks(blocks, threads: threads, grain: grain) { range in
            let first = range.lowerBound * panelWidth
            body(first, min(n, range.upperBound * panelWidth) - first)
        }
    }
}
