import StrataCore
import StrataFormats
import StrataRuntime

/// Reads a request body's fields, each error naming the field (as `param`).
struct RequestFields {
    let object: [String: JSONValue]

    init(_ body: JSONValue) throws(APIError) {
        guard let object = body.object else { throw APIError(status: 400, "the request body must be a JSON object") }
        self.object = object
    }

    func value(_ key: String) -> JSONValue? {
        guard let v = object[key], !v.isNull else { return nil }
        return v
    }

    func int(_ key: String, range: ClosedRange<Int>? = nil) throws(APIError) -> Int? {
        guard let v = value(key) else { return nil }
        guard let i = v.int else { throw .invalid(key, "'\(key)' must be an integer") }
        if let range, !range.contains(i) { throw .invalid(key, "'\(key)' must be in \(range.lowerBound)...\(range.upperBound), got \(i)") }
        return i
    }

    func double(_ key: String) throws(APIError) -> Double? {
        guard let v = value(key) else { return nil }
        guard let d = v.double, d.isFinite else { throw .invalid(key, "'\(key)' must be a number") }
        return d
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.bool else { throw .invalid(key, "'\(key)' must be a boolean") }
        return b
    }

    func string(_ key: String) throws(APIError) -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.string else { throw .invalid(key, "'\(key)' must be a string") }
        return s
    }

    /// A string or a list of strings (`stop`).
    func strings(_ key: String) throws(APIError) -> [String] {
        guard let v = value(key) else { return [] }
        if let s = v.string { return [s] }
        guard let a = v.array, a.allSatisfy({ $0.string != nil }) else { throw .invalid(key, "'\(key)' must be a string or a list of strings") }
        return a.map { $0.string! }
    }

    func ints(_ key: String) throws(APIError) -> [Int] {
        guard let v = value(key) else { return [] }
        guard let a = v.array, a.allSatisfy({ $0.int != nil }) else { throw .invalid(key, "'\(key)' must be a list of integers") }
        return a.map { $0.int! }
    }
}

/// The sampling and stopping fields `/v1/completions` and `/v1/chat/completions` share.
struct SamplingFields {
    var parameters: SequenceParameters
    var n: Int
    var stream: Bool
    var includeUsage: Bool
    var seed: UInt64?

    /// `defaultMaxTokens`: what an absent `max_tokens` means (16 for completions, the rest of
    /// the context for chat, as vLLM).
    init(_ f: RequestFields, maxTokensKeys: [String], defaultMaxTokens: Int?) throws(APIError) {
        var maxTokens: Int?
        for key in maxTokensKeys where maxTokens == nil { maxTokens = try f.int(key, range: 0...Int(Int32.max)) }
        parameters = SequenceParameters(maxTokens: maxTokens ?? defaultMaxTokens ?? -1)
        let temperature = try f.double("temperature") ?? 1
        guard temperature >= 0 && temperature <= 100 else { throw .invalid("temperature", "'temperature' must be in [0, 100], got \(temperature)") }
        let topP = try f.double("top_p") ?? 1
        guard topP > 0 && topP <= 1 else { throw .invalid("top_p", "'top_p' must be in (0, 1], got \(topP)") }
        // vLLM's -1 (and 0) mean no top-k.
        let topK = try f.int("top_k", range: -1...Int(Int32.max)) ?? -1
        seed = try f.int("seed").map { UInt64(bitPattern: Int64($0)) }
        parameters.sampling = SamplingParameters(temperature: Float(temperature), topK: max(0, topK), topP: Float(topP), seed: 0)
        parameters.stopStrings = try f.strings("stop")
        parameters.stopTokenIds = Set(try f.ints("stop_token_ids"))
        parameters.ignoreEOS = try f.bool("ignore_eos") ?? false
        parameters.minTokens = try f.int("min_tokens", range: 0...Int(Int32.max)) ?? 0
        n = try f.int("n", range: 1...64) ?? 1
        if let bestOf = try f.int("best_of"), bestOf != n { throw .invalid("best_of", "'best_of' other than 'n' is not supported") }
        for key in ["presence_penalty", "frequency_penalty"] {
            if let v = try f.double(key), v != 0 { throw .invalid(key, "'\(key)' is not supported (only 0)") }
        }
        if let v = try f.double("repetition_penalty"), v != 1 { throw .invalid("repetition_penalty", "'repetition_penalty' is not supported (only 1)") }
        if let bias = f.value("logit_bias"), bias.object?.isEmpty != true { throw .invalid("logit_bias", "'logit_bias' is not supported") }
        stream = try f.bool("stream") ?? false
        includeUsage = false
        if let options = f.value("stream_options") {
            guard let o = options.object else { throw .invalid("stream_options", "'stream_options' must be an object") }
            guard stream else { throw .invalid("stream_options", "'stream_options' needs 'stream': true") }
            includeUsage = try RequestFields(.object(o)).bool("include_usage") ?? false
        }
    }

    /// Checks `max_tokens` (and `min_tokens`) against a prompt and the context.
    func parameters(promptLength: Int, context: Int, promptIndex: Int?) throws(APIError) -> SequenceParameters {
        var p = parameters
        let which = promptIndex.map { " (prompt \($0))" } ?? ""
        if p.maxTokens < 0 { p.maxTokens = context - promptLength }
        guard promptLength + p.maxTokens <= context, promptLength < context || p.maxTokens == 0 else {
            throw .invalid("max_tokens",
                           "This model's maximum context length is \(context) tokens. However, you requested \(promptLength + p.maxTokens) tokens (\(promptLength) in the prompt\(which), \(p.maxTokens) in max_tokens). Please reduce the length of the prompt or max_tokens.")
        }
        guard p.minTokens <= p.maxTokens else {
            throw .invalid("min_tokens", "'min_tokens' (\(p.minTokens)) must not exceed 'max_tokens' (\(p.maxTokens))")
        }
        return p
    }
}

