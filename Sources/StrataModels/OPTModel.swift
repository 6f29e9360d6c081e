import StrataBackend
import StrataCore
import StrataFormats

/// OPT (Zhang et al. 2022): learned positions offset by 2, pre- or post-LayerNorm
/// (`do_layer_norm_before`), optional `project_in`/`project_out` when
/// `word_embed_proj_dim != hidden_size` (OPT-350m), LM head tied to the token embedding.
public final class OPTModel: CausalLM, @unchecked Sendable {
    struct Layer {
        var q, k, v, o: Tensor
        var qBias, kBias, vBias, oBias: Tensor?
        var attentionNorm: Tensor?, attentionNormBias: Tensor?
        var fc1, fc2: Tensor
        var fc1Bias, fc2Bias: Tensor?
        var ffnNorm: Tensor?, ffnNormBias: Tensor?
    }

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
    let layers: [Layer]
    let activation: Activation

    init(config c: ModelConfig, checkpoint: Checkpoint, backend: any Backend, compression: Compression, log: MatrixLog?) throws {
        config = c
        self.backend = backend
        self.compression = compression
        let prefix = checkpoint.contains("model.decoder.embed_tokens.weight") ? "model.decoder." : "decoder."
        let w = WeightLoader(checkpoint: checkpoint, backend: backend, prefix: prefix, precision: compression.weights,
                             stored: c.storedPrecision, log: log)
        let h = c.hiddenSize, p = c.wordEmbedProjDim, f = c.intermediateSize
        tokenEmbedding = try w.load("embed_tokens.weight", [c.vocabSize, p])
        positionEmbedding = try w.load("embed_positions.weight", [c.maxPositions + Self.positionOffset, h])
        projectIn = try w.loadIf(p != h, "project_in.weight", [h, p])
        projectOut = try w.loadIf(p != h, "project_out.weight", [p, h])
        let affine = c.layerNormAffine
        let hasFinalNorm = c.doLayerNormBefore && checkpoint.contains(prefix + "final_layer_norm.weight")
        finalNorm = try w.loadIf(hasFinalNorm, "final_layer_norm.weight", [h])
        finalNormBias = try w.loadIf(hasFinalNorm, "final_layer_norm.bias", [h])
        if !c.tieWordEmbeddings || checkpoint.contains("lm_head.weight") {
            lmHead = try WeightLoader(checkpoint: checkpoint, backend: backend, prefix: "").load("lm_head.weight", [c.vocabSize, p])
        } else {
            lmHead = tokenEmbedding
        }
        let bias = c.enableBias
        layers = try (0..<c.numLayers).map { i in
            let l = "layers.\(i)."
            return Layer(
                q: try w.matrix(l + "self_attn.q_proj.weight", [h, h], layer: i),
                k: try w.matrix(l + "self_attn.k_proj.weight", [h, h], layer: i),
                v: try w.matrix(l + "self_attn.v_proj.weight", [h, h], layer: i),
                o: try w.matrix(l + "self_attn.out_proj.weight", [h, h], layer: i),
                qBias: try w.loadIf(bias, l + "self_attn.q_proj.bias", [h]), kBias: try w.loadIf(bias, l + "self_attn.k_proj.bias", [h]),
                vBias: try w.loadIf(bias, l + "self_attn.v_proj.bias", [h]), oBias: try w.loadIf(bias, l + "self_attn.out_proj.bias", [h]),
                attentionNorm: try w.loadIf(affine, l + "self_attn_layer_norm.weight", [h]),
                attentionNormBias: try w.loadIf(affine, l + "self_attn_layer_norm.bias", [h]),
                fc1: try w.matrix(l + "fc1.weight", [f, h], layer: i), fc2: try w.matrix(l + "fc2.weight", [h, f], layer: i),
                fc1Bias: try w.loadIf(bias, l + "fc1.bias", [f]), fc2Bias: try w.loadIf(bias, l + "fc2.bias", [h]),
                ffnNorm: try w.loadIf(affine, l + "final_layer_norm.weight", [h]),
                ffnNormBias: try w.loadIf(affine, l + "final_layer_norm.bias", [h]))
        }
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

    public func layer(_ index: Int, _ x: Tensor, cache: KVCache, step: ForwardStep) -> Tensor {
        let l = layers[index]
        let c = config
        let eps = Float(c.normEps)
        let preNorm = c.doLayerNormBefore
        let residual = x
        var h = preNorm ? backend.layerNorm(x, weight: l.attentionNorm, bias: l.attentionNormBias, eps: eps) : x
        let q = backend.linear(h, weight: l.q, bias: l.qBias)
        let k = backend.linear(h, weight: l.k, bias: l.kBias)
        let v = backend.linear(h, weight: l.v, bias: l.vBias)
        let layout = step.attentionLayout(heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim,
                                          scale: 1 / Float(c.headDim).squareRoot())
        backend.storeKV(key: k, value: v, keyCache: cache.keys[index], valueCache: cache.values[index], layout: layout)
        h = backend.attention(query: q, keyCache: cache.keys[index], valueCache: cache.values[index], layout: layout)
        h = backend.linear(h, weight: l.o, bias: l.oBias)
        backend.addInPlace(h, residual)
        if !preNorm { h = backend.layerNorm(h, weight: l.attentionNorm, bias: l.attentionNormBias, eps: eps) }

        let residual2 = h
        var f = preNorm ? backend.layerNorm(h, weight: l.ffnNorm, bias: l.ffnNormBias, eps: eps) : h
        f = backend.activate(backend.linear(f, weight: l.fc1, bias: l.fc1Bias), activation)
        f = backend.linear(f, weight: l.fc2, bias: l.fc2Bias)
        backend.addInPlace(f, residual2)
        if !preNorm { f = backend.layerNorm(f, weight: l.ffnNorm, bias: l.ffnNormBias, eps: eps) }
        return f
    }

    public func linearWeights(layer index: Int) -> [(name: String, weight: Tensor, feedForward: Bool)] {
        let l = layers[index]
        return [("q_proj", l.q, false), ("k_proj", l.k, false), ("v_proj", l.v, false), ("out_proj", l.o, false),
                ("fc1", l.fc1, true), ("fc2", l.fc2, true)]
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
