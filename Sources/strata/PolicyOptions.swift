import ArgumentParser
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataPlanning
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// FlexGen-style offloading options. Any of them switches from the resident runner to the
/// offloading engine.
struct PolicyOptions: ParsableArguments {
    @Option(parsing: .upToNextOption, help: "Placement percentages WG WC CG CC HG HC (weights, cache, activations on device and host; the rest on disk).")
    var percent: [Double] = []
    @Option(help: "Sequences per gpu batch.") var gpuBatchSize: Int?
    @Option(help: "Gpu batches per block (a layer's weights load once per block).") var numGPUBatches: Int?
    @Option(help: "Policy JSON file (gpu_batch_size, num_gpu_batches, percent, overlap, cpu_attention, compress_weight, compress_cache), or 'auto' (cost model + search on this machine's profile).")
    var policy: String?
    @Option(help: "Overlap transfers with compute (true/false).") var overlap: Bool?
    @Flag(help: "Attend to host-resident KV cache on the host instead of moving it.") var cpuAttention = false
    @Option(help: "Device tier budget, e.g. 16GiB (on the CPU backend: the arena compute reads).") var deviceMem: String?
    @Option(help: "Host tier budget, e.g. 4GiB.") var hostMem: String?
    @Option(help: "Disk tier budget, e.g. 100GiB.") var diskMem: String?
    @Option(help: "Directory for disk-tier files (weights, KV cache, activations).") var offloadDir: String?

    var active: Bool {
        !percent.isEmpty || gpuBatchSize != nil || numGPUBatches != nil || policy != nil || offloadDir != nil || deviceMem != nil
            || hostMem != nil || diskMem != nil || cpuAttention || overlap != nil
    }

    func makePolicy(compressWeight: Bool, compressCache: Bool, auto: (() throws -> AutoPolicy)? = nil) throws -> (Policy, CostModel.Prediction?) {
        var p: Policy
        var prediction: CostModel.Prediction?
        if policy == "auto", let auto {
            let chosen = try auto()
            (p, prediction) = (chosen.policy, chosen.prediction)
        } else if let policy {
            p = try Policy.load(path: policy)
        } else {
            p = percent.isEmpty ? Policy() : try Policy(percent: percent, gpuBatchSize: 1, numGPUBatches: 1)
        }
        let searched = p
        if let gpuBatchSize { p.gpuBatchSize = gpuBatchSize }
        if let numGPUBatches { p.numGPUBatches = numGPUBatches }
        if let overlap { p.overlap = overlap }
        if cpuAttention { p.cpuAttention = true }
        // Under `--policy auto` the compression flags allowed the search to compress; its answer stands.
        if compressWeight && policy != "auto" { p.compressWeight = true }
        if compressCache && policy != "auto" { p.compressCache = true }
        try p.validate()
        // Flags that change the searched policy make its prediction someone else's.
        return (p, p == searched ? prediction : nil)
    }

    func budgets() throws -> TierBudgets {
        TierBudgets(device: try deviceMem.map { try ByteSize.parse($0, option: "--device-mem") },
                    host: try hostMem.map { try ByteSize.parse($0, option: "--host-mem") },
                    disk: try diskMem.map { try ByteSize.parse($0, option: "--disk-mem") })
    }

    /// A generator for `backend.model`: resident, or under the policy with the KV cache planned
    /// for `capacity` positions and the working set for prompts of `promptLength`; with
    /// `--policy auto`, the cost model's prediction for the chosen policy.
    func makeGenerator(_ backend: BackendOptions, promptLength: Int, capacity: Int, batchSize: Int?) throws
        -> (generator: Generator, engine: OffloadEngine?, prediction: CostModel.Prediction?) {
        guard active else { return (Generator(bundle: try backend.loadBundle()), nil, nil) }
        if try backend.weightFormatOption() == .int8 {
            // The engine moves weights between tiers as row-major images of one stored type;
            // int8 codes with their row scales are not one of them yet.
            throw StrataError.invalidRequest("--weight-format int8 holds a resident model; it does not combine with an offloading policy (--policy, --percent)")
        }
        let (policy, prediction) = try makePolicy(compressWeight: backend.compressWeight, compressCache: backend.compressCache) {
            try autoPolicy(backend, promptLength: promptLength, capacity: capacity, batchSize: batchSize)
        }
        if let batchSize { try policy.validate(batchSize: batchSize) }
        let precision = try backend.precision.map { try PrecisionMap.load(path: $0) }
        let config = try ModelConfig(directory: backend.model)
        let engine = try OffloadEngine(directory: backend.model, policy: policy, budgets: budgets(), offloadDirectory: offloadDir,
                                       threads: backend.threads, weightFormat: try backend.weightFormatOption(),
                                       precision: precision, promptLength: promptLength,
                                       capacity: min(capacity, config.maxPositions), compute: try backend.offloadCompute())
        return (Generator(bundle: try ModelBundle(directory: backend.model, model: engine.model), engine: engine), engine, prediction)
    }
}

