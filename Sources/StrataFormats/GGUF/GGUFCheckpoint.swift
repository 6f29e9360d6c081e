import StrataCore
import Synchronization

/// A GGUF model's tensors under Hugging Face names, as `strata convert --precision` would
/// have stored them: matrices of exactly-quantized layers as `<name>.qdata/.qsteps/.qmins`
/// (with `strata_precision` in the derived config.json), everything else as F32/F16/BF16; the
/// LM head both ways when `GGUFModel.headScheme` has a group form for it.
/// Tensors are decoded on first use and kept until `releaseMappings`; plain F32/F16/BF16
/// tensors that need no reordering are views of the mapped file.
public final class GGUFCheckpoint: TensorSource, @unchecked Sendable {
    public let model: GGUFModel
    public var directory: String { model.path }
    public let tensorNames: [String]
    /// Exposed name -> (source tensor, how the exposed tensor is derived).
    private let entries: [String: Entry]
    private let decoded = Mutex<[String: TensorView]>([:])

    enum Form { case plain, qdata, qsteps, qmins }
    struct Entry {
        var hfName: String
        var tensor: GGUFTensorInfo
        var heads: Int?
        var form: Form
        var dtype: DType
        var shape: [Int]
    }

    public init(model: GGUFModel) {
        self.model = model
        var entries: [String: Entry] = [:]
        for (hf, source) in model.names {
            let t = source.tensor
            var scheme: QuantizationScheme? = nil
            if let layer = GGUFModel.layerIndex(hf), model.layerBits[layer] < 16, t.shape.count == 2, hf.hasSuffix("_proj.weight") {
                scheme = try! QuantizationScheme(bits: model.layerBits[layer], groupSize: 32)
            } else if hf == "lm_head.weight" {
                scheme = model.headScheme
            }
            if let scheme {
                let groups = scheme.geometry(t.shape).groupCount
                let names = QuantizedCheckpoint.names(hf)
                entries[names.data] = Entry(hfName: hf, tensor: t, heads: source.heads, form: .qdata, dtype: .u8,
                                            shape: [groups * scheme.bytesPerGroup])
                entries[names.steps] = Entry(hfName: hf, tensor: t, heads: source.heads, form: .qsteps, dtype: .f16, shape: [groups])
                entries[names.mins] = Entry(hfName: hf, tensor: t, heads: source.heads, form: .qmins, dtype: .f16, shape: [groups])
            }
            // The head's plain copy stays: a backend that computes in f32 keeps it exact.
            if scheme == nil || hf == "lm_head.weight" {
                let dtype: DType = switch t.type { case .f16: .f16; case .bf16: .bf16; default: .f32 }
                entries[hf] = Entry(hfName: hf, tensor: t, heads: source.heads, form: .plain, dtype: dtype, shape: t.shape)
            }
        }
        self.entries = entries
        tensorNames = entries.keys.sorted()
    }

    public func contains(_ name: String) -> Bool { entries[name] != nil }

    public func shapeAndType(_ name: String) -> (shape: [Int], dtype: DType)? {
        entries[name].map { ($0.shape, $0.dtype) }
    }

    public func releaseMappings() { decoded.withLock { $0.removeAll() } }

    public func tensor(_ name: String) -> TensorView? {
        guard let e = entries[name] else { return nil }
        if let v = decoded.withLock({ $0[name] }) { return v }
        let view: TensorView
        do { view = try make(name, e) } catch { return nil }
        decoded.withLock { $0[name] = view }
        return view
    }

    private func make(_ name: String, _ e: Entry) throws -> TensorView {
        let t = e.tensor
        let source = model.file.bytes(of: t)
        let rows = t.shape.count == 2 ? t.shape[0] : t.shape.reduce(1, *)
        let rowsPerHead = e.heads.map { rows / $0 }
        func order(_ r: Int) -> Int { rowsPerHead.map { RotaryRows.source(r, rowsPerHead: $0) } ?? r }

        switch e.form {
        case .plain:
            let native = [GGMLType.f32, .f16, .bf16].contains(t.type)
            if native && e.heads == nil {
                return TensorView(name: name, dtype: e.dtype, shape: e.shape, bytes: source, file: model.file.file)
            }
            let perRow = t.elementCount / rows
            let rowBytes = perRow * e.dtype.byteSize, sourceRowBytes = perRow / t.type.blockSize * t.type.blockBytes
            let memory = try MappedFile(derivedFrom: model.path, size: rows * rowBytes) { out in
                for r in 0..<rows {
                    let from = source.baseAddress! + order(r) * sourceRowBytes
                    if native {
                        (out.baseAddress! + r * rowBytes).copyMemory(from: from, byteCount: rowBytes)
                    } else {
                        GGMLDequantize.toFloat(from, type: t.type, count: perRow,
                                               into: (out.baseAddress! + r * rowBytes).assumingMemoryBound(to: Float.self))
                    }
                }
            }
            return TensorView(name: name, dtype: e.dtype, shape: e.shape, bytes: memory.bytes(0..<memory.size), file: memory)
        case .qdata, .qsteps, .qmins:
            // Re-lay the blocks out as Strata groups (rows reordered for q/k), then hand out the
            // three parts; all three are kept, since a loader reads them together.
            let q = GGUFHead.quantized(source, type: t.type, shape: t.shape)
            // One part as its own mapping, rows in Hugging Face order.
            func part(_ bytes: UnsafeRawBufferPointer, name: String, dtype: DType) throws -> TensorView {
                let rowBytes = bytes.count / rows
                let memory = try MappedFile(derivedFrom: model.path, size: bytes.count) { out in
                    for r in 0..<rows {
                        (out.baseAddress! + r * rowBytes).copyMemory(from: bytes.baseAddress! + order(r) * rowBytes, byteCount: rowBytes)
                    }
                }
                return TensorView(name: name, dtype: dtype, shape: [bytes.count / dtype.byteSize], bytes: memory.bytes(0..<memory.size),
                                  file: memory)
            }
            let names = QuantizedCheckpoint.names(e.hfName)
            let views = [
                try q.data.withUnsafeBytes { try part($0, name: names.data, dtype: .u8) },
                try q.steps.withUnsafeBytes { try part($0, name: names.steps, dtype: .f16) },
                try q.mins.withUnsafeBytes { try part($0, name: names.mins, dtype: .f16) },
            ]
            var result: TensorView? = nil
            for view in views {
                if view.name != name { decoded.withLock { $0[view.name] = view } } else { result = view }
            }
            return result!
        }
    }
}
