import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA backend: every `Backend` op on one GPU. Activations are f32 on the device; GEMMs go
/// through cuBLAS with f32 accumulation (tensor cores for f16/bf16 weights); group-quantized
/// weights are multiplied by a fused decode kernel for decode-sized batches and expanded to the
/// compute type for larger ones (`CUDALinear.swift`); attention reads f32 or 4-bit caches
/// (`CUDAAttention.swift`). Tensors' buffer pointers are device addresses: nothing outside this
/// folder reads them.
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
    func heldType(stored: DType, shape: [Int]) -> DType {
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

    /// Weights are quantized where the CPU quantizes them (`GroupQuantizer`, on all cores), so a
    /// model's codes are the same on both backends; this runs once at load.
    public func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor {
        precondition(weight.quantization == nil, "tensor is already quantized")
        var values = download(weight)
        return upload(quantized: values.withUnsafeMutableBufferPointer {
            CPUBackend.quantizeRows($0.baseAddress!, shape: weight.shape, scheme: scheme, threads: CPUSetup.cores)
        })
    }

    public func upload(quantized q: QuantizedTensor) -> Tensor {
        device.makeCurrent()
        let layout = QuantizedLayout(of: q)
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


}
