import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// A model directory loaded for use: weights on a backend, its tokenizer, and the token ids
/// that end generation.
public final class ModelBundle: Sendable {
    public let directory: String
    public let model: any CausalLM
    public let tokenizer: Tokenizer
    /// EOS ids from generation_config.json, else config.json, else the tokenizer's.
    public let eosTokenIds: Set<Int>
    /// Id used to fill left padding (never attended to).
    public let padTokenId: Int
    /// The model's chat template, when it ships one.
    public let chatTemplate: ChatTemplate?
    let tokenizerConfig: TokenizerConfig

    /// `share`: load only a pipeline stage's part of the model.
    public convenience init(directory: String, backend: any Backend, compression: Compression = .none,
                            share: ModelShare = .whole) throws {
        guard GGUFFile.isModel(directory) else { throw StrataError.fileNotFound(path: directory) }
        if let map = compression.weights {
            try map.validate(layers: try ModelConfig(directory: directory).numLayers, path: "precision map")
        }
        try self.init(directory: directory, model: try ModelLoader.load(directory: directory, backend: backend, compression: compression,
                                                                         share: share))
    }

    /// A bundle around an already loaded model (e.g. one whose layers an offloading engine places).
    public init(directory: String, model: any CausalLM) throws {
        self.directory = directory
        self.model = model
        tokenizer = try Tokenizer.load(directory: directory)
        tokenizerConfig = try TokenizerConfig(directory: directory)
        let origin = GGUFFile.isGGUF(directory) ? directory + " (tokenizer.chat_template)" : FileSystem.join(directory, "tokenizer_config.json")
        chatTemplate = try tokenizerConfig.chatTemplate.map { try ChatTemplate($0, origin: origin) }
        let generation = try GenerationConfig(directory: directory)
        var eos = generation.eosTokenIds
        if eos.isEmpty { eos = model.config.eosTokenIds }
        if eos.isEmpty, let e = tokenizer.eosTokenId { eos = [e] }
        eosTokenIds = Set(eos)
        padTokenId = generation.padTokenId ?? model.config.padTokenId ?? tokenizer.padTokenId ?? eos.first ?? 0
        if tokenizer.vocabularySize > model.config.vocabSize {
            throw StrataError.invalidFile(
                path: directory,
                detail: "tokenizer has \(tokenizer.vocabularySize) tokens but config.json vocab_size is \(model.config.vocabSize)")
        }
    }

    /// A conversation rendered by the model's chat template (with the assistant's turn opened),
    /// as `apply_chat_template(..., add_generation_prompt=True)` would.
    public func renderChat(_ messages: [JSONValue]) throws -> String {
        guard let chatTemplate else {
            throw StrataError.invalidRequest("\(directory) has no chat template (tokenizer_config.json chat_template); give a plain prompt")
        }
        guard !messages.isEmpty else { throw StrataError.invalidRequest("messages is empty") }
        return try chatTemplate.render(messages: messages, addGenerationPrompt: true, bosToken: tokenizerConfig.bosToken,
                                       eosToken: tokenizerConfig.eosToken)
    }

    /// Token ids of a rendered chat: the template writes any BOS itself, so the tokenizer adds
    /// none (as transformers tokenizes chat templates).
    public func encodeChat(_ messages: [JSONValue]) throws -> (prompt: String, ids: [Int]) {
        let prompt = try renderChat(messages)
        return (prompt, try encodePrompt(prompt, addSpecialTokens: false))
    }

    /// Prompt token ids, checked against the model's context.
    public func encodePrompt(_ prompt: String, addSpecialTokens: Bool = true) throws -> [Int] {
        guard !prompt.isEmpty else { throw StrataError.invalidRequest("prompt is empty") }
        let ids = tokenizer.encode(prompt, addSpecialTokens: addSpecialTokens)
        guard !ids.isEmpty else { throw StrataError.invalidRequest("prompt encodes to no tokens") }
        let limit = model.config.maxPositions
        guard ids.count < limit else {
            throw StrataError.invalidRequest("prompt is \(ids.count) tokens, longer than the model's \(limit) positions (max_position_embeddings); at most \(limit - 1) leave room to generate")
        }
        return ids
    }
}
