import StrataCore

/// The three memory tiers a tensor can live on. On the CPU backend `device` is a budgeted
/// arena in RAM (what the compute reads), `host` is RAM the compute does not read directly,
/// `disk` is files in the offload directory.
public enum Tier: String, Sendable, CaseIterable, Comparable {
    case device, host, disk
    public static func < (a: Tier, b: Tier) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

/// Percentages of something (weights, KV cache, activations) on device and host; the rest is on
/// disk.
public struct TierSplit: Sendable, Equatable {
    public var device: Double
    public var host: Double
    /// The rest; a remainder within 1e-9 of zero (percentages summed in floating point) is zero.
    public var disk: Double {
        let rest = 100 - device - host
        return rest <= 1e-9 ? 0 : rest
    }

    public init(device: Double, host: Double) {
        self.device = device
        self.host = host
    }

    public static let allDevice = TierSplit(device: 100, host: 0)

    func validate(_ what: String) throws {
        for (name, v) in [("device", device), ("host", host)] where !(0...100).contains(v) || !v.isFinite {
            throw StrataError.invalidRequest("\(what) \(name) percentage \(v) is outside 0...100")
        }
        if device + host > 100 + 1e-9 {
            throw StrataError.invalidRequest("\(what) percentages sum to \(device + host) (device \(device) + host \(host)), over 100")
        }
    }

    /// Splits `count` units into device, host and disk counts that sum to `count`, with the
    /// device and host shares rounded to the nearest unit.
    public func apportion(_ count: Int) -> (device: Int, host: Int, disk: Int) {
        let d = min(count, Int((Double(count) * device / 100).rounded()))
        let h = min(count - d, Int((Double(count) * (device + host) / 100).rounded()) - d)
        return (d, max(0, h), count - d - max(0, h))
    }
}

/// Everything that decides how a batch job runs on limited memory (FlexGen's policy, plus
/// activations split across tiers). The runtime only executes it.
public struct Policy: Sendable, Equatable {
    /// Sequences computed together on the device.
    public var gpuBatchSize: Int
    /// GPU batches per block; a layer's weights are loaded once per block.
    public var numGPUBatches: Int
    public var weights: TierSplit
    public var cache: TierSplit
    public var activations: TierSplit
    /// Overlap weight/cache/activation transfers with compute (double buffering).
    public var overlap: Bool
    /// Attend to host-resident KV cache where it lives instead of moving it to the device.
    public var cpuAttention: Bool
    /// Host buffers for transfers are page-locked (GPU backends; a no-op on the CPU backend).
    public var pinned: Bool
    public var compressWeight: Bool
    public var compressCache: Bool

    public init(gpuBatchSize: Int = 1, numGPUBatches: Int = 1, weights: TierSplit = .allDevice, cache: TierSplit = .allDevice,
                activations: TierSplit = .allDevice, overlap: Bool = true, cpuAttention: Bool = false, pinned: Bool = true,
                compressWeight: Bool = false, compressCache: Bool = false) {
        self.gpuBatchSize = gpuBatchSize
        self.numGPUBatches = numGPUBatches
        self.weights = weights
        self.cache = cache
        self.activations = activations
        self.overlap = overlap
        self.cpuAttention = cpuAttention
        self.pinned = pinned
        self.compressWeight = compressWeight
        self.compressCache = compressCache
    }

    /// Sequences per block.
    public var blockSize: Int { gpuBatchSize * numGPUBatches }

    /// FlexGen's `--percent WG WC CG CC HG HC`.
    public var percent: [Double] {
        [weights.device, weights.host, cache.device, cache.host, activations.device, activations.host]
    }

    public init(percent: [Double], gpuBatchSize: Int, numGPUBatches: Int) throws {
        guard percent.count == 6 else {
            throw StrataError.invalidRequest("--percent takes six numbers (WG WC CG CC HG HC), got \(percent.count)")
        }
        self.init(gpuBatchSize: gpuBatchSize, numGPUBatches: numGPUBatches,
                  weights: TierSplit(device: percent[0], host: percent[1]), cache: TierSplit(device: percent[2], host: percent[3]),
                  activations: TierSplit(device: percent[4], host: percent[5]))
    }

