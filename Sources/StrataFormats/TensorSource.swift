import StrataCore

/// Where a model's tensors come from: a Hugging Face safetensors checkpoint or Strata's
/// offload store. Both hand out memory-mapped views.
public protocol TensorSource: AnyObject, Sendable {
    var directory: String { get }
    var tensorNames: [String] { get }
    func contains(_ name: String) -> Bool
    func tensor(_ name: String) -> TensorView?
    /// Shape and dtype of a tensor without reading (or decoding) it.
    func shapeAndType(_ name: String) -> (shape: [Int], dtype: DType)?
    /// Drops what tensor views have mapped or decoded so far (views already handed out stay
    /// valid): a loader that copied what it needs calls this so the source holds no memory.
    func releaseMappings()
    /// Why a listed tensor cannot be read (its file missing, truncated, unreadable), naming
    /// the file; nil when the source has nothing more to say than that it is absent.
    func unreadable(_ name: String) -> StrataError?
}

extension TensorSource {
    public func shapeAndType(_ name: String) -> (shape: [Int], dtype: DType)? { tensor(name).map { ($0.shape, $0.dtype) } }
    public func releaseMappings() {}
    public func unreadable(_ name: String) -> StrataError? { nil }

    /// The tensor, or an error naming it and the checkpoint when it is absent or misshapen.
    public func require(_ name: String, shape: [Int]? = nil) throws -> TensorView {
        guard let view = tensor(name) else {
            if contains(name), let reason = unreadable(name) { throw reason }
            throw StrataError.invalidFile(path: directory, detail: "checkpoint has no tensor '\(name)', which the architecture needs")
        }
        if let shape, view.shape != shape {
            throw StrataError.invalidFile(path: view.file.path, detail: "tensor '\(name)' has shape \(view.shape), expected \(shape) from config.json")
        }
        return view
    }
}

public enum TensorSources {
    /// The offload store when `directory` holds one, a GGUF model when it is a `.gguf` file,
    /// else the safetensors checkpoint.
    public static func open(directory: String) throws -> any TensorSource {
        if GGUFFile.isGGUF(directory) { return GGUFCheckpoint(model: try GGUFModel.open(directory)) }
        if FileSystem.exists(FileSystem.join(directory, OffloadStore.manifestName)) { return try OffloadStore(directory: directory) }
        return try Checkpoint(directory: directory)
    }
}