/// A parsed `/v1/completions` body.
struct CompletionRequest {
    var model: String?
    /// Each prompt's token ids, and its text (decoded when given as ids).
    var prompts: [(ids: [Int], text: String)]
    var sampling: SamplingFields
    var echo: Bool
    var logprobs: Int?

    init(_ body: JSONValue, bundle: ModelBundle, context: Int) throws(APIError) {
        let f = try RequestFields(body)
        model = try f.string("model")
        if f.value("suffix") != nil { throw .invalid("suffix", "'suffix' is not supported") }
        sampling = try SamplingFields(f, maxTokensKeys: ["max_tokens"], defaultMaxTokens: 16)
        echo = try f.bool("echo") ?? false
        logprobs = try f.int("logprobs", range: 0...20)
        guard let prompt = f.value("prompt") else { throw .invalid("prompt", "'prompt' is required") }
        let vocab = bundle.tokenizer.vocabularySize
        func ids(_ list: [JSONValue], _ index: Int?) throws(APIError) -> (ids: [Int], text: String) {
            let where_ = index.map { "prompt[\($0)]" } ?? "prompt"
            var out: [Int] = []
            for v in list {
                guard let i = v.int, i >= 0, i < max(vocab, bundle.model.config.vocabSize) else {
                    throw .invalid("prompt", "\(where_) holds \(v.serialized()), not a token id of this model (0..<\(vocab))")
                }
                out.append(i)
            }
            guard !out.isEmpty else { throw .invalid("prompt", "\(where_) is empty") }
            return (out, bundle.tokenizer.decode(out, skipSpecialTokens: false))
        }
        func text(_ s: String, _ index: Int?) throws(APIError) -> (ids: [Int], text: String) {
            guard !s.isEmpty else { throw .invalid("prompt", "\(index.map { "prompt[\($0)]" } ?? "prompt") is empty") }
            let encoded = bundle.tokenizer.encode(s)
            guard !encoded.isEmpty else { throw .invalid("prompt", "the prompt encodes to no tokens") }
            return (encoded, s)
        }
        if let s = prompt.string {
            prompts = [try text(s, nil)]
        } else if let list = prompt.array, !list.isEmpty {
            if list.allSatisfy({ $0.string != nil }) {
                prompts = []
                for (i, s) in list.enumerated() { prompts.append(try text(s.string!, i)) }
            } else if list.allSatisfy({ $0.array != nil }) {
                prompts = []
                for (i, l) in list.enumerated() { prompts.append(try ids(l.array!, i)) }
            } else {
                prompts = [try ids(list, nil)]
            }
        } else {
            throw .invalid("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids")
        }
        guard prompts.count <= 1024 else { throw .invalid("prompt", "at most 1024 prompts per request, got \(prompts.count)") }
        if sampling.parameters.maxTokens == 0 && !echo {
            throw .invalid("max_tokens", "'max_tokens' 0 returns nothing unless 'echo' is true")
        }
        if sampling.stream && echo && sampling.parameters.maxTokens == 0 {
            throw .invalid("stream", "'echo' with 'max_tokens' 0 is not streamed; send it without 'stream'")
        }
    }
}

/// A parsed `/v1/chat/completions` body.
struct ChatRequest {
    var model: String?
    var promptIds: [Int]
    var promptText: String
    var sampling: SamplingFields
    /// Top alternatives per token when `logprobs` is true.
    var logprobs: Int?

    init(_ body: JSONValue, bundle: ModelBundle) throws(APIError) {
        let f = try RequestFields(body)
        model = try f.string("model")
        sampling = try SamplingFields(f, maxTokensKeys: ["max_completion_tokens", "max_tokens"], defaultMaxTokens: nil)
        if try f.bool("logprobs") ?? false {
            logprobs = try f.int("top_logprobs", range: 0...20) ?? 0
        } else if f.value("top_logprobs") != nil {
            throw .invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        }
        guard let messages = f.value("messages")?.array, !messages.isEmpty else {
            throw .invalid("messages", "'messages' must be a non-empty list of {role, content} objects")
        }
        var normalized: [JSONValue] = []
        for (i, m) in messages.enumerated() {
            guard var o = m.object, let role = o["role"]?.string else {
                throw .invalid("messages", "messages[\(i)] must be an object with a string 'role'")
            }
            guard ["system", "user", "assistant", "tool", "developer"].contains(role) else {
                throw .invalid("messages", "messages[\(i)].role '\(role)' is not one of system, user, assistant, tool, developer")
            }
            // Content as a list of parts: the text parts joined (images are not supported).
            if let parts = o["content"]?.array {
                var text = ""
                for (j, p) in parts.enumerated() {
                    guard p["type"]?.string == "text", let t = p["text"]?.string else {
                        throw .invalid("messages", "messages[\(i)].content[\(j)] must be a {\"type\": \"text\", \"text\": ...} part")
                    }
                    text += t
                }
                o["content"] = .string(text)
            } else if let c = o["content"], c.string == nil && !c.isNull {
                throw .invalid("messages", "messages[\(i)].content must be a string or a list of text parts")
            }
            normalized.append(.object(o))
        }
        do {
            (promptText, promptIds) = try bundle.encodeChat(normalized)
        } catch {
            throw .invalid("messages", "\(error)")
        }
    }
}
