import StrataCore
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What the cost model needs to know about a machine: tier capacities, link bandwidths and
/// compute rates, named as in FlexGen's cost model (c = CPU/host, g = GPU/device, d = disk).
/// Bandwidths in bytes/s, rates in FLOP/s, capacities in bytes.
public struct HardwareProfile: Sendable, Equatable {
    public var name: String
    /// Where the numbers come from (measured, fitted, datasheet).
    public var source: String
    public var deviceMemory: Double
    public var hostMemory: Double
    public var diskCapacity: Double
    /// host -> device (weights, hidden states, cache).
    public var ctog: Double
    public var gtocCache: Double
    public var gtocHidden: Double
    /// disk -> host and host -> disk.
    public var dtoc: Double
    public var ctodCache: Double
    public var ctodHidden: Double
    /// Device GEMM and batched-matmul (attention) rates, prefill and decode.
    public var mmPrefill: Double
    public var mmDecode: Double
    public var bmmPrefill: Double
    public var bmmDecode: Double
    /// Host attention rate (FlexGen's F_cpu), used when attention is delegated to the host.
    public var cpu: Double
    /// Dequantization throughput on the device, compressed bytes per second.
    public var dequantize: Double
    /// Sustained device memory bandwidth: a decode GEMM streams every weight byte once per step,
    /// so small batches are bandwidth-bound (FlexGen's single F_mm_gen cannot see this).
    public var deviceMemoryBandwidth: Double
    /// True when host<->device copies use the same cores as compute (a CPU-only machine, where
    /// the "device" is RAM): copies then add to compute time instead of overlapping with it.
    /// Disk reads still overlap there: they block in the kernel, not on a core.
    public var copiesShareCompute: Bool
    /// How much of the shorter of disk I/O and compute fails to overlap the longer when both
    /// run at once (0: perfect overlap, FlexGen's assumption; 1: none). On a small VM the direct
    /// reads' system time and interrupts take the compute cores; `strata profile` measures it.
    public var diskComputeContention: Double = 0

    static let gib = 1024.0 * 1024 * 1024
    static let tera = 1e12

    /// FlexGen's fitted T4 machine (ICML 2023 code, cost_model.py constants): 16 GB T4, 208 GB
    /// RAM, 1.5 TB NVMe. GB = 2^30, T = 10^12, verbatim. Two numbers FlexGen's model lacks are
    /// added: device memory bandwidth (T4 datasheet 320 GB/s x 0.75 sustained) and 4-bit
    /// dequantization throughput (3 GiB/s of compressed bytes, fitted to FlexGen's published
    /// OPT-175B 4-bit run, whose dequantization is unfused PyTorch ops).
    public static let t4 = HardwareProfile(
        name: "t4", source: "FlexGen fitted constants (T4 16 GB, 208 GB RAM, 1.5 TB NVMe)",
        deviceMemory: 15 * gib, hostMemory: 200 * gib, diskCapacity: 1500 * gib,
        ctog: 12.89 * gib, gtocCache: 0.97 * gib, gtocHidden: 4.82 * gib, dtoc: 0.473 * gib, ctodCache: 0.746 * gib,
        ctodHidden: 2.015 * gib, mmPrefill: 21.24 * tera, mmDecode: 4.3 * tera, bmmPrefill: 9.97 * tera, bmmDecode: 0.079 * tera,
        cpu: 0.0123 * tera, dequantize: 3.0 * gib, deviceMemoryBandwidth: 0.75 * 320e9, copiesShareCompute: false)

    /// Datasheet-derived profile: FlexGen's T4 efficiencies scaled by the GPU's fp16 tensor
    /// peak (prefill GEMM, prefill attention), memory bandwidth (decode, which is
    /// bandwidth-bound) and PCIe generation (links); host, disk and CPU rates stay the T4
    /// machine's (a typical host).
    static func datasheet(_ name: String, label: String, memoryGiB: Double, fp16Tera: Double, memoryBandwidthGB: Double,
                          pcieGen: Int) -> HardwareProfile {
        var p = t4
        let peak = fp16Tera / 65, bandwidth = memoryBandwidthGB / 320, link = Double(1 << (pcieGen - 3))
        p.name = name
        p.source = "datasheet: \(label), \(fp16Tera) TFLOPS fp16 tensor, \(memoryBandwidthGB) GB/s HBM/GDDR, PCIe \(pcieGen).0 x16; T4 fitted efficiencies"
        p.deviceMemory = memoryGiB * gib
        p.ctog *= link; p.gtocCache *= link; p.gtocHidden *= link
        p.mmPrefill *= peak; p.bmmPrefill *= peak
        p.mmDecode *= bandwidth; p.bmmDecode *= bandwidth
        p.dequantize *= bandwidth
        p.deviceMemoryBandwidth = 0.75 * memoryBandwidthGB * 1e9
        return p
    }

