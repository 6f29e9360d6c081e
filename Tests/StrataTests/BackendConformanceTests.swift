import StrataBackend
import StrataCore
import Testing

/// The op-by-op check `strata check-backend` runs against CUDA on a GPU machine, run here on
/// the CPU backend (as-stored weights, two threads) against the f32 reference, and against a
/// backend with one planted fault to show it can fail.
@Suite struct BackendConformanceTests {
    @Test func cpuBackendPassesEveryOp() {
        let results = BackendConformance(halfPrecisionProducts: false)
            .run(candidate: CPUBackend(threads: 2, weightFormat: .asStored), reference: CPUBackend(threads: 1, weightFormat: .f32))
        #expect(results.count >= 40)
        for r in results { #expect(r.passed, "\(r.op): error \(r.error) over tolerance \(r.tolerance)") }
    }

    @Test func aPlantedFaultIsCaughtAndNamed() {
        let results = BackendConformance(halfPrecisionProducts: false)
            .run(candidate: PaddingIgnoringBackend(), reference: CPUBackend(threads: 1, weightFormat: .f32))
        let failed = results.filter { !$0.passed }.map(\.op)
        #expect(failed == ["storeKV + attention prefill, decode (f32 cache)", "storeKV + attention prefill, decode (4-bit cache)"])
    }
}

/// The CPU backend with one bug a GPU port could plausibly have: attention ignores left padding.
final class PaddingIgnoringBackend: ForwardingBackend, @unchecked Sendable {
    init() { super.init(CPUBackend(threads: 1)) }
    override var name: String { "faulty" }
    override func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        var unpadded = layout
        unpadded.padding = layout.padding.map { _ in 0 }
        return cpu.attention(query: query, keyCache: keyCache, valueCache: valueCache, layout: unpadded)
    }
}

/// A backend that does what the CPU backend does, op by op; subclasses change one thing.
class ForwardingBackend: Backend, @unchecked Sendable {
    let cpu: CPUBackend
    init(_ cpu: CPUBackend) { self.cpu = cpu }
    var name: String { cpu.name }
    func upload(weight view: UnsafeRawBufferPointer, dtype: DType, shape: [Int], owner: AnyObject?) -> Tensor {
        cpu.upload(weight: view, dtype: dtype, shape: shape, owner: owner)
    }
    func upload(floats: [Float], shape: [Int]) -> Tensor { cpu.upload(floats: floats, shape: shape) }
    func zeros(shape: [Int]) -> Tensor { cpu.zeros(shape: shape) }
    func download(_ tensor: Tensor) -> [Float] { cpu.download(tensor) }
    func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor { cpu.quantize(weight, scheme: scheme) }
    func upload(quantized: QuantizedTensor) -> Tensor { cpu.upload(quantized: quantized) }
    func cacheTensor(shape: [Int], compression: QuantizationScheme?) -> Tensor { cpu.cacheTensor(shape: shape, compression: compression) }
    func embedding(_ table: Tensor, ids: [Int32]) -> Tensor { cpu.embedding(table, ids: ids) }
    func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor { cpu.linear(x, weight: weight, bias: bias) }
    func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor { cpu.layerNorm(x, weight: weight, bias: bias, eps: eps) }
    func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor { cpu.rmsNorm(x, weight: weight, eps: eps) }
    func addInPlace(_ a: Tensor, _ b: Tensor) { cpu.addInPlace(a, b) }
    func activate(_ x: Tensor, _ activation: Activation) -> Tensor { cpu.activate(x, activation) }
    func gatedActivate(gate: Tensor, up: Tensor, _ activation: Activation) -> Tensor { cpu.gatedActivate(gate: gate, up: up, activation) }
    func applyRotary(_ x: Tensor, heads: Int, headDim: Int, cos: Tensor, sin: Tensor) {
        cpu.applyRotary(x, heads: heads, headDim: headDim, cos: cos, sin: sin)
    }
    func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) {
        cpu.storeKV(key: key, value: value, keyCache: keyCache, valueCache: valueCache, layout: layout)
    }
    func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        cpu.attention(query: query, keyCache: keyCache, valueCache: valueCache, layout: layout)
    }
    func gatherRows(_ x: Tensor, _ indices: [Int]) -> Tensor { cpu.gatherRows(x, indices) }
    func rowView(_ x: Tensor, _ range: Range<Int>) -> Tensor { cpu.rowView(x, range) }
    func concatRows(_ parts: [Tensor]) -> Tensor { cpu.concatRows(parts) }
    func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor { cpu.cacheRows(cache, rows) }
    func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        cpu.copyCachePositions(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
    }
}
