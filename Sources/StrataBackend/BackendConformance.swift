import StrataCore

/// Every `Backend` op run on a candidate backend and on a reference (the CPU backend in f32)
/// with the same inputs, compared op by op. `strata check-backend` runs it against CUDA on a GPU
/// machine; the test suite runs it CPU against CPU, and against a deliberately wrong backend to
/// show it fails. Shapes are awkward on purpose (odd columns, GQA, padding, chunked positions).
public struct BackendConformance {
    public struct Result: Sendable {
        public let op: String
        /// max |candidate - reference| / max(1, max |reference|).
        public let error: Float
        public let tolerance: Float
        public var passed: Bool { error <= tolerance }
    }

    /// Whether the candidate rounds GEMM inputs to 16 bits (CUDA in f16): its products are then
    /// held to 1e-2 of the largest output instead of 1e-5.
    public let halfPrecisionProducts: Bool

    public init(halfPrecisionProducts: Bool) { self.halfPrecisionProducts = halfPrecisionProducts }

    static func randoms(_ count: Int, seed: UInt64) -> [Float] {
        // SplitMix64: the same values on every machine, no dependency on a Swift RNG's details.
        var state = seed &* 0x9E3779B97F4A7C15 &+ 1
        return (0..<count).map { _ in
            state &+= 0x9E3779B97F4A7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
            z ^= z >> 31
            return Float(Double(z >> 11) / Double(1 << 53)) * 2 - 1
        }
    }

