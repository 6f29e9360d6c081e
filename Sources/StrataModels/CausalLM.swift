import StrataBackend
import StrataCore
import StrataFormats

/// A decoder-only language model as three stages the runtime composes: embedding, one
/// transformer layer at a time, and the head. Splitting at layer granularity lets a block
/// schedule (offloading) or a pipeline stage (cluster) run layers in any order it needs.
public protocol CausalLM: AnyObject, Sendable {
    var config: ModelConfig { get }
    var backend: any Backend { get }
    func embed(_ step: ForwardStep) -> Tensor
    func layer(_ index: Int, _ hidden: Tensor, cache: KVCache, step: ForwardStep) -> Tensor
    /// Final norm and LM head for the given rows of `hidden`: [rows.count, vocab].
    func head(_ hidden: Tensor, rows: [Int]) -> Tensor
}

extension CausalLM {
    public func makeCache(batch: Int, capacity: Int) -> KVCache {
        KVCache(backend: backend, layers: config.numLayers, batch: batch, kvHeads: config.numKVHeads,
                headDim: config.headDim, capacity: capacity)
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

/// Loads checkpoint tensors onto a backend, checking each against the shape config.json implies.
struct WeightLoader {
    let checkpoint: Checkpoint
    let backend: any Backend
    let prefix: String

    func load(_ name: String, _ shape: [Int]) throws -> Tensor {
        let view = try checkpoint.require(prefix + name, shape: shape)
        return backend.upload(weight: view.bytes, dtype: view.dtype, shape: view.shape, owner: view.file)
    }

    func loadIf(_ present: Bool, _ name: String, _ shape: [Int]) throws -> Tensor? {
        present ? try load(name, shape) : nil
    }
}

public enum ModelLoader {
    /// Reads config.json and the checkpoint in `directory` and builds the model on `backend`.
    public static func load(directory: String, backend: any Backend) throws -> any CausalLM {
        let config = try ModelConfig(directory: directory)
        let checkpoint = try Checkpoint(directory: directory)
        switch config.family {
        case .opt: return try OPTModel(config: config, checkpoint: checkpoint, backend: backend)
        case .llama: return try LlamaModel(config: config, checkpoint: checkpoint, backend: backend)
        }
    }
}
