import CStrataKernels
import StrataCore

extension CPUBackend {
    /// A prefill's feed-forward block on int8 weights runs fused (`Int8Weights.feedForward`);
    /// everything else as the separate ops.
    public func feedForward(_ x: Tensor, gate: Tensor?, up: Tensor, down: Tensor, biases: [Tensor?], activation: Activation,
                            residual: Tensor?) -> Tensor {
        let m = x.rows, k = x.columns, f = up.shape[0], n = down.shape[0]
        guard fusesFeedForward(rows: m, gate: gate, up: up, down: down), biases.count == 3,
              up.columns == k, gate.map({ $0.shape == up.shape }) ?? true, down.columns == f,
              residual.map({ $0.rows == m && $0.columns == n }) ?? true else {
            return composedFeedForward(x, gate: gate, up: up, down: down, biases: biases, activation: activation, residual: residual)
        }
        let out = allocate([m, n])
        Int8Weights.feedForward(x.floats, m: m, k: k, gate: gate, up: up, down: down,
                                biases: biases.map { $0.map { UnsafePointer($0.floats) } }, activation: activation,
                                residual: residual?.floats, out: out.floats, threads: threads, scratch: scratch, release: release)
        return out
    }

    /// Whether `feedForward` runs fused for `rows` rows on these weights.
    public func fusesFeedForward(rows: Int, gate: Tensor?, up: Tensor, down: Tensor) -> Bool {
        rows >= Int8Weights.fusedFeedForwardRows && Int8Weights.usesMatrixUnits
            && ([up, down] + (gate.map { [$0] } ?? [])).allSatisfy { $0.int8?.panels != nil }
    }
}

extension Int8Weights {
    /// Rows from which `feedForward` fuses: prefill-sized products, as `run`'s row blocks.
    static let fusedFeedForwardRows = BF16GEMM.minTeamRows

    /// out = (act(x gate^T + b0) * (x up^T + b1)) down^T + b2 (+ residual) for x [m, k], or
    /// act(x up^T + b1) down^T + b2 (+ residual) without a gate; m >= `fusedFeedForwardRows`,
    /// panel-packed int8 weights. Each worker takes blocks of `rowsPerBlock` rows through the
    /// whole block: the projections' s32 sums, then per row the rescale, the activation and the
    /// quantization for the down projection while the row is in L1; then the down projection,
    /// its rescale and the residual. The separate ops wrote and read the [m, ffn] intermediates (~46 MB
    /// each for a Llama-250M prefill of 4096 rows) through memory several times per layer.
    /// The results are bit for bit the separate ops' where the AVX-512 kernels serve.
    static func feedForward(_ x: UnsafePointer<Float>, m: Int, k: Int, gate: Tensor?, up: Tensor, down: Tensor,
                            biases: [UnsafePointer<Float>?], activation: Activation, residual: UnsafePointer<Float>?,
                            out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                            release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard let dnnl = MatrixUnits.oneDNN else { preconditionFailure("feedForward needs oneDNN's int8 kernels") }
        let f = up.shape[0], n = down.shape[0], projections = gate == nil ? 1 : 2
        let upScales = scales(of: up), downScales = scales(of: down), gateScales = gate.map { scales(of: $0) }
        let xq = quantize(x, m: m, k: k, threads: threads, scratch: scratch)
        defer { release(xq.storage, xq.floats) }
        // Blocks taken in turn (as in `run`), each with its own scratch.
        parallelChunks(rowBlockCount(m), threads: threads, grain: 1) { range in
            // For the most rows a block has (the last takes the remainder): the
            // projections' sums, the down projection's, one activated row pair, and the down
            // projection's input codes.
            let most = 2 * rowsPerBlock - 1, floats = projections * most * f + most * n + 2 * f
            let sums = scratch(floats)
            let hidden = QuantizedRows(m: most, k: f, paddedRows: most,
                                       storage: scratch(QuantizedRows.floats(m: most, k: f, paddedRows: most)))
            defer {
                release(sums, floats)
                release(hidden.storage, hidden.floats)
            }
            for b in range {
                let block = rowBlock(b, of: m), first = block.lowerBound, rows = block.count
                let upSums = UnsafeMutableRawPointer(sums), gateSums = UnsafeMutableRawPointer(sums + rows * f)
                let downSums = UnsafeMutableRawPointer(sums + projections * rows * f)
                let upRow = sums + projections * rows * f + rows * n, gateRow = upRow + f
                let codes = xq.codes + first * k
                dnnl.matmul(m: rows, n: f, k: k, a: codes, b: up.buffer.pointer, element: .int8, bias: nil, c: upSums, threads: 1)
                if let gate {
                    dnnl.matmul(m: rows, n: f, k: k, a: codes, b: gate.buffer.pointer, element: .int8, bias: nil, c: gateSums, threads: 1)
                }
                for r in 0..<rows {
                    let rowScale = xq.scales[first + r]
                    rescaleRow(upSums + r * f * 4, count: f, rowScale: rowScale, columnScales: upScales,
                               bias: biases[1], into: upRow)
                    if let gateScales {
                        rescaleRow(gateSums + r * f * 4, count: f, rowScale: rowScale, columnScales: gateScales,
                                   bias: biases[0], into: gateRow)
                        CPUBackend.gatedActivate(gateRow, upRow, count: f, activation, into: upRow)
                    } else {
                        CPUBackend.activate(upRow, count: f, activation, into: upRow)
                    }
                    hidden.scales[r] = quantizeRow(upRow, count: f, into: hidden.codes + r * f)
                }
                dnnl.matmul(m: rows, n: n, k: f, a: hidden.codes, b: down.buffer.pointer, element: .int8, bias: nil, c: downSums,
                            threads: 1)
                for r in 0..<rows {
                    let o = out + (first + r) * n
                    rescaleRow(downSums + r * n * 4, count: n, rowScale: hidden.scales[r], columnScales: downScales,
                               bias: biases[2], into: o)
                    if let residual { CPUBackend.add(residual + (first + r) * n, into: o, count: n) }
                }
            }
        }
    }
}
