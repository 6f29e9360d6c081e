import StrataCore

/// A backend that hands every op to `inner`: the base of wrappers that watch or change one op
/// (the quality indicator's input recorder; the tests' planted faults and stand-in devices).
open class DelegatingBackend: Backend, @unchecked Sendable {
    public let inner: any Backend

    public init(inner: any Backend) { self.inner = inner }

    open var name: String { inner.name }
    open var holdsWeightsInBF16: Bool { inner.holdsWeightsInBF16 }
    open func upload(weight view: UnsafeRawBufferPointer, dtype: DType, shape: [Int], owner: AnyObject?) -> Tensor {
        inner.upload(weight: view, dtype: dtype, shape: shape, owner: owner)
    }
    open func upload(floats: [Float], shape: [Int]) -> Tensor { inner.upload(floats: floats, shape: shape) }
    open func zeros(shape: [Int]) -> Tensor { inner.zeros(shape: shape) }
    open func download(_ tensor: Tensor) -> [Float] { inner.download(tensor) }
    open func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor { inner.quantize(weight, scheme: scheme) }
    open func upload(quantized: QuantizedTensor) -> Tensor { inner.upload(quantized: quantized) }
    open func cacheTensor(shape: [Int], compression: QuantizationScheme?) -> Tensor { inner.cacheTensor(shape: shape, compression: compression) }
    open func embedding(_ table: Tensor, ids: [Int32]) -> Tensor { inner.embedding(table, ids: ids) }
    open func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor { inner.linear(x, weight: weight, bias: bias) }
    open func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor { inner.layerNorm(x, weight: weight, bias: bias, eps: eps) }
    open func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor { inner.rmsNorm(x, weight: weight, eps: eps) }
    open func addInPlace(_ a: Tensor, _ b: Tensor) { inner.addInPlace(a, b) }
    open func activate(_ x: Tensor, _ activation: Activation) -> Tensor { inner.activate(x, activation) }
    open func gatedActivate(gate: Tensor, up: Tensor, _ activation: Activation) -> Tensor { inner.gatedActivate(gate: gate, up: up, activation) }
    open func applyRotary(_ x: Tensor, heads: Int, headDim: Int, cos: Tensor, sin: Tensor) {
        inner.applyRotary(x, heads: heads, headDim: headDim, cos: cos, sin: sin)
    }
    open func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) {
        inner.storeKV(key: key, value: value, keyCache: keyCache, valueCache: valueCache, layout: layout)
    }
    open func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        inner.attention(query: query, keyCache: keyCache, valueCache: valueCache, layout: layout)
    }
    open func gatherRows(_ x: Tensor, _ indices: [Int]) -> Tensor { inner.gatherRows(x, indices) }
    open func rowView(_ x: Tensor, _ range: Range<Int>) -> Tensor { inner.rowView(x, range) }
    open func concatRows(_ parts: [Tensor]) -> Tensor { inner.concatRows(parts) }
    open func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor { inner.cacheRows(cache, rows) }
    open func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        inner.copyCachePositions(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
    }
}
