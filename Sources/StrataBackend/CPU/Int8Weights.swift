import CStrataKernels
import StrataCore

/// `--weight-format int8` (W8A8): each weight row held as symmetric int8 codes with one f32
/// scale, and each matmul's activations quantized the same way per row, on the fly. The integer
/// sums run on AMX-INT8 through oneDNN (twice the bf16 tiles' rate, half the weight bytes);
/// where oneDNN has no AMX-INT8 kernel, on AVX2 (`strata_s8_gemm_avx2`: byte multiply-adds,
/// which a Zen 3 issues at 4.5x its f32 FMA rate). Both give the exact integer sums, so the
/// same results. Opt-in: the logits move by the quantization, ~1e-2 of their range.
enum Int8Weights {
    static var usesMatrixUnits: Bool { MatrixUnits.oneDNN?.int8Kernel != nil }

    /// The kernel that serves int8 weights, by name (`strata bench-gemm` reports it).
    static var kernel: String { MatrixUnits.oneDNN?.int8Kernel.map { "onednn " + $0 } ?? fallbackKernel }

    /// What runs where oneDNN has no AMX-INT8 kernel (`strata_s8_gemm_avx2`).
    static let fallbackKernel = "int8-avx2"

    /// oneDNN's kernel for a slab of n columns of `rows` rows, as `run` multiplies it (rows
    /// padded to `OneDNN.int8MinRows`).
    static func kernel(rows: Int, n: Int, k: Int) -> String {
        guard let dnnl = MatrixUnits.oneDNN, dnnl.int8Kernel != nil else { return fallbackKernel }
        return dnnl.kernel(m: max(rows, dnnl.int8MinRows), n: n, k: k, element: .int8)
    }

    /// Quantizes a row-major weight [n, k] stored as `dtype` into `buffer` (`layout.byteCount`
    /// bytes), rows in parallel. Panel padding is zero, so it adds nothing to the sums.
    static func make(_ source: UnsafeRawPointer, dtype: DType, layout: Int8Layout, into buffer: UnsafeMutableRawPointer,
                     threads: Int) {
        let n = layout.n, k = layout.k
        let codes = buffer.assumingMemoryBound(to: Int8.self)
        let scales = (buffer + layout.scalesOffset).assumingMemoryBound(to: Float.self)
        codes.initialize(repeating: 0, count: layout.scalesOffset)
        parallelFor(n, threads: threads, minimumPerThread: 16) { rows in
            let values = UnsafeMutablePointer<Float>.allocate(capacity: max(k, 1))
            let row = UnsafeMutablePointer<Int8>.allocate(capacity: max(k, 1))
            defer { values.deallocate(); row.deallocate() }
            for r in rows {
                Precision.convertToFloat(source + r * k * dtype.byteSize, dtype: dtype, count: k, into: values)
                scales[r] = quantizeRow(values, count: k, into: row)
                if layout.panels == nil {
                    (codes + r * k).update(from: row, count: k)
                } else {
                    // A word (4 consecutive k) is contiguous in the panels: copy words, then the tail.
                    var c = 0
                    while c + 4 <= k {
                        (codes + layout.index(row: r, column: c)).update(from: row + c, count: 4)
                        c += 4
                    }
                    while c < k { codes[layout.index(row: r, column: c)] = row[c]; c += 1 }
                }
            }
        }
    }

    /// An int8 weight's per-row scales.
    static func scales(of weight: Tensor) -> UnsafePointer<Float> {
        guard let layout = weight.int8 else { preconditionFailure("not an int8 weight") }
        return UnsafePointer((weight.buffer.pointer + layout.scalesOffset).assumingMemoryBound(to: Float.self))
    }