    static func halfWeight(_ backend: any Backend, n: Int, k: Int, seed: UInt64) -> Tensor {
        randoms(n * k, seed: seed).map(Float16.init).withUnsafeBytes { backend.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
    }

    /// Runs every check; `progress` hears each op's name before it runs (a crash then names it).
    public func run(candidate: any Backend, reference: any Backend, progress: (String) -> Void = { _ in }) -> [Result] {
        var results: [Result] = []
        let exact: Float = 1e-5, products: Float = halfPrecisionProducts ? 1e-2 : 1e-5
        func check(_ op: String, _ tolerance: Float, _ body: (any Backend) -> [Float]) {
            progress(op)
            let a = body(candidate), b = body(reference)
            guard a.count == b.count else { results.append(Result(op: op, error: .infinity, tolerance: tolerance)); return }
            let scale = max(1, b.map { abs($0) }.max() ?? 0)
            let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            results.append(Result(op: op, error: a.contains(where: \.isNaN) ? .infinity : diff / scale, tolerance: tolerance))
        }
        func upload(_ backend: any Backend, _ shape: [Int], seed: UInt64) -> Tensor {
            backend.upload(floats: Self.randoms(shape.reduce(1, *), seed: seed), shape: shape)
        }

        check("upload/download f32", 0) { b in b.download(upload(b, [3, 37], seed: 1)) }
        check("upload/download f16 weight", 0) { b in b.download(Self.halfWeight(b, n: 5, k: 33, seed: 2)) }
        check("zeros", 0) { b in b.download(b.zeros(shape: [4, 9])) }
        // A GPU in f16 holds an f32 matrix (this table) in f16: rounding of 2^-11 relative.
        for (label, dtype, tolerance) in [("f16", DType.f16, exact), ("f32", .f32, halfPrecisionProducts ? 1e-3 : exact)] {
            check("embedding \(label) table", tolerance) { b in
                let values = Self.randoms(11 * 24, seed: 3)
                let table = dtype == .f16 ? values.map(Float16.init).withUnsafeBytes { b.upload(weight: $0, dtype: .f16, shape: [11, 24], owner: nil) }
                    : values.withUnsafeBytes { b.upload(weight: $0, dtype: .f32, shape: [11, 24], owner: nil) }
                return b.download(b.embedding(table, ids: [3, 0, 10, 3]))
            }
        }
        for bits in QuantizationScheme.supportedBits {
            let scheme = try! QuantizationScheme(bits: bits, groupSize: 32)
            check("quantize \(bits)-bit + download", 1e-3) { b in b.download(b.quantize(Self.halfWeight(b, n: 6, k: 70, seed: 4), scheme: scheme)) }
            for rows in [3, 37] {
                check("linear \(bits)-bit weight, \(rows) rows", max(products, 1e-3)) { b in
                    let w = b.quantize(Self.halfWeight(b, n: 29, k: 96, seed: 6), scheme: scheme)
                    return b.download(b.linear(upload(b, [rows, 96], seed: 7), weight: w, bias: upload(b, [29], seed: 8)))
                }
            }
        }
        // Large enough that a GPU expands it for a 12-row batch in two slabs of rows.
        check("linear 4-bit weight 4100 x 4096, 12 rows", max(products, 1e-3)) { b in
            let w = b.quantize(Self.halfWeight(b, n: 4100, k: 4096, seed: 33), scheme: .int4)
            return b.download(b.linear(upload(b, [12, 4096], seed: 34), weight: w, bias: upload(b, [4100], seed: 35)))
        }
        let axis0 = try! QuantizationScheme(bits: 4, groupSize: 8, groupAxis: 0)
        check("linear 4-bit weight grouped along axis 0", max(products, 1e-3)) { b in
            let w = b.quantize(Self.halfWeight(b, n: 16, k: 12, seed: 9), scheme: axis0)
            return b.download(b.linear(upload(b, [2, 12], seed: 5), weight: w, bias: nil))
        }
        for rows in [1, 5, 64] {
            check("linear f16 weight + bias, \(rows) rows", products) { b in
                b.download(b.linear(upload(b, [rows, 72], seed: 10), weight: Self.halfWeight(b, n: 45, k: 72, seed: 11), bias: upload(b, [45], seed: 12)))
            }
        }
        check("linear f32 weight, no bias", products) { b in
            let w = Self.randoms(19 * 40, seed: 13).withUnsafeBytes { b.upload(weight: $0, dtype: .f32, shape: [19, 40], owner: nil) }
            return b.download(b.linear(upload(b, [7, 40], seed: 14), weight: w, bias: nil))
        }
        check("layerNorm affine", exact) { b in
            b.download(b.layerNorm(upload(b, [6, 77], seed: 15), weight: upload(b, [77], seed: 16), bias: upload(b, [77], seed: 17), eps: 1e-5))
        }
        check("layerNorm no affine", exact) { b in b.download(b.layerNorm(upload(b, [3, 40], seed: 18), weight: nil, bias: nil, eps: 1e-5)) }
        check("rmsNorm", exact) { b in b.download(b.rmsNorm(upload(b, [5, 66], seed: 19), weight: upload(b, [66], seed: 20), eps: 1e-6)) }
        check("addInPlace", exact) { b in
            let x = upload(b, [7, 13], seed: 21)
            b.addInPlace(x, upload(b, [7, 13], seed: 22))
            return b.download(x)
        }
        for activation in [Activation.relu, .gelu, .geluTanh, .silu] {
            check("activate \(activation)", exact) { b in b.download(b.activate(upload(b, [3, 301], seed: 23), activation)) }
            check("gatedActivate \(activation)", exact) { b in
                b.download(b.gatedActivate(gate: upload(b, [3, 101], seed: 24), up: upload(b, [3, 101], seed: 25), activation))
            }
        }
        check("applyRotary", exact) { b in
            let x = upload(b, [4, 3 * 16], seed: 26)
            b.applyRotary(x, heads: 3, headDim: 16, cos: upload(b, [4, 8], seed: 27), sin: upload(b, [4, 8], seed: 28))
            return b.download(x)
        }
        check("gatherRows", 0) { b in b.download(b.gatherRows(upload(b, [6, 10], seed: 29), [5, 0, 5, 2])) }
        check("rowView", 0) { b in b.download(b.rowView(upload(b, [6, 10], seed: 30), 2..<5)) }
        check("concatRows", 0) { b in b.download(b.concatRows([upload(b, [2, 7], seed: 31), upload(b, [3, 7], seed: 32)])) }
        for compression in [nil, try! QuantizationScheme(bits: 4, groupSize: 8)] {
            let kind = compression == nil ? "f32 cache" : "4-bit cache"
            check("storeKV + attention prefill, decode (\(kind))", compression == nil ? exact : 2e-3) { b in attentionSteps(b, compression: compression) }
            check("cacheRows + copyCachePositions (\(kind))", compression == nil ? 0 : 1e-3) { b in cacheMoves(b, compression: compression) }
        }
        return results
    }

    /// A left-padded GQA prefill of 5 positions in two chunks (3 then 2, the second attending to
    /// the first), then two decode steps; the caches and every output are compared.
    func attentionSteps(_ b: any Backend, compression: QuantizationScheme?) -> [Float] {
        let batch = 2, heads = 4, kvHeads = 2, d = 16, capacity = 9
        let keys = b.cacheTensor(shape: [batch, kvHeads, capacity, d], compression: compression)
        let values = b.cacheTensor(shape: [batch, kvHeads, capacity, d], compression: compression)
        var outputs: [Float] = []
        var past = 0, seed: UInt64 = 40
        for length in [3, 2, 1, 1] {
            let layout = AttentionLayout(batch: batch, length: length, pastLength: past, padding: [0, 2], heads: heads, kvHeads: kvHeads,
                                         headDim: d, scale: 0.25)
            let rows = batch * length
            let k = b.upload(floats: Self.randoms(rows * kvHeads * d, seed: seed), shape: [rows, kvHeads * d])
            let v = b.upload(floats: Self.randoms(rows * kvHeads * d, seed: seed + 1), shape: [rows, kvHeads * d])
            let q = b.upload(floats: Self.randoms(rows * heads * d, seed: seed + 2), shape: [rows, heads * d])
            b.storeKV(key: k, value: v, keyCache: keys, valueCache: values, layout: layout)
            outputs += b.download(b.attention(query: q, keyCache: keys, valueCache: values, layout: layout))
            past += length
            seed += 3
        }
        return outputs + b.download(keys) + b.download(values)
    }

    /// Row views of a cache, a copy between caches and an overlapping shift within one sequence.
    func cacheMoves(_ b: any Backend, compression: QuantizationScheme?) -> [Float] {
        let shape = [3, 2, 10, 8]
        let a = b.cacheTensor(shape: shape, compression: compression), c = b.cacheTensor(shape: shape, compression: compression)
        let layout = AttentionLayout(batch: 3, length: 6, pastLength: 0, padding: [0, 0, 0], heads: 2, kvHeads: 2, headDim: 8, scale: 1)
        let k = b.upload(floats: Self.randoms(18 * 16, seed: 60), shape: [18, 16])
        let v = b.upload(floats: Self.randoms(18 * 16, seed: 61), shape: [18, 16])
        b.storeKV(key: k, value: v, keyCache: a, valueCache: c, layout: layout)
        b.copyCachePositions(a, row: 1, positions: 0..<5, to: a, toRow: 1, at: 2)      // shift right, overlapping
        b.copyCachePositions(a, row: 2, positions: 1..<6, to: c, toRow: 0, at: 4)      // across tensors
        let view = b.cacheRows(c, 1..<3)
        b.copyCachePositions(a, row: 0, positions: 3..<6, to: view, toRow: 1, at: 0)   // into a view
        return b.download(a) + b.download(c) + b.download(view)
    }
}
