import StrataCore

/// Llama-3 style frequency-dependent RoPE scaling (`rope_scaling` with `rope_type: llama3`), or
/// linear scaling (`rope_type: linear`).
public struct RopeScaling: Sendable, Equatable {
    public enum Kind: String, Sendable { case llama3, linear }
    public var kind: Kind
    public var factor: Double
    public var lowFreqFactor: Double
    public var highFreqFactor: Double
    public var originalMaxPositions: Int
}

/// The architecture facts of a Hugging Face `config.json`, normalised across model families.
public struct ModelConfig: Sendable, Equatable {
    public enum Family: String, Sendable { case opt, llama }
    public static let supportedModelTypes = ["opt", "llama", "mistral", "qwen2"]

    public var modelType: String
    public var family: Family
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var maxPositions: Int
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]
    public var padTokenId: Int?
    public var tieWordEmbeddings: Bool

    // OPT
    public var wordEmbedProjDim: Int
    public var doLayerNormBefore: Bool
    public var activation: String
    public var enableBias: Bool
    public var layerNormAffine: Bool

    // Llama family
    public var normEps: Double
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling?
    /// Bias on q/k/v projections (Qwen2, Llama with `attention_bias`).
    public var qkvBias: Bool
    /// Bias on the attention output projection (Llama with `attention_bias`).
    public var outputBias: Bool
    public var mlpBias: Bool
    public var slidingWindow: Int?
    /// Written by `strata convert --precision`: the checkpoint's decoder layers are stored
    /// group-quantized as this map says (tensors `<name>.qdata`, `.qsteps`, `.qmins`).
    public var storedPrecision: PrecisionMap?

    public init(directory: String) throws {
        guard GGUFFile.isModel(directory) else { throw StrataError.fileNotFound(path: directory) }
        guard let file = try ModelFiles.json(directory, "config.json") else {
            throw StrataError.fileNotFound(path: FileSystem.join(directory, "config.json"))
        }
        try self.init(json: file.value, path: file.path)
    }

    public init(json: JSONValue, path: String) throws {
        let f = try JSONFields(json, path: path)
        if let stored = f.object["strata_precision"], !stored.isNull {
            storedPrecision = try PrecisionMap(json: stored, path: path + " (strata_precision)")
        }
        modelType = try f.string("model_type")
        switch modelType {
        case "opt": family = .opt
        case "llama", "mistral", "qwen2": family = .llama
        default: throw StrataError.unsupportedArchitecture(modelType: modelType, supported: Self.supportedModelTypes)
        }
        vocabSize = try f.int("vocab_size")
        hiddenSize = try f.int("hidden_size")
        numLayers = try f.int("num_hidden_layers")
        numHeads = try f.int("num_attention_heads")
        bosTokenId = f.has("bos_token_id") ? try f.int("bos_token_id") : nil
        eosTokenIds = try f.intList("eos_token_id")
        padTokenId = f.has("pad_token_id") ? try f.int("pad_token_id") : nil
        maxPositions = try f.int("max_position_embeddings")

        switch family {
        case .opt:
            intermediateSize = try f.int("ffn_dim")
            numKVHeads = numHeads
            headDim = hiddenSize / max(numHeads, 1)
            wordEmbedProjDim = try f.int("word_embed_proj_dim", default: hiddenSize)
            doLayerNormBefore = try f.bool("do_layer_norm_before", default: true)
            activation = try f.string("activation_function", default: "relu") ?? "relu"
            enableBias = try f.bool("enable_bias", default: true)
            layerNormAffine = try f.bool("layer_norm_elementwise_affine", default: true)
            tieWordEmbeddings = try f.bool("tie_word_embeddings", default: true)
            normEps = 1e-5
            ropeTheta = 0
            ropeScaling = nil
            qkvBias = enableBias
            outputBias = enableBias
            mlpBias = enableBias
            slidingWindow = nil
        case .llama:
            intermediateSize = try f.int("intermediate_size")
            numKVHeads = try f.int("num_key_value_heads", default: numHeads)
            headDim = try f.int("head_dim", default: hiddenSize / max(numHeads, 1))
            wordEmbedProjDim = hiddenSize
            doLayerNormBefore = true
            activation = try f.string("hidden_act", default: "silu") ?? "silu"
            enableBias = false
            layerNormAffine = true
            tieWordEmbeddings = try f.bool("tie_word_embeddings", default: false)
            normEps = try f.double("rms_norm_eps", default: 1e-6)
            // transformers 5 writes `rope_parameters` (theta inside); 4.x writes `rope_theta` + `rope_scaling`.
            if let params = f.object["rope_parameters"], !params.isNull {
                ropeTheta = try JSONFields(params, path: path + " (rope_parameters)").double("rope_theta", default: 10000)
            } else {
                ropeTheta = try f.double("rope_theta", default: 10000)
            }
            ropeScaling = try Self.parseRopeScaling(f, maxPositions: maxPositions)
            let attentionBias = try f.bool("attention_bias", default: false)
            qkvBias = modelType == "qwen2" ? true : attentionBias
            outputBias = modelType == "qwen2" ? false : attentionBias
            mlpBias = try f.bool("mlp_bias", default: false)
            let useSliding = try f.bool("use_sliding_window", default: modelType == "mistral")
            slidingWindow = useSliding && f.has("sliding_window") ? try f.int("sliding_window") : nil
        }
        try validate(path: path)
    }

    private static func parseRopeScaling(_ f: JSONFields, maxPositions: Int) throws -> RopeScaling? {
        let key = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling"
        guard let value = f.object[key], !value.isNull else { return nil }
        let s = try JSONFields(value, path: f.path + " (\(key))")
        let typeName = try s.string("rope_type", default: nil) ?? s.string("type", default: "default") ?? "default"
        if typeName == "default" { return nil }
        guard let kind = RopeScaling.Kind(rawValue: typeName) else {
            throw StrataError.invalidFile(path: f.path, detail: "\(key) type '\(typeName)' is not supported (supported: default, llama3, linear)")
        }
        return RopeScaling(
            kind: kind,
            factor: try s.double("factor"),
            lowFreqFactor: try s.double("low_freq_factor", default: 1),
            highFreqFactor: try s.double("high_freq_factor", default: 4),
            originalMaxPositions: try s.int("original_max_position_embeddings", default: maxPositions))
    }

    /// Decoder layers a config may declare (far above any released model).
    public static let maxLayers = 1 << 12

    private func validate(path: String) throws {
        func bad(_ d: String) -> StrataError { .invalidFile(path: path, detail: d) }
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("num_hidden_layers", numLayers),
                          ("num_attention_heads", numHeads), ("max_position_embeddings", maxPositions),
                          ("intermediate_size/ffn_dim", intermediateSize), ("num_key_value_heads", numKVHeads), ("head_dim", headDim)] where v <= 0 {
            throw bad("field '\(name)' must be positive, got \(v)")
        }
        // Upper bounds far above any released model, so that every size computed from these
        // (weight bytes, KV cache bytes) stays well inside Int before anything is allocated.
        for (name, v, limit) in [("vocab_size", vocabSize, 1 << 21), ("hidden_size", hiddenSize, 1 << 20),
                                 ("num_hidden_layers", numLayers, Self.maxLayers), ("num_attention_heads", numHeads, 1 << 12),
                                 ("max_position_embeddings", maxPositions, 1 << 24), ("intermediate_size/ffn_dim", intermediateSize, 1 << 21),
                                 ("head_dim", headDim, 1 << 14)] where v > limit {
            throw bad("field '\(name)' is \(v), above the limit of \(limit)")
        }
        if family == .opt, hiddenSize % numHeads != 0 {
            throw bad("hidden_size \(hiddenSize) is not divisible by num_attention_heads \(numHeads)")
        }
        if numHeads % numKVHeads != 0 {
            throw bad("num_attention_heads \(numHeads) is not a multiple of num_key_value_heads \(numKVHeads)")
        }
        if family == .llama, headDim % 2 != 0 { throw bad("head_dim \(headDim) must be even for RoPE") }
        let supportedActivations = ["relu", "gelu", "gelu_new", "silu", "swish"]
        if !supportedActivations.contains(activation) {
            throw bad("activation '\(activation)' is not supported (supported: \(supportedActivations.joined(separator: ", ")))")
        }
    }
}

