import StrataBackend
import StrataCore
import StrataPlanning
import StrataRuntime
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The policy search and the engine share one memory model: the search's linear memory rows
/// bound the engine's exact plan from above, so every policy `--policy auto` returns is one the
/// engine accepts, and the engine's measured peaks stay within the budgets it accepted.
@Suite struct MemoryModelTests {
    /// A CPU-only profile as `strata profile` measured it on a 2-core VM (fixed here, so the
    /// test does not depend on this machine's speed).
    static let cpu: HardwareProfile = {
        let json: JSONValue = .object([
            "format": .string("strata-hardware-profile"), "name": .string("cpu-test"), "source": .string("test"),
            "copies_share_compute": .bool(true), "device_memory_bytes": .number(25e9), "host_memory_bytes": .number(25e9),
            "disk_capacity_bytes": .number(80e9), "ctog_bytes_per_s": .number(7.8e9), "gtoc_cache_bytes_per_s": .number(7.8e9),
            "gtoc_hidden_bytes_per_s": .number(7.8e9), "dtoc_bytes_per_s": .number(1.2e9), "ctod_cache_bytes_per_s": .number(2.0e9),
            "ctod_hidden_bytes_per_s": .number(2.0e9), "mm_prefill_flops": .number(130e9), "mm_decode_flops": .number(65e9),
            "bmm_prefill_flops": .number(45e9), "bmm_decode_flops": .number(15e9), "cpu_flops": .number(15e9),
            "dequantize_bytes_per_s": .number(0.84e9), "device_memory_bandwidth_bytes_per_s": .number(18.6e9),
        ])
        return try! HardwareProfile(json: json, path: "test")
    }()

    /// The three fixture architectures (from their checkpoints) and OPT-1.3B/6.7B/30B-shaped
    /// descriptions (from known shapes, no weights).
    static let models = ["opt-tiny", "opt-postln-proj", "llama-gqa", "opt-1.3b", "opt-6.7b", "opt-30b"]

    static func memory(_ name: String, threads: Int = 2) throws -> MemoryModel {
        name.hasPrefix("opt-") && !name.hasPrefix("opt-tiny") && !name.hasPrefix("opt-postln")
            ? try MemoryModel(architecture: name, threads: threads)
            : try MemoryModel(directory: Fixtures.model(name), threads: threads)
    }

    /// What the device must hold whatever the placement (embeddings, head, staging, one gpu
    /// batch's working set): its bound with every fraction on the host, for a gpu batch of one.
    /// The host likewise holds one layer's images while placing it: its bound with every
    /// fraction on the device.
    static func fixedBytes(_ memory: MemoryModel, prompt: Int, capacity: Int) -> (device: Double, host: Double) {
        let choice = BatchChoice(gpuBatchSize: 1, numGPUBatches: 1, compressWeight: false, compressCache: false, cpuAttention: false)
        let bound = memory.bound(choice, promptLength: prompt, capacity: capacity, activationsOnDisk: false)
        return (bound[.device]!.value([0, 1, 0, 0, 1, 0, 0, 1, 0]), bound[.host]!.value([1, 0, 0, 1, 0, 0, 1, 0, 0]))
    }

    /// For random batch choices and fractions (0.1% steps, with whole-tier corners), the linear
    /// bound of every tier is at least the exact plan, and not loose by more than its stated
    /// slack terms (a staging slot, a few rows and pages).
    @Test(arguments: models)
    func boundsCoverTheExactPlan(model: String) throws {
        let memory = try Self.memory(model)
        var rng = SeededGenerator(seed: 11)
        for trial in 0..<300 {
            func fractions() -> (Double, Double) {
                switch trial % 5 {
                case 0: return [(1, 0), (0, 1), (0, 0)][Int.random(in: 0...2, using: &rng)]
                default:
                    let d = Double(Int.random(in: 0...1000, using: &rng)) / 1000
                    return (d, Double(Int.random(in: 0...Int((1 - d) * 1000), using: &rng)) / 1000)
                }
            }
            let (wg, wc) = fractions(), (cg, cc) = fractions(), (hg, hc) = fractions()
            let choice = BatchChoice(gpuBatchSize: [1, 2, 3, 8, 32][Int.random(in: 0...4, using: &rng)],
                                     numGPUBatches: Int.random(in: 1...6, using: &rng), compressWeight: Bool.random(using: &rng),
                                     compressCache: Bool.random(using: &rng), cpuAttention: Bool.random(using: &rng),
                                     overlap: Bool.random(using: &rng))
            let policy = Policy(choice, fractions: [wg, wc, 1 - wg - wc, cg, cc, 1 - cg - cc, hg, hc, 1 - hg - hc])
            let prompt = [1, 7, 64, 512][Int.random(in: 0...3, using: &rng)]
            let capacity = min(prompt + [1, 8, 32][Int.random(in: 0...2, using: &rng)], memory.config.maxPositions)
            let plan = memory.plan(policy, promptLength: prompt, capacity: capacity)
            let x = Fraction.of(policy)
            for onDisk in x[Fraction.hd.rawValue] > 0 ? [true] : [true, false] {
                let bound = memory.bound(choice, promptLength: prompt, capacity: capacity, activationsOnDisk: onDisk)
                for tier in Tier.allCases {
                    let exact = Double(plan[tier].total), linear = bound[tier]!.value(x)
                    #expect(linear >= exact, "\(model) \(tier): bound \(linear) < plan \(exact) for \(policy.flags), prompt \(prompt)")
                }
            }
        }
    }

