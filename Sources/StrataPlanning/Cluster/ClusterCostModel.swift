import StrataCore
import StrataRuntime

/// LLM-PQ's per-layer cost tables for one cluster: latency per (device, bits, phase),
/// memory per (layer, bits), communication per stage boundary, and the quality indicator.
public struct ClusterCostModel: Sendable {
    public let spec: ClusterSpec
    public let devices: [ClusterSpec.DeviceGroup]
    /// omega[layer][index of bits in spec.bits]
    public let omega: [[Double]]
    public let omegaSource: String
    public let calibration: LatencyCalibration

    /// Memory a device keeps back for the runtime (CUDA context, allocator slack), as LLM-PQ does.
    public static let runtimeReserve = 1.0 * 1024 * 1024 * 1024
    public static let usableFraction = 0.95

    /// Published single-layer OPT-30B latencies (batch 8; prefill s=512, decode at past 512),
    /// LLM-PQ's profiles: the analytic model is scaled to them for these devices.
    static let published: [String: (prefill: Double, decode: Double)] = ["v100-32g": (0.07781, 0.00318), "p100-12g": (1.13073, 0.02316)]

    public init(spec: ClusterSpec) throws {
        self.spec = spec
        devices = spec.devices
        calibration = try spec.calibrationPath.map { try LatencyCalibration(path: $0) } ?? LatencyCalibration()
        let layers = spec.model.layers
        if let path = spec.omegaPath {
            let indicator = try QualityIndicator.load(path: path)
            guard indicator.omega.count == layers else {
                throw StrataError.invalidFile(path: path, detail: "indicator has \(indicator.omega.count) layers, the model has \(layers)")
            }
            omega = try (0..<layers).map { l in
                try spec.bits.map { b in
                    guard let v = indicator.omega(layer: l, bits: b) else {
                        throw StrataError.invalidFile(path: path, detail: "indicator has no omega for \(b) bits")
                    }
                    return v
                }
            }
            omegaSource = path
        } else {
            omega = Array(repeating: spec.bits.map(Self.defaultOmega), count: layers)
            omegaSource = "default: 1 / (2^(b-1) - 1)^2 per layer (the variance indicator with unit weight range and input variance)"
        }
    }

    /// The documented default indicator: LLM-PQ's formula with the weight range and input
    /// variance set to 1, so only the bit width matters (16 bits is essentially free).
    public static func defaultOmega(_ bits: Int) -> Double {
        let s = 1 / Double((1 << (bits - 1)) - 1)
        return s * s
    }

    // MARK: Memory

    /// Bytes of one decoder layer's weights at `bits` (LLM-PQ: attention 4h^2 + FFN 2 h h2,
    /// times bits / 8; below 16 bits each group of 64 adds an f16 step and minimum).
    public func layerWeightBytes(bits: Int) -> Double {
        let params = spec.model.layerParameters
        return params * Double(bits) / 8 + (bits < 16 ? params / 64 * 4 : 0)
    }

    /// KV cache of one layer for the whole global batch over s + n tokens (keys and values, at
    /// the spec's `kv_cache_dtype`).
    public var layerCacheBytes: Double {
        Double(spec.globalBatch) * Double(spec.model.kvWidth) * Double(spec.promptLength + spec.genLength) * 2 * spec.kvCacheBytes
    }

    public func layerBytes(bits: Int) -> Double { layerWeightBytes(bits: bits) + layerCacheBytes }

    /// The first stage also holds the embeddings, LM head and prefill temporaries.
    public func firstStageExtra(microBatch: Int) -> Double {
        let m = spec.model
        return m.embeddingBytes + 2 * Double(microBatch * spec.promptLength) * Double(m.hidden + m.vocab) * 2
    }

    public func capacity(_ device: Int) -> Double { devices[device].memory * Self.usableFraction - Self.runtimeReserve }

    // MARK: Latency

