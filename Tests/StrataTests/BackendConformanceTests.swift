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
final class PaddingIgnoringBackend: DelegatingBackend, @unchecked Sendable {
    init() { super.init(inner: CPUBackend(threads: 1)) }
    override var name: String { "faulty" }
    override func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        var unpadded = layout
        unpadded.padding = layout.padding.map { _ in 0 }
        return inner.attention(query: query, keyCache: keyCache, valueCache: valueCache, layout: unpadded)
    }
}