    /// Prefill-sized products (m >= `BF16GEMM.minTeamRows`) go in blocks of `rowsPerBlock`
    /// rows, one single-threaded oneDNN call each; the last block takes the remainder (up to
    /// 2 * rowsPerBlock - 1 rows), so no block is short.
    static let rowsPerBlock = 128
    static func rowBlockCount(_ m: Int) -> Int { max(1, m / rowsPerBlock) }
    static func rowBlock(_ b: Int, of m: Int) -> Range<Int> {
        b * rowsPerBlock..<(b == rowBlockCount(m) - 1 ? m : (b + 1) * rowsPerBlock)
    }

    /// Row `row` of an int8 weight as f32 (codes times the row's scale).
    static func unpackRow(_ weight: Tensor, row: Int, into destination: UnsafeMutablePointer<Float>) {
        guard let layout = weight.int8 else { preconditionFailure("not an int8 weight") }
        let codes = weight.buffer.pointer.assumingMemoryBound(to: Int8.self)
        let scale = scales(of: weight)[row]
        // A word (4 consecutive k) is contiguous in panels as in rows: one index per word.
        var c = 0
        while c + 4 <= layout.k {
            let word = codes + layout.index(row: row, column: c)
            for i in 0..<4 { destination[c + i] = Float(word[i]) * scale }
            c += 4
        }
        while c < layout.k { destination[c] = Float(codes[layout.index(row: row, column: c)]) * scale; c += 1 }
    }

    /// Symmetric int8 codes of `count` values and their scale (`strata_quantize_row_s8`).
    @inline(__always)
    static func quantizeRow(_ x: UnsafePointer<Float>, count: Int, into codes: UnsafeMutablePointer<Int8>) -> Float {
        CPUSetup.avx512Kernels ? strata_quantize_row_s8_avx512(x, Int32(count), codes) : strata_quantize_row_s8(x, Int32(count), codes)
    }

    /// Activations quantized for int8 weights: m rows of k codes and one scale per row, in one
    /// f32 scratch of `floats` values (the caller releases it).
    ///
    /// The codes have `paddedRows` rows, those past m zero: oneDNN serves products of fewer
    /// rows than `OneDNN.int8MinRows` on narrow slabs with its reference code (a 1 x 1024 x 128
    /// product took 5 ms), so small batches are multiplied as that many rows.
    struct QuantizedRows {
        let m: Int, k: Int, paddedRows: Int
        let storage: UnsafeMutablePointer<Float>
        static func floats(m: Int, k: Int, paddedRows: Int) -> Int { (paddedRows * k + 3) / 4 + m }
        var floats: Int { Self.floats(m: m, k: k, paddedRows: paddedRows) }
        var codes: UnsafeMutablePointer<Int8> { UnsafeMutableRawPointer(storage).assumingMemoryBound(to: Int8.self) }
        var scales: UnsafeMutablePointer<Float> { storage + (paddedRows * k + 3) / 4 }
    }

    /// Quantizes x [m, k] per row (rows in parallel); one set of codes serves every weight it
    /// meets (attention's q, k and v projections share one).
    static func quantize(_ x: UnsafePointer<Float>, m: Int, k: Int, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>) -> QuantizedRows {
        let padded = max(m, MatrixUnits.oneDNN?.int8MinRows ?? m)
        let rows = QuantizedRows(m: m, k: k, paddedRows: padded, storage: scratch(QuantizedRows.floats(m: m, k: k, paddedRows: padded)))
        let codes = rows.codes, scales = rows.scales
        if padded > m { (codes + m * k).update(repeating: 0, count: (padded - m) * k) }
        parallelFor(m, threads: threads, minimumPerThread: max(1, 8192 / max(k, 1))) { range in
            for r in range { scales[r] = quantizeRow(x + r * k, count: k, into: codes + r * k) }
        }
        return rows
    }

