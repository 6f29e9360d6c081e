import StrataCore
import StrataFormats

/// What each row of a batch being generated has produced so far, and whether (and why) it has
/// stopped: EOS, a stop string, or its token budget (never past the model's positions). The
/// resident generator and a pipeline's rank 0 both sample through this, so a pipeline stops
/// rows exactly where `generate` does.
public struct BatchRows: Sendable {
    public let budgets: [Int]
    public private(set) var generated: [[Int]]
    public private(set) var finished: [Bool]
    public private(set) var reasons: [FinishReason]
    private var texts: [String?]
    private var rngs: [SeededGenerator]
    private let stopStrings: [[String]]
    private let sampling: SamplingParameters
    private let ignoreEOS: Bool
    private let eosTokenIds: Set<Int>
    private let tokenizer: Tokenizer

    /// `promptLengths[b]` and `maxNewTokens[b]` bound row b's budget by `maxPositions`;
    /// `sampleIndexes` seed each row's sampler with `sampling.seed`.
    public init(promptLengths: [Int], maxNewTokens: [Int], stopStrings: [[String]], sampleIndexes: [UInt64],
                maxPositions: Int, sampling: SamplingParameters, ignoreEOS: Bool, eosTokenIds: Set<Int>, tokenizer: Tokenizer) {
        budgets = zip(promptLengths, maxNewTokens).map { max(0, min($1, maxPositions - $0)) }
        generated = [[Int]](repeating: [], count: budgets.count)
        finished = budgets.map { $0 == 0 }
        reasons = [FinishReason](repeating: .length, count: budgets.count)
        texts = [String?](repeating: nil, count: budgets.count)
        rngs = sampleIndexes.map { SeededGenerator(seed: sampling.seed &* 0x9E37_79B9_7F4A_7C15 &+ $0) }
        self.stopStrings = stopStrings
        self.sampling = sampling
        self.ignoreEOS = ignoreEOS
        self.eosTokenIds = eosTokenIds
        self.tokenizer = tokenizer
    }

    public init(requests: [GenerationRequest], bundle: ModelBundle, sampling: SamplingParameters, ignoreEOS: Bool) {
        self.init(promptLengths: requests.map(\.promptIds.count), maxNewTokens: requests.map(\.maxNewTokens),
                  stopStrings: requests.map(\.stopStrings), sampleIndexes: requests.map(\.sampleIndex),
                  maxPositions: bundle.model.config.maxPositions, sampling: sampling, ignoreEOS: ignoreEOS,
                  eosTokenIds: bundle.eosTokenIds, tokenizer: bundle.tokenizer)
    }

    public var allFinished: Bool { !finished.contains(false) }

    /// Samples row `b`'s next token from its logits and records whether that ends the row.
    public mutating func accept(_ logits: UnsafeBufferPointer<Float>, row b: Int) -> Int {
        let token = Sampler.sample(logits, sampling, rng: &rngs[b])
        generated[b].append(token)
        if !ignoreEOS && eosTokenIds.contains(token) {
            finished[b] = true; reasons[b] = .stop
        } else if !stopStrings[b].isEmpty, let cut = StopStrings.match(tokenizer.decode(generated[b]), stopStrings[b]) {
            texts[b] = cut
            finished[b] = true; reasons[b] = .stop
        } else if generated[b].count >= budgets[b] {
            finished[b] = true; reasons[b] = .length
        }
        return token
    }

    public var results: [GenerationResult] {
        (0..<budgets.count).map { b in
            GenerationResult(tokenIds: generated[b], text: texts[b] ?? tokenizer.decode(generated[b]), finishReason: reasons[b])
        }
    }
}
