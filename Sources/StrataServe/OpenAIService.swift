import Foundation
import StrataCore
import StrataFormats
import StrataRuntime

/// What one sequence produced, gathered from its events.
struct SequenceOutput: Sendable {
    var promptLogprobs: [TokenLogprob?] = []
    var tokens: [Int] = []
    var logprobs: [TokenLogprob?] = []
    var finish: FinishReason = .length
    var stoppedText: String?
    var failure: String?
}

/// The OpenAI-compatible API over a scheduler, without HTTP: the server's routes and
/// `strata run-batch` both call it, so a batch line and an HTTP request give the same answer.
public final class OpenAIService: Sendable {
    public let scheduler: Scheduler
    public let bundle: ModelBundle
    /// The name clients use in `model` (the served model name).
    public let modelName: String
    public var context: Int { scheduler.engine.context }
    private let created = Int(Date().timeIntervalSince1970)

    public init(scheduler: Scheduler, modelName: String) {
        self.scheduler = scheduler
        self.bundle = scheduler.bundle
        self.modelName = modelName
    }

    func checkModel(_ name: String?) throws(APIError) {
        if let name, name != modelName, name != bundle.directory {
            throw APIError(status: 404, "The model `\(name)` does not exist. This server serves `\(modelName)`.", param: "model")
        }
    }

    /// Sequence seeds: the request's seed (one per choice), else fresh random ones.
    static func seeds(_ seed: UInt64?, count: Int) -> [UInt64] {
        (0..<count).map { i in seed.map { $0 &+ UInt64(i) } ?? UInt64.random(in: 0...UInt64.max) }
    }

    /// Submits sequences and returns their events tagged by sequence index; `cancel` withdraws
    /// them all. A full queue refuses them (503).
    func submit(_ sequences: [(ids: [Int], parameters: SequenceParameters)]) throws(APIError)
        -> (events: AsyncStream<(Int, SequenceEvent)>, cancel: @Sendable () -> Void) {
        let (stream, continuation) = AsyncStream<(Int, SequenceEvent)>.makeStream()
        let remaining = RemainingCount(sequences.count)
        let tickets = sequences.enumerated().map { i, s in
            SequenceTicket(promptIds: s.ids, parameters: s.parameters) { event in
                continuation.yield((i, event))
                switch event {
                case .finished, .failed: if remaining.decrement() { continuation.finish() }
                default: break
                }
            }
        }
        if sequences.isEmpty { continuation.finish() }
        guard scheduler.submit(tickets) else {
            throw APIError(status: 503, "the server is at its limit of \(scheduler.maxWaiting) waiting sequences (--max-waiting); retry later")
        }
        return (stream, { for t in tickets { t.cancel() } })
    }

    /// Runs sequences to the end and gathers their outputs.
    func collect(_ sequences: [(ids: [Int], parameters: SequenceParameters)]) async throws(APIError) -> [SequenceOutput] {
        let (events, cancel) = try submit(sequences)
        var outputs = [SequenceOutput](repeating: SequenceOutput(), count: sequences.count)
        await withTaskCancellationHandler {
            for await (i, event) in events { outputs[i].apply(event) }
        } onCancel: { cancel() }
        if let failure = outputs.compactMap(\.failure).first { throw APIError(status: 500, failure) }
        return outputs
    }

    // MARK: Completions

    public func completions(_ body: JSONValue) async throws(APIError) -> JSONValue {
        let request = try CompletionRequest(body, bundle: bundle, context: context)
        try checkModel(request.model)
        let sequences = try completionSequences(request)
        let outputs = try await collect(sequences)
        let n = request.sampling.n
        let choices = outputs.enumerated().map { i, out in
            completionChoice(index: i, prompt: request.prompts[i / n], output: out, echo: request.echo, logprobs: request.logprobs)
        }
        return .object(["id": .string("cmpl-\(Self.requestId())"), "object": "text_completion", "created": .number(Double(created)),
                        "model": .string(modelName), "choices": .array(choices),
                        "usage": usage(prompt: request.prompts.reduce(0) { $0 + $1.ids.count }, completion: outputs.reduce(0) { $0 + $1.tokens.count })])
    }

