import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime

/// The shape numbers the cost model needs, from config.json or a known architecture name.
public struct ModelShape: Sendable {
    public var name: String
    public var layers: Int
    public var hidden: Int
    public var ffn: Int
    public var heads: Int
    public var kvWidth: Int
    public var vocab: Int
    public var gated: Bool

    public init(config c: ModelConfig, name: String) {
        self.name = name
        layers = c.numLayers; hidden = c.hiddenSize; ffn = c.intermediateSize; heads = c.numHeads
        kvWidth = c.numKVHeads * c.headDim; vocab = c.vocabSize; gated = c.family == .llama
    }

    /// Shapes the planners know but the runtime does not run (BLOOM uses ALiBi attention).
    static let planningOnly: [String: ModelShape] = [
        "bloom-176b": ModelShape(name: "bloom-176b", layers: 70, hidden: 14336, ffn: 57344, heads: 112, kvWidth: 14336, vocab: 250880,
                                 gated: false),
    ]

    public init(name: String, layers: Int, hidden: Int, ffn: Int, heads: Int, kvWidth: Int, vocab: Int, gated: Bool) {
        self.name = name; self.layers = layers; self.hidden = hidden; self.ffn = ffn; self.heads = heads
        self.kvWidth = kvWidth; self.vocab = vocab; self.gated = gated
    }

    /// A known architecture (`opt-30b`, `llama-2-70b`, `bloom-176b`, ...), a model directory or
    /// a GGUF file.
    public static func named(_ nameOrDirectory: String) throws -> ModelShape {
        if let shape = planningOnly[nameOrDirectory.lowercased()] { return shape }
        if GGUFFile.isModel(nameOrDirectory) {
            return ModelShape(config: try ModelConfig(directory: nameOrDirectory), name: nameOrDirectory)
        }
        let config = try ModelConfig(json: KnownArchitectures.config(nameOrDirectory), path: nameOrDirectory)
        return ModelShape(config: config, name: nameOrDirectory)
    }

    /// Parameters of one decoder layer's matrices.
    public var layerParameters: Double {
        let h = Double(hidden), kv = Double(kvWidth)
        return 2 * h * h + 2 * h * kv + (gated ? 3 : 2) * h * Double(ffn)
    }
    /// Layer weight bytes at 16 bits (FlexGen's wi = 8 h1^2 + 4 h1 h2 for OPT).
    public var layerWeightBytes: Double { 2 * layerParameters }
    /// KV cache bytes per token per layer at 16 bits (FlexGen's 4 h1 for full attention).
    public var kvBytesPerToken: Double { 4 * Double(kvWidth) }
    public var embeddingBytes: Double { 2 * Double(vocab * hidden) * (gated ? 2 : 1) }
}

/// What a run is asked to do.
public struct Workload: Sendable {
    public var promptLength: Int
    public var genLength: Int
    public init(promptLength: Int, genLength: Int) { self.promptLength = promptLength; self.genLength = genLength }
}

/// FlexGen's cost model (ICML 2023, section 4 and its cost_model.py): per-layer prefill and
/// decode times as maxima of transfer and compute terms, and peak memory per tier, extended
/// with compressed weights and cache (4-bit group-wise: fewer bytes plus dequantization
/// time), host attention delegation as an explicit choice, activations split across tiers,
/// and CPU-only machines (the device is RAM, so host<->device copies cost compute time).
public struct CostModel: Sendable {
    public let model: ModelShape
    public let profile: HardwareProfile
    public let workload: Workload
    /// False reproduces FlexGen's own formulas: no weight-streaming roofline for decode GEMMs
    /// and compression ignored (its model leaves compression out). For comparisons only.
    public var extensions = true
    /// The engine's memory description for the model; when set, memory terms are the engine's
    /// (see `memory(_:activationsOnDisk:)`).
    public var memory: MemoryModel?

    /// 4-bit groups of 64 with f16 step and minimum: 0.5 + 4/64 bytes per 2-byte value.
    public static let compressionRatio = (0.5 + 4.0 / 64) / 2

    public init(model: ModelShape, profile: HardwareProfile, workload: Workload) {
        self.model = model; self.profile = profile; self.workload = workload
    }

