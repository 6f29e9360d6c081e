import COpenBLAS
import CStrataKernels
import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// The CPU backend: f32 compute, GEMM through OpenBLAS (or oneDNN on bf16 matrix units with
/// `--weight-format bf16`), the rest in SIMD Swift loops.
public final class CPUBackend: Backend {
    /// How checkpoint weights are held: converted to f32 once at load, kept in their stored
    /// dtype (f16/bf16) and widened on each use (half the memory, extra conversion per matmul),
    /// or converted to bf16 for the CPU's bf16 matrix units (`BF16GEMM`: AMX or AVX512-BF16,
    /// matmul inputs rounded to bf16, f32 accumulation; an opt-in, as its logits move by ~1e-2),
    /// or quantized to int8 per row with int8 activations (`Int8Weights`: AMX-INT8; opt-in too).
    public enum WeightFormat: String, Sendable, CaseIterable {
        case f32
        case asStored = "as-stored"
        case bf16
        case int8

        /// The element type a stored tensor is held in (row-major; packing keeps 2 bytes an
        /// element up to panel padding).
        public func heldType(stored: DType, shape: [Int]) -> DType {
            if self == .bf16 && shape.count == 2 && stored != .u8 { return .bf16 }
            if self == .int8 && shape.count == 2 { return .u8 }
            return (shape.count < 2 || self == .f32) ? .f32 : stored
        }
    }

    /// How an uncompressed KV cache is held: f32 (exact), or at half the bytes a decode step
    /// reads in bf16 (as transformers in bf16 holds it) or f16 (llama.cpp's default cache type:
    /// 3 more bits of mantissa than bf16, magnitudes up to 65504). 16-bit positions are widened
    /// to f32 as they are used.
    public enum CacheFormat: String, Sendable, CaseIterable {
        case f32
        case bf16
        case f16
    }

    /// How prefill-sized matmuls against weights held as stored (f16, bf16, f32) are computed:
    /// exactly in f32 (OpenBLAS sgemm over widened slabs), or as a bf16x3 split on AMX tiles
    /// (`SplitBF16GEMM`: ~16-bit activations, f16 weights exact, f32 sums; opt-in). Decode-sized
    /// products keep the exact fused kernels either way.
    public enum MatmulPrecision: String, Sendable, CaseIterable {
        case f32
        case bf16x3
    }

    public let name = "cpu"
    public var holdsWeightsInBF16: Bool { weightFormat == .bf16 }
    public let threads: Int
    public let cacheFormat: CacheFormat
    public let weightFormat: WeightFormat
    /// Small-batch products with 4/8-bit weights quantize their activations to int8 and use the
    /// CPU's integer dot products (`Int8GEMM`, opt-in: results move by ~1e-3 relative).
    public let int8Activations: Bool
    /// Where it applies, `SplitBF16GEMM.available` decides whether bf16x3 can run here.
    public let matmulPrecision: MatmulPrecision
    /// Every buffer this backend allocates is charged here (the device tier's high-water mark).
    public let account: MemoryAccount?

    /// `--weight-format bf16` only: whether uploads pack weights in `PanelLayout` for oneDNN (where
    /// it takes them). The offload engine keeps them row-major: it moves weight bytes between
    /// tiers as images of a fixed size and rebuilds the tensors from them.
    public let packsWeights: Bool

    public init(threads: Int = 1, weightFormat: WeightFormat = .asStored, account: MemoryAccount? = nil, packsWeights: Bool = true,
                int8Activations: Bool = false, cacheFormat: CacheFormat = .f32, matmulPrecision: MatmulPrecision = .f32) {
        self.threads = max(1, threads)
        self.matmulPrecision = matmulPrecision
        self.cacheFormat = cacheFormat
        self.int8Activations = int8Activations
        self.weightFormat = weightFormat
        self.packsWeights = packsWeights
        self.account = account
        // One thread pool owns the cores: OpenBLAS runs single-threaded inside Strata's workers.
        // Its own pool would spin-wait between GEMMs and steal the cores from attention and
        // norms (measured: ~3 s of system time in a 6 s benchmark on 2 cores).
        openblas_set_num_threads(1)
        CPUSetup.retainFreedMemory()
    }

