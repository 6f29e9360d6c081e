import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA backend: every `Backend` op on one GPU. Activations are f32 on the device; GEMMs go
/// through cuBLAS with f32 accumulation (tensor cores for f16/bf16 weights); group-quantized
/// weights are multiplied by a fused decode kernel for decode-sized batches and expanded to the
/// compute type for larger ones; attention reads f32 or 4-bit caches. Tensors' buffer pointers
/// are device addresses: nothing outside this folder reads them.
public final class CUDABackend: Backend {
    /// How matrix weights are held and multiplied: in 16 bits (f16, or bf16 where the
    /// checkpoint is bf16 and f16 could overflow) on tensor cores, or in f32 (exact cuBLAS
    /// sgemm, no TF32: for checking against the CPU backend to 1e-4).
    public enum ComputePrecision: String, Sendable, CaseIterable {
        case f16, f32
    }

    public let name = "cuda"
    public let device: CUDADevice
    public let precision: ComputePrecision
    /// Rows up to which a quantized weight is multiplied by the fused decode kernel.
    static let fusedQuantizedRows = 8

    public init(device: CUDADevice, precision: ComputePrecision = .f16) {
        self.device = device
        self.precision = precision
    }

    var driver: CUDADriver { device.driver }

    func allocate(_ shape: [Int], dtype: DType = .f32) -> Tensor {
        let count = shape.reduce(1, *)
        return Tensor(shape: shape, dtype: dtype, buffer: device.allocator.allocate(count * dtype.byteSize))
    }