    public struct Terms: Sendable {
        /// Per-layer prefill time >= each term; per-layer, per-token decode time >= each term.
        public var prefill: [(name: String, value: Linear)]
        public var decode: [(name: String, value: Linear)]
    }

    public func terms(_ c: BatchChoice) -> Terms {
        let p = profile
        let s = Double(workload.promptLength), n = Double(workload.genLength)
        let bls = Double(c.blockSize)
        let h1 = Double(model.hidden)
        let compressWeight = c.compressWeight && extensions, compressCache = c.compressCache && extensions
        let rw = compressWeight ? Self.compressionRatio : 1, rc = compressCache ? Self.compressionRatio : 1
        let W = model.layerWeightBytes * rw
        // The CPU engine holds an uncompressed KV cache in f32: twice FlexGen's f16 bytes move.
        let kv = model.kvBytesPerToken * rc * (extensions && p.copiesShareCompute && !compressCache ? 2 : 1)
        let actBytes = p.copiesShareCompute ? 4.0 : 2.0   // f32 compute on a CPU, f16 on a GPU
        let flopsPerToken = 2 * model.layerParameters
        let ctx = s + n / 2

        // Hidden states moved per layer: prefill s tokens, decode one token, per sequence.
        let actPrefill = actBytes * s * h1 * bls, actDecode = actBytes * h1 * bls
        let dequantPrefill = compressWeight ? Linear(W / p.dequantize) : Linear()
        let dequantDecode = dequantPrefill + (compressCache ? Linear(kv * ctx * bls / p.dequantize) : Linear())
        let weightsIn = Linear.sum([.wc, .wd], W), weightsFromDisk = Linear(.wd, W)
        var prefill: [(String, Linear)] = [], decode: [(String, Linear)] = []

        // The LM head (last position only), spread over the layers like everything else. FlexGen's
        // model leaves it out, which is fair on a GPU (well under 1% of a step there); on a CPU
        // it is ~8% of an OPT-1.3B decode step, so the CPU-only model counts it.
        let l = Double(model.layers)
        let countHead = extensions && p.copiesShareCompute
        let headFlops = countHead ? 2 * Double(model.vocab * model.hidden) * bls / l : 0
        let headStreaming = countHead ? Double(c.numGPUBatches) * 2 * Double(model.vocab * model.hidden) / l / p.deviceMemoryBandwidth : 0
        // Prefill GEMMs run per gpu batch on gbs x s rows; a short batch runs below the 512-row rate.
        let mmPrefill = extensions ? p.gemmRate(rows: Double(c.gpuBatchSize) * s) : p.mmPrefill
        let compPrefill = Linear(bls * s * flopsPerToken / mmPrefill + 4 * bls * s * s * h1 / p.bmmPrefill + headFlops / p.mmDecode)
            + dequantPrefill
        // Decode GEMMs are compute-bound at large batches and weight-streaming-bound at small ones.
        let streaming = extensions ? Double(c.numGPUBatches) * W / p.deviceMemoryBandwidth : 0
        let gemmDecode = max(bls * flopsPerToken / p.mmDecode, streaming) + max(headFlops / p.mmDecode, headStreaming)
        var compDecode = Linear(gemmDecode) + Linear(.cg, 4 * bls * ctx * h1 / p.bmmDecode) + dequantDecode
        let hostAttention = 4 * bls * ctx * h1 / (c.cpuAttention ? p.cpu : p.bmmDecode)
        compDecode = compDecode + Linear.sum([.cc, .cd], hostAttention)

        if p.copiesShareCompute {
            // CPU-only: copies between RAM tiers run on the compute cores (they add to compute);
            // disk transfers block in the kernel and overlap. Moving cache rows copies the whole
            // planned capacity (s + n positions) in and back out each step.
            let capacity = s + n
            let hostCopiesPrefill = Linear(.wc, W / p.ctog) + Linear(.hc, 2 * actPrefill / p.ctog)
                + Linear(.cc, c.cpuAttention ? 0 : 2 * kv * capacity * bls / p.ctog)
            let diskPrefill = weightsFromDisk / p.dtoc + Linear(.hd, actPrefill / p.dtoc + actPrefill / p.ctodHidden)
                + Linear(.cd, kv * capacity * bls / p.dtoc + kv * capacity * bls / p.ctodCache)
            let hostCopiesDecode = Linear(.wc, W / p.ctog) + Linear(.hc, 2 * actDecode / p.ctog)
                + Linear(.cc, c.cpuAttention ? 0 : 2 * kv * capacity * bls / p.ctog)
            let diskDecode = weightsFromDisk / p.dtoc + Linear(.hd, actDecode / p.dtoc + actDecode / p.ctodHidden)
                + Linear(.cd, kv * capacity * bls / p.dtoc + kv * capacity * bls / p.ctodCache)
            if c.overlap {
                // max(C, D) + contention * min(C, D), as two linear terms each way round.
                let a = extensions ? p.diskComputeContention : 0
                func overlapped(_ compute: Linear, _ disk: Linear) -> [(String, Linear)] {
                    [("compute + host copies", compute + disk * a), ("disk I/O", disk + compute * a)]
                }
                prefill = overlapped(compPrefill + hostCopiesPrefill, diskPrefill)
                decode = overlapped(compDecode + hostCopiesDecode, diskDecode)
            } else {
                prefill = [("compute + copies + disk I/O (no overlap)", compPrefill + hostCopiesPrefill + diskPrefill)]
                decode = [("compute + copies + disk I/O (no overlap)", compDecode + hostCopiesDecode + diskDecode)]
            }
        } else {
            // FlexGen's terms (the reference restates them).
            let ctogPrefill = (weightsIn + Linear.sum([.hc, .hd], actPrefill)) / p.ctog
            let gtocPrefill = Linear.sum([.cc, .cd], kv * (s + 1) * bls / p.gtocCache) + Linear.sum([.hc, .hd], actPrefill / p.gtocHidden)
            let dtocPrefill = (weightsFromDisk + Linear(.hd, actPrefill)) / p.dtoc
            let ctodPrefill = Linear(.cd, kv * (s + 1) * bls / p.ctodCache) + Linear(.hd, actPrefill / p.ctodHidden)
            var ctogDecode = (weightsIn + Linear.sum([.hc, .hd], actDecode)) / p.ctog
            var gtocDecode = Linear.sum([.hc, .hd], actDecode / p.gtocHidden)
            if !c.cpuAttention {
                // Without delegation the host/disk cache moves to the device and new entries back.
                ctogDecode = ctogDecode + Linear.sum([.cc, .cd], kv * ctx * bls / p.ctog)
                gtocDecode = gtocDecode + Linear.sum([.cc, .cd], kv * bls / p.gtocCache)
            }
            let dtocDecode = Linear(.cd, kv * ctx * bls / p.dtoc) + Linear(.hd, actDecode / p.dtoc) + Linear(.wd, W / (0.95 * p.dtoc))
            let ctodDecode = Linear(.cd, kv * bls / p.ctodCache) + Linear(.hd, actDecode / p.ctodHidden)
            if c.overlap {
                prefill = [("ctog + dtoc (load weights)", ctogPrefill + dtocPrefill), ("gtoc + ctod (store cache)", gtocPrefill + ctodPrefill),
                           ("compute", compPrefill)]
                decode = [("ctog + gtoc", ctogDecode + gtocDecode), ("ctog + dtoc (load weights)", ctogDecode + dtocDecode),
                          ("ctog + ctod", ctogDecode + ctodDecode), ("ctog + compute", ctogDecode + compDecode)]
            } else {
                prefill = [("all, sequential", ctogPrefill + gtocPrefill + dtocPrefill + ctodPrefill + compPrefill)]
                decode = [("all, sequential", ctogDecode + gtocDecode + dtocDecode + ctodDecode + compDecode)]
            }
        }

        return Terms(prefill: prefill, decode: decode)
    }

