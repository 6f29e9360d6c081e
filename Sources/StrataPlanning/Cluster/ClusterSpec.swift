import StrataCore
import StrataRuntime
import Yams
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A heterogeneous cluster and an offline batch job, as `strata cluster plan` reads it (YAML):
///
///     model: opt-30b
///     workload: {global_batch: 32, prompt_len: 512, gen_len: 100}
///     devices:
///       - {type: v100-32g, count: 1}
///       - {type: t4, count: 3, memory: 14GiB}      # memory overrides the profile's
///     links:                                       # default for every pair (bytes/s, s) ...
///       bandwidth: 1.25GB
///       latency: 0.0001
///       pairs:                                     # ... and per pair of device types
///         - {between: [v100-32g, t4], bandwidth: 3GB, latency: 0.00005}
///     theta: 50000
///     bits: [3, 4, 8, 16]
///     omega: indicator.json                        # strata indicator output (else the default)
///     calibration: latencies.json                  # measured layer latencies (LatencyCalibration)
///     kernels: strata                              # or llm-pq, or {8: 1.5, 4: 6} (KernelSet)
///     time_limit: 10                               # seconds per MILP
///     kv_cache_dtype: f16                          # f32 for ranks on Strata's CPU backend
public struct ClusterSpec: Sendable {
    public struct DeviceGroup: Sendable {
        public var type: String
        public var profile: HardwareProfile
        public var count: Int
        public var memory: Double
    }

    public var model: ModelShape
    public var globalBatch: Int
    public var promptLength: Int
    public var genLength: Int
    public var groups: [DeviceGroup]
    public var linkBandwidth: Double
    public var linkLatency: Double
    /// Links between two device types that differ from the default.
    public var pairLinks: [(types: Set<String>, bandwidth: Double, latency: Double)] = []
    public var theta: Double
    public var bits: [Int]
    public var omegaPath: String?
    public var calibrationPath: String?
    public var kernels: KernelSet
    /// Bytes per KV-cache value on the devices: 2 (fp16, LLM-PQ's GPUs) or 4 (Strata's CPU backend).
    public var kvCacheBytes: Double = 2
    public var timeLimit: Double

    /// Device memory as LLM-PQ's evaluation counts it (GiB), used when a spec gives none.
    public static let llmpqMemoryGiB: [String: Double] = [
        "t4": 14.76, "v100-32g": 31.74, "v100-16g": 14.76, "p100-12g": 11.91, "a100-40g": 39.4, "a100-80g": 79.35,
    ]

    /// Bounds on what a spec can ask the planner to enumerate (batch and sequence sizes, devices).
    public static let maxTokens = 1 << 24
    public static let maxDevices = 4096

    public static func load(path: String) throws -> ClusterSpec {
        let data = try TextFile.read(path: path, limit: 1 << 20)
        return try ClusterSpec(yaml: String(decoding: data, as: UTF8.self), path: path)
    }

