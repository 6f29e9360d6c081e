import StrataCore

/// How fast a serving runtime's quantized linear kernels are against its own fp16 GEMM. The
/// cluster planner's answer depends on it more than on anything else: when low bit widths are
/// cheap (a fused dequantize-GEMM, decode bound by weight bytes), a uniformly quantized
/// pipeline is nearly as fast as a mixed one and quality is bought with time; when they are
/// slow (LLM-PQ's runtime), every layer kept at 16 bits is also a faster layer.
///
/// A spec picks one with `kernels: strata` (the default), `kernels: llm-pq`, or a mapping of
/// bit widths to factors, e.g. `kernels: {8: 1.5, 4: 6, 3: 6}`.
public struct KernelSet: Sendable, Equatable {
    public var name: String
    /// bits -> seconds of a quantized layer's linear part over seconds of the fp16 GEMM of the
    /// same shape (both phases). Bit widths not listed use the analytic roofline: weight
    /// bytes at that width plus one dequantization pass (`ClusterCostModel.latency`).
    public var slowdown: [Int: Double]

    public init(name: String, slowdown: [Int: Double]) {
        self.name = name
        self.slowdown = slowdown
    }

    /// Strata's own kernels as the analytic model describes them: a fused dequantize-GEMM, so
    /// lower bits read fewer bytes and pay one decode pass.
    public static let strata = KernelSet(name: "strata", slowdown: [:])

    /// LLM-PQ's runtime: 8-bit layers through an LLM.int8-style matmul (activation
    /// quantization and an fp16 outlier path around an int8 GEMM), 3- and 4-bit layers through
    /// GPTQ-style kernels written for matrix-vector products. The reference publishes no
    /// per-bit layer timings, so the two factors are fitted to its worked example (cluster 3,
    /// simulated end-to-end, as Strata's planner reproduces the three plans): the int8 factor
    /// by least squares on the logs of LLM-PQ's 58.8 s and PipeEdge's (uniform 8 bits) 104.6 s,
    /// landing at 64.4 s and 98.3 s; the low-bit factor on Uniform's (4 bits) 919 s, landing at
    /// 917 s. `ClusterTests` keeps the three within 10%; BENCHMARKS.md sets the unfitted
    /// numbers (AdaBits, the measured clusters 4, 6 and 10) beside them.
    public static let llmpq = KernelSet(name: "llm-pq", slowdown: [8: llmpqInt8, 4: llmpqLowBit, 3: llmpqLowBit, 2: llmpqLowBit])
    static let llmpqInt8 = 2.6
    static let llmpqLowBit = 21.3

    public static let builtIn: [String: KernelSet] = ["strata": .strata, "llm-pq": .llmpq]

    /// The `kernels:` value of a cluster spec: a built-in name or a {bits: factor} mapping.
    static func parse(_ value: Any?, path: String) throws -> KernelSet {
        guard let value else { return .strata }
        if let name = value as? String {
            guard let k = builtIn[name.lowercased()] else {
                throw StrataError.invalidFile(path: path, detail: "field 'kernels': unknown kernel set '\(name)'; known: \(builtIn.keys.sorted().joined(separator: ", ")) or a {bits: factor} mapping")
            }
            return k
        }
        guard let map = value as? [AnyHashable: Any] else {
            throw StrataError.invalidFile(path: path, detail: "field 'kernels' must be a name or a mapping of bit widths to slowdown factors")
        }
        var slowdown: [Int: Double] = [:]
        for (key, factor) in map {
            guard let bits = (key as? Int) ?? (key as? String).flatMap({ Int($0) }), [2, 3, 4, 8].contains(bits) else {
                throw StrataError.invalidFile(path: path, detail: "field 'kernels': key '\(key)' is not a bit width below 16 (2, 3, 4, 8)")
            }
            guard let f = (factor as? Double) ?? (factor as? Int).map(Double.init), f > 0 else {
                throw StrataError.invalidFile(path: path, detail: "field 'kernels.\(bits)' must be a positive number")
            }
            slowdown[bits] = f
        }
        return KernelSet(name: "custom", slowdown: slowdown)
    }
}
