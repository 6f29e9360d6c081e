import StrataBackend
import StrataCore
import StrataFormats
import Synchronization

/// The Llama family (Llama 2/3, Mistral, Qwen2): RMSNorm, rotary positions, SwiGLU MLP,
/// grouped-query attention, tied or untied embeddings, optional projection biases.
public final class LlamaModel: CausalLM, @unchecked Sendable {
    struct Layer {
        var q, k, v, o: Tensor
        var qBias, kBias, vBias, oBias: Tensor?
        var inputNorm, postAttentionNorm: Tensor
        var gate, up, down: Tensor
        var gateBias, upBias, downBias: Tensor?
    }

    public let config: ModelConfig
    public let backend: any Backend
    public let compression: Compression
    let tokenEmbedding: Tensor
    let finalNorm: Tensor
    let lmHead: Tensor
    let layers: [Layer]
    let rotary: Rotary
    let activation: Activation
    /// cos/sin tables of the step in flight: they depend only on the step's positions, so every
    /// layer of a step shares one upload.
    private let rotaryTables = Mutex<(positions: [Int], cos: Tensor, sin: Tensor)?>(nil)

    init(config c: ModelConfig, checkpoint: Checkpoint, backend: any Backend, compression: Compression, log: MatrixLog?) throws {
        config = c
        self.backend = backend
        self.compression = compression
        let prefix = checkpoint.contains("model.embed_tokens.weight") ? "model." : ""
        let w = WeightLoader(checkpoint: checkpoint, backend: backend, prefix: prefix, precision: compression.weights,
                             stored: c.storedPrecision, log: log)
        let h = c.hiddenSize, f = c.intermediateSize
        let qWidth = c.numHeads * c.headDim, kvWidth = c.numKVHeads * c.headDim
        tokenEmbedding = try w.load("embed_tokens.weight", [c.vocabSize, h])
        finalNorm = try w.load("norm.weight", [h])
        if c.tieWordEmbeddings && !checkpoint.contains("lm_head.weight") {
            lmHead = tokenEmbedding
        } else {
            lmHead = try WeightLoader(checkpoint: checkpoint, backend: backend, prefix: "").load("lm_head.weight", [c.vocabSize, h])
        }
        layers = try (0..<c.numLayers).map { i in
            let l = "layers.\(i)."
            return Layer(
                q: try w.matrix(l + "self_attn.q_proj.weight", [qWidth, h], layer: i),
                k: try w.matrix(l + "self_attn.k_proj.weight", [kvWidth, h], layer: i),
                v: try w.matrix(l + "self_attn.v_proj.weight", [kvWidth, h], layer: i),
                o: try w.matrix(l + "self_attn.o_proj.weight", [h, qWidth], layer: i),
                qBias: try w.loadIf(c.qkvBias, l + "self_attn.q_proj.bias", [qWidth]),
                kBias: try w.loadIf(c.qkvBias, l + "self_attn.k_proj.bias", [kvWidth]),
                vBias: try w.loadIf(c.qkvBias, l + "self_attn.v_proj.bias", [kvWidth]),
                oBias: try w.loadIf(c.outputBias, l + "self_attn.o_proj.bias", [h]),
                inputNorm: try w.load(l + "input_layernorm.weight", [h]),
                postAttentionNorm: try w.load(l + "post_attention_layernorm.weight", [h]),
                gate: try w.matrix(l + "mlp.gate_proj.weight", [f, h], layer: i),
                up: try w.matrix(l + "mlp.up_proj.weight", [f, h], layer: i),
                down: try w.matrix(l + "mlp.down_proj.weight", [h, f], layer: i),
                gateBias: try w.loadIf(c.mlpBias, l + "mlp.gate_proj.bias", [f]), upBias: try w.loadIf(c.mlpBias, l + "mlp.up_proj.bias", [f]),
                downBias: try w.loadIf(c.mlpBias, l + "mlp.down_proj.bias", [h]))
        }
        rotary = Rotary(config: c)
        guard let act = Activation(huggingFace: c.activation) else {
            throw StrataError.invalidFile(path: checkpoint.directory, detail: "hidden_act '\(c.activation)' is not supported")
        }
        activation = act
    }

    public func embed(_ step: ForwardStep) -> Tensor {
        backend.embedding(tokenEmbedding, ids: step.tokens)
    }

    public func layer(_ index: Int, _ x: Tensor, cache: KVCache, step: ForwardStep) -> Tensor {
        let l = layers[index]
        let c = config
        let eps = Float(c.normEps)
        var h = backend.rmsNorm(x, weight: l.inputNorm, eps: eps)
        let q = backend.linear(h, weight: l.q, bias: l.qBias)
        let k = backend.linear(h, weight: l.k, bias: l.kBias)
        let v = backend.linear(h, weight: l.v, bias: l.vBias)
        let (cos, sin) = rotaryTensors(for: step.positions)
        backend.applyRotary(q, heads: c.numHeads, headDim: c.headDim, cos: cos, sin: sin)
        backend.applyRotary(k, heads: c.numKVHeads, headDim: c.headDim, cos: cos, sin: sin)
        let layout = step.attentionLayout(heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim,
                                          scale: 1 / Float(c.headDim).squareRoot())
        backend.storeKV(key: k, value: v, keyCache: cache.keys[index], valueCache: cache.values[index], layout: layout)
        h = backend.attention(query: q, keyCache: cache.keys[index], valueCache: cache.values[index], layout: layout)
        h = backend.linear(h, weight: l.o, bias: l.oBias)
        backend.addInPlace(h, x)

        let n = backend.rmsNorm(h, weight: l.postAttentionNorm, eps: eps)
        let gate = backend.linear(n, weight: l.gate, bias: l.gateBias)
        let up = backend.linear(n, weight: l.up, bias: l.upBias)
        let m = backend.linear(backend.gatedActivate(gate: gate, up: up, activation), weight: l.down, bias: l.downBias)
        backend.addInPlace(m, h)
        return m
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
        let l = layers[index]
        return [("q_proj", l.q, false), ("k_proj", l.k, false), ("v_proj", l.v, false), ("o_proj", l.o, false),
                ("gate_proj", l.gate, true), ("up_proj", l.up, true), ("down_proj", l.down, true)]
    }

    public func head(_ hidden: Tensor, rows: [Int]) -> Tensor {
        let h = backend.rmsNorm(backend.gatherRows(hidden, rows), weight: finalNorm, eps: Float(config.normEps))
        return backend.linear(h, weight: lmHead, bias: nil)
    }
}