    /// Kernel scratch, charged to the device account like any other buffer.
    func scratch(_ count: Int) -> UnsafeMutablePointer<Float> {
        account?.charge(count * 4)
        return UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
    }

    func release(_ pointer: UnsafeMutablePointer<Float>, _ count: Int) {
        pointer.deallocate()
        account?.refund(count * 4)
    }

    func allocate(_ shape: [Int]) -> Tensor {
        let count = shape.reduce(1, *)
        return Tensor(shape: shape, dtype: .f32, buffer: .host(byteCount: count * 4, backendName: name, account: account))
    }

    // MARK: Memory

    public func upload(weight view: UnsafeRawBufferPointer, dtype: DType, shape: [Int], owner: AnyObject?) -> Tensor {
        let count = shape.reduce(1, *)
        if weightFormat == .bf16 && shape.count == 2 && dtype != .u8 {
            let plain = DeviceBuffer.host(byteCount: count * 2, backendName: name, account: account)
            if count > 0 {
                BF16GEMM.convert(view.baseAddress!, dtype: dtype, count: count, into: plain.pointer.assumingMemoryBound(to: UInt16.self))
            }
            guard packsWeights && BF16GEMM.packsPanels && count > 0 else { return Tensor(shape: shape, dtype: .bf16, buffer: plain) }
            let layout = PanelLayout(n: shape[0], k: shape[1])
            let packed = DeviceBuffer.host(byteCount: layout.byteCount, backendName: name, account: account)
            BF16GEMM.pack(plain.pointer.assumingMemoryBound(to: UInt16.self), layout: layout,
                          into: packed.pointer.assumingMemoryBound(to: UInt16.self), threads: threads)
            return Tensor(shape: shape, dtype: .bf16, buffer: packed, panels: layout)
        }
        if weightFormat == .int8 && shape.count == 2 && dtype != .u8 {
            let layout = Int8Layout(n: shape[0], k: shape[1], packed: packsWeights && Int8Weights.usesMatrixUnits)
            let buffer = DeviceBuffer.host(byteCount: layout.byteCount, backendName: name, account: account)
            Int8Weights.make(view.baseAddress ?? UnsafeRawPointer(buffer.pointer), dtype: dtype, layout: layout, into: buffer.pointer,
                             threads: threads)
            return Tensor(shape: shape, dtype: .u8, buffer: buffer, int8: layout)
        }
        // Vectors (norms, biases) are tiny and read element-wise by kernels: always f32.
        if dtype == .f32 || weightFormat == .f32 || shape.count < 2 {
            let t = allocate(shape)
            if count > 0 { Precision.convertToFloat(view.baseAddress!, dtype: dtype, count: count, into: t.floats) }
            return t
        }
        let buffer = DeviceBuffer.host(byteCount: view.count, backendName: name, account: account)
        if view.count > 0 { buffer.pointer.copyMemory(from: view.baseAddress!, byteCount: view.count) }
        return Tensor(shape: shape, dtype: dtype, buffer: buffer)
    }

    public func upload(floats: [Float], shape: [Int]) -> Tensor {
        precondition(floats.count == shape.reduce(1, *), "shape \(shape) does not match \(floats.count) values")
        let t = allocate(shape)
        floats.withUnsafeBufferPointer { if let b = $0.baseAddress { t.floats.update(from: b, count: floats.count) } }
        return t
    }

