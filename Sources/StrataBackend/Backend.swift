import StrataCore

public enum Activation: String, Sendable {
    case relu, gelu, geluTanh, silu

    public init?(huggingFace name: String) {
        switch name {
        case "relu": self = .relu
        case "gelu": self = .gelu
        case "gelu_new", "gelu_pytorch_tanh": self = .geluTanh
        case "silu", "swish": self = .silu
        default: return nil
        }
    }
}

/// The layout of one decoding step of a left-padded batch: `batch` rows of `length` new tokens
/// each, following `pastLength` cached positions. Row b's first `padding[b]` cache positions are
/// padding and never attended to.
public struct AttentionLayout: Sendable {
    public var batch: Int
    public var length: Int
    public var pastLength: Int
    public var padding: [Int]
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var scale: Float

    public init(batch: Int, length: Int, pastLength: Int, padding: [Int], heads: Int, kvHeads: Int, headDim: Int, scale: Float) {
        self.batch = batch; self.length = length; self.pastLength = pastLength; self.padding = padding
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim; self.scale = scale
    }
}

/// The operations a model's forward pass is written against. A backend owns its buffers and
/// never knows which model runs; a model never calls backend-specific code (DESIGN.md layer 3).
/// Activations are 2-D: [rows, features], row r = b * length + t.
public protocol Backend: AnyObject, Sendable {
    var name: String { get }
    /// Whether 16- and 32-bit weight matrices are held rounded to bf16 (`--weight-format bf16`):
    /// a checkpoint's quantized copy of a matrix that is finer than that rounding (a GGUF file's
    /// Q6_K or Q8_0 head) then loses nothing more and is taken as it is, at fewer bytes.
    var holdsWeightsInBF16: Bool { get }

    // Memory
    /// Moves a checkpoint tensor onto the backend in the backend's weight format.
    func upload(weight view: UnsafeRawBufferPointer, dtype: DType, shape: [Int], owner: AnyObject?) -> Tensor
    func upload(floats: [Float], shape: [Int]) -> Tensor
    func zeros(shape: [Int]) -> Tensor
    /// Values as f32 (dequantized for quantized tensors).
    func download(_ tensor: Tensor) -> [Float]
    /// Group-quantizes a weight already on the backend into the packed layout; compressed
    /// weights stay compressed on the backend and are dequantized only inside `linear`.
    func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor
    /// Moves an already quantized tensor (a converted checkpoint) onto the backend.
    func upload(quantized: QuantizedTensor) -> Tensor
    /// A zeroed KV-cache tensor [batch, kvHeads, capacity, headDim], group-quantized along
    /// head_dim when `compression` is given; `storeKV` and `attention` accept either kind.
    func cacheTensor(shape: [Int], compression: QuantizationScheme?) -> Tensor

    // Ops
    /// table[ids[i]] for each id: [ids.count, dim].
    func embedding(_ table: Tensor, ids: [Int32]) -> Tensor
    /// x [M, K] * weight[N, K]^T + bias -> [M, N]
    func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor
    /// x * weights[i]^T + biases[i] for each i: several projections of one input (attention's q,
    /// k and v; a gated MLP's gate and up). A backend that prepares the input for each matmul
    /// (rounding or quantizing it) can do it once.
    func linear(_ x: Tensor, weights: [Tensor], biases: [Tensor?]) -> [Tensor]
    func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor
    func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor
    /// a += b (same shape).
    func addInPlace(_ a: Tensor, _ b: Tensor)
    func activate(_ x: Tensor, _ activation: Activation) -> Tensor
    /// act(gate) * up, SwiGLU-style.
    func gatedActivate(gate: Tensor, up: Tensor, _ activation: Activation) -> Tensor
    /// A transformer's feed-forward block in one op: (act(x gate^T + b0) * (x up^T + b1))
    /// down^T + b2 for a gated MLP (SwiGLU), act(x up^T + b1) down^T + b2 without a gate (OPT's
    /// fc1 and fc2), plus `residual` (the result's shape) when given. `biases` holds the gate's,
    /// up's and down's (the gate's ignored without one). One op, so that a backend can keep the
    /// [rows, ffn] intermediates in its caches; the default composes the ops above.
    func feedForward(_ x: Tensor, gate: Tensor?, up: Tensor, down: Tensor, biases: [Tensor?], activation: Activation,
                     residual: Tensor?) -> Tensor
    /// Rotary embedding in place on x [rows, heads * headDim], rotate-half convention;
    /// `cos`/`sin` are [rows, headDim / 2].
    func applyRotary(_ x: Tensor, heads: Int, headDim: Int, cos: Tensor, sin: Tensor)
    /// Writes this step's keys/values [batch * length, kvHeads * headDim] into the cache
    /// tensors [batch, kvHeads, capacity, headDim] at positions pastLength ..< pastLength + length.
    func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout)
    /// Causal attention of q [batch * length, heads * headDim] over the cache, padding masked.
    func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor
    /// Rows of x at `indices`.
    func gatherRows(_ x: Tensor, _ indices: [Int]) -> Tensor
    /// Rows `range` of a 2-D activation as a view sharing x's memory (no copy).
    func rowView(_ x: Tensor, _ range: Range<Int>) -> Tensor
    /// The parts stacked by rows (same column count) into a new tensor.
    func concatRows(_ parts: [Tensor]) -> Tensor

    // KV-cache slots (continuous batching, pipeline micro-batches)
    /// Sequences `rows` of a cache tensor [batch, kvHeads, capacity, headDim] (either kind) as a
    /// cache tensor of their own sharing its memory.
    func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor
    /// Copies positions `positions` of sequence `row` of cache tensor `source` to positions
    /// starting at `to` of sequence `toRow` of `destination` (the same kind of cache tensor, or
    /// the same tensor: the ranges may then overlap, as when a sequence shifts in place).
    func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int)
}

extension Backend {
    public var holdsWeightsInBF16: Bool { false }

    public func feedForward(_ x: Tensor, gate: Tensor?, up: Tensor, down: Tensor, biases: [Tensor?], activation: Activation,
                            residual: Tensor?) -> Tensor {
        composedFeedForward(x, gate: gate, up: up, down: down, biases: biases, activation: activation, residual: residual)
    }

    /// `feedForward` as separate ops (wrappers that watch `linear` see each projection).
    public func composedFeedForward(_ x: Tensor, gate: Tensor?, up: Tensor, down: Tensor, biases: [Tensor?], activation: Activation,
                                    residual: Tensor?) -> Tensor {
        precondition(biases.count == 3, "feedForward: one bias (or nil) for each of gate, up and down")
        let hidden: Tensor
        if let gate {
            let gateUp = linear(x, weights: [gate, up], biases: [biases[0], biases[1]])
            hidden = gatedActivate(gate: gateUp[0], up: gateUp[1], activation)
        } else {
            hidden = activate(linear(x, weight: up, bias: biases[1]), activation)
        }
        let out = linear(hidden, weight: down, bias: biases[2])
        if let residual { addInPlace(out, residual) }
        return out
    }

    public func linear(_ x: Tensor, weights: [Tensor], biases: [Tensor?]) -> [Tensor] {
        precondition(weights.count == biases.count, "one bias (or nil) per weight")
        return zip(weights, biases).map { linear(x, weight: $0, bias: $1) }
    }
}