extension PolicyOptions {
    /// `--policy auto`: this machine's profile (cached, or measured now), the cost model for the
    /// model and workload, and the LP search, limited to blocks that divide the batch.
    func autoPolicy(_ backend: BackendOptions, promptLength: Int, capacity: Int, batchSize: Int?) throws -> AutoPolicy {
        var profile = try ProfileCache.loadOrMeasure(threads: backend.threads, offloadDirectory: offloadDir ?? "/tmp/strata-offload")
        if offloadDir != nil, profile.copiesShareCompute {
            // The disk tier will read this model's own files. A profile's scratch file was freshly
            // written, which a VM's host may still cache: measure direct reads of up to 1 GiB of
            // the model's layer weights instead.
            let files = Self.weightFiles(backend.model)
            if !files.isEmpty, let (bytes, seconds) = try? DiskReader.measureBandwidth(files: files, limit: 1 << 30), bytes > 0, seconds > 0 {
                profile.dtoc = Double(bytes) / seconds
                Console.note("--policy auto: direct reads of the model's files at \((profile.dtoc / 1e9).formatted(2)) GB/s")
            }
        }
        let workload = Workload(promptLength: promptLength, genLength: max(1, capacity - promptLength))
        var cost = CostModel(model: try ModelShape.named(backend.model), profile: profile, workload: workload)
        // The engine's own memory description: what the search constrains is what the engine checks.
        cost.memory = try MemoryModel(directory: backend.model, weightFormat: try backend.weightFormatOption(),
                                      precision: try backend.precision.map { try PrecisionMap.load(path: $0) }, threads: backend.threads)
        var limits = try budgets()
        // Device and host share RAM on a CPU machine: without budgets, give the device half.
        if profile.copiesShareCompute {
            limits.device = limits.device ?? Int(profile.deviceMemory * 0.5)
            limits.host = limits.host ?? Int(profile.hostMemory * 0.3)
        }
        if offloadDir == nil { limits.disk = 0 }
        var search = PolicySearch(cost: cost, budgets: limits)
        if let batchSize { search.requiredDivisor = batchSize }
        search.allowCompression = backend.compressWeight || backend.compressCache
        let result = try search.search()
        Console.note("--policy auto: \(result.policy.flags) (predicted \(result.prediction.tokensPerSecond.formatted(2)) tokens/s; "
                      + "bottleneck prefill \(result.prediction.prefillBottleneck), decode \(result.prediction.decodeBottleneck))")
        return AutoPolicy(policy: result.policy, prediction: result.prediction)
    }
}

extension PolicyOptions {
    /// The files the disk tier would read: an offload store's decoder-layer tensor files, else
    /// the checkpoint's safetensors (or the GGUF file).
    static func weightFiles(_ model: String) -> [String] {
        if GGUFFile.isGGUF(model) { return [model] }
        if let store = try? OffloadStore(directory: model) {
            // Matrices only: a 4 KiB norm or bias file costs an open and a lone direct read.
            let layers = store.entries.filter { $0.key.contains("layers.") && $0.value.bytes >= 1 << 20 }.map(\.value)
            // In the order written (files are numbered), which is layer order: the order the
            // engine reads them in.
            func index(_ file: String) -> Int { Int(file.split(separator: "/").last?.split(separator: ".").first ?? "") ?? Int.max }
            return layers.sorted { (index($0.file), $0.file) < (index($1.file), $1.file) }.map { store.path(of: $0) }
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: model)) ?? []
        return names.filter { $0.hasSuffix(".safetensors") }.sorted().map { FileSystem.join(model, $0) }
    }
}

/// The policy `--policy auto` chose and what the cost model predicts for it.
struct AutoPolicy {
    var policy: Policy
    var prediction: CostModel.Prediction
}

extension OffloadEngine {
    /// Measured peaks, placed bytes and budgets per tier, as one JSON object.
    var tierReport: JSONValue {
        func tier(_ t: Tier, _ account: MemoryAccount) -> JSONValue {
            let placed = self.placed
            return .object([
                "peak_bytes": .number(Double(account.peak)),
                "budget_bytes": account.budget.map { .number(Double($0)) } ?? .null,
                "placed_weight_bytes": .number(Double(placed.weights[t] ?? 0)),
                "placed_cache_bytes": .number(Double(placed.cache[t] ?? 0)),
                "placed_activation_bytes": .number(Double(placed.activations[t] ?? 0)),
            ])
        }
        return .object(["device": tier(.device, accounts.device), "host": tier(.host, accounts.host), "disk": tier(.disk, accounts.disk),
                        "policy": policy.json])
    }

    /// Over-budget tiers as one error line, or nil.
    var budgetViolation: String? {
        let over = [accounts.device, accounts.host, accounts.disk].filter { $0.excess > 0 }
        guard !over.isEmpty else { return nil }
        return over.map { "\($0.name) tier peaked at \($0.peak) bytes, \($0.excess) over its budget" }.joined(separator: "; ")
    }
}