    public func zeros(shape: [Int]) -> Tensor {
        let t = allocate(shape)
        t.buffer.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: t.byteCount)
        return t
    }

    public func download(_ tensor: Tensor) -> [Float] {
        let count = tensor.elementCount
        return [Float](unsafeUninitializedCapacity: count) { b, n in
            if count > 0 {
                if tensor.int8 != nil {
                    for r in 0..<tensor.rows { Int8Weights.unpackRow(tensor, row: r, into: b.baseAddress! + r * tensor.columns) }
                } else if let layout = tensor.panels {
                    for r in 0..<layout.n {
                        BF16GEMM.unpackRow(tensor.buffer.pointer.assumingMemoryBound(to: UInt16.self), layout: layout, row: r,
                                           into: b.baseAddress! + r * layout.k)
                    }
                } else if tensor.quantization != nil {
                    Self.dequantizeRows(tensor, rows: 0..<tensor.rows, into: b.baseAddress!)
                } else {
                    Precision.convertToFloat(tensor.buffer.pointer, dtype: tensor.dtype, count: count, into: b.baseAddress!)
                }
            }
            n = count
        }
    }

    // MARK: Ops

    public func embedding(_ table: Tensor, ids: [Int32]) -> Tensor {
        let dim = table.columns
        let out = allocate([ids.count, dim])
        if table.int8 != nil {
            for (r, id) in ids.enumerated() { Int8Weights.unpackRow(table, row: Int(id), into: out.floats + r * dim) }
            return out
        }
        if let layout = table.panels {
            // A tied LM head packed for the matmul: its rows are gathered out of the panels.
            for (r, id) in ids.enumerated() {
                BF16GEMM.unpackRow(table.buffer.pointer.assumingMemoryBound(to: UInt16.self), layout: layout, row: Int(id),
                                   into: out.floats + r * dim)
            }
            return out
        }
        for (r, id) in ids.enumerated() {
            let src = table.buffer.pointer + Int(id) * dim * table.dtype.byteSize
            Precision.convertToFloat(src, dtype: table.dtype, count: dim, into: out.floats + r * dim)
        }
        return out
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let rows = x.rows, n = x.columns
        let out = allocate(x.shape)
        let src = x.floats, dst = out.floats
        let w = weight?.floats, b = bias?.floats
        parallelFor(rows, threads: threads, minimumPerThread: max(1, 16384 / max(n, 1))) { range in
            // 8 lanes at a time (the scalar loops were 5% of a bf16 prefill); the same two-pass
            // mean and variance, the sums kept in eight partial lanes.
            @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
                UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
            }
            let vectorEnd = n & ~7
            for r in range {
                let row = src + r * n, o = dst + r * n
                var sums = SIMD8<Float>()
                var i = 0
                while i < vectorEnd { sums += load(row + i); i += 8 }
                var mean = sums.sum()
                while i < n { mean += row[i]; i += 1 }
                mean /= Float(n)
                var squares = SIMD8<Float>()
                i = 0
                while i < vectorEnd { let d = load(row + i) - mean; squares = squares.addingProduct(d, d); i += 8 }
                var variance = squares.sum()
                while i < n { let d = row[i] - mean; variance += d * d; i += 1 }
                variance /= Float(n)
                let inv = 1 / (variance + eps).squareRoot()
                i = 0
                while i < vectorEnd {
                    var v = (load(row + i) - mean) * inv
                    if let w { v *= load(w + i) }
                    if let b { v += load(b + i) }
                    UnsafeMutableRawPointer(o + i).storeBytes(of: v, as: SIMD8<Float>.self)
                    i += 8
                }
                while i < n {
                    var v = (row[i] - mean) * inv
                    if let w { v *= w[i] }
                    if let b { v += b[i] }
                    o[i] = v
                    i += 1
                }
            }
        }
        return out
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor {
        let rows = x.rows, n = x.columns
        let out = allocate(x.shape)
        let src = x.floats, dst = out.floats, w = weight.floats
        parallelFor(rows, threads: threads, minimumPerThread: max(1, 16384 / max(n, 1))) { range in
            // 8 lanes at a time, two partial sums (the scalar loop's one serial chain of adds was
            // 3% of an int8 prefill).
            @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
                UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
            }
            let pairEnd = n & ~15, vectorEnd = n & ~7
            for r in range {
                let row = src + r * n, o = dst + r * n
                var even = SIMD8<Float>(), odd = SIMD8<Float>()
                var i = 0
                while i < pairEnd {
                    let a = load(row + i), b = load(row + i + 8)
                    even = even.addingProduct(a, a); odd = odd.addingProduct(b, b)
                    i += 16
                }
                if i < vectorEnd { let a = load(row + i); even = even.addingProduct(a, a); i += 8 }
                var sum = (even + odd).sum()
                while i < n { sum += row[i] * row[i]; i += 1 }
                let inv = 1 / (sum / Float(n) + eps).squareRoot()
                i = 0
                while i < vectorEnd {
                    UnsafeMutableRawPointer(o + i).storeBytes(of: load(w + i) * (load(row + i) * inv), as: SIMD8<Float>.self)
                    i += 8
                }
                while i < n { o[i] = w[i] * (row[i] * inv); i += 1 }
            }
        }
        return out
    }

    public func addInPlace(_ a: Tensor, _ b: Tensor) {
        precondition(a.elementCount == b.elementCount, "add: shapes \(a.shape) and \(b.shape) differ")
        let pa = a.floats, pb = b.floats
        parallelFor(a.elementCount, threads: threads, minimumPerThread: 65536) { range in
            Self.add(pb + range.lowerBound, into: pa + range.lowerBound, count: range.count)
        }
    }

    /// a[i] += b[i].
    static func add(_ b: UnsafePointer<Float>, into a: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { a[i] += b[i] }
    }

    @inline(__always)
    static func apply(_ activation: Activation, _ v: Float) -> Float {
        switch activation {
        case .relu: return max(v, 0)
        case .silu: return v / (1 + expf(-v))
        case .gelu: return 0.5 * v * (1 + erff(v * 0.70710678118654752))
        case .geluTanh: return 0.5 * v * (1 + tanhf(0.79788456080286536 * (v + 0.044715 * v * v * v)))
        }
    }

    public func activate(_ x: Tensor, _ activation: Activation) -> Tensor {
        let out = allocate(x.shape)
        let src = x.floats, dst = out.floats
        parallelFor(x.elementCount, threads: threads, minimumPerThread: 32768) { range in
            Self.activate(src + range.lowerBound, count: range.count, activation, into: dst + range.lowerBound)
        }
        return out
    }

    /// dst[i] = act(src[i]); dst may be src.
    static func activate(_ src: UnsafePointer<Float>, count: Int, _ activation: Activation, into dst: UnsafeMutablePointer<Float>) {
        guard activation == .relu else {
            for i in 0..<count { dst[i] = apply(activation, src[i]) }
            return
        }
        // ReLU (OPT) 8 lanes at a time: the per-element switch kept the loop scalar.
        var i = 0
        while i + 8 <= count {
            let v = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: v.replacing(with: 0, where: v .< 0), as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { dst[i] = max(src[i], 0); i += 1 }
    }

    public func gatedActivate(gate: Tensor, up: Tensor, _ activation: Activation) -> Tensor {
        let out = allocate(gate.shape)
        let g = gate.floats, u = up.floats, dst = out.floats
        parallelFor(gate.elementCount, threads: threads, minimumPerThread: 32768) { range in
            Self.gatedActivate(g + range.lowerBound, u + range.lowerBound, count: range.count, activation, into: dst + range.lowerBound)
        }
        return out
    }

    /// dst[i] = act(g[i]) * u[i]; dst may be g or u.
    static func gatedActivate(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, count: Int, _ activation: Activation,
                              into dst: UnsafeMutablePointer<Float>) {
        var i = 0
        if activation == .silu, CPUSetup.avx512Kernels {
            strata_silu_mul(g, u, count, dst)
            return
        }
        if activation == .silu {
            // SwiGLU (Llama) 8 lanes at a time: libm's scalar expf per element was a large
            // share of a Llama prefill.
            while i + 8 <= count {
                let v = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self)
                let up = UnsafeRawPointer(u + i).loadUnaligned(as: SIMD8<Float>.self)
                let silu = v / (1 + Softmax.exp(-v))
                UnsafeMutableRawPointer(dst + i).storeBytes(of: silu * up, as: SIMD8<Float>.self)
                i += 8
            }
        }
        while i < count { dst[i] = apply(activation, g[i]) * u[i]; i += 1 }
    }

    public func gatherRows(_ x: Tensor, _ indices: [Int]) -> Tensor {
        let n = x.columns
        let out = allocate([indices.count, n])
        for (r, i) in indices.enumerated() { (out.floats + r * n).update(from: x.floats + i * n, count: n) }
        return out
    }

    public func rowView(_ x: Tensor, _ range: Range<Int>) -> Tensor { TensorViews.rows(of: x, range, backendName: name) }

    public func concatRows(_ parts: [Tensor]) -> Tensor {
        let columns = parts.first?.columns ?? 0
        let out = allocate([parts.reduce(0) { $0 + $1.rows }, columns])
        var row = 0
        for p in parts {
            precondition(p.columns == columns && p.dtype == .f32, "concatRows: mismatched parts")
            (out.floats + row * columns).update(from: p.floats, count: p.rows * columns)
            row += p.rows
        }
        return out
    }
}
