import StrataBackend
import StrataCore
import StrataModels
import StrataRuntime
import Testing

/// The offload engine's tier copies on the paths a GPU takes, checked on the CPU: which copy
/// waits on which compute fence (a GPU would otherwise copy a cache before the layer that
/// appended to it ran, or refill a staging buffer a kernel still reads), and that the bounce and
/// host-attention paths give the resident model's tokens.
@Suite struct TransferOrderTests {
    /// Run through a backend that computes on the CPU but declares its device memory separate
    /// from host memory, so the engine stages disk reads through page-locked bounce buffers and
    /// sends host-attention rows to the host backend, exactly as under CUDA.
    static func run(_ policy: Policy, detached: Bool) throws -> (tokens: [[Int]], log: [TransferLog.Entry]) {
        let directory = Fixtures.model("opt-tiny")
        let make: (@Sendable (MemoryAccount) throws -> any TierTransfers)? = detached ? { @Sendable in DetachedDeviceBackend(account: $0) } : nil
        let engine = try OffloadEngine(directory: directory, policy: policy, budgets: TierBudgets(), offloadDirectory: Fixtures.scratch("transfers"),
                                       threads: 2, promptLength: 16, capacity: 64, compute: make, recordTransfers: true)
        let bundle = try ModelBundle(directory: directory, model: engine.model)
        var timing = GenerationTiming()
        let results = try Generator(bundle: bundle, engine: engine).generate(try OffloadTests.requests(bundle, count: 4, newTokens: 5),
                                                                            sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        return (results.map(\.tokenIds), engine.transferLog!.all)
    }

    static let everyTier = Policy(gpuBatchSize: 2, numGPUBatches: 2, weights: TierSplit(device: 30, host: 30),
                                  cache: TierSplit(device: 0, host: 50), activations: TierSplit(device: 30, host: 30), overlap: true)

    @Test(arguments: [false, true])
    func copiesWaitOnTheComputationTheyDependOn(detached: Bool) throws {
        let (expected, _) = try OffloadTests.reference("opt-tiny", count: 4, newTokens: 5)
        let (tokens, log) = try Self.run(Self.everyTier, detached: detached)
        #expect(tokens == expected)
        func waits(_ e: TransferLog.Entry, on label: String) -> Bool { e.after.contains(label) }
        let stores = log.filter { $0.purpose.hasPrefix("cache store") }
        #expect(!stores.isEmpty)
        for e in stores {
            // "cache store L3 B1 host" waits on "L3 B1 computed".
            let unit = e.purpose.split(separator: " ")[2...3].joined(separator: " ")
            #expect(waits(e, on: "\(unit) computed"), "\(e.purpose) waited on \(e.after)")
            #expect(e.directions.allSatisfy { $0 == .deviceToHost })
        }
        let activationStores = log.filter { $0.purpose.hasPrefix("activation store") }
        #expect(!activationStores.isEmpty)
        for e in activationStores {
            let batch = e.purpose.split(separator: " ")[2]
            #expect(e.after.contains { $0.hasSuffix(" \(batch) computed") }, "\(e.purpose) waited on \(e.after)")
        }
        for e in log where e.purpose.hasPrefix("activation load") {
            let batch = e.purpose.split(separator: " ")[2]
            #expect(waits(e, on: "activation \(batch) buffer ready"), "\(e.purpose) waited on \(e.after)")
        }
        // Weight staging is refilled in turn: after the first fill of each pooled buffer, every
        // load waits on the fence its buffer's last release recorded.
        let weightLoads = log.filter { $0.purpose.hasPrefix("weights L") && !$0.purpose.hasSuffix("disk") }
        #expect(weightLoads.count > 8)
        #expect(weightLoads.dropFirst(2).allSatisfy { waits($0, on: "weight staging released") })
        for e in log where e.purpose.hasPrefix("cache load") {
            #expect(e.directions.allSatisfy { $0 == .hostToDevice })
        }
        // Disk reads reach a separate device only through bounce buffers copied up.
        let diskLoads = log.filter { $0.purpose.hasSuffix("from disk") || $0.purpose.hasSuffix(" disk") && $0.purpose.hasPrefix("cache load") }
        #expect(detached ? !diskLoads.isEmpty : diskLoads.isEmpty)
    }

    @Test func hostAttentionOnASeparateDeviceGivesTheResidentTokens() throws {
        let (expected, _) = try OffloadTests.reference("opt-tiny", count: 4, newTokens: 5)
        var policy = Self.everyTier
        policy.cpuAttention = true
        let (tokens, log) = try Self.run(policy, detached: true)
        #expect(tokens == expected)
        // Host rows are attended where they live: none is copied to the device.
        #expect(!log.contains { $0.purpose.hasPrefix("cache load") && $0.purpose.hasSuffix("host") })
    }
}

/// The CPU backend, declaring its device memory apart from host memory (see above).
final class DetachedDeviceBackend: DelegatingBackend, TierTransfers, @unchecked Sendable {
    let cpu: CPUBackend
    init(account: MemoryAccount) {
        cpu = CPUBackend(threads: 2, account: account, packsWeights: false)
        super.init(inner: cpu)
    }
    override var name: String { "detached" }
    var deviceMemoryIsHost: Bool { false }
    func deviceMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer { cpu.deviceMemory(bytes, account: account) }
    func hostMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer { cpu.hostMemory(bytes, account: account) }
    func computeFence(_ label: String) -> ComputeFence { cpu.computeFence(label) }
    func transfer(_ copies: [TransferCopy], lane: TransferLane, after: [ComputeFence]) { cpu.transfer(copies, lane: lane, after: after) }
}