    public init(yaml: String, path: String) throws {
        let root = try YAMLDocument.load(yaml, path: path)
        guard let map = root as? [String: Any] else { throw StrataError.invalidFile(path: path, detail: "expected a mapping at the top level") }
        func bad(_ detail: String) -> StrataError { .invalidFile(path: path, detail: detail) }
        func number(_ value: Any?, _ field: String) throws -> Double {
            if let d = value as? Double { return d }
            if let i = value as? Int { return Double(i) }
            if let s = value as? String, let d = Double(s) { return d }
            throw bad("field '\(field)' must be a number")
        }
        /// A whole number in 1...limit: a size the planner will loop and allocate over.
        func count(_ value: Any?, _ field: String, limit: Int) throws -> Int {
            let d = try number(value, field)
            guard d.rounded() == d, d >= 1, d <= Double(limit) else { throw bad("field '\(field)' must be a whole number from 1 to \(limit), not \(d)") }
            return Int(d)
        }
        /// A finite number that is positive (or zero where `zero` allows).
        func positive(_ value: Any?, _ field: String, zero: Bool = false) throws -> Double {
            let d = try number(value, field)
            guard d.isFinite, d > 0 || zero && d == 0 else { throw bad("field '\(field)' must be a finite \(zero ? "non-negative" : "positive") number, not \(d)") }
            return d
        }
        func bytes(_ value: Any?, _ field: String) throws -> Double {
            if let s = value as? String {
                do { return Double(try ByteSize.parse(s, option: field)) } catch { throw bad("field '\(field)': '\(s)' is not a size") }
            }
            return try positive(value, field)
        }

        guard let modelName = map["model"] as? String else { throw bad("missing field 'model' (a known architecture or a model directory)") }
        do { model = try ModelShape.named(modelName) } catch let e as StrataError { throw bad("field 'model': \(e)") }
        guard let workload = map["workload"] as? [String: Any] else { throw bad("missing field 'workload' {global_batch, prompt_len, gen_len}") }
        globalBatch = try count(workload["global_batch"], "workload.global_batch", limit: Self.maxTokens)
        promptLength = try count(workload["prompt_len"], "workload.prompt_len", limit: Self.maxTokens)
        genLength = try count(workload["gen_len"], "workload.gen_len", limit: Self.maxTokens)

        guard let devices = map["devices"] as? [Any], !devices.isEmpty else { throw bad("missing field 'devices' (a list of {type, count})") }
        groups = []
        for (i, item) in devices.enumerated() {
            guard let d = item as? [String: Any], let type = d["type"] as? String else {
                throw bad("devices[\(i)] must be a mapping with 'type'")
            }
            let profile: HardwareProfile
            do { profile = try HardwareProfile.named(type) } catch {
                throw bad("devices[\(i)]: unknown device type '\(type)'; known: \(HardwareProfile.builtIn.keys.sorted().joined(separator: ", ")) or a profile file")
            }
            let count = d["count"] == nil ? 1 : try count(d["count"], "devices[\(i)].count", limit: Self.maxDevices)
            guard groups.reduce(count, { $0 + $1.count }) <= Self.maxDevices else { throw bad("more than \(Self.maxDevices) devices in 'devices'") }
            let memory = try d["memory"].map { try bytes($0, "devices[\(i)].memory") }
                ?? (Self.llmpqMemoryGiB[type.lowercased()].map { $0 * 1024 * 1024 * 1024 } ?? profile.deviceMemory)
            groups.append(DeviceGroup(type: type.lowercased(), profile: profile, count: count, memory: memory))
        }
        let links = map["links"] as? [String: Any] ?? [:]
        linkBandwidth = try links["bandwidth"].map { try bytes($0, "links.bandwidth") } ?? 1.25e9
        linkLatency = try links["latency"].map { try positive($0, "links.latency", zero: true) } ?? 1e-4
        for (i, item) in (links["pairs"] as? [Any] ?? []).enumerated() {
            guard let pair = item as? [String: Any], let between = pair["between"] as? [String], between.count == 2 else {
                throw bad("links.pairs[\(i)] needs 'between: [type, type]'")
            }
            let known = Set(groups.map(\.type))
            for t in between where !known.contains(t.lowercased()) {
                throw bad("links.pairs[\(i)] names device type '\(t)', which is not in 'devices'")
            }
            pairLinks.append((Set(between.map { $0.lowercased() }),
                              try pair["bandwidth"].map { try bytes($0, "links.pairs[\(i)].bandwidth") } ?? linkBandwidth,
                              try pair["latency"].map { try positive($0, "links.pairs[\(i)].latency", zero: true) } ?? linkLatency))
        }
        theta = try map["theta"].map { try positive($0, "theta", zero: true) } ?? 50_000
        if let list = map["bits"] {
            guard let b = list as? [Int], !b.isEmpty else { throw bad("field 'bits' must be a list of integers") }
            for v in b where ![2, 3, 4, 8, 16].contains(v) { throw bad("field 'bits' has \(v); allowed: 2, 3, 4, 8, 16") }
            bits = b.sorted()
        } else {
            bits = [3, 4, 8, 16]
        }
        omegaPath = map["omega"] as? String
        calibrationPath = map["calibration"] as? String
        kernels = try KernelSet.parse(map["kernels"], path: path)
        timeLimit = try map["time_limit"].map { try positive($0, "time_limit") } ?? 10
        switch map["kv_cache_dtype"] as? String {
        case nil, "f16", "fp16": kvCacheBytes = 2
        case "f32", "fp32": kvCacheBytes = 4
        default: throw bad("field 'kv_cache_dtype' must be f16 or f32")
        }
    }

    /// Bandwidth (bytes/s) and latency (s) of the link between two device types.
    public func link(_ a: String, _ b: String) -> (bandwidth: Double, latency: Double) {
        let key: Set<String> = [a, b]
        if let l = pairLinks.first(where: { $0.types == key }) { return (l.bandwidth, l.latency) }
        return (linkBandwidth, linkLatency)
    }

    /// One entry per physical device, in spec order.
    public var devices: [DeviceGroup] { groups.flatMap { g in Array(repeating: g, count: g.count) } }
    public var workload: Workload { Workload(promptLength: promptLength, genLength: genLength) }
}
