import StrataBackend
import StrataCore
import StrataFormats

/// One tensor a decoder layer needs: its key inside the layer (the checkpoint name's suffix,
/// e.g. `self_attn.q_proj.weight`), full checkpoint name, shape, and whether it is a matrix a
/// precision map may quantize. The runtime places and moves layers by these descriptions,
/// so offloading needs no per-architecture code.
public struct LayerTensorSpec: Sendable, Equatable {
    public var key: String
    public var name: String
    public var shape: [Int]
    public var isMatrix: Bool
}

/// The tensors of one decoder layer, wherever they currently live.
public struct LayerWeights: @unchecked Sendable {
    public var tensors: [String: Tensor]
    public init(_ tensors: [String: Tensor] = [:]) { self.tensors = tensors }

    @inline(__always) public subscript(_ key: String) -> Tensor { tensors[key]! }
    @inline(__always) public func optional(_ key: String) -> Tensor? { tensors[key] }
}

/// A layer's KV cache as the attention sees it: one or more row ranges of the batch, each
/// with its own cache tensors ([rows, kvHeads, capacity, headDim]). A single part is the usual
/// case; an offloading policy with host attention passes host-resident rows as their own part,
/// so they are attended where they live instead of being copied.
public struct LayerCache: @unchecked Sendable {
    public struct Part: @unchecked Sendable {
        public var rows: Range<Int>
        public var key: Tensor
        public var value: Tensor
        /// The backend that attends these rows when it is not the computing one: host-resident
        /// cache under a GPU with host attention. This step's q/k/v rows go to it and the
        /// attention output comes back; the cache itself never moves.
        public var backend: (any Backend)?
        public init(rows: Range<Int>, key: Tensor, value: Tensor, backend: (any Backend)? = nil) {
            self.rows = rows; self.key = key; self.value = value; self.backend = backend
        }
    }

    public var parts: [Part]
    public init(parts: [Part]) { self.parts = parts }
    public init(key: Tensor, value: Tensor) { parts = [Part(rows: 0..<key.shape[0], key: key, value: value)] }
}

extension Backend {
    /// Stores this step's keys/values and attends, part by part for a split cache.
    public func cachedAttention(query q: Tensor, key k: Tensor, value v: Tensor, cache: LayerCache,
                                layout: AttentionLayout) -> Tensor {
        if cache.parts.count == 1, cache.parts[0].backend == nil {
            let part = cache.parts[0]
            storeKV(key: k, value: v, keyCache: part.key, valueCache: part.value, layout: layout)
            return attention(query: q, keyCache: part.key, valueCache: part.value, layout: layout)
        }
        let t = layout.length
        var outputs: [Tensor] = []
        for part in cache.parts where !part.rows.isEmpty {
            var sub = layout
            sub.batch = part.rows.count
            sub.padding = Array(layout.padding[part.rows])
            let rows = (part.rows.lowerBound * t)..<(part.rows.upperBound * t)
            if let other = part.backend, other !== self {
                func there(_ x: Tensor) -> Tensor { other.upload(floats: download(rowView(x, rows)), shape: [rows.count, x.columns]) }
                other.storeKV(key: there(k), value: there(v), keyCache: part.key, valueCache: part.value, layout: sub)
                let out = other.attention(query: there(q), keyCache: part.key, valueCache: part.value, layout: sub)
                outputs.append(upload(floats: other.download(out), shape: out.shape))
                continue
            }
            storeKV(key: rowView(k, rows), value: rowView(v, rows), keyCache: part.key, valueCache: part.value, layout: sub)
            outputs.append(attention(query: rowView(q, rows), keyCache: part.key, valueCache: part.value, layout: sub))
        }
        return concatRows(outputs)
    }
}

extension WeightLoader {
    /// Loads a layer's tensors; matrices at the precision map's bits for `layer`.
    func layer(_ specs: [LayerTensorSpec], index: Int) throws -> LayerWeights {
        var tensors: [String: Tensor] = [:]
        for spec in specs {
            let relative = String(spec.name.dropFirst(prefix.count))
            tensors[spec.key] = spec.isMatrix ? try matrix(relative, spec.shape, layer: index) : try load(relative, spec.shape)
        }
        return LayerWeights(tensors)
    }
}

/// Builds spec lists: `add(key, shape)` appends when `present`.
struct LayerSpecBuilder {
    let prefix: String
    var specs: [LayerTensorSpec] = []

    mutating func add(_ key: String, _ shape: [Int], matrix: Bool = false, if present: Bool = true) {
        if present { specs.append(LayerTensorSpec(key: key, name: prefix + key, shape: shape, isMatrix: matrix)) }
    }
}