    /// Seconds for one layer on `device` at `bits`: prefill of a micro-batch of `batch`
    /// sequences over s tokens, or one decode step of `batch` sequences at the mean context.
    /// Roofline: compute at the profile's GEMM rate or weight streaming at its memory bandwidth,
    /// plus attention, plus on-the-fly dequantization below 16 bits; or, where the spec's kernel
    /// set says so, the fp16 GEMM time times that width's slowdown.
    public func latency(device: Int, bits: Int, prefill: Bool, batch: Int) -> Double {
        if let fitted = calibration.latency(device: devices[device].type, bits: bits, prefill: prefill, batch: batch,
                                            prompt: spec.promptLength, generated: Double(spec.genLength) / 2) {
            return fitted
        }
        let p = devices[device].profile, m = spec.model
        let s = Double(spec.promptLength), ctx = s + Double(spec.genLength) / 2
        let b = Double(batch), h = Double(m.hidden)
        let weights = layerWeightBytes(bits: bits)
        // Below 16 bits a fused kernel decodes the weights on the fly: modelled as one extra
        // pass over half the fp16 bytes at memory speed (decode stays memory-bound, so fewer
        // bits read fewer bytes; the decode work is what keeps 4-bit from being 4x faster).
        let dequant = bits < 16 ? m.layerParameters / p.deviceMemoryBandwidth : 0
        let tokens = prefill ? s : 1
        let linear = spec.kernels.slowdown[bits].map {
            // A runtime whose kernel at this width is a fixed factor off its fp16 GEMM.
            $0 * Self.linearRoofline(p, parameters: m.layerParameters, batch: b, tokens: tokens, bytes: layerWeightBytes(bits: 16), prefill: prefill)
        } ?? Self.linearRoofline(p, parameters: m.layerParameters, batch: b, tokens: tokens, bytes: weights, prefill: prefill) + dequant
        let attention = Self.attention(p, batch: b, tokens: tokens, context: prefill ? s : ctx, hidden: h, prefill: prefill)
        return (linear + attention) * calibration(device: device, prefill: prefill)
    }

    /// Seconds rank 0 (the first stage) spends on the LM head for a micro-batch: LLM-PQ's first
    /// stage also holds the embeddings, LM head and sampling, so a slow first device slows
    /// every token. Only the last position's logits are needed in both phases.
    public func headLatency(device: Int, prefill: Bool, batch: Int) -> Double {
        if let fitted = calibration.headLatency(device: devices[device].type, batch: batch) { return fitted }
        let p = devices[device].profile, m = spec.model
        let params = Double(m.vocab * m.hidden)
        return Self.linearRoofline(p, parameters: params, batch: Double(batch), tokens: 1, bytes: 2 * params, prefill: prefill)
            * calibration(device: device, prefill: false)
    }

    /// Scale from the analytic model to LLM-PQ's published profile for this device type (1 when
    /// none is published): the ratio at the published point (OPT-30B layer, batch 8, fp16).
    func calibration(device: Int, prefill: Bool) -> Double {
        guard let measured = Self.published[devices[device].type] else { return 1 }
        let p = devices[device].profile
        let h = 7168.0, params = 4 * h * h + 2 * h * 28672, s = 512.0, b = 8.0
        let tokens = prefill ? s : 1
        let analytic = Self.linearRoofline(p, parameters: params, batch: b, tokens: tokens, bytes: 2 * params, prefill: prefill)
            + Self.attention(p, batch: b, tokens: tokens, context: s, hidden: h, prefill: prefill)
        return (prefill ? measured.prefill : measured.decode) / analytic
    }

    /// A linear part's seconds: `2 * parameters` flops per token at the profile's GEMM rate for
    /// the phase, or streaming `bytes` of weights at memory speed, whichever is slower.
    static func linearRoofline(_ p: HardwareProfile, parameters: Double, batch: Double, tokens: Double, bytes: Double, prefill: Bool) -> Double {
        max(2 * parameters * batch * tokens / (prefill ? p.mmPrefill : p.mmDecode), bytes / p.deviceMemoryBandwidth)
    }

    /// Attention's seconds: scores and weighted sum, 4 flops per (query token, context token,
    /// hidden unit), at the profile's batched-GEMM rate for the phase.
    static func attention(_ p: HardwareProfile, batch: Double, tokens: Double, context: Double, hidden: Double, prefill: Bool) -> Double {
        4 * batch * tokens * context * hidden / (prefill ? p.bmmPrefill : p.bmmDecode)
    }

    /// Seconds to send a micro-batch's fp16 hidden states from device `from` to device `to`.
    public func communication(from: Int, to: Int, prefill: Bool, batch: Int) -> Double {
        let tokens = prefill ? Double(batch * spec.promptLength) : Double(batch)
        let link = spec.link(devices[from].type, devices[to].type)
        return link.latency + tokens * Double(spec.model.hidden) * 2 / link.bandwidth
    }

    /// Per stage boundary of a device order: stage j -> j+1, and (last entry) the last stage
    /// back to the first, which decode's ring uses.
    public func boundaries(_ order: [Int], prefill: Bool, batch: Int) -> [Double] {
        order.indices.map { j in communication(from: order[j], to: order[(j + 1) % order.count], prefill: prefill, batch: batch) }
    }
}
