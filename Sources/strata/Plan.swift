import ArgumentParser
import StrataCore
import StrataFormats
import StrataPlanning
import StrataRuntime

/// `strata plan`: the fastest policy for a model, machine and workload, from the cost model
/// and an LP per batch shape; or, with policy flags, the prediction for that policy.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Search the fastest offloading policy for a model on a machine (cost model + linear programs), or predict a given policy.")

    @Option(help: "Known architecture (opt-125m ... opt-175b, llama-2-7b/13b/70b, llama-3-8b/70b) or a model directory.")
    var model: String
    @Option(help: "Built-in profile (t4, v100-32g, p100-12g, a100-40g, a100-80g, h100, h200) or a profile JSON from strata profile.")
    var hardware = "t4"
    @Option(help: "Prompt tokens per sequence.") var promptLen = 512
    @Option(help: "New tokens per sequence.") var genLen = 32
    @Option(help: "Device tier budget (default: 80% of the profile's device memory).") var deviceMem: String?
    @Option(help: "Host tier budget (default: 80% of the profile's host memory).") var hostMem: String?
    @Option(help: "Disk tier budget (default: 80% of the profile's disk).") var diskMem: String?
    @Flag(help: "Search without compression (FlexGen's search space).") var noCompression = false
    @Flag(help: "Search without host attention.") var noCpuAttention = false
    @Option(parsing: .upToNextOption, help: "Predict this policy instead of searching: WG WC CG CC HG HC.") var percent: [Double] = []
    @Option(help: "With --percent: sequences per gpu batch.") var gpuBatchSize = 1
    @Option(help: "With --percent: gpu batches per block.") var numGPUBatches = 1
    @Flag(help: "With --percent: host attention.") var cpuAttention = false
    @Flag(help: "With --percent: 4-bit weights.") var compressWeight = false
    @Flag(help: "With --percent: 4-bit KV cache.") var compressCache = false
    @Flag(help: "With --percent: transfers do not overlap compute.") var noOverlap = false
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Compute threads the engine will run with (its working set on a CPU profile).") var threads = 2
    @Flag(help: "Use FlexGen's own formulas (no weight-streaming roofline, compression ignored), for comparison.")
    var flexgenFormulas = false

    func run() throws {
        try reportingErrors {
            let shape = try ModelShape.named(model)
            let profile = try HardwareProfile.named(hardware)
            var cost = CostModel(model: shape, profile: profile, workload: Workload(promptLength: promptLen, genLength: genLen))
            cost.extensions = !flexgenFormulas
            // On a CPU profile the engine that runs the policy is this machine's: plan with its memory model.
            if profile.copiesShareCompute && !flexgenFormulas {
                cost.memory = GGUFFile.isModel(model) ? try MemoryModel(directory: model, threads: threads)
                    : try MemoryModel(architecture: model, threads: threads)
            }
            let budgets = TierBudgets(device: try deviceMem.map { try ByteSize.parse($0, option: "--device-mem") },
                                      host: try hostMem.map { try ByteSize.parse($0, option: "--host-mem") },
                                      disk: try diskMem.map { try ByteSize.parse($0, option: "--disk-mem") })
            let policy: Policy, prediction: CostModel.Prediction
            var searched: PolicySearch.Result?
            if percent.isEmpty {
                var search = PolicySearch(cost: cost, budgets: budgets)
                search.allowCompression = !noCompression
                search.allowCPUAttention = !noCpuAttention
                let result = try search.search()
                (policy, prediction, searched) = (result.policy, result.prediction, result)
            } else {
                var p = try Policy(percent: percent, gpuBatchSize: gpuBatchSize, numGPUBatches: numGPUBatches)
                p.cpuAttention = cpuAttention
                p.compressWeight = compressWeight
                p.compressCache = compressCache
                p.overlap = !noOverlap
                try p.validate()
                (policy, prediction) = (p, cost.predict(p))
            }
            if json {
                var o: [String: JSONValue] = [
                    "model": .string(model), "hardware": .string(profile.name), "prompt_len": .number(Double(promptLen)),
                    "gen_len": .number(Double(genLen)), "predicted_tokens_per_s": .number(prediction.tokensPerSecond),
                    "predicted_seconds": .number(prediction.totalSeconds),
                    "bottleneck": .object(["prefill": .string(prediction.prefillBottleneck), "decode": .string(prediction.decodeBottleneck)]),
                    "policy": policy.json,
                    "memory_bytes": .object(Dictionary(uniqueKeysWithValues: prediction.memory.map { ($0.key.rawValue, .number($0.value)) })),
                ]
                if let searched {
                    o["search"] = .object(["linear_programs": .number(Double(searched.linearPrograms)), "seconds": .number(searched.seconds)])
                }
                print(JSONValue.object(o).serialized())
            } else {
                print("model \(model) on \(profile.name) (\(profile.source)), prompt \(promptLen), gen \(genLen)")
                print("policy     \(policy.flags)")
                print("predicted  \(prediction.tokensPerSecond.formatted(3)) tokens/s (\(prediction.totalSeconds.formatted(1)) s for a block of \(policy.blockSize))")
                print("bottleneck prefill: \(prediction.prefillBottleneck); decode: \(prediction.decodeBottleneck)")
                for tier in Tier.allCases {
                    print("\(tier.rawValue.padding(10)) \(ByteSize.format(Int(prediction.memory[tier] ?? 0)))")
                }
                if let searched { print("search     \(searched.linearPrograms) linear programs in \(searched.seconds.formatted(3)) s") }
            }
        }
    }
}
