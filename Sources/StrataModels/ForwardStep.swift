import StrataBackend
import StrataCore

/// The tokens fed to one forward pass of a left-padded batch: `batch` rows of `length` tokens,
/// following `pastLength` positions already in the KV cache.
public struct ForwardStep: Sendable {
    public let tokens: [Int32]
    public let batch: Int
    public let length: Int
    public let pastLength: Int
    /// Leading pad positions of each row (in the cache and in this step).
    public let padding: [Int]
    /// Position of each token counted from its row's first real token; -1 for padding.
    public let positions: [Int]

    public init(tokens: [Int32], batch: Int, length: Int, pastLength: Int, padding: [Int]) {
        precondition(tokens.count == batch * length && padding.count == batch)
        self.tokens = tokens
        self.batch = batch
        self.length = length
        self.pastLength = pastLength
        self.padding = padding
        var positions = [Int](repeating: -1, count: batch * length)
        for b in 0..<batch {
            for t in 0..<length {
                let p = pastLength + t - padding[b]
                positions[b * length + t] = p >= 0 ? p : -1
            }
        }
        self.positions = positions
    }

    /// Prompts laid out as one left-padded block: each row is `padToken` up to its prompt, all
    /// rows as long as the longest. Returns the tokens, that length and each row's lead.
    public static func leftPadded(_ prompts: [[Int]], padToken: Int32) -> (tokens: [Int32], length: Int, leads: [Int]) {
        let length = prompts.map(\.count).max() ?? 0
        let leads = prompts.map { length - $0.count }
        var tokens = [Int32](repeating: padToken, count: prompts.count * length)
        for (b, p) in prompts.enumerated() {
            for (t, id) in p.enumerated() { tokens[b * length + leads[b] + t] = Int32(id) }
        }
        return (tokens, length, leads)
    }

    /// Row index of each sequence's last token in this step.
    public var lastRows: [Int] { (0..<batch).map { $0 * length + length - 1 } }

    public func attentionLayout(heads: Int, kvHeads: Int, headDim: Int, scale: Float) -> AttentionLayout {
        AttentionLayout(batch: batch, length: length, pastLength: pastLength, padding: padding,
                        heads: heads, kvHeads: kvHeads, headDim: headDim, scale: scale)
    }
}

/// Keys and values of every layer for a batch, in backend tensors
/// [batch, kvHeads, capacity, headDim]. Where they live is the backend's (later the
/// placement policy's) business, not the model's.
public final class KVCache: @unchecked Sendable {
    public let keys: [Tensor]
    public let values: [Tensor]
    public let batch: Int
    public let capacity: Int
    /// Positions filled so far.
    public internal(set) var length = 0

    public init(backend: any Backend, layers: Int, batch: Int, kvHeads: Int, headDim: Int, capacity: Int,
                compression: QuantizationScheme? = nil) {
        let shape = [batch, kvHeads, capacity, headDim]
        keys = (0..<layers).map { _ in backend.cacheTensor(shape: shape, compression: compression) }
        values = (0..<layers).map { _ in backend.cacheTensor(shape: shape, compression: compression) }
        self.batch = batch
        self.capacity = capacity
    }

    public var byteCount: Int { keys.reduce(0) { $0 + $1.byteCount } * 2 }
}
