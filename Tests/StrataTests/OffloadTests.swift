import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime
import Testing

/// Every policy must give the answers of the all-on-device run: the same greedy tokens and
/// last-position logits within 1e-5 (gpu-batch splits change GEMM row counts, hence summation
/// paths, so bitwise equality is not promised).
@Suite struct OffloadTests {
    static let prompts = ["The GNU General Public License", "You may copy", "This", "Permission is hereby granted, free of charge",
                          "a b c", "Redistribution and use", "THE SOFTWARE IS PROVIDED", "x"]

    static func requests(_ bundle: ModelBundle, count: Int, newTokens: Int) throws -> [GenerationRequest] {
        try (0..<count).map { GenerationRequest(promptIds: try bundle.encodePrompt(prompts[$0 % prompts.count]), maxNewTokens: newTokens) }
    }

    static func reference(_ model: String, count: Int, newTokens: Int) throws -> ([[Int]], [Float]) {
        let bundle = try ModelBundle(directory: Fixtures.model(model), backend: CPUBackend(threads: 2))
        var timing = GenerationTiming()
        let results = try Generator(bundle: bundle).generate(try requests(bundle, count: count, newTokens: newTokens),
                                                            sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        return (results.map(\.tokenIds), [])
    }

    static func offloaded(_ model: String, policy: Policy, count: Int, newTokens: Int, budgets: TierBudgets = TierBudgets(),
                          promptLength: Int = 16, capacity: Int = 64) throws -> (tokens: [[Int]], engine: OffloadEngine) {
        let directory = Fixtures.model(model)
        let engine = try OffloadEngine(directory: directory, policy: policy, budgets: budgets, offloadDirectory: Fixtures.scratch("offload"),
                                       threads: 2, promptLength: promptLength, capacity: capacity)
        let bundle = try ModelBundle(directory: directory, model: engine.model)
        var timing = GenerationTiming()
        let results = try Generator(bundle: bundle, engine: engine).generate(try requests(bundle, count: count, newTokens: newTokens),
                                                                            sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        return (results.map(\.tokenIds), engine)
    }

    /// The GGUF fixture's Q4_0/Q4_1/Q8_0 layers are placed as stored (no requantization) on every tier.
    @Test(arguments: ["opt-tiny", "opt-postln-proj", "llama-gqa", "gguf-tiny/model.gguf"])
    func randomPoliciesMatchTheAllDeviceRun(model: String) throws {
        var rng = SeededGenerator(seed: 5)
        let (expected, _) = try Self.reference(model, count: 6, newTokens: 5)
        for trial in 0..<5 {
            func split() -> TierSplit {
                let d = Double(Int.random(in: 0...100, using: &rng))
                return TierSplit(device: d, host: Double(Int.random(in: 0...Int(100 - d), using: &rng)))
            }
            let gbs = [1, 2, 3][Int.random(in: 0...2, using: &rng)]
            let policy = Policy(gpuBatchSize: gbs, numGPUBatches: Int.random(in: 1...3, using: &rng), weights: split(), cache: split(),
                                activations: split(), overlap: trial % 2 == 0, cpuAttention: Bool.random(using: &rng))
            let (tokens, engine) = try Self.offloaded(model, policy: policy, count: 6, newTokens: 5)
            #expect(tokens == expected, "\(model) policy \(policy.flags)")
            let placed = engine.placed.weights
            let total = placed.values.reduce(0, +)
            // Weight placement honours the percentages to within 4 KiB per layer.
            let layers = engine.model.config.numLayers
            #expect(abs(Double(placed[.device] ?? 0) - Double(total) * policy.weights.device / 100) <= Double(4096 * layers))
            #expect(abs(Double(placed[.disk] ?? 0) - Double(total) * policy.weights.disk / 100) <= Double(8192 * layers))
        }
    }

    @Test func compressedPoliciesRunAndHostAttentionMatches() throws {
        let base = Policy(gpuBatchSize: 2, numGPUBatches: 2, weights: TierSplit(device: 30, host: 30), cache: TierSplit(device: 0, host: 100),
                          activations: TierSplit(device: 50, host: 25), compressWeight: true, compressCache: true)
        var delegated = base
        delegated.cpuAttention = true
        var sequential = base
        sequential.overlap = false
        let a = try Self.offloaded("opt-tiny", policy: base, count: 4, newTokens: 6).tokens
        let b = try Self.offloaded("opt-tiny", policy: delegated, count: 4, newTokens: 6).tokens
        let c = try Self.offloaded("opt-tiny", policy: sequential, count: 4, newTokens: 6).tokens
        #expect(a == b && a == c)
        #expect(a.allSatisfy { $0.count == 6 })
    }

    /// `--weight-format bf16` under an offloading policy: the tiers hold row-major bf16 images
    /// (the resident run packs them for oneDNN instead); the tokens are the resident run's.
    @Test func bf16WeightsRunUnderAPolicy() throws {
        let directory = Fixtures.model("opt-tiny")
        let bundle = try ModelBundle(directory: directory, backend: CPUBackend(threads: 2, weightFormat: .bf16))
        var timing = GenerationTiming()
        let resident = try Generator(bundle: bundle).generate(try Self.requests(bundle, count: 4, newTokens: 6),
                                                              sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        let policy = Policy(gpuBatchSize: 2, numGPUBatches: 2, weights: TierSplit(device: 40, host: 30),
                            cache: TierSplit(device: 50, host: 50), activations: TierSplit(device: 100, host: 0))
        let engine = try OffloadEngine(directory: directory, policy: policy, budgets: TierBudgets(),
                                       offloadDirectory: Fixtures.scratch("offload-bf16"), threads: 2, weightFormat: .bf16,
                                       promptLength: 16, capacity: 64)
        let offloaded = try Generator(bundle: try ModelBundle(directory: directory, model: engine.model), engine: engine)
            .generate(try Self.requests(bundle, count: 4, newTokens: 6), sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        #expect(offloaded.map(\.tokenIds) == resident.map(\.tokenIds))
        #expect(offloaded.allSatisfy { $0.tokenIds.count == 6 })
    }

    @Test func policyValidationAndBudgetRefusal() throws {
        #expect(throws: StrataError.self) { try Policy(percent: [60, 50, 100, 0, 100, 0], gpuBatchSize: 1, numGPUBatches: 1).validate() }
        #expect(throws: StrataError.self) { try Policy(percent: [-1, 50, 100, 0, 100, 0], gpuBatchSize: 1, numGPUBatches: 1).validate() }
        #expect(throws: StrataError.self) { try Policy(percent: [100, 0, 100], gpuBatchSize: 1, numGPUBatches: 1) }
        #expect(throws: StrataError.self) { try Policy(gpuBatchSize: 4, numGPUBatches: 2).validate(batchSize: 12) }
        do {
            _ = try OffloadEngine(directory: Fixtures.model("opt-tiny"), policy: Policy(), budgets: TierBudgets(device: 100_000),
                                  offloadDirectory: nil, threads: 1, promptLength: 16, capacity: 64)
            Issue.record("a 100 kB device budget was accepted")
        } catch let error as StrataError {
            #expect("\(error)".contains("device tier") && "\(error)".contains("short by"), "\(error)")
        }
        do {
            _ = try OffloadEngine(directory: Fixtures.model("opt-tiny"), policy: Policy(weights: TierSplit(device: 0, host: 0)),
                                  budgets: TierBudgets(), offloadDirectory: nil, threads: 1, promptLength: 16, capacity: 64)
            Issue.record("disk placement without an offload directory was accepted")
        } catch let error as StrataError {
            #expect("\(error)".contains("--offload-dir"))
        }
    }

    /// Measured peaks stay within budgets that the plan accepted.
    @Test func measuredPeaksStayWithinBudgets() throws {
        let budgets = TierBudgets(device: 6 << 20, host: 1 << 20, disk: 4 << 20)
        let policy = Policy(gpuBatchSize: 2, numGPUBatches: 2, weights: TierSplit(device: 20, host: 30), cache: TierSplit(device: 50, host: 25),
                            activations: TierSplit(device: 50, host: 0))
        let (_, engine) = try Self.offloaded("opt-tiny", policy: policy, count: 4, newTokens: 4, budgets: budgets)
        #expect(engine.accounts.device.peak > 0 && engine.accounts.device.excess == 0, "device peak \(engine.accounts.device.peak)")
        #expect(engine.accounts.host.excess == 0, "host peak \(engine.accounts.host.peak)")
        #expect(engine.accounts.disk.peak > 0 && engine.accounts.disk.excess == 0)
    }

    /// Last-position logits of a left-padded prefill under a split policy equal the resident
    /// run's within 1e-5 (the row counts of the GEMMs change, hence summation paths).
    @Test(arguments: ["opt-postln-proj", "llama-gqa"])
    func logitsMatchTheResidentRun(model: String) throws {
        let directory = Fixtures.model(model)
        let resident = try ModelLoader.load(directory: directory, backend: CPUBackend(threads: 2))
        let tokens: [Int32] = [1, 1, 5, 9, 14, 20, 3, 8, 13, 21, 34, 55, 1, 1, 1, 7, 11, 2, 4, 6, 8, 10, 12, 14]
        let step = ForwardStep(tokens: tokens, batch: 4, length: 6, pastLength: 0, padding: [2, 0, 3, 0])
        let expected = resident.backend.download(resident.forward(step, cache: resident.makeCache(batch: 4, capacity: 6)))
        let policy = Policy(gpuBatchSize: 2, numGPUBatches: 2, weights: TierSplit(device: 35, host: 40), cache: TierSplit(device: 30, host: 40),
                            activations: TierSplit(device: 40, host: 30), cpuAttention: true)
        let engine = try OffloadEngine(directory: directory, policy: policy, budgets: TierBudgets(), offloadDirectory: Fixtures.scratch("logits"),
                                       threads: 2, promptLength: 6, capacity: 6)
        try engine.beginBlock(capacity: 6)
        let got = try engine.forward(step)
        engine.endBlock()
        #expect(got.count == expected.count)
        let worst = zip(got, expected).map { abs($0 - $1) }.max() ?? 0
        #expect(worst <= 1e-5, "\(model): max |offloaded - resident| = \(worst)")
    }
}