    /// `--policy auto` over a grid of models, batch sizes, lengths, compression and budgets from
    /// tight to loose: every policy returned fits the engine's exact plan; when none fits, the
    /// error names a tier and how much more it needs.
    @Test(arguments: models)
    func searchedPoliciesFitTheEnginePlan(model: String) throws {
        let memory = try Self.memory(model)
        let weights = Double(memory.layerBytes(compressed: false))
        var found = 0, refused = 0
        for batch in [1, 8, 64] {
            for (prompt, gen) in [(16, 8), (128, 32), (512, 32)] where prompt + gen <= memory.config.maxPositions {
                let capacity = prompt + gen
                // Budgets relative to the model: the device gets its fixed needs (embeddings, head,
                // one gpu batch's working set) plus a share of the layers.
                let fixed = Self.fixedBytes(memory, prompt: prompt, capacity: capacity)
                for (share, disk) in [(0.1, 3.0), (0.6, 0.0), (0.4, 2.0), (4.0, 0.0)] {
                    for compress in [false, true] {
                        var cost = CostModel(model: ModelShape(config: memory.config, name: model), profile: Self.cpu,
                                             workload: Workload(promptLength: prompt, genLength: gen))
                        cost.memory = memory
                        let budgets = TierBudgets(device: Int(fixed.device + share * weights), host: Int(fixed.host + share * weights),
                                                  disk: Int(disk * weights))
                        var search = PolicySearch(cost: cost, budgets: budgets)
                        search.requiredDivisor = batch
                        search.allowCompression = compress
                        do {
                            let result = try search.search()
                            found += 1
                            let plan = memory.plan(result.policy, promptLength: prompt, capacity: capacity)
                            let short = plan.shortfalls(budgets)
                            #expect(short.isEmpty, "\(model) batch \(batch) \(prompt)+\(gen): \(result.policy.flags) short on \(short)")
                            #expect(batch % result.policy.blockSize == 0)
                            if disk == 0 { #expect(result.policy.weights.disk == 0 && result.policy.cache.disk == 0 && result.policy.activations.disk == 0) }
                        } catch StrataError.invalidRequest(let message) {
                            refused += 1
                            #expect(message.contains("no policy fits") && message.contains("tier needs") && message.contains("more"), "\(message)")
                        }
                    }
                }
            }
        }
        #expect(found > refused, "\(model): \(found) policies found, \(refused) refused")
    }

    /// The small models run: the engine accepts the searched policy under tight budgets, gives
    /// the resident run's tokens, and its measured high-water marks stay within the budgets.
    @Test(arguments: ["opt-tiny", "opt-postln-proj", "llama-gqa", "opt-licenses"])
    func searchedPoliciesRunWithinTheirBudgets(model: String) throws {
        let directory = Fixtures.model(model)
        let memory = try MemoryModel(directory: directory, threads: 2)
        let weights = Double(memory.layerBytes(compressed: false))
        let (expected, _) = try OffloadTests.reference(model, count: 4, newTokens: 4)
        let (prompt, gen) = (16, 48)
        var cost = CostModel(model: ModelShape(config: memory.config, name: model), profile: Self.cpu,
                             workload: Workload(promptLength: prompt, genLength: gen))
        cost.memory = memory
        let fixed = Self.fixedBytes(memory, prompt: prompt, capacity: prompt + gen)
        // The device gets part of what an all-device run plans for, so the search must offload.
        let choice = BatchChoice(gpuBatchSize: 1, numGPUBatches: 1, compressWeight: false, compressCache: false, cpuAttention: false)
        let allDevice = memory.bound(choice, promptLength: prompt, capacity: prompt + gen, activationsOnDisk: false)[.device]!
            .value([1, 0, 0, 1, 0, 0, 1, 0, 0])
        for (deviceShare, hostShare, disk) in [(0.7, 0.2, 2.0), (0.85, 0.6, 0.0), (0.8, 0.3, 1.5)] {
            var budgets = TierBudgets(device: Int(deviceShare * allDevice), host: Int(fixed.host + hostShare * weights),
                                      disk: Int(disk * weights))
            var search = PolicySearch(cost: cost, budgets: budgets)
            search.requiredDivisor = 4
            search.allowCompression = false
            // Where these budgets are too tight, the stated shortfall is what it takes.
            let short = try search.shortfall()
            budgets.device = budgets.device.map { $0 + (short[.device] ?? 0) }
            budgets.host = budgets.host.map { $0 + (short[.host] ?? 0) }
            budgets.disk = budgets.disk.map { $0 + (short[.disk] ?? 0) }
            search = PolicySearch(cost: cost, budgets: budgets)
            search.requiredDivisor = 4
            search.allowCompression = false
            let policy = try search.search().policy
            let (tokens, engine) = try OffloadTests.offloaded(model, policy: policy, count: 4, newTokens: 4, budgets: budgets,
                                                              promptLength: prompt, capacity: prompt + gen)
            #expect(tokens == expected, "\(model) \(policy.flags)")
            for account in [engine.accounts.device, engine.accounts.host, engine.accounts.disk] {
                #expect(account.excess == 0, "\(model) \(policy.flags): \(account.name) peaked at \(account.peak) of \(account.budget ?? 0)")
            }
        }
    }

    /// When nothing fits, the search says which tier is short and by how much, before loading.
    @Test func nothingFitsNamesTheTierAndTheShortfall() throws {
        let memory = try Self.memory("opt-1.3b")
        var cost = CostModel(model: ModelShape(config: memory.config, name: "opt-1.3b"), profile: Self.cpu,
                             workload: Workload(promptLength: 64, genLength: 8))
        cost.memory = memory
        // 1 GiB of device and host, no disk, no compression: the 2.4 GiB of layers cannot fit.
        var search = PolicySearch(cost: cost, budgets: TierBudgets(device: 1 << 30, host: 1 << 30, disk: 0))
        search.allowCompression = false
        #expect {
            _ = try search.search()
        } throws: { error in
            let text = "\(error)"
            return text.contains("host tier needs") && text.contains("more") && text.contains("disk tier is off")
        }
        // The shortfall is what is missing: with that much more host memory a policy fits, and
        // the engine's plan accepts it.
        let more = try #require(try search.shortfall()[.host])
        let budgets = TierBudgets(device: 1 << 30, host: (1 << 30) + more, disk: 0)
        var enough = PolicySearch(cost: cost, budgets: budgets)
        enough.allowCompression = false
        let policy = try enough.search().policy
        #expect(memory.plan(policy, promptLength: 64, capacity: 72).shortfalls(budgets).isEmpty)
        // A gpu batch of one with everything but the device share on the host is the tightest fit:
        // 1 MiB less than the stated shortfall does not fit.
        var less = PolicySearch(cost: cost, budgets: TierBudgets(device: 1 << 30, host: (1 << 30) + more - (1 << 20), disk: 0))
        less.allowCompression = false
        #expect(throws: StrataError.self) { _ = try less.search() }
    }

