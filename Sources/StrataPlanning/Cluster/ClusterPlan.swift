import StrataCore

/// A pipeline plan: which device runs which contiguous layers at which bit widths, with the
/// prefill and decode micro-batch sizes, and what the model and the simulator predict.
public struct ClusterPlan: Sendable {
    public struct Stage: Sendable {
        public var device: Int
        public var type: String
        public var layers: Range<Int>
        public var bits: [Int]
        public var memoryBytes: Double
        public var capacityBytes: Double
        public var prefillSeconds: Double
        public var decodeSeconds: Double
    }

    public var method: String
    public var stages: [Stage]
    public var eta: Int
    public var xi: Int
    public var modelSeconds: Double
    public var simulatedSeconds: Double
    /// When the last prefill micro-batch leaves the last stage (simulated); decode is the rest.
    public var simulatedPrefillSeconds: Double
    public var qualityPenalty: Double
    public var solveSeconds: Double
    public var globalBatch: Int
    public var promptLength: Int
    public var genLength: Int

    public var throughput: Double { Double(globalBatch * genLength) / simulatedSeconds }

    /// Per-layer bits, as a precision map (the compression issue's format).
    public var precisionMap: PrecisionMap {
        var bits: [Int: Int] = [:]
        for s in stages { for (i, l) in s.layers.enumerated() { bits[l] = s.bits[i] } }
        return PrecisionMap(bits: bits)
    }

    public var json: JSONValue {
        .object([
            "method": .string(method), "eta": .number(Double(eta)), "xi": .number(Double(xi)),
            "throughput_tokens_per_s": .number(throughput), "solve_seconds": .number(solveSeconds),
            "model_seconds": .number(modelSeconds), "simulated_seconds": .number(simulatedSeconds),
            "prefill_seconds": .number(simulatedPrefillSeconds), "decode_seconds": .number(simulatedSeconds - simulatedPrefillSeconds),
            "quality_penalty": .number(qualityPenalty),
            "global_batch": .number(Double(globalBatch)), "prompt_length": .number(Double(promptLength)),
            "gen_length": .number(Double(genLength)),
            "precision_map": precisionMap.json,
            "stages": .array(stages.map { s in
                .object([
                    "device": .string(s.type), "device_index": .number(Double(s.device)),
                    "layers": .array([.number(Double(s.layers.lowerBound)), .number(Double(s.layers.upperBound))]),
                    "bits": .array(s.bits.map { .number(Double($0)) }),
                    "memory_bytes": .number(s.memoryBytes), "memory_capacity_bytes": .number(s.capacityBytes),
                    "prefill_seconds_per_micro_batch": .number(s.prefillSeconds),
                    "decode_seconds_per_micro_batch": .number(s.decodeSeconds),
                ])
            }),
        ])
    }
}
