import StrataBackend
import StrataCore
import StrataFormats

/// OPT (Zhang et al. 2022): learned positions offset by 2, pre- or post-LayerNorm
/// (`do_layer_norm_before`), optional `project_in`/`project_out` when
/// `word_embed_proj_dim != hidden_size` (OPT-350m), LM head tied to the token embedding.
public final class OPTModel: CausalLM, @unchecked Sendable {
    /// OPT's learned positional embedding reserves the first two rows.
    static let positionOffset = 2

    public let config: ModelConfig
    public let backend: any Backend
    public let compression: Compression
    let tokenEmbedding: Tensor
    let positionEmbedding: Tensor
    let projectIn: Tensor?
    let projectOut: Tensor?
    let finalNorm: Tensor?, finalNormBias: Tensor?
    let lmHead: Tensor
    public let residentLayers: [LayerWeights]
    let prefix: String
    let activation: Activation

    init(config c: ModelConfig, checkpoint: any TensorSource, backend: any Backend, compression: Compression, log: MatrixLog?,
         loadLayers: Bool, share: ModelShare = .whole) throws {
        config = c
        self.backend = backend
        self.compression = compression
        let prefix = checkpoint.contains("model.decoder.embed_tokens.weight") ? "model.decoder." : "decoder."
        self.prefix = prefix
        let w = WeightLoader(checkpoint: checkpoint, backend: backend, prefix: prefix, precision: compression.weights,
                             stored: c.storedPrecision, log: log)
        let h = c.hiddenSize, p = c.wordEmbedProjDim
        let tied = c.tieWordEmbeddings && !checkpoint.contains("lm_head.weight")
        let placeholder = backend.zeros(shape: [1])
        tokenEmbedding = share.embedding || (share.head && tied) ? try w.load("embed_tokens.weight", [c.vocabSize, p]) : placeholder
        positionEmbedding = share.embedding ? try w.load("embed_positions.weight", [c.maxPositions + Self.positionOffset, h]) : placeholder
        projectIn = try w.loadIf(p != h && share.embedding, "project_in.weight", [h, p])
        projectOut = try w.loadIf(p != h && share.head, "project_out.weight", [p, h])
        let hasFinalNorm = share.head && c.doLayerNormBefore && checkpoint.contains(prefix + "final_layer_norm.weight")
        finalNorm = try w.loadIf(hasFinalNorm, "final_layer_norm.weight", [h])
        finalNormBias = try w.loadIf(hasFinalNorm, "final_layer_norm.bias", [h])
        if !share.head {
            lmHead = placeholder
        } else if tied {
            lmHead = tokenEmbedding
        } else {
            lmHead = try w.head([c.vocabSize, p])
        }
        // A pipeline stage loads only its own layers; the others stay empty placeholders.
        residentLayers = loadLayers ? try (0..<c.numLayers).map { j in
            !share.holds(layer: j) ? LayerWeights() : try w.layer(Self.layerSpecs(c, prefix: prefix, layer: j), index: j)
        } : []
        guard let act = Activation(huggingFace: c.activation) else {
            throw StrataError.invalidFile(path: checkpoint.directory, detail: "activation_function '\(c.activation)' is not supported")
        }
        activation = act
    }

    public func embed(_ step: ForwardStep) -> Tensor {
        var hidden = backend.embedding(tokenEmbedding, ids: step.tokens)
        if let projectIn { hidden = backend.linear(hidden, weight: projectIn, bias: nil) }
        // Padding gets position -1, i.e. row 1 of the table, as in transformers.
        let positionIds = step.positions.map { Int32($0 + Self.positionOffset) }
        backend.addInPlace(hidden, backend.embedding(positionEmbedding, ids: positionIds))
        return hidden
    }