    func completionSequences(_ request: CompletionRequest) throws(APIError) -> [(ids: [Int], parameters: SequenceParameters)] {
        var sequences: [(ids: [Int], parameters: SequenceParameters)] = []
        for (p, prompt) in request.prompts.enumerated() {
            var parameters = try request.sampling.parameters(promptLength: prompt.ids.count, context: context,
                                                             promptIndex: request.prompts.count > 1 ? p : nil)
            parameters.logprobs = request.logprobs
            parameters.promptLogprobs = request.echo && request.logprobs != nil
            for seed in Self.seeds(request.sampling.seed, count: request.sampling.n) {
                parameters.sampling.seed = seed
                sequences.append((prompt.ids, parameters))
            }
        }
        return sequences
    }

    func completionChoice(index: Int, prompt: (ids: [Int], text: String), output: SequenceOutput, echo: Bool, logprobs: Int?) -> JSONValue {
        let generated = output.stoppedText ?? bundle.tokenizer.decode(output.tokens)
        var choice: [String: JSONValue] = ["index": .number(Double(index)), "text": .string(echo ? prompt.text + generated : generated),
                                           "finish_reason": .string(output.finish.rawValue), "stop_reason": .null, "logprobs": .null]
        if logprobs != nil {
            var tokens = output.tokens, entries = output.logprobs
            if echo { tokens = prompt.ids + tokens; entries = output.promptLogprobs + entries }
            choice["logprobs"] = completionLogprobs(tokens: tokens, entries: entries, offset: 0)
        }
        return .object(choice)
    }

    /// `{tokens, token_logprobs, top_logprobs, text_offset}` of a completion choice.
    func completionLogprobs(tokens: [Int], entries: [TokenLogprob?], offset: Int) -> JSONValue {
        var offsets: [JSONValue] = []
        var position = offset
        let strings = tokens.map { tokenText($0) }
        for s in strings { offsets.append(.number(Double(position))); position += s.count }
        let top: [JSONValue] = entries.map { entry in
            guard let entry else { return .null }
            var dict: [String: JSONValue] = [:]
            for alt in entry.top { dict[tokenText(alt.token)] = .number(Double(alt.logprob)) }
            dict[tokenText(entry.token)] = .number(Double(entry.logprob))
            return .object(dict)
        }
        return .object(["tokens": .array(strings.map { .string($0) }),
                        "token_logprobs": .array(entries.map { $0.map { .number(Double($0.logprob)) } ?? .null }),
                        "top_logprobs": .array(top), "text_offset": .array(offsets)])
    }

    func tokenText(_ id: Int) -> String { bundle.tokenizer.decode([id], skipSpecialTokens: false) }

    func usage(prompt: Int, completion: Int) -> JSONValue {
        .object(["prompt_tokens": .number(Double(prompt)), "completion_tokens": .number(Double(completion)),
                 "total_tokens": .number(Double(prompt + completion))])
    }

    static func requestId() -> String {
        String((0..<24).map { _ in "0123456789abcdef".randomElement()! })
    }

    // MARK: Chat

    public func chat(_ body: JSONValue) async throws(APIError) -> JSONValue {
        let request = try ChatRequest(body, bundle: bundle)
        try checkModel(request.model)
        let sequences = try chatSequences(request)
        let outputs = try await collect(sequences)
        let choices: [JSONValue] = outputs.enumerated().map { i, out in
            .object(["index": .number(Double(i)), "finish_reason": .string(out.finish.rawValue), "stop_reason": .null,
                     "message": .object(["role": "assistant", "content": .string(out.stoppedText ?? bundle.tokenizer.decode(out.tokens))]),
                     "logprobs": request.logprobs == nil ? .null : .object(["content": .array(chatLogprobs(out.tokens, out.logprobs))])])
        }
        return .object(["id": .string("chatcmpl-\(Self.requestId())"), "object": "chat.completion", "created": .number(Double(created)),
                        "model": .string(modelName), "choices": .array(choices),
                        "usage": usage(prompt: request.promptIds.count, completion: outputs.reduce(0) { $0 + $1.tokens.count })])
    }

