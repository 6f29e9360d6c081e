import StrataBackend
import StrataCore
import StrataFormats
import Synchronization

/// A decoder-only language model as three stages the runtime composes: embedding, one
/// transformer layer at a time, and the head. Splitting at layer granularity lets a block
/// schedule (offloading) or a pipeline stage (cluster) run layers in any order it needs.
public protocol CausalLM: AnyObject, Sendable {
    var config: ModelConfig { get }
    var backend: any Backend { get }
    /// What is stored compressed: weights per layer, and the KV cache `makeCache` builds.
    var compression: Compression { get }
    /// The matrices of decoder layer `layer` that quantization applies to, with whether each
    /// belongs to the feed-forward block (the quality indicator weighs those x4).
    func linearWeights(layer: Int) -> [(name: String, weight: Tensor, feedForward: Bool)]
    func embed(_ step: ForwardStep) -> Tensor
    /// The tensors decoder layer `index` needs (the same list for every layer of a model).
    func layerSpecs(_ index: Int) -> [LayerTensorSpec]
    /// Layer weights loaded at model load; empty when a runtime places and moves them itself.
    var residentLayers: [LayerWeights] { get }
    func layer(_ index: Int, _ hidden: Tensor, weights: LayerWeights, cache: LayerCache, step: ForwardStep) -> Tensor
    /// Final norm and LM head for the given rows of `hidden`: [rows.count, vocab].
    func head(_ hidden: Tensor, rows: [Int]) -> Tensor
}

extension CausalLM {
    /// Layer `index` with its resident weights and its tensors of `cache`.
    public func layer(_ index: Int, _ hidden: Tensor, cache: KVCache, step: ForwardStep) -> Tensor {
        layer(index, hidden, weights: residentLayers[index], cache: LayerCache(key: cache.keys[index], value: cache.values[index]),
              step: step)
    }

    public func makeCache(batch: Int, capacity: Int) -> KVCache {
        KVCache(backend: backend, layers: config.numLayers, batch: batch, kvHeads: config.numKVHeads,
                headDim: config.headDim, capacity: capacity, compression: compression.cache)
    }

    /// Runs all layers for `step` and returns logits of `logitRows` (default: each row's last token).
    public func forward(_ step: ForwardStep, cache: KVCache, logitRows: [Int]? = nil) -> Tensor {
        precondition(step.pastLength == cache.length, "step starts at \(step.pastLength), cache holds \(cache.length)")
        var hidden = embed(step)
        for j in 0..<config.numLayers { hidden = layer(j, hidden, cache: cache, step: step) }
        cache.length = step.pastLength + step.length
        return head(hidden, rows: logitRows ?? step.lastRows)
    }
}

/// Which parts of a model a process holds: all of it, or a pipeline stage's share (its decoder
/// layers, with or without the embeddings and the final norm and LM head: `cluster run` gives
/// both to rank 0). Parts a share leaves out are 1-element placeholders; using them is a
/// programming error.
public struct ModelShare: Sendable, Equatable {
    public var layers: Range<Int>?
    public var embedding: Bool
    public var head: Bool

    public init(layers: Range<Int>?, embedding: Bool, head: Bool) {
        self.layers = layers
        self.embedding = embedding
        self.head = head
    }

    public static let whole = ModelShare(layers: nil, embedding: true, head: true)

    func holds(layer: Int) -> Bool { layers?.contains(layer) ?? true }
}

/// What Strata stores compressed: per-layer weight precision and the KV cache.
public struct Compression: Sendable, Equatable {
    public var weights: PrecisionMap?
    public var cache: QuantizationScheme?

    public init(weights: PrecisionMap? = nil, cache: QuantizationScheme? = nil) {
        self.weights = weights
        self.cache = cache
    }

    public static let none = Compression()
}

/// Records which checkpoint tensors are decoder-layer matrices (what a precision map applies
/// to), so `strata convert` quantizes exactly what loading would.
public final class MatrixLog: Sendable {
    private let entries = Mutex<[String: Int]>([:])
    public init() {}
    func record(name: String, layer: Int) { entries.withLock { $0[name] = layer } }
    /// Checkpoint tensor name -> decoder layer index.
    public var layers: [String: Int] { entries.withLock { $0 } }
}

/// Loads checkpoint tensors onto a backend, checking each against the shape config.json implies.
/// Decoder-layer matrices (`matrix`) are quantized as the precision map says, or read already
/// quantized from a checkpoint `strata convert` wrote.
struct WeightLoader {
    let checkpoint: any TensorSource
    let backend: any Backend
    let prefix: String
    var precision: PrecisionMap? = nil
    var stored: PrecisionMap? = nil
    var log: MatrixLog? = nil