    static func layerSpecs(_ c: ModelConfig, prefix: String, layer i: Int) -> [LayerTensorSpec] {
        let h = c.hiddenSize, f = c.intermediateSize, bias = c.enableBias, affine = c.layerNormAffine
        var b = LayerSpecBuilder(prefix: prefix + "layers.\(i).")
        for name in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            b.add("self_attn.\(name).weight", [h, h], matrix: true)
            b.add("self_attn.\(name).bias", [h], if: bias)
        }
        b.add("self_attn_layer_norm.weight", [h], if: affine)
        b.add("self_attn_layer_norm.bias", [h], if: affine)
        b.add("fc1.weight", [f, h], matrix: true)
        b.add("fc1.bias", [f], if: bias)
        b.add("fc2.weight", [h, f], matrix: true)
        b.add("fc2.bias", [h], if: bias)
        b.add("final_layer_norm.weight", [h], if: affine)
        b.add("final_layer_norm.bias", [h], if: affine)
        return b.specs
    }

    public func layerSpecs(_ index: Int) -> [LayerTensorSpec] { Self.layerSpecs(config, prefix: prefix, layer: index) }

    public func layer(_ index: Int, _ x: Tensor, weights l: LayerWeights, cache: LayerCache, step: ForwardStep) -> Tensor {
        let c = config
        let eps = Float(c.normEps)
        let preNorm = c.doLayerNormBefore
        let residual = x
        let attentionNorm = l.optional("self_attn_layer_norm.weight"), attentionNormBias = l.optional("self_attn_layer_norm.bias")
        var h = preNorm ? backend.layerNorm(x, weight: attentionNorm, bias: attentionNormBias, eps: eps) : x
        let names = ["q_proj", "k_proj", "v_proj"]
        let qkv = backend.linear(h, weights: names.map { l["self_attn.\($0).weight"] },
                                 biases: names.map { l.optional("self_attn.\($0).bias") })
        let (q, k, v) = (qkv[0], qkv[1], qkv[2])
        let layout = step.attentionLayout(heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim,
                                          scale: 1 / Float(c.headDim).squareRoot())
        h = backend.cachedAttention(query: q, key: k, value: v, cache: cache, layout: layout)
        h = backend.linear(h, weight: l["self_attn.out_proj.weight"], bias: l.optional("self_attn.out_proj.bias"))
        backend.addInPlace(h, residual)
        if !preNorm { h = backend.layerNorm(h, weight: attentionNorm, bias: attentionNormBias, eps: eps) }

        let residual2 = h
        let ffnNorm = l.optional("final_layer_norm.weight"), ffnNormBias = l.optional("final_layer_norm.bias")
        let normed = preNorm ? backend.layerNorm(h, weight: ffnNorm, bias: ffnNormBias, eps: eps) : h
        var f = backend.feedForward(normed, gate: nil, up: l["fc1.weight"], down: l["fc2.weight"],
                                    biases: [nil, l.optional("fc1.bias"), l.optional("fc2.bias")], activation: activation,
                                    residual: residual2)
        if !preNorm { f = backend.layerNorm(f, weight: ffnNorm, bias: ffnNormBias, eps: eps) }
        return f
    }

    public func linearWeights(layer index: Int) -> [(name: String, weight: Tensor, feedForward: Bool)] {
        let l = residentLayers[index]
        return [("q_proj", l["self_attn.q_proj.weight"], false), ("k_proj", l["self_attn.k_proj.weight"], false),
                ("v_proj", l["self_attn.v_proj.weight"], false), ("out_proj", l["self_attn.out_proj.weight"], false),
                ("fc1", l["fc1.weight"], true), ("fc2", l["fc2.weight"], true)]
    }

    public func head(_ hidden: Tensor, rows: [Int]) -> Tensor {
        var h = backend.gatherRows(hidden, rows)
        if finalNorm != nil || finalNormBias != nil {
            h = backend.layerNorm(h, weight: finalNorm, bias: finalNormBias, eps: Float(config.normEps))
        }
        if let projectOut { h = backend.linear(h, weight: projectOut, bias: nil) }
        return backend.linear(h, weight: lmHead, bias: nil)
    }
}