    /// Peak bytes per tier as linear bounds in the placement fractions. With an engine memory
    /// model (`memory`), the engine's own description, so a policy that satisfies them is one
    /// the engine accepts; `activationsOnDisk: false` is then valid only where hd = 0 (no
    /// host bounce buffers). Without one, FlexGen's estimates (GPU profiles, which the CPU engine
    /// does not run).
    public func memory(_ c: BatchChoice, activationsOnDisk: Bool) -> [Tier: Linear] {
        if let memory {
            return memory.bound(c, promptLength: workload.promptLength, capacity: capacity(memory), activationsOnDisk: activationsOnDisk)
        }
        let p = profile
        let s = Double(workload.promptLength), n = Double(workload.genLength)
        let bls = Double(c.blockSize), gbs = Double(c.gpuBatchSize)
        let h1 = Double(model.hidden), l = Double(model.layers)
        let compressWeight = c.compressWeight && extensions, compressCache = c.compressCache && extensions
        let W = model.layerWeightBytes * (compressWeight ? Self.compressionRatio : 1)
        let kv = model.kvBytesPerToken * (compressCache ? Self.compressionRatio : 1)
        let actBytes = p.copiesShareCompute ? 4.0 : 2.0
        // Peak memory per tier (prefill is the larger working set).
        let cacheAll = kv * (s + n) * bls * l
        let actAll = actBytes * s * h1 * bls
        // Working set of one gpu batch: FlexGen counts the prefill attention scores; the CPU
        // runtime also holds f32 activations, the FFN intermediate and logits (MemoryPlan).
        let scores = 2 * gbs * Double(model.heads) * s * s
        let working = p.copiesShareCompute
            ? actBytes * gbs * s * (8 * h1 + 3 * Double(model.ffn)) + scores * 2 + actBytes * gbs * Double(model.vocab)
            : scores
        var device = Linear(.wg, W * l) + Linear(.cg, cacheAll) + Linear(.hg, actAll)
        device = device + Linear(model.embeddingBytes + working) + (Linear(W * 2) + Linear(.wg, -W * 2))   // 2 staged layers of (1 - wg)
        let host = Linear(.wc, W * l) + Linear(.cc, cacheAll) + Linear(.hc, actAll)
        let disk = Linear(.wd, W * l) + Linear(.cd, cacheAll) + Linear(.hd, actAll)
        return [.device: device, .host: host, .disk: disk]
    }