    func load(_ name: String, _ shape: [Int]) throws -> Tensor {
        let view = try checkpoint.require(prefix + name, shape: shape)
        guard view.dtype != .u8 else {
            throw StrataError.invalidFile(path: checkpoint.directory, detail: "tensor '\(prefix + name)' has dtype U8; weights must be F32, F16 or BF16")
        }
        return backend.upload(weight: view.bytes, dtype: view.dtype, shape: view.shape, owner: view.file)
    }

    /// A decoder layer's weight matrix at the precision the map gives `layer`.
    func matrix(_ name: String, _ shape: [Int], layer: Int) throws -> Tensor {
        log?.record(name: prefix + name, layer: layer)
        if let stored, let scheme = try stored.scheme(forLayer: layer) {
            return backend.upload(quantized: try QuantizedCheckpoint.read(checkpoint, name: prefix + name, shape: shape, scheme: scheme))
        }
        let tensor = try load(name, shape)
        guard let scheme = try precision?.scheme(forLayer: layer) else { return tensor }
        return backend.quantize(tensor, scheme: scheme)
    }

    /// The untied LM head (`lm_head.weight`, outside any prefix): the checkpoint's quantized
    /// copy (`PrecisionMap.head`) where the backend rounds weights to bf16 anyway, else the
    /// plain one.
    func head(_ shape: [Int]) throws -> Tensor {
        let name = "lm_head.weight"
        if let scheme = stored?.head, backend.holdsWeightsInBF16, checkpoint.contains(QuantizedCheckpoint.names(name).data) {
            return backend.upload(quantized: try QuantizedCheckpoint.read(checkpoint, name: name, shape: shape, scheme: scheme))
        }
        return try WeightLoader(checkpoint: checkpoint, backend: backend, prefix: "").load(name, shape)
    }

    func loadIf(_ present: Bool, _ name: String, _ shape: [Int]) throws -> Tensor? {
        present ? try load(name, shape) : nil
    }
}

/// What a model directory holds, from config.json and tensor metadata alone (nothing loaded):
/// enough to plan placement before any weight is read.
public struct ModelDescription: Sendable {
    public let config: ModelConfig
    /// What every checkpoint name of the model part starts with ("model.decoder." for OPT).
    public let prefix: String

    public func layerSpecs(_ index: Int) -> [LayerTensorSpec] {
        switch config.family {
        case .opt: return OPTModel.layerSpecs(config, prefix: prefix, layer: index)
        case .llama: return LlamaModel.layerSpecs(config, prefix: prefix, layer: index)
        }
    }
}

public enum ModelLoader {
    public static func describe(directory: String, source: any TensorSource) throws -> ModelDescription {
        describe(config: try ModelConfig(directory: directory), contains: source.contains)
    }

    /// The description of a checkpoint whose tensor names `contains` answers for (a source, or
    /// a known architecture's tensor list).
    public static func describe(config: ModelConfig, contains: (String) -> Bool) -> ModelDescription {
        let prefix: String
        switch config.family {
        case .opt: prefix = contains("model.decoder.embed_tokens.weight") ? "model.decoder." : "decoder."
        case .llama: prefix = contains("model.embed_tokens.weight") ? "model." : ""
        }
        return ModelDescription(config: config, prefix: prefix)
    }

    /// Reads config.json and the checkpoint in `directory` and builds the model on `backend`,
    /// compressing weights and cache as `compression` asks.
    /// With `loadLayers: false` only embeddings, final norm and head are loaded: an offloading
    /// runtime places the decoder layers itself. `share` loads a pipeline stage's part only.
    public static func load(directory: String, backend: any Backend, compression: Compression = .none,
                            matrixLog: MatrixLog? = nil, loadLayers: Bool = true, share: ModelShare = .whole) throws -> any CausalLM {
        let config = try ModelConfig(directory: directory)
        let checkpoint = try TensorSources.open(directory: directory)
        if let stored = config.storedPrecision {
            try stored.validate(layers: config.numLayers, path: FileSystem.join(directory, "config.json"))
            if compression.weights != nil {
                throw StrataError.invalidRequest(
                    "\(directory) is already quantized (config.json strata_precision from strata convert, or Q4_0/Q4_1/Q8_0 layers of a GGUF file); load it without a weight precision")
            }
        }
        var effective = compression
        effective.weights = config.storedPrecision ?? compression.weights
        switch config.family {
        case .opt: return try OPTModel(config: config, checkpoint: checkpoint, backend: backend, compression: effective, log: matrixLog,
                                      loadLayers: loadLayers, share: share)
        case .llama: return try LlamaModel(config: config, checkpoint: checkpoint, backend: backend, compression: effective, log: matrixLog,
                                          loadLayers: loadLayers, share: share)
        }
    }
}
