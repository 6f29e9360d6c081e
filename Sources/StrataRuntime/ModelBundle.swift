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

    public convenience init(directory: String, backend: any Backend, compression: Compression = .none) throws {
        guard FileSystem.isDirectory(directory) || GGUFFile.isGGUF(directory) && FileSystem.exists(directory) else {
            throw StrataError.fileNotFound(path: directory)
        }
        if let map = compression.weights {
            try map.validate(layers: try ModelConfig(directory: directory).numLayers, path: "precision map")
        }
        try self.init(directory: directory, model: try ModelLoader.load(directory: directory, backend: backend, compression: compression))
    }

    /// A bundle around an already loaded model (e.g. one whose layers an offloading engine places).
    public init(directory: String, model: any CausalLM) throws {
        self.directory = directory
        self.model = model
        tokenizer = try Tokenizer.load(directory: directory)
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

    /// Prompt token ids, checked against the model's context.
    public func encodePrompt(_ prompt: String) throws -> [Int] {
        guard !prompt.isEmpty else { throw StrataError.invalidRequest("prompt is empty") }
        let ids = tokenizer.encode(prompt)
        guard !ids.isEmpty else { throw StrataError.invalidRequest("prompt encodes to no tokens") }
        let limit = model.config.maxPositions
        guard ids.count < limit else {
            throw StrataError.invalidRequest("prompt is \(ids.count) tokens, longer than the model's \(limit) positions (max_position_embeddings); at most \(limit - 1) leave room to generate")
        }
        return ids
    }
}