    public func validate() throws {
        guard gpuBatchSize >= 1 else { throw StrataError.invalidRequest("gpu batch size must be at least 1, not \(gpuBatchSize)") }
        guard numGPUBatches >= 1 else { throw StrataError.invalidRequest("number of gpu batches must be at least 1, not \(numGPUBatches)") }
        try weights.validate("weight")
        try cache.validate("cache")
        try activations.validate("activation")
    }

    /// Checks that `batch` sequences split into whole blocks.
    public func validate(batchSize batch: Int) throws {
        if batch % blockSize != 0 {
            throw StrataError.invalidRequest(
                "batch size \(batch) is not divisible by the block size \(blockSize) (gpu batch size \(gpuBatchSize) x \(numGPUBatches) gpu batches)")
        }
    }

    public var json: JSONValue {
        .object([
            "gpu_batch_size": .number(Double(gpuBatchSize)), "num_gpu_batches": .number(Double(numGPUBatches)),
            "percent": .array(percent.map { .number($0) }), "overlap": .bool(overlap), "cpu_attention": .bool(cpuAttention),
            "pin_weight": .bool(pinned), "compress_weight": .bool(compressWeight), "compress_cache": .bool(compressCache),
        ])
    }

    public init(json: JSONValue, path: String) throws {
        let f = try JSONFields(json, path: path)
        guard let list = f.object["percent"]?.array else { throw f.missing("percent") }
        let percent = try list.enumerated().map { i, v -> Double in
            guard let d = v.double else { throw f.wrong("percent[\(i)]", "a number") }
            return d
        }
        do {
            try self.init(percent: percent, gpuBatchSize: f.int("gpu_batch_size", default: 1),
                          numGPUBatches: f.int("num_gpu_batches", default: 1))
            overlap = try f.bool("overlap", default: true)
            cpuAttention = try f.bool("cpu_attention", default: false)
            pinned = try f.bool("pin_weight", default: true)
            compressWeight = try f.bool("compress_weight", default: false)
            compressCache = try f.bool("compress_cache", default: false)
            try validate()
        } catch StrataError.invalidRequest(let detail) {
            throw StrataError.invalidFile(path: path, detail: detail)
        }
    }

    public static func load(path: String) throws -> Policy { try Policy(json: JSONValue.load(path: path), path: path) }

    /// The policy in `strata generate` flags.
    public var flags: String {
        func n(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : String(v) }
        var s = "--percent \(percent.map(n).joined(separator: " ")) --gpu-batch-size \(gpuBatchSize) --num-gpu-batches \(numGPUBatches)"
        if !overlap { s += " --overlap false" }
        if cpuAttention { s += " --cpu-attention" }
        if compressWeight { s += " --compress-weight" }
        if compressCache { s += " --compress-cache" }
        return s
    }
}

/// Byte sizes as users write them: `16GiB`, `512MiB`, `4G`, `1000000`.
public enum ByteSize {
    public static func parse(_ text: String, option: String) throws -> Int {
        let ki = 1024.0, mi = ki * ki, gi = mi * ki, ti = gi * ki
        let units: [(String, Double)] = [("KIB", ki), ("MIB", mi), ("GIB", gi), ("TIB", ti), ("KB", 1e3), ("MB", 1e6),
                                         ("GB", 1e9), ("TB", 1e12), ("K", ki), ("M", mi), ("G", gi), ("T", ti), ("B", 1)]
        let upper = text.uppercased()
        for (suffix, scale) in units where upper.hasSuffix(suffix) {
            if let v = Double(upper.dropLast(suffix.count)), v >= 0 { return Int(v * scale) }
        }
        if let v = Int(text), v >= 0 { return v }
        throw StrataError.invalidRequest("\(option) '\(text)' is not a size (e.g. 16GiB, 512MiB, 1000000)")
    }

    public static func format(_ bytes: Int) -> String {
        let b = Double(bytes), mi = 1024.0 * 1024, gi = mi * 1024
        if b >= gi { return String(Double(Int(b / gi * 100)) / 100) + " GiB" }
        if b >= mi { return String(Double(Int(b / mi * 100)) / 100) + " MiB" }
        return "\(bytes) B"
    }
}