    public struct Prediction: Sendable {
        public var prefillSecondsPerLayer: Double
        public var decodeSecondsPerLayer: Double
        public var totalSeconds: Double
        public var tokensPerSecond: Double
        public var prefillBottleneck: String
        public var decodeBottleneck: String
        public var memory: [Tier: Double]
    }

    /// Predicted time and memory of a policy with placement fractions `x` (Fraction order).
    public func predict(_ c: BatchChoice, fractions x: [Double]) -> Prediction {
        let t = terms(c)
        let pre = t.prefill.map { ($0.name, $0.value.value(x)) }.max { $0.1 < $1.1 }!
        let dec = t.decode.map { ($0.name, $0.value.value(x)) }.max { $0.1 < $1.1 }!
        let l = Double(model.layers), n = Double(workload.genLength)
        let total = pre.1 * l + dec.1 * (n - 1) * l
        return Prediction(prefillSecondsPerLayer: pre.1, decodeSecondsPerLayer: dec.1, totalSeconds: total,
                          tokensPerSecond: Double(c.blockSize) * n / total, prefillBottleneck: pre.0, decodeBottleneck: dec.0,
                          memory: predictedMemory(c, fractions: x))
    }

    /// Positions per sequence the engine plans the KV cache for: the workload's, within the model's.
    func capacity(_ memory: MemoryModel) -> Int {
        min(workload.promptLength + workload.genLength, memory.config.maxPositions)
    }

    /// Peak bytes per tier: the engine's exact plan where there is a memory model, else the estimate.
    func predictedMemory(_ c: BatchChoice, fractions x: [Double]) -> [Tier: Double] {
        if let memory {
            let plan = memory.plan(Policy(c, fractions: x), promptLength: workload.promptLength, capacity: capacity(memory))
            return Dictionary(uniqueKeysWithValues: Tier.allCases.map { ($0, Double(plan[$0].total)) })
        }
        return memory(c, activationsOnDisk: x[Fraction.hd.rawValue] > 0).mapValues { $0.value(x) }
    }

    public func predict(_ policy: Policy) -> Prediction {
        predict(BatchChoice(policy), fractions: Fraction.of(policy))
    }

}