    /// Copies host bytes to `buffer + offset` on the compute stream. From pageable memory the
    /// driver stages the bytes before returning, so the source may go away at once.
    func copyIn(_ source: UnsafeRawPointer, count: Int, into buffer: DeviceBuffer, offset: Int = 0) {
        guard count > 0 else { return }
        driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(offset), source, count, device.compute.handle),
                    "cuMemcpyHtoDAsync(\(count) bytes)")
    }

    func ints(_ values: [Int32]) -> DeviceBuffer {
        let buffer = device.allocator.allocate(values.count * 4)
        values.withUnsafeBytes { copyIn($0.baseAddress!, count: $0.count, into: buffer) }
        return buffer
    }

    /// 0 f32, 1 f16, 2 bf16: the kernels' element-type codes.
    static func kind(_ dtype: DType) -> Int {
        switch dtype {
        case .f16: return 1
        case .bf16: return 2
        default: return 0
        }
    }

    // MARK: Memory

    /// The type a checkpoint matrix is held in: f32 in f32 mode; else f16, keeping bf16 as bf16.
    public func heldType(stored: DType, shape: [Int]) -> DType {
        if shape.count < 2 || precision == .f32 { return .f32 }
        return stored == .bf16 ? .bf16 : .f16
    }

    public func upload(weight view: UnsafeRawBufferPointer, dtype: DType, shape: [Int], owner: AnyObject?) -> Tensor {
        device.makeCurrent()
        let count = shape.reduce(1, *)
        let held = heldType(stored: dtype, shape: shape)
        let t = allocate(shape, dtype: held)
        guard count > 0 else { return t }
        if held == dtype {
            copyIn(view.baseAddress!, count: count * dtype.byteSize, into: t.buffer)
            return t
        }
        let floats = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { floats.deallocate() }
        Precision.convertToFloat(view.baseAddress!, dtype: dtype, count: count, into: floats)
        switch held {
        case .f16:
            let half = UnsafeMutablePointer<Float16>.allocate(capacity: count)
            defer { half.deallocate() }
            for i in 0..<count { half[i] = Float16(floats[i]) }
            copyIn(half, count: count * 2, into: t.buffer)
        case .bf16:
            let half = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
            defer { half.deallocate() }
            for i in 0..<count { half[i] = Precision.floatToBF16(floats[i]) }
            copyIn(half, count: count * 2, into: t.buffer)
        default:
            copyIn(floats, count: count * 4, into: t.buffer)
        }
        device.compute.synchronize()   // the staging arrays above are freed on return
        return t
    }

    public func upload(floats: [Float], shape: [Int]) -> Tensor {
        precondition(floats.count == shape.reduce(1, *), "shape \(shape) does not match \(floats.count) values")
        device.makeCurrent()
        let t = allocate(shape)
        floats.withUnsafeBytes { if let b = $0.baseAddress { copyIn(b, count: $0.count, into: t.buffer) } }
        return t
    }

    public func zeros(shape: [Int]) -> Tensor {
        device.makeCurrent()
        let t = allocate(shape)
        clear(t.buffer, count: t.byteCount)
        return t
    }

    func clear(_ buffer: DeviceBuffer, count: Int) {
        guard count > 0 else { return }
        driver.must(driver.cuMemsetD8Async(buffer.deviceAddress, 0, count, device.compute.handle), "cuMemsetD8Async")
    }

    /// The tensor's bytes in host memory (waits for the compute stream).
    func hostBytes(_ tensor: Tensor) -> DeviceBuffer {
        let host = DeviceBuffer.host(byteCount: tensor.byteCount, backendName: "cpu")
        if tensor.byteCount > 0 {
            driver.must(driver.cuMemcpyDtoHAsync(host.pointer, tensor.buffer.deviceAddress, tensor.byteCount, device.compute.handle),
                        "cuMemcpyDtoHAsync(\(tensor.byteCount) bytes)")
        }
        device.compute.synchronize()
        return host
    }

    public func download(_ tensor: Tensor) -> [Float] {
        device.makeCurrent()
        let host = hostBytes(tensor)
        let count = tensor.elementCount
        return [Float](unsafeUninitializedCapacity: count) { b, n in
            if count > 0 {
                if tensor.quantization != nil {
                    let hostTensor = Tensor(shape: tensor.shape, dtype: .u8, buffer: host, quantization: tensor.quantization)
                    CPUBackend.dequantizeRows(hostTensor, rows: 0..<hostTensor.rows, into: b.baseAddress!)
                } else {
                    Precision.convertToFloat(host.pointer, dtype: tensor.dtype, count: count, into: b.baseAddress!)
                }
            }
            n = count
        }
    }

    /// Weights are quantized where the CPU quantizes them (`GroupQuantizer`), so a model's codes
    /// are the same on both backends; this runs once at load.
    public func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor {
        precondition(weight.quantization == nil, "tensor is already quantized")
        return upload(quantized: GroupQuantizer.quantize(download(weight), shape: weight.shape, scheme: scheme))
    }

    public func upload(quantized q: QuantizedTensor) -> Tensor {
        device.makeCurrent()
        let layout = QuantizedLayout(scheme: q.scheme, shape: q.shape)
        precondition(q.data.count == layout.geometry.groupCount * q.scheme.bytesPerGroup
                     && q.steps.count == layout.geometry.groupCount && q.mins.count == layout.geometry.groupCount,
                     "quantized tensor parts do not match shape \(q.shape) at \(q.scheme)")
        let buffer = device.allocator.allocate(layout.byteCount)
        q.data.withUnsafeBytes { copyIn($0.baseAddress!, count: $0.count, into: buffer) }
        q.steps.withUnsafeBytes { copyIn($0.baseAddress!, count: $0.count, into: buffer, offset: layout.stepsOffset) }
        q.mins.withUnsafeBytes { copyIn($0.baseAddress!, count: $0.count, into: buffer, offset: layout.minsOffset) }
        return Tensor(shape: q.shape, dtype: .u8, buffer: buffer, quantization: layout)
    }

    public func cacheTensor(shape: [Int], compression: QuantizationScheme?) -> Tensor {
        guard let compression else { return zeros(shape: shape) }
        device.makeCurrent()
        let layout = QuantizedLayout(scheme: compression, shape: shape)
        let buffer = device.allocator.allocate(layout.byteCount)
        clear(buffer, count: layout.byteCount)
        return Tensor(shape: shape, dtype: .u8, buffer: buffer, quantization: layout)
    }

    // MARK: Ops

    public func embedding(_ table: Tensor, ids: [Int32]) -> Tensor {
        device.makeCurrent()
        let dim = table.columns
        let out = allocate([ids.count, dim])
        let idBuffer = ints(ids)
        // Embedding tables are never quantized (the CPU backend reads them as stored, too).
        precondition(table.quantization == nil, "embedding: a quantized table")
        var a = KernelArguments()
        a.pointer(table.buffer.deviceAddress); a.pointer(idBuffer.deviceAddress); a.pointer(out.buffer.deviceAddress)
        a.int(dim); a.int(Self.kind(table.dtype))
        device.launch("embedding_gather", blocks: ids.count, threads: 256, a)
        return out
    }

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
        let rowsPerSlab = q.geometry.inner == 1 ? max(1, min(n, (32 << 20) / max(1, k * type.byteSize))) : n
        let scratch = device.allocator.allocate(rowsPerSlab * k * type.byteSize)
        var row = 0
        while row < n {
            let rows = min(rowsPerSlab, n - row)
            if rowsPerSlab == n {
                dequantize(weight, layout: q, limitExtent: nil, into: scratch, kind: Self.kind(type))
            } else {
                dequantizeRows(weight, layout: q, rows: row..<(row + rows), into: scratch, kind: Self.kind(type))
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

    /// Rows `rows` of a weight grouped along its last axis (their groups are contiguous).
    func dequantizeRows(_ t: Tensor, layout q: QuantizedLayout, rows: Range<Int>, into out: DeviceBuffer, kind: Int) {
        let groupsPerRow = q.geometry.groupsAlongAxis, first = rows.lowerBound * groupsPerRow
        var a = KernelArguments()
        a.pointer(t.buffer.deviceAddress + UInt64(first * q.scheme.bytesPerGroup))
        a.pointer(t.buffer.deviceAddress + UInt64(q.stepsOffset + first * 2)); a.pointer(t.buffer.deviceAddress + UInt64(q.minsOffset + first * 2))
        a.pointer(out.deviceAddress)
        let k = q.geometry.extent
        a.size(rows.count); a.int(k); a.size(1); a.int(k); a.int(q.scheme.groupSize); a.int(q.scheme.bits); a.int(kind); a.int(1)
        device.launch("dequantize_groups", blocks: min((rows.count * k + 255) / 256, 65535), threads: 256, a)
    }

    /// Expands a quantized tensor into `out` (kind 0 f32, 1 f16, 2 bf16). For a cache
    /// [batch, kvHeads, capacity, headDim], `limitExtent` keeps the first positions of each head.
    func dequantize(_ t: Tensor, layout q: QuantizedLayout, limitExtent: Int?, into out: DeviceBuffer, kind: Int) {
        var a = KernelArguments()
        a.pointer(t.buffer.deviceAddress); a.pointer(t.buffer.deviceAddress + UInt64(q.stepsOffset))
        a.pointer(t.buffer.deviceAddress + UInt64(q.minsOffset)); a.pointer(out.deviceAddress)
        let total: Int
        if let limitExtent {
            // Cache: [batch * kvHeads, capacity, headDim], groups along headDim.
            let outer = t.shape[0] * t.shape[1], capacity = t.shape[2], d = t.shape[3]
            a.size(outer); a.int(capacity); a.size(d); a.int(limitExtent)
            a.int(q.scheme.groupSize); a.int(q.scheme.bits); a.int(kind); a.int(0)
            total = outer * limitExtent * d
        } else {
            let g = q.geometry
            a.size(g.outer); a.int(g.extent); a.size(g.inner); a.int(g.extent)
            a.int(q.scheme.groupSize); a.int(q.scheme.bits); a.int(kind); a.int(1)
            total = g.outer * g.extent * g.inner
        }
        device.launch("dequantize_groups", blocks: min((total + 255) / 256, 65535), threads: 256, a)
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        device.makeCurrent()
        let out = allocate(x.shape)
        var a = KernelArguments()
        a.pointer(x.buffer.deviceAddress); a.pointer(weight?.buffer.deviceAddress ?? 0); a.pointer(bias?.buffer.deviceAddress ?? 0)
        a.pointer(out.buffer.deviceAddress); a.int(x.columns); a.float(eps)
        device.launch("layer_norm", blocks: x.rows, threads: 256, a)
        return out
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor {
        device.makeCurrent()
        let out = allocate(x.shape)
        var a = KernelArguments()
        a.pointer(x.buffer.deviceAddress); a.pointer(weight.buffer.deviceAddress); a.pointer(out.buffer.deviceAddress)
        a.int(x.columns); a.float(eps)
        device.launch("rms_norm", blocks: x.rows, threads: 256, a)
        return out
    }

    public func addInPlace(_ a: Tensor, _ b: Tensor) {
        precondition(a.elementCount == b.elementCount, "add: shapes \(a.shape) and \(b.shape) differ")
        device.makeCurrent()
        var args = KernelArguments()
        args.pointer(a.buffer.deviceAddress); args.pointer(b.buffer.deviceAddress); args.size(a.elementCount)
        device.launch("add_inplace", blocks: (a.elementCount + 255) / 256, threads: 256, args)
    }

    static func code(_ activation: Activation) -> Int {
        switch activation {
        case .relu: return 0
        case .gelu: return 1
        case .geluTanh: return 2
        case .silu: return 3
        }
    }

    public func activate(_ x: Tensor, _ activation: Activation) -> Tensor {
        device.makeCurrent()
        let out = allocate(x.shape)
        var a = KernelArguments()
        a.pointer(x.buffer.deviceAddress); a.pointer(out.buffer.deviceAddress); a.size(x.elementCount); a.int(Self.code(activation))
        device.launch("activate", blocks: (x.elementCount + 255) / 256, threads: 256, a)
        return out
    }

    public func gatedActivate(gate: Tensor, up: Tensor, _ activation: Activation) -> Tensor {
        device.makeCurrent()
        let out = allocate(gate.shape)
        var a = KernelArguments()
        a.pointer(gate.buffer.deviceAddress); a.pointer(up.buffer.deviceAddress); a.pointer(out.buffer.deviceAddress)
        a.size(gate.elementCount); a.int(Self.code(activation))
        device.launch("gated_activate", blocks: (gate.elementCount + 255) / 256, threads: 256, a)
        return out
    }

    public func applyRotary(_ x: Tensor, heads: Int, headDim: Int, cos: Tensor, sin: Tensor) {
        device.makeCurrent()
        var a = KernelArguments()
        a.pointer(x.buffer.deviceAddress); a.pointer(cos.buffer.deviceAddress); a.pointer(sin.buffer.deviceAddress)
        a.int(heads); a.int(headDim)
        device.launch("rope_rotate_half", blocks: x.rows, threads: 128, a)
    }

    public func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) {
        device.makeCurrent()
        let rows = layout.batch * layout.length, capacity = keyCache.shape[2]
        precondition(layout.pastLength + layout.length <= capacity, "storeKV: positions up to \(layout.pastLength + layout.length) in a cache of \(capacity)")
        var a = KernelArguments()
        if let kq = keyCache.quantization, let vq = valueCache.quantization {
            let k = keyCache.buffer.deviceAddress, v = valueCache.buffer.deviceAddress
            a.pointer(key.buffer.deviceAddress); a.pointer(value.buffer.deviceAddress)
            a.pointer(k); a.pointer(k + UInt64(kq.stepsOffset)); a.pointer(k + UInt64(kq.minsOffset))
            a.pointer(v); a.pointer(v + UInt64(vq.stepsOffset)); a.pointer(v + UInt64(vq.minsOffset))
            a.int(rows); a.int(layout.length); a.int(layout.pastLength); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
            a.int(kq.scheme.groupSize); a.int(kq.scheme.bits)
            let threads = rows * layout.kvHeads * kq.geometry.groupsAlongAxis
            device.launch("store_kv_q", blocks: (threads + 127) / 128, threads: 128, a)
            return
        }
        a.pointer(key.buffer.deviceAddress); a.pointer(value.buffer.deviceAddress)
        a.pointer(keyCache.buffer.deviceAddress); a.pointer(valueCache.buffer.deviceAddress)
        a.int(layout.length); a.int(layout.pastLength); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
        device.launch("store_kv", blocks: rows, threads: 128, a)
    }

    public func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        device.makeCurrent()
        let rows = layout.batch * layout.length
        let out = allocate([rows, layout.heads * layout.headDim])
        let end = layout.pastLength + layout.length
        let sharedBytes = end * 4
        precondition(sharedBytes <= device.maxDynamicShared - 1024,
                     "attention over \(end) positions needs \(sharedBytes) bytes of shared memory; this GPU allows \(device.maxDynamicShared - 1024)")
        // A 4-bit cache is expanded up to the filled positions, then attended like an f32 one.
        var keys = keyCache.buffer, values = valueCache.buffer, capacity = keyCache.shape[2]
        if let kq = keyCache.quantization, let vq = valueCache.quantization {
            let count = keyCache.shape[0] * layout.kvHeads * end * layout.headDim
            keys = device.allocator.allocate(count * 4)
            values = device.allocator.allocate(count * 4)
            dequantize(keyCache, layout: kq, limitExtent: end, into: keys, kind: 0)
            dequantize(valueCache, layout: vq, limitExtent: end, into: values, kind: 0)
            capacity = end
        }
        let padding = ints(layout.padding.map { Int32($0) })
        var a = KernelArguments()
        a.pointer(query.buffer.deviceAddress); a.pointer(keys.deviceAddress); a.pointer(values.deviceAddress)
        a.pointer(out.buffer.deviceAddress); a.pointer(padding.deviceAddress)
        if layout.length == 1 {
            a.int(layout.heads); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity); a.int(layout.pastLength); a.float(layout.scale)
            device.launch("attention_decode", blocks: layout.batch * layout.heads, threads: 128, sharedBytes: sharedBytes, a)
        } else {
            a.int(layout.length); a.int(layout.heads); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
            a.int(layout.pastLength); a.float(layout.scale)
            device.launch("attention_prefill", blocks: rows * layout.heads, threads: 128, sharedBytes: sharedBytes, a)
        }
        return out
    }

    public func gatherRows(_ x: Tensor, _ indices: [Int]) -> Tensor {
        device.makeCurrent()
        let out = allocate([indices.count, x.columns])
        let idx = ints(indices.map { Int32($0) })
        var a = KernelArguments()
        a.pointer(x.buffer.deviceAddress); a.pointer(idx.deviceAddress); a.pointer(out.buffer.deviceAddress); a.int(x.columns)
        device.launch("gather_rows", blocks: indices.count, threads: 256, a)
        return out
    }

    public func rowView(_ x: Tensor, _ range: Range<Int>) -> Tensor { TensorViews.rows(of: x, range, backendName: name) }

    public func concatRows(_ parts: [Tensor]) -> Tensor {
        device.makeCurrent()
        let columns = parts.first?.columns ?? 0
        let out = allocate([parts.reduce(0) { $0 + $1.rows }, columns])
        var offset = 0
        for p in parts {
            precondition(p.columns == columns && p.dtype == .f32, "concatRows: mismatched parts")
            copyOnDevice(from: p.buffer.deviceAddress, to: out.buffer.deviceAddress + UInt64(offset), count: p.byteCount)
            offset += p.byteCount
        }
        return out
    }

    func copyOnDevice(from: UInt64, to: UInt64, count: Int) {
        guard count > 0 else { return }
        driver.must(driver.cuMemcpyDtoDAsync(to, from, count, device.compute.handle), "cuMemcpyDtoDAsync(\(count) bytes)")
    }

    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        TensorViews.cacheRows(cache, rows, backendName: name)
    }

    public func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        device.makeCurrent()
        TensorViews.validateCopy(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
        guard !positions.isEmpty, source.buffer !== destination.buffer || row != toRow || positions.lowerBound != to else { return }
        let kvHeads = source.shape[1], d = source.shape[3]
        let sourceCapacity = source.shape[2], destinationCapacity = destination.shape[2]
        func copy(_ from: UInt64, _ into: UInt64, unitBytes: Int) {
            let segment = positions.count * unitBytes
            // A shift within one sequence overlaps itself (also through a view of the same rows);
            // device copies must not overlap, so such copies go through a scratch buffer.
            let reads = from + UInt64(((row * kvHeads) * sourceCapacity + positions.lowerBound) * unitBytes)
            let readsEnd = from + UInt64(((row * kvHeads + kvHeads - 1) * sourceCapacity + positions.lowerBound) * unitBytes + segment)
            let writes = into + UInt64(((toRow * kvHeads) * destinationCapacity + to) * unitBytes)
            let writesEnd = into + UInt64(((toRow * kvHeads + kvHeads - 1) * destinationCapacity + to) * unitBytes + segment)
            let overlapping = reads < writesEnd && writes < readsEnd
            let scratch = overlapping ? device.allocator.allocate(segment * kvHeads) : nil
            for h in 0..<kvHeads {
                let a = UInt64(((row * kvHeads + h) * sourceCapacity + positions.lowerBound) * unitBytes)
                let b = UInt64(((toRow * kvHeads + h) * destinationCapacity + to) * unitBytes)
                if let scratch {
                    copyOnDevice(from: from + a, to: scratch.deviceAddress + UInt64(h * segment), count: segment)
                } else {
                    copyOnDevice(from: from + a, to: into + b, count: segment)
                }
            }
            if let scratch {
                for h in 0..<kvHeads {
                    let b = UInt64(((toRow * kvHeads + h) * destinationCapacity + to) * unitBytes)
                    copyOnDevice(from: scratch.deviceAddress + UInt64(h * segment), to: into + b, count: segment)
                }
            }
        }
        let from = source.buffer.deviceAddress, into = destination.buffer.deviceAddress
        if let q = source.quantization, let r = destination.quantization {
            let groups = q.geometry.groupsAlongAxis
            copy(from, into, unitBytes: groups * q.scheme.bytesPerGroup)
            copy(from + UInt64(q.stepsOffset), into + UInt64(r.stepsOffset), unitBytes: groups * 2)
            copy(from + UInt64(q.minsOffset), into + UInt64(r.minsOffset), unitBytes: groups * 2)
        } else {
            copy(from, into, unitBytes: d * source.dtype.byteSize)
        }
    }
}
