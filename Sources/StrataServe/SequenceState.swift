#if canImport(Glibc)
import Glibc
#endif
import StrataCore
import StrataFormats
import StrataRuntime

/// What one sequence asks of the engine, already validated by the protocol layer.
public struct SequenceParameters: Sendable {
    public var maxTokens: Int
    public var minTokens = 0
    public var sampling = SamplingParameters()
    public var stopStrings: [String] = []
    public var stopTokenIds: Set<Int> = []
    public var ignoreEOS = false
    /// Top alternatives to report with each generated token's logprob; nil reports none.
    public var logprobs: Int?
    /// Report the prompt's own tokens' logprobs (echo); the first has none.
    public var promptLogprobs = false

    public init(maxTokens: Int) { self.maxTokens = maxTokens }
}

/// A token's log-probability under the model (raw logits, before temperature or filtering, as
/// vLLM reports by default) and the `top` most likely alternatives.
public struct TokenLogprob: Sendable, Equatable {
    public var token: Int
    public var logprob: Float
    public var top: [(token: Int, logprob: Float)]

    public static func == (a: TokenLogprob, b: TokenLogprob) -> Bool {
        a.token == b.token && a.logprob == b.logprob && a.top.map(\.token) == b.top.map(\.token) && a.top.map(\.logprob) == b.top.map(\.logprob)
    }

    /// log_softmax(logits)[token] and the `top` largest entries (ties: lower id first).
    public static func from(_ logits: UnsafeBufferPointer<Float>, token: Int, top: Int) -> TokenLogprob {
        var maximum = -Float.infinity
        for v in logits where v > maximum { maximum = v }
        var sum = 0.0
        for v in logits { sum += Double(expf(v - maximum)) }
        let logZ = maximum + Float(log(sum))
        var best: [(token: Int, logprob: Float)] = []
        if top > 0 {
            // A partial selection: keep the `top` largest seen so far, sorted.
            for (i, v) in logits.enumerated() where best.count < top || v > best[best.count - 1].logprob {
                let at = best.firstIndex { v > $0.logprob } ?? best.count
                best.insert((i, v), at: at)
                if best.count > top { best.removeLast() }
            }
        }
        return TokenLogprob(token: token, logprob: logits[token] - logZ, top: best.map { ($0.token, $0.logprob - logZ) })
    }
}

/// One sequence's progress through generation: samples its tokens with its own parameters
/// and random stream, and decides when it stops (EOS or a stop token after `min_tokens`, a stop
/// string, its token budget).
struct SequenceState {
    let parameters: SequenceParameters
    let promptLength: Int
    let budget: Int
    private(set) var generated: [Int] = []
    private(set) var finish: FinishReason?
    /// The text up to a stop string, when one ended the sequence.
    private(set) var stoppedText: String?
    private var rng: SeededGenerator
    private let stopIds: Set<Int>

    init(parameters: SequenceParameters, promptLength: Int, context: Int, eosTokenIds: Set<Int>) {
        self.parameters = parameters
        self.promptLength = promptLength
        budget = max(0, min(parameters.maxTokens, context - promptLength))
        rng = SeededGenerator(seed: parameters.sampling.seed)
        stopIds = parameters.stopTokenIds.union(parameters.ignoreEOS ? [] : eosTokenIds)
        if budget == 0 { finish = .length }
    }

    /// Samples the next token from `logits` (vocab entries; masked copies when min_tokens holds
    /// stop tokens back) and returns it with its logprob when asked.
    mutating func accept(_ logits: UnsafeBufferPointer<Float>, tokenizer: Tokenizer) -> (token: Int, logprob: TokenLogprob?) {
        let token: Int
        if generated.count < parameters.minTokens && !stopIds.isEmpty {
            var masked = Array(logits)
            for id in stopIds where id < masked.count { masked[id] = -.infinity }
            token = masked.withUnsafeBufferPointer { Sampler.sample($0, parameters.sampling, rng: &rng) }
        } else {
            token = Sampler.sample(logits, parameters.sampling, rng: &rng)
        }
        let logprob = parameters.logprobs.map { TokenLogprob.from(logits, token: token, top: $0) }
        generated.append(token)
        if stopIds.contains(token) && generated.count > parameters.minTokens {
            finish = .stop
        } else if !parameters.stopStrings.isEmpty, generated.count >= parameters.minTokens, let cut = StopStrings.match(tokenizer.decode(generated), parameters.stopStrings) {
            stoppedText = cut
            finish = .stop
        } else if generated.count >= budget {
            finish = .length
        }
        return (token, logprob)
    }
}