    public static let builtIn: [String: HardwareProfile] = {
        var all: [String: HardwareProfile] = ["t4": t4]
        for p in [
            datasheet("v100-32g", label: "NVIDIA V100 SXM2 32 GB", memoryGiB: 31.74, fp16Tera: 125, memoryBandwidthGB: 900, pcieGen: 3),
            datasheet("p100-12g", label: "NVIDIA P100 PCIe 12 GB", memoryGiB: 11.91, fp16Tera: 18.7, memoryBandwidthGB: 549, pcieGen: 3),
            datasheet("a100-40g", label: "NVIDIA A100 40 GB", memoryGiB: 39.4, fp16Tera: 312, memoryBandwidthGB: 1555, pcieGen: 4),
            datasheet("a100-80g", label: "NVIDIA A100 80 GB", memoryGiB: 79.35, fp16Tera: 312, memoryBandwidthGB: 2039, pcieGen: 4),
            datasheet("h100", label: "NVIDIA H100 SXM 80 GB", memoryGiB: 79.0, fp16Tera: 989, memoryBandwidthGB: 3350, pcieGen: 5),
            datasheet("h200", label: "NVIDIA H200 141 GB", memoryGiB: 139.0, fp16Tera: 989, memoryBandwidthGB: 4800, pcieGen: 5),
        ] { all[p.name] = p }
        return all
    }()

    /// A built-in name or a profile JSON file.
    public static func named(_ nameOrPath: String) throws -> HardwareProfile {
        if let p = builtIn[nameOrPath.lowercased()] { return p }
        guard FileSystem.exists(nameOrPath) else {
            throw StrataError.invalidRequest("unknown hardware '\(nameOrPath)': give a profile file or one of \(builtIn.keys.sorted().joined(separator: ", "))")
        }
        return try HardwareProfile(json: JSONValue.load(path: nameOrPath), path: nameOrPath)
    }

    nonisolated(unsafe) static let fields: [(String, WritableKeyPath<HardwareProfile, Double>)] = [
        ("device_memory_bytes", \.deviceMemory), ("host_memory_bytes", \.hostMemory), ("disk_capacity_bytes", \.diskCapacity),
        ("ctog_bytes_per_s", \.ctog), ("gtoc_cache_bytes_per_s", \.gtocCache), ("gtoc_hidden_bytes_per_s", \.gtocHidden),
        ("dtoc_bytes_per_s", \.dtoc), ("ctod_cache_bytes_per_s", \.ctodCache), ("ctod_hidden_bytes_per_s", \.ctodHidden),
        ("mm_prefill_flops", \.mmPrefill), ("mm_decode_flops", \.mmDecode), ("bmm_prefill_flops", \.bmmPrefill),
        ("bmm_decode_flops", \.bmmDecode), ("cpu_flops", \.cpu), ("dequantize_bytes_per_s", \.dequantize),
        ("device_memory_bandwidth_bytes_per_s", \.deviceMemoryBandwidth),
    ]

    public var json: JSONValue {
        var o: [String: JSONValue] = ["format": .string("strata-hardware-profile"), "name": .string(name), "source": .string(source),
                                      "copies_share_compute": .bool(copiesShareCompute),
                                      "disk_compute_contention": .number(diskComputeContention)]
        for (key, path) in Self.fields { o[key] = .number(self[keyPath: path]) }
        return .object(o)
    }

    public init(json: JSONValue, path: String) throws {
        let f = try JSONFields(json, path: path)
        self = Self.t4
        name = try f.string("name", default: "custom") ?? "custom"
        source = try f.string("source", default: path) ?? path
        copiesShareCompute = try f.bool("copies_share_compute", default: false)
        diskComputeContention = try f.double("disk_compute_contention", default: 0)
        guard (0...1).contains(diskComputeContention) else { throw f.wrong("disk_compute_contention", "a number in 0...1") }
        for (key, keyPath) in Self.fields {
            let v = try f.double(key)
            guard v > 0, v.isFinite else { throw f.wrong(key, "a positive number") }
            self[keyPath: keyPath] = v
        }
    }

    /// Weight-GEMM rate for `rows` rows: the profile measures 16 rows (mmDecode) and 512 rows
    /// (mmPrefill); between them the rate is interpolated in log(rows) (what `strata bench-gemm`
    /// shows: each doubling of rows gains a similar factor until the cores are saturated), and
    /// held at the nearer measurement outside.
    public func gemmRate(rows: Double) -> Double {
        let low = 16.0, high = 512.0
        if rows >= high || mmPrefill <= mmDecode { return mmPrefill }
        if rows <= low { return mmDecode }
        let t = log2(rows / low) / log2(high / low)
        return mmDecode * pow(mmPrefill / mmDecode, t)
    }

    init(name: String, source: String, deviceMemory: Double, hostMemory: Double, diskCapacity: Double, ctog: Double, gtocCache: Double,
         gtocHidden: Double, dtoc: Double, ctodCache: Double, ctodHidden: Double, mmPrefill: Double, mmDecode: Double,
         bmmPrefill: Double, bmmDecode: Double, cpu: Double, dequantize: Double, deviceMemoryBandwidth: Double, copiesShareCompute: Bool,
         diskComputeContention: Double = 0) {
        self.diskComputeContention = diskComputeContention
        self.name = name; self.source = source; self.deviceMemory = deviceMemory; self.hostMemory = hostMemory
        self.diskCapacity = diskCapacity; self.ctog = ctog; self.gtocCache = gtocCache; self.gtocHidden = gtocHidden; self.dtoc = dtoc
        self.ctodCache = ctodCache; self.ctodHidden = ctodHidden; self.mmPrefill = mmPrefill; self.mmDecode = mmDecode
        self.bmmPrefill = bmmPrefill; self.bmmDecode = bmmDecode; self.cpu = cpu; self.dequantize = dequantize
        self.deviceMemoryBandwidth = deviceMemoryBandwidth
        self.copiesShareCompute = copiesShareCompute
    }
}