/// `generation_config.json`: token ids and sampling defaults.
public struct GenerationConfig: Sendable {
    public var eosTokenIds: [Int] = []
    public var bosTokenId: Int?
    public var padTokenId: Int?

    public init() {}

    public init(directory: String) throws {
        guard let file = try ModelFiles.json(directory, "generation_config.json") else { return }
        let f = try JSONFields(file.value, path: file.path)
        eosTokenIds = try f.intList("eos_token_id")
        bosTokenId = f.has("bos_token_id") ? try f.int("bos_token_id") : nil
        padTokenId = f.has("pad_token_id") ? try f.int("pad_token_id") : nil
    }
}

/// `tokenizer_config.json`: special-token strings and whether BOS/EOS are added.
public struct TokenizerConfig: Sendable {
    public var addBosToken: Bool?
    public var addEosToken: Bool?
    public var bosToken: String?
    public var eosToken: String?
    public var padToken: String?
    public var unkToken: String?
    public var modelMaxLength: Int?

    public init() {}

    /// The chat template (a Jinja string) models with a chat format ship.
    public var chatTemplate: String?

    public init(directory: String) throws {
        guard let file = try ModelFiles.json(directory, "tokenizer_config.json") else { self.init(); return }
        try self.init(json: file.value, path: file.path)
    }

    public init(json: JSONValue, path: String) throws {
        let f = try JSONFields(json, path: path)
        addBosToken = f.has("add_bos_token") ? try f.bool("add_bos_token", default: false) : nil
        addEosToken = f.has("add_eos_token") ? try f.bool("add_eos_token", default: false) : nil
        func token(_ key: String) -> String? {
            guard let v = f.object[key] else { return nil }
            return v.string ?? v["content"]?.string
        }
        bosToken = token("bos_token")
        eosToken = token("eos_token")
        padToken = token("pad_token")
        unkToken = token("unk_token")
        if let m = f.object["model_max_length"]?.double, m < 1e15 { modelMaxLength = Int(m) }
        // A string, or (older files) a list of named templates of which "default" is the chat one.
        if let t = f.object["chat_template"] {
            if let s = t.string { chatTemplate = s }
            else if let list = t.array { chatTemplate = list.first { $0["name"]?.string == "default" }?["template"]?.string }
        }
    }
}
