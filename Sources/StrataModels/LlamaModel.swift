import StrataBackend
import StrataCore
import StrataFormats
import Synchronization

/// The Llama family (Llama 2/3, Mistral, Qwen2): RMSNorm, rotary positions, SwiGLU MLP,
/// grouped-query attention, tied or untied embeddings, optional projection biases.
public final class LlamaModel: CausalLM, @unchecked Sendable {
    public let config: ModelConfig
    public let backend: any Backend
    public let compression: Compression
    let tokenEmbedding: Tensor
    let finalNorm: Tensor
    let lmHead: Tensor
    public let residentLayers: [LayerWeights]
    let prefix: String
    let rotary: Rotary
    let activation: Activation
    /// cos/sin tables of the step in flight: they depend only on the step's positions, so every
    /// layer of a step shares one upload.
    private let rotaryTables = Mutex<(positions: [Int], cos: Tensor, sin: Tensor)?>(nil)

    init(config c: ModelConfig, checkpoint: any TensorSource, backend: any Backend, compression: Compression, log: MatrixLog?,
         loadLayers: Bool, share: ModelShare = .whole) throws {
        config = c
        self.backend = backend
        self.compression = compression
        let prefix = checkpoint.contains("model.embed_tokens.weight") ? "model." : ""
        self.prefix = prefix
        let w = WeightLoader(checkpoint: checkpoint, backend: backend, prefix: prefix, precision: compression.weights,
                             stored: c.storedPrecision, log: log)
        let h = c.hiddenSize
        let tied = c.tieWordEmbeddings && !checkpoint.contains("lm_head.weight")
        let placeholder = backend.zeros(shape: [1])
        tokenEmbedding = share.embedding || (share.head && tied) ? try w.load("embed_tokens.weight", [c.vocabSize, h]) : placeholder
        finalNorm = share.head ? try w.load("norm.weight", [h]) : placeholder
        if !share.head {
            lmHead = placeholder
        } else if tied {
            lmHead = tokenEmbedding
        } else {
            lmHead = try w.head([c.vocabSize, h])
        }
        // A pipeline stage loads only its own layers; the others stay empty placeholders.
        residentLayers = loadLayers ? try (0..<c.numLayers).map { j in
            !share.holds(layer: j) ? LayerWeights() : try w.layer(Self.layerSpecs(c, prefix: prefix, layer: j), index: j)
        } : []
        rotary = Rotary(config: c)
        guard let act = Activation(huggingFace: c.activation) else {
            throw StrataError.invalidFile(path: checkpoint.directory, detail: "hidden_act '\(c.activation)' is not supported")
        }
        activation = act
    }

    public func embed(_ step: ForwardStep) -> Tensor {
        backend.embedding(tokenEmbedding, ids: step.tokens)
    }

    static func layerSpecs(_ c: ModelConfig, prefix: String, layer i: Int) -> [LayerTensorSpec] {
        let h = c.hiddenSize, f = c.intermediateSize
        let qWidth = c.numHeads * c.headDim, kvWidth = c.numKVHeads * c.headDim
        var b = LayerSpecBuilder(prefix: prefix + "layers.\(i).")
        b.add("input_layernorm.weight", [h])
        b.add("self_attn.q_proj.weight", [qWidth, h], matrix: true)
        b.add("self_attn.k_proj.weight", [kvWidth, h], matrix: true)
        b.add("self_attn.v_proj.weight", [kvWidth, h], matrix: true)
        b.add("self_attn.o_proj.weight", [h, qWidth], matrix: true)
        b.add("self_attn.q_proj.bias", [qWidth], if: c.qkvBias)
        b.add("self_attn.k_proj.bias", [kvWidth], if: c.qkvBias)
        b.add("self_attn.v_proj.bias", [kvWidth], if: c.qkvBias)
        b.add("self_attn.o_proj.bias", [h], if: c.outputBias)
        b.add("post_attention_layernorm.weight", [h])
        b.add("mlp.gate_proj.weight", [f, h], matrix: true)
        b.add("mlp.up_proj.weight", [f, h], matrix: true)
        b.add("mlp.down_proj.weight", [h, f], matrix: true)
        b.add("mlp.gate_proj.bias", [f], if: c.mlpBias)
        b.add("mlp.up_proj.bias", [f], if: c.mlpBias)
        b.add("mlp.down_proj.bias", [h], if: c.mlpBias)
        return b.specs
    }

    public func layerSpecs(_ index: Int) -> [LayerTensorSpec] { Self.layerSpecs(config, prefix: prefix, layer: index) }

    public func layer(_ index: Int, _ x: Tensor, weights l: LayerWeights, cache: LayerCache, step: ForwardStep) -> Tensor {
        let c = config
        let eps = Float(c.normEps)
        var h = backend.rmsNorm(x, weight: l["input_layernorm.weight"], eps: eps)
        let names = ["q_proj", "k_proj", "v_proj"]
        let qkv = backend.linear(h, weights: names.map { l["self_attn.\($0).weight"] },
                                 biases: names.map { l.optional("self_attn.\($0).bias") })
        let (q, k, v) = (qkv[0], qkv[1], qkv[2])
        let (cos, sin) = rotaryTensors(for: step.positions)
        backend.applyRotary(q, heads: c.numHeads, headDim: c.headDim, cos: cos, sin: sin)
        backend.applyRotary(k, heads: c.numKVHeads, headDim: c.headDim, cos: cos, sin: sin)
        let layout = step.attentionLayout(heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim,
                                          scale: 1 / Float(c.headDim).squareRoot())
        h = backend.cachedAttention(query: q, key: k, value: v, cache: cache, layout: layout)
        h = backend.linear(h, weight: l["self_attn.o_proj.weight"], bias: l.optional("self_attn.o_proj.bias"))
        backend.addInPlace(h, x)

        let n = backend.rmsNorm(h, weight: l["post_attention_layernorm.weight"], eps: eps)
        return backend.feedForward(n, gate: l["mlp.gate_proj.weight"], up: l["mlp.up_proj.weight"], down: l["mlp.down_proj.weight"],
                                   biases: ["gate_proj", "up_proj", "down_proj"].map { l.optional("mlp.\($0).bias") },
                                   activation: activation, residual: h)
    }

    private func rotaryTensors(for positions: [Int]) -> (Tensor, Tensor) {
        if let cached = rotaryTables.withLock({ $0 }), cached.positions == positions { return (cached.cos, cached.sin) }
        let (cosTable, sinTable) = rotary.tables(positions: positions)
        let half = config.headDim / 2
        let cos = backend.upload(floats: cosTable, shape: [positions.count, half])
        let sin = backend.upload(floats: sinTable, shape: [positions.count, half])
        rotaryTables.withLock { $0 = (positions, cos, sin) }
        return (cos, sin)
    }

    public func linearWeights(layer index: Int) -> [(name: String, weight: Tensor, feedForward: Bool)] {
        let l = residentLayers[index]
        return ["q_proj", "k_proj", "v_proj", "o_proj"].map { ($0, l["self_attn.\($0).weight"], false) }
            + ["gate_proj", "up_proj", "down_proj"].map { ($0, l["mlp.\($0).weight"], true) }
    }

    public func head(_ hidden: Tensor, rows: [Int]) -> Tensor {
        let h = backend.rmsNorm(backend.gatherRows(hidden, rows), weight: finalNorm, eps: Float(config.normEps))
        return backend.linear(h, weight: lmHead, bias: nil)
    }
}