    func chatSequences(_ request: ChatRequest) throws(APIError) -> [(ids: [Int], parameters: SequenceParameters)] {
        var parameters = try request.sampling.parameters(promptLength: request.promptIds.count, context: context, promptIndex: nil)
        parameters.logprobs = request.logprobs
        return Self.seeds(request.sampling.seed, count: request.sampling.n).map { seed in
            var p = parameters
            p.sampling.seed = seed
            return (request.promptIds, p)
        }
    }

    /// Chat logprobs entries: `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
    func chatLogprobs(_ tokens: [Int], _ entries: [TokenLogprob?]) -> [JSONValue] {
        zip(tokens, entries).map { token, entry in
            func item(_ id: Int, _ lp: Float) -> [String: JSONValue] {
                let text = tokenText(id)
                return ["token": .string(text), "logprob": .number(Double(lp)), "bytes": .array(Array(text.utf8).map { .number(Double($0)) })]
            }
            var o = item(token, entry?.logprob ?? 0)
            o["top_logprobs"] = .array((entry?.top ?? []).map { .object(item($0.token, $0.logprob)) })
            return .object(o)
        }
    }

    // MARK: Tokenizer and models

    public func models() -> JSONValue {
        .object(["object": "list", "data": .array([.object([
            "id": .string(modelName), "object": "model", "created": .number(Double(created)), "owned_by": "strata",
            "root": .string(bundle.directory), "max_model_len": .number(Double(context)),
        ])])])
    }

    public func tokenize(_ body: JSONValue) throws(APIError) -> JSONValue {
        let f = try RequestFields(body)
        try checkModel(try f.string("model"))
        let ids: [Int]
        if f.value("messages") != nil {
            ids = try ChatRequest(body, bundle: bundle).promptIds
        } else {
            guard let prompt = try f.string("prompt") else { throw .invalid("prompt", "'prompt' (a string) or 'messages' is required") }
            ids = bundle.tokenizer.encode(prompt, addSpecialTokens: try f.bool("add_special_tokens") ?? true)
        }
        return .object(["tokens": .array(ids.map { .number(Double($0)) }), "count": .number(Double(ids.count)),
                        "max_model_len": .number(Double(context))])
    }

    public func detokenize(_ body: JSONValue) throws(APIError) -> JSONValue {
        let f = try RequestFields(body)
        try checkModel(try f.string("model"))
        guard f.value("tokens") != nil else { throw .invalid("tokens", "'tokens' (a list of token ids) is required") }
        let ids = try f.ints("tokens")
        let vocab = bundle.tokenizer.vocabularySize
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocab }) { throw .invalid("tokens", "token id \(bad) is not in 0..<\(vocab)") }
        return .object(["prompt": .string(bundle.tokenizer.decode(ids, skipSpecialTokens: false))])
    }

    public func tokenizerInfo() -> JSONValue {
        let t = bundle.tokenizer
        func token(_ id: Int?) -> JSONValue { id.flatMap { t.token(for: $0) }.map { .string($0) } ?? .null }
        return .object(["tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": .number(Double(context)),
                        "eos_token": token(bundle.eosTokenIds.min() ?? t.eosTokenId), "bos_token": token(t.bosTokenId),
                        "pad_token": token(bundle.padTokenId), "vocab_size": .number(Double(t.vocabularySize)),
                        "chat_template": bundle.chatTemplate.map { .string($0.source) } ?? .null])
    }
}

extension SequenceOutput {
    mutating func apply(_ event: SequenceEvent) {
        switch event {
        case .prompt(let entries): promptLogprobs = entries
        case .token(let id, let lp): tokens.append(id); logprobs.append(lp)
        case .finished(let reason, let text): finish = reason; stoppedText = text
        case .failed(let message): failure = message
        }
    }
}

/// Counts sequences down to the last one's end (events arrive on the engine thread).
final class RemainingCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count: Int
    init(_ count: Int) { self.count = count }
    /// True for the call that reaches zero.
    func decrement() -> Bool { lock.lock(); defer { lock.unlock() }; count -= 1; return count == 0 }
}
