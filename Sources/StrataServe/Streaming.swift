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
        let text = Array(tokenizer.decode(ids))
        let safe = StopStrings.safePrefix(String(text), stops)
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

extension OpenAIService {
    /// Server-sent event payloads for a streamed completion: one chunk per token of each choice
    /// (text delta, and logprobs when asked), a last chunk per choice with its finish reason,
    /// the usage chunk when `stream_options.include_usage`, then `[DONE]`.
    public func completionStream(_ body: JSONValue) throws(APIError) -> (payloads: AsyncStream<String>, cancel: @Sendable () -> Void) {
        let request = try CompletionRequest(body, bundle: bundle, context: context)
        try checkModel(request.model)
        let sequences = try completionSequences(request)
        let (events, cancel) = submit(sequences)
        let id = "cmpl-\(Self.requestId())", n = request.sampling.n
        let header: [String: JSONValue] = ["id": .string(id), "object": "text_completion", "created": .number(Double(Int(Date().timeIntervalSince1970))),
                                           "model": .string(modelName)]
        let stops = request.sampling.parameters.stopStrings
        let stream = AsyncStream<String> { continuation in
            let task = Task {
                var deltas = [TextDelta](repeating: TextDelta(stops: stops), count: sequences.count)
                var offsets = [Int](repeating: 0, count: sequences.count)
                var completionTokens = 0
                func chunk(_ i: Int, text: String, logprobs: JSONValue = .null, finish: FinishReason? = nil) {
                    var o = header
                    o["choices"] = .array([.object(["index": .number(Double(i)), "text": .string(text), "logprobs": logprobs,
                                                    "finish_reason": finish.map { .string($0.rawValue) } ?? .null])])
                    continuation.yield(JSONValue.object(o).serialized())
                }
                if request.echo {
                    for i in 0..<sequences.count { chunk(i, text: request.prompts[i / n].text); offsets[i] = request.prompts[i / n].text.count }
                }
                for await (i, event) in events {
                    switch event {
                    case .prompt: break
                    case .token(let token, let lp):
                        completionTokens += 1
                        let text = deltas[i].add(token, tokenizer: bundle.tokenizer)
                        var logprobs = JSONValue.null
                        if request.logprobs != nil {
                            logprobs = completionLogprobs(tokens: [token], entries: [lp], offset: offsets[i])
                            offsets[i] += tokenText(token).count
                        }
                        if !text.isEmpty || request.logprobs != nil { chunk(i, text: text, logprobs: logprobs) }
                    case .finished(let reason, let stopped):
                        chunk(i, text: deltas[i].finish(stoppedText: stopped, tokenizer: bundle.tokenizer), finish: reason)
                    case .failed(let message):
                        continuation.yield(APIError(status: 500, message).body.serialized())
                    }
                }
                if request.sampling.includeUsage {
                    var o = header
                    o["choices"] = .array([])
                    o["usage"] = usage(prompt: request.prompts.reduce(0) { $0 + $1.ids.count }, completion: completionTokens)
                    continuation.yield(JSONValue.object(o).serialized())
                }
                continuation.yield("[DONE]")
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel(); cancel() }
        }
        return (stream, cancel)
    }

    /// Server-sent event payloads for a streamed chat completion: the assistant role first, then
    /// content deltas, a finish chunk per choice, usage when asked, then `[DONE]`.
    public func chatStream(_ body: JSONValue) throws(APIError) -> (payloads: AsyncStream<String>, cancel: @Sendable () -> Void) {
        let request = try ChatRequest(body, bundle: bundle)
        try checkModel(request.model)
        let sequences = try chatSequences(request)
        let (events, cancel) = submit(sequences)
        let header: [String: JSONValue] = ["id": .string("chatcmpl-\(Self.requestId())"), "object": "chat.completion.chunk",
                                           "created": .number(Double(Int(Date().timeIntervalSince1970))), "model": .string(modelName)]
        let stops = request.sampling.parameters.stopStrings
        let stream = AsyncStream<String> { continuation in
            let task = Task {
                var deltas = [TextDelta](repeating: TextDelta(stops: stops), count: sequences.count)
                var completionTokens = 0
                func chunk(_ i: Int, delta: [String: JSONValue], logprobs: JSONValue = .null, finish: FinishReason? = nil) {
                    var o = header
                    o["choices"] = .array([.object(["index": .number(Double(i)), "delta": .object(delta), "logprobs": logprobs,
                                                    "finish_reason": finish.map { .string($0.rawValue) } ?? .null])])
                    continuation.yield(JSONValue.object(o).serialized())
                }
                for i in 0..<sequences.count { chunk(i, delta: ["role": "assistant", "content": ""]) }
                for await (i, event) in events {
                    switch event {
                    case .prompt: break
                    case .token(let token, let lp):
                        completionTokens += 1
                        let text = deltas[i].add(token, tokenizer: bundle.tokenizer)
                        let logprobs: JSONValue = request.logprobs == nil ? .null : .object(["content": .array(chatLogprobs([token], [lp]))])
                        if !text.isEmpty || request.logprobs != nil { chunk(i, delta: ["content": .string(text)], logprobs: logprobs) }
                    case .finished(let reason, let stopped):
                        let rest = deltas[i].finish(stoppedText: stopped, tokenizer: bundle.tokenizer)
                        chunk(i, delta: rest.isEmpty ? [:] : ["content": .string(rest)], finish: reason)
                    case .failed(let message):
                        continuation.yield(APIError(status: 500, message).body.serialized())
                    }
                }
                if request.sampling.includeUsage {
                    var o = header
                    o["choices"] = .array([])
                    o["usage"] = usage(prompt: request.promptIds.count, completion: completionTokens)
                    continuation.yield(JSONValue.object(o).serialized())
                }
                continuation.yield("[DONE]")
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel(); cancel() }
        }
        return (stream, cancel)
    }
}
