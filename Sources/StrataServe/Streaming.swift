import Foundation
import StrataCore
import StrataFormats
import StrataRuntime

/// A choice's text as it grows token by token: each call returns only what is new and safe to
/// send (no half of a UTF-8 character, nothing that may turn out to start a stop string).
struct TextDelta {
    private var ids: [Int] = []
    private var sent = 0
    let stops: [String]

    init(stops: [String]) { self.stops = stops }

    mutating func add(_ token: Int, tokenizer: Tokenizer) -> String {
        ids.append(token)
        let decoded = tokenizer.decode(ids)
        let text = Array(decoded)
        // The token that completes a stop string arrives before the sequence's finish: never send it.
        let safe = min(StopStrings.safePrefix(decoded, stops), StopStrings.match(decoded, stops)?.count ?? text.count)
        guard safe > sent else { return "" }
        defer { sent = safe }
        return String(text[sent..<safe])
    }

    /// The rest of the final text (cut at the stop string when one ended the sequence).
    mutating func finish(stoppedText: String?, tokenizer: Tokenizer) -> String {
        let text = Array(stoppedText ?? tokenizer.decode(ids))
        defer { sent = text.count }
        return sent < text.count ? String(text[sent...]) : ""
    }
}

/// One choice's chunk content: its fields besides `index`.
typealias ChoiceChunk = [String: JSONValue]

extension OpenAIService {
    /// Server-sent event payloads for a streamed completion: one chunk per token of each choice
    /// (text delta, and logprobs when asked), a last chunk per choice with its finish reason,
    /// the usage chunk when `stream_options.include_usage`, then `[DONE]`.
    public func completionStream(_ body: JSONValue) throws(APIError) -> (payloads: AsyncStream<String>, cancel: @Sendable () -> Void) {
        let request = try CompletionRequest(body, bundle: bundle, context: context)
        try checkModel(request.model)
        let n = request.sampling.n
        let prompts = request.prompts.map(\.text)
        let wantsLogprobs = request.logprobs != nil
        // Logprobs' text offsets run on from the echoed prompt, per choice.
        let offsets = OffsetTable(count: request.prompts.count * n)
        return try stream(try completionSequences(request), object: "text_completion", idPrefix: "cmpl", sampling: request.sampling,
                      promptTokens: request.prompts.reduce(0) { $0 + $1.ids.count },
                      opening: { i in
                          guard request.echo else { return nil }
                          offsets.set(i, prompts[i / n].count)
                          return ["text": .string(prompts[i / n]), "logprobs": .null, "finish_reason": .null]
                      },
                      token: { i, text, token, lp in
                          guard !text.isEmpty || wantsLogprobs else { return nil }
                          var logprobs = JSONValue.null
                          if wantsLogprobs {
                              logprobs = self.completionLogprobs(tokens: [token], entries: [lp], offset: offsets.get(i))
                              offsets.set(i, offsets.get(i) + self.tokenText(token).count)
                          }
                          return ["text": .string(text), "logprobs": logprobs, "finish_reason": .null]
                      },
                      finish: { _, rest, reason in ["text": .string(rest), "logprobs": .null, "finish_reason": .string(reason.rawValue)] })
    }

    /// Server-sent event payloads for a streamed chat completion: the assistant role first, then
    /// content deltas, a finish chunk per choice, usage when asked, then `[DONE]`.
    public func chatStream(_ body: JSONValue) throws(APIError) -> (payloads: AsyncStream<String>, cancel: @Sendable () -> Void) {
        let request = try ChatRequest(body, bundle: bundle)
        try checkModel(request.model)
        let wantsLogprobs = request.logprobs != nil
        return try stream(try chatSequences(request), object: "chat.completion.chunk", idPrefix: "chatcmpl", sampling: request.sampling,
                      promptTokens: request.promptIds.count,
                      opening: { _ in ["delta": .object(["role": "assistant", "content": ""]), "logprobs": .null, "finish_reason": .null] },
                      token: { _, text, token, lp in
                          guard !text.isEmpty || wantsLogprobs else { return nil }
                          let logprobs: JSONValue = wantsLogprobs ? .object(["content": .array(self.chatLogprobs([token], [lp]))]) : .null
                          return ["delta": .object(["content": .string(text)]), "logprobs": logprobs, "finish_reason": .null]
                      },
                      finish: { _, rest, reason in
                          ["delta": .object(rest.isEmpty ? [:] : ["content": .string(rest)]), "logprobs": .null,
                           "finish_reason": .string(reason.rawValue)]
                      })
    }

    /// The streaming skeleton both endpoints share: submits the sequences, turns their events
    /// into chunks (`opening` per choice before any token, `token` per token with its safe text
    /// delta, `finish` with the rest of the text; nil sends nothing), then usage and `[DONE]`.
    /// A client that goes away cancels the sequences.
    private func stream(_ sequences: [(ids: [Int], parameters: SequenceParameters)], object: String, idPrefix: String,
                        sampling: SamplingFields, promptTokens: Int,
                        opening: @escaping @Sendable (Int) -> ChoiceChunk?,
                        token: @escaping @Sendable (Int, String, Int, TokenLogprob?) -> ChoiceChunk?,
                        finish: @escaping @Sendable (Int, String, FinishReason) -> ChoiceChunk) throws(APIError)
        -> (payloads: AsyncStream<String>, cancel: @Sendable () -> Void) {
        let (events, cancel) = try submit(sequences)
        let header: [String: JSONValue] = ["id": .string("\(idPrefix)-\(Self.requestId())"), "object": .string(object),
                                           "created": .number(Double(Int(Date().timeIntervalSince1970))), "model": .string(modelName)]
        let stops = sampling.parameters.stopStrings
        let includeUsage = sampling.includeUsage
        let tokenizer = bundle.tokenizer
        let payloads = AsyncStream<String> { continuation in
            let task = Task {
                func send(_ i: Int, _ chunk: ChoiceChunk?) {
                    guard var chunk else { return }
                    chunk["index"] = .number(Double(i))
                    var o = header
                    o["choices"] = .array([.object(chunk)])
                    continuation.yield(JSONValue.object(o).serialized())
                }
                var deltas = [TextDelta](repeating: TextDelta(stops: stops), count: sequences.count)
                var completionTokens = 0
                for i in 0..<sequences.count { send(i, opening(i)) }
                for await (i, event) in events {
                    switch event {
                    case .prompt: break
                    case .token(let id, let lp):
                        completionTokens += 1
                        send(i, token(i, deltas[i].add(id, tokenizer: tokenizer), id, lp))
                    case .finished(let reason, let stopped):
                        send(i, finish(i, deltas[i].finish(stoppedText: stopped, tokenizer: tokenizer), reason))
                    case .failed(let message):
                        continuation.yield(APIError(status: 500, message).body.serialized())
                    }
                }
                if includeUsage {
                    var o = header
                    o["choices"] = .array([])
                    o["usage"] = usage(prompt: promptTokens, completion: completionTokens)
                    continuation.yield(JSONValue.object(o).serialized())
                }
                continuation.yield("[DONE]")
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel(); cancel() }
        }
        return (payloads, cancel)
    }
}

/// Per-choice text offsets a streamed completion's logprobs continue from.
final class OffsetTable: @unchecked Sendable {
    private let lock = NSLock()
    private var offsets: [Int]
    init(count: Int) { offsets = [Int](repeating: 0, count: count) }
    func get(_ i: Int) -> Int { lock.lock(); defer { lock.unlock() }; return offsets[i] }
    func set(_ i: Int, _ v: Int) { lock.lock(); defer { lock.unlock() }; offsets[i] = v }
}
