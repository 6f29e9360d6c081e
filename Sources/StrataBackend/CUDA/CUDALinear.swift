import StrataCore

extension CUDABackend {
    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        device.makeCurrent()
        let m = x.rows, k = x.columns, n = weight.shape[0]
        precondition(weight.columns == k, "linear: input has \(k) features, weight expects \(weight.columns)")
        let out = allocate(x.shape.dropLast() + [n])
        guard m > 0, n > 0 else { return out }
        if let q = weight.quantization, m <= Self.fusedQuantizedRows, q.geometry.inner == 1 {
            var a = KernelArguments()
            a.pointer(x.buffer.deviceAddress); a.pointer(weight.buffer.deviceAddress)
            a.pointer(weight.buffer.deviceAddress + UInt64(q.stepsOffset)); a.pointer(weight.buffer.deviceAddress + UInt64(q.minsOffset))
            a.pointer(bias?.buffer.deviceAddress ?? 0); a.pointer(out.buffer.deviceAddress)
            a.int(m); a.int(n); a.int(k); a.int(q.scheme.groupSize); a.int(q.scheme.bits)
            device.launch("linear_q_small", blocks: (n + 3) / 4, threads: 128, a)
            return out
        }
        var beta: Float = 0
        if let bias {
            var a = KernelArguments()
            a.pointer(out.buffer.deviceAddress); a.pointer(bias.buffer.deviceAddress); a.int(m); a.int(n)
            device.launch("fill_bias_rows", blocks: (m * n + 255) / 256, threads: 256, a)
            beta = 1
        }
        // Inputs in the weight's element type (a quantized weight is expanded to f16, or f32).
        let type: DType = weight.quantization != nil ? (precision == .f32 ? .f32 : .f16) : weight.dtype
        var input = x
        if type != .f32 {
            input = allocate(x.shape, dtype: type)
            var a = KernelArguments()
            a.pointer(x.buffer.deviceAddress); a.pointer(input.buffer.deviceAddress); a.size(x.elementCount); a.int(Self.kind(type))
            device.launch("convert_f32", blocks: (x.elementCount + 255) / 256, threads: 256, a)
        }
        guard let q = weight.quantization else {
            gemm(m: m, n: n, k: k, weight: weight.buffer.deviceAddress, type: type, input: input, out: out.buffer.deviceAddress, ldc: n, beta: beta)
            return out
        }
        // A quantized weight for a larger batch is expanded a slab of output rows at a time
        // (about 32 MiB), so a layer never holds its weights expanded whole beside the packed ones.
        // Groups along another axis (rare) are expanded whole.
        let g = q.geometry
        let rowsPerSlab = g.inner == 1 ? max(1, min(n, (32 << 20) / max(1, k * type.byteSize))) : n
        let scratch = device.allocator.allocate(rowsPerSlab * k * type.byteSize)
        var row = 0
        while row < n {
            let rows = min(rowsPerSlab, n - row)
            if g.inner == 1 {
                // Rows grouped along k: their groups are contiguous from the first row's.
                expand(weight, q, firstGroup: row * g.groupsAlongAxis, outer: rows, extent: k, inner: 1, keep: k, groupsAlongExtent: true,
                       into: scratch, kind: Self.kind(type))
            } else {
                expand(weight, q, firstGroup: 0, outer: g.outer, extent: g.extent, inner: g.inner, keep: g.extent, groupsAlongExtent: true,
                       into: scratch, kind: Self.kind(type))
            }
            gemm(m: m, n: rows, k: k, weight: scratch.deviceAddress, type: type, input: input,
                 out: out.buffer.deviceAddress + UInt64(row * 4), ldc: n, beta: beta)
            row += rows
        }
        return out
    }

    /// out[m, n] (row-major, leading dimension ldc) = input[m, k] * weight[n, k]^T + beta * out,
    /// through cuBLAS with f32 accumulation. Row-major out is column-major out^T = weight^T *
    /// input^T, with the weight read as the column-major k x n matrix it already is.
    func gemm(m: Int, n: Int, k: Int, weight: UInt64, type: DType, input: Tensor, out: UInt64, ldc: Int, beta: Float) {
        var alpha: Float = 1, beta = beta
        let dataType: Int32 = type == .f16 ? CUDAConstants.realF16 : type == .bf16 ? CUDAConstants.realBF16 : CUDAConstants.realF32
        let status = withUnsafePointer(to: &alpha) { alphaPointer in
            withUnsafePointer(to: &beta) { betaPointer in
                driver.cublasGemmEx(device.blas, CUDAConstants.opT, CUDAConstants.opN, Int32(n), Int32(m), Int32(k),
                                    alphaPointer, weight, dataType, Int32(k), input.buffer.deviceAddress, dataType, Int32(k),
                                    betaPointer, out, CUDAConstants.realF32, Int32(ldc), CUDAConstants.compute32F, CUDAConstants.gemmDefault)
            }
        }
        do { try driver.checkBLAS(status, "cublasGemmEx(\(m) x \(n) x \(k), \(type))") } catch { fatalError("\(error)") }
    }

    /// Expands groups of `t` (from group `firstGroup` on) into `out` (kind 0 f32, 1 f16, 2 bf16),
    /// viewed as [outer, extent, inner] and keeping the first `keep` of each extent. Groups run
    /// along the extent (a weight), or along `inner` (a cache [batch * kvHeads, capacity, headDim],
    /// whose groups run along head_dim and whose filled positions are kept).
    func expand(_ t: Tensor, _ q: QuantizedLayout, firstGroup: Int, outer: Int, extent: Int, inner: Int, keep: Int, groupsAlongExtent: Bool,
                into out: DeviceBuffer, kind: Int) {
        let base = t.buffer.deviceAddress
        var a = KernelArguments()
        a.pointer(base + UInt64(firstGroup * q.scheme.bytesPerGroup))
        a.pointer(base + UInt64(q.stepsOffset + firstGroup * 2)); a.pointer(base + UInt64(q.minsOffset + firstGroup * 2))
        a.pointer(out.deviceAddress)
        a.size(outer); a.int(extent); a.size(inner); a.int(keep)
        a.int(q.scheme.groupSize); a.int(q.scheme.bits); a.int(kind); a.int(groupsAlongExtent ? 1 : 0)
        device.launch("dequantize_groups", blocks: min((outer * keep * inner + 255) / 256, 65535), threads: 256, a)
    }
}