    /// out[m, n] = x * weight^T (+ bias) for x quantized by `quantize`, the weight in
    /// `Int8Layout`; `out` [m, n] is fully written.
    static func run(_ x: QuantizedRows, n: Int, weight: Tensor, bias: UnsafePointer<Float>?,
                    out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                    release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard let layout = weight.int8 else { preconditionFailure("not an int8 weight") }
        let m = x.m, k = x.k
        guard m > 0, n > 0 else { return }
        let weightScales = scales(of: weight)
        let codes = x.codes, rowScales = x.scales
        func rescale(_ sums: UnsafeRawPointer, rows: Range<Int>, width: Int, first: Int) {
            for r in rows {
                rescaleRow(sums + r * width * 4, count: width, rowScale: rowScales[r],
                           columnScales: weightScales + first, bias: bias.map { $0 + first }, into: out + r * n + first)
            }
        }
        guard k > 0 else {
            // Empty sums: zero s32 (the same bits as f32 zeros), then the bias.
            out.update(repeating: 0, count: m * n)
            rescale(out, rows: 0..<m, width: n, first: 0)
            return
        }
        guard let dnnl = MatrixUnits.oneDNN, dnnl.int8Kernel != nil, let panels = layout.panels else {
            // Exact integer sums from `strata_s8_gemm_avx2`, output columns split across the
            // workers, written as s32 into `out` and rescaled in place.
            let weightCodes = UnsafePointer(weight.buffer.pointer.assumingMemoryBound(to: Int8.self))
            let sums = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Int32.self)
            parallelFor(n, threads: threads, minimumPerThread: 64) { columns in
                strata_s8_gemm_avx2(codes, Int32(m), Int32(k), weightCodes, Int32(columns.lowerBound), Int32(columns.upperBound), sums, n)
            }
            parallelFor(m, threads: threads) { rows in rescale(out, rows: rows, width: n, first: 0) }
            return
        }
        let w = UnsafeRawPointer(weight.buffer.pointer)
        // Prefill-sized products in blocks of 128 rows, taken in turn by Strata's workers, one-
        // thread oneDNN calls whose s32 sums land in `out` and are rescaled in place while still
        // in L2 (Llama-250M prefill, B=32, alternating runs: median 1175 vs 1094 tokens/s for one
        // call on oneDNN's team, then a rescaling pass; blocks taken in turn rather than half
        // each: median 1360 vs 1256, as the two vCPUs' speeds drift apart). Decode-sized ones
        // split by panels instead.
        if m >= BF16GEMM.minTeamRows {
            parallelChunks(rowBlockCount(m), threads: threads, grain: 1) { range in
                for b in range {
                    let rows = rowBlock(b, of: m), first = rows.lowerBound
                    dnnl.matmul(m: rows.count, n: n, k: k, a: codes + first * k, b: w, element: .int8, bias: nil, c: out + first * n,
                                threads: 1)
                    rescale(out, rows: rows, width: n, first: 0)
                }
            }
            return
        }
        let rows = x.paddedRows
        PanelLayout.forEachSlab(n: n, threads: threads) { first, width in
            let sums = scratch(rows * width)
            defer { release(sums, rows * width) }
            let slab = w + (first / PanelLayout.panelWidth) * panels.panelElements
            dnnl.matmul(m: rows, n: width, k: k, a: codes, b: slab, element: .int8, bias: nil, c: sums, threads: 1)
            rescale(sums, rows: 0..<m, width: width, first: first)
        }
    }

    /// out[r, c] = sum[r, c] * rowScale * columnScales[c] + bias[c] for s32 sums (`out` may be
    /// the sums themselves: each is read before its f32 is written).
    static func rescaleRow(_ sums: UnsafeRawPointer, count: Int, rowScale: Float, columnScales: UnsafePointer<Float>,
                           bias: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>) {
        let s = sums.assumingMemoryBound(to: Int32.self)
        if CPUSetup.avx512Kernels {
            strata_rescale_s32_avx512(s, Int32(count), rowScale, columnScales, bias, out)
        } else {
            strata_rescale_s32(s, Int32(count), rowScale, columnScales, bias, out)
        }
    }
}