    /// The CPU cost model's extensions: the prefill GEMM rate follows the gpu batch's rows, and
    /// measured disk/compute contention lengthens a disk-bound step by that share of the compute.
    @Test func cpuCostModelTermsFollowTheProfile() throws {
        let p = Self.cpu
        #expect(p.gemmRate(rows: 8) == p.mmDecode && p.gemmRate(rows: 4096) == p.mmPrefill)
        // 128 rows are 3 of the 5 octaves from 16 to 512.
        let mid = p.gemmRate(rows: 128), expected = p.mmDecode * pow(p.mmPrefill / p.mmDecode, 0.6)
        #expect(abs(mid - expected) / expected < 1e-9, "\(mid) vs \(expected)")
        var contended = p
        contended.diskComputeContention = 0.5
        #expect(try HardwareProfile(json: contended.json, path: "x").diskComputeContention == 0.5)
        let workload = Workload(promptLength: 64, genLength: 8)
        let shape = try ModelShape.named("opt-1.3b")
        let disk = try Policy(percent: [0, 0, 100, 0, 100, 0], gpuBatchSize: 8, numGPUBatches: 1)
        let free = CostModel(model: shape, profile: p, workload: workload).predict(disk)
        let slowed = CostModel(model: shape, profile: contended, workload: workload).predict(disk)
        // Decode is disk-bound here: contention adds half of the compute to each step.
        #expect(free.decodeBottleneck == "disk I/O" && slowed.decodeSecondsPerLayer > free.decodeSecondsPerLayer * 1.05)
        // An all-device policy moves nothing from disk: contention changes nothing.
        let resident = Policy(gpuBatchSize: 8)
        #expect(CostModel(model: shape, profile: contended, workload: workload).predict(resident).totalSeconds
                == CostModel(model: shape, profile: p, workload: workload).predict(resident).totalSeconds)
    }
}
