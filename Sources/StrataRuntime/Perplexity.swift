import StrataBackend
import StrataCore
import StrataModels
#if canImport(Glibc)
import Glibc
#endif

/// Perplexity over non-overlapping windows (the GPTQ protocol): the text is tokenized once,
/// cut into windows of `window` tokens (a shorter tail is dropped, unless the text has no full
/// window, when the whole text is one window), and each window is scored on its own from an
/// empty cache. Perplexity = exp(total negative log-likelihood / tokens predicted).
public struct PerplexityResult: Sendable {
    public var windows: Int
    public var tokensScored: Int
    public var negativeLogLikelihood: Double
    public var perplexity: Double { exp(negativeLogLikelihood / Double(max(tokensScored, 1))) }

    public var json: JSONValue {
        .object(["perplexity": .number(perplexity), "tokens": .number(Double(tokensScored)),
                 "windows": .number(Double(windows)), "nll": .number(negativeLogLikelihood)])
    }
}

public enum Perplexity {
    /// Rows of logits computed at a time, so a 2,048-token window over a 50k vocabulary does not
    /// hold 400 MB of logits at once.
    static let headChunk = 256

    public static func windows(of ids: [Int], window: Int) -> [ArraySlice<Int>] {
        guard ids.count >= 2 else { return [] }
        if ids.count < window { return [ids[...]] }
        return stride(from: 0, to: ids.count - window + 1, by: window).map { ids[$0..<($0 + window)] }
    }

    public static func evaluate(bundle: ModelBundle, text: String, window: Int, engine: OffloadEngine? = nil,
                                progress: ((Int, Int) -> Void)? = nil) throws -> PerplexityResult {
        let model = bundle.model
        guard window >= 2 else { throw StrataError.invalidRequest("--window must be at least 2") }
        guard window <= model.config.maxPositions else {
            throw StrataError.invalidRequest("--window \(window) exceeds the model's \(model.config.maxPositions) positions")
        }
        let ids = bundle.tokenizer.encode(text)
        let pieces = windows(of: ids, window: window)
        guard !pieces.isEmpty else { throw StrataError.invalidRequest("text encodes to fewer than 2 tokens; nothing to score") }
        var result = PerplexityResult(windows: pieces.count, tokensScored: 0, negativeLogLikelihood: 0)
        if let engine {
            // Under a policy, whole blocks of equal-length windows run together.
            let block = engine.policy.blockSize, length = pieces[0].count, vocab = model.config.vocabSize
            try engine.beginBlock(capacity: length)
            defer { engine.endBlock() }
            for start in stride(from: 0, to: pieces.count, by: block) {
                var rows = Array(pieces[start..<min(pieces.count, start + block)])
                let real = rows.count
                while rows.count < block { rows.append(rows[0]) }
                let step = ForwardStep(tokens: rows.flatMap { $0.map(Int32.init) }, batch: block, length: length, pastLength: 0,
                                       padding: [Int](repeating: 0, count: block))
                let logits = try engine.forward(step, allRows: true)
                logits.withUnsafeBufferPointer { all in
                    for (b, piece) in rows.prefix(real).enumerated() {
                        let tokens = Array(piece)
                        for t in 0..<(length - 1) {
                            result.negativeLogLikelihood += negativeLogProbability(all.baseAddress! + (b * length + t) * vocab, count: vocab,
                                                                                   target: tokens[t + 1])
                        }
                        result.tokensScored += length - 1
                    }
                }
                progress?(min(pieces.count, start + block), pieces.count)
            }
            return result
        }
        for (index, piece) in pieces.enumerated() {
            let tokens = Array(piece)
            result.negativeLogLikelihood += score(model: model, tokens: tokens)
            result.tokensScored += tokens.count - 1
            progress?(index + 1, pieces.count)
        }
        return result
    }

    /// log p(continuation | context) under the model, one resident forward pass over both:
    /// the score lm-evaluation-harness asks a server for (`echo` logprobs summed over the
    /// continuation), computed without one.
    public static func loglikelihood(model: any CausalLM, context: [Int], continuation: [Int]) -> Double {
        precondition(!context.isEmpty && !continuation.isEmpty)
        return -score(model: model, tokens: context + continuation, from: context.count - 1)
    }

    /// Sum of -log p(token[t + 1] | tokens[...t]) over one window, for t from `first`.
    static func score(model: any CausalLM, tokens: [Int], from first: Int = 0) -> Double {
        let step = ForwardStep(tokens: tokens.map(Int32.init), batch: 1, length: tokens.count, pastLength: 0, padding: [0])
        let cache = model.makeCache(batch: 1, capacity: tokens.count)
        var hidden = model.embed(step)
        for j in 0..<model.config.numLayers { hidden = model.layer(j, hidden, cache: cache, step: step) }
        var total = 0.0
        let vocab = model.config.vocabSize
        for start in stride(from: first, to: tokens.count - 1, by: headChunk) {
            let rows = Array(start..<min(tokens.count - 1, start + headChunk))
            let logits = model.backend.download(model.head(hidden, rows: rows))
            for (i, t) in rows.enumerated() {
                total += logits.withUnsafeBufferPointer { negativeLogProbability($0.baseAddress! + i * vocab, count: vocab, target: tokens[t + 1]) }
            }
        }
        return total
    }

    /// -log softmax(row)[target], in double precision.
    static func negativeLogProbability(_ row: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        var top = -Float.infinity
        for i in 0..<count { top = max(top, row[i]) }
        var sum = 0.0
        for i in 0..<count { sum += exp(Double(row[i] - top)) }
        return log(sum) + Double(top) - Double(row[target])
    }
}
