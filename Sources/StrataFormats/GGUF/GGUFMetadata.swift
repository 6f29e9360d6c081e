import StrataCore

/// GGUF metadata as the Hugging Face files a model directory holds. Keys follow llama.cpp's
/// naming (`{arch}.embedding_length`, `tokenizer.ggml.*`); each missing or ill-typed key is
/// reported by name.
enum GGUFMetadata {
    static func config(_ f: GGUFFile, architecture a: String) throws -> [String: JSONValue] {
        let hidden = try f.int("\(a).embedding_length")
        let heads = try f.int("\(a).attention.head_count")
        let kvHeads = try f.optionalInt("\(a).attention.head_count_kv") ?? heads
        guard heads > 0, hidden > 0 else {
            throw StrataError.invalidFile(path: f.path, detail: "metadata '\(a).attention.head_count' and '\(a).embedding_length' must be positive")
        }
        let headDim = try f.optionalInt("\(a).attention.key_length") ?? hidden / heads
        if let rotary = try f.optionalInt("\(a).rope.dimension_count"), rotary != headDim {
            throw StrataError.invalidFile(path: f.path, detail: "metadata '\(a).rope.dimension_count' is \(rotary) but heads are \(headDim) wide; partial rotary embeddings are not supported")
        }
        let vocab = try f.optionalInt("\(a).vocab_size") ?? f.stringArray("tokenizer.ggml.tokens").count
        var c: [String: JSONValue] = [
            "model_type": .string(a),
            "architectures": .array([.string(a == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM")]),
            "vocab_size": .number(Double(vocab)),
            "hidden_size": .number(Double(hidden)),
            "intermediate_size": .number(Double(try f.int("\(a).feed_forward_length"))),
            "num_hidden_layers": .number(Double(try f.int("\(a).block_count"))),
            "num_attention_heads": .number(Double(heads)),
            "num_key_value_heads": .number(Double(kvHeads)),
            "head_dim": .number(Double(headDim)),
            "max_position_embeddings": .number(Double(try f.int("\(a).context_length"))),
            "rms_norm_eps": .number(try f.optionalDouble("\(a).attention.layer_norm_rms_epsilon") ?? 1e-5),
            "rope_theta": .number(try f.optionalDouble("\(a).rope.freq_base") ?? 10000),
            "hidden_act": .string("silu"),
            "torch_dtype": .string("float32"),
        ]
        if let type = try f.optionalString("\(a).rope.scaling.type"), type != "none" {
            guard type == "linear" else {
                throw StrataError.invalidFile(path: f.path, detail: "metadata '\(a).rope.scaling.type' is '\(type)'; supported: none, linear")
            }
            c["rope_scaling"] = .object(["rope_type": .string("linear"), "factor": .number(try f.double("\(a).rope.scaling.factor"))])
        }
        for (key, hf) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                          ("tokenizer.ggml.padding_token_id", "pad_token_id")] {
            if let id = try f.optionalInt(key) { c[hf] = .number(Double(id)) }
        }
        return c
    }

    /// tokenizer.json, tokenizer_config.json and generation_config.json.
    static func tokenizerFiles(_ f: GGUFFile, config: [String: JSONValue]) throws -> [String: JSONValue] {
        let model = try f.string("tokenizer.ggml.model")
        let tokens = try f.stringArray("tokenizer.ggml.tokens")
        guard !tokens.isEmpty, tokens.count <= Tokenizer.maxVocabulary else {
            throw f.wrong("tokenizer.ggml.tokens", "a non-empty array of at most \(Tokenizer.maxVocabulary) tokens")
        }
        let types = try f.numberArray("tokenizer.ggml.token_type")?.map { Int(exactly: $0) ?? 0 } ?? Array(repeating: 1, count: tokens.count)
        guard types.count == tokens.count else {
            throw StrataError.invalidFile(path: f.path, detail: "metadata 'tokenizer.ggml.token_type' has \(types.count) entries for \(tokens.count) tokens")
        }
        func id(_ key: String) throws -> Int? {
            guard let i = try f.optionalInt(key) else { return nil }
            guard i >= 0 && i < tokens.count else {
                throw StrataError.invalidFile(path: f.path, detail: "metadata '\(key)' is \(i), outside the \(tokens.count)-token vocabulary")
            }
            return i
        }
        let bos = try id("tokenizer.ggml.bos_token_id"), eos = try id("tokenizer.ggml.eos_token_id")
        let unk = try id("tokenizer.ggml.unknown_token_id"), pad = try id("tokenizer.ggml.padding_token_id")
        let eot = try id("tokenizer.ggml.eot_token_id")

        var vocab: [String: JSONValue] = [:]
        vocab.reserveCapacity(tokens.count)
        var added: [JSONValue] = []
        for (i, t) in tokens.enumerated() {
            if vocab[t] == nil { vocab[t] = .number(Double(i)) }
            // 3 = control, 4 = user-defined: matched whole before BPE, as Hugging Face's added tokens.
            if types[i] == 3 || types[i] == 4 {
                added.append(.object(["id": .number(Double(i)), "content": .string(t), "special": .bool(types[i] == 3),
                                      "lstrip": .bool(false), "rstrip": .bool(false), "single_word": .bool(false),
                                      "normalized": .bool(types[i] == 4)]))
            }
        }
        var tokenizer: [String: JSONValue] = ["version": .string("1.0"), "added_tokens": .array(added), "post_processor": .null]
        let addBos: Bool, addEos = try f.optionalBool("tokenizer.ggml.add_eos_token") ?? false
        switch model {
        case "gpt2":
            let merges = try f.stringArray("tokenizer.ggml.merges")
            let pre = try f.optionalString("tokenizer.ggml.pre") ?? "default"
            let (steps, ignoreMerges) = try preTokenizer(pre, path: f.path)
            tokenizer["model"] = .object(["type": .string("BPE"), "vocab": .object(vocab), "merges": .array(merges.map { .string($0) }),
                                          "ignore_merges": .bool(ignoreMerges), "byte_fallback": .bool(false)])
            tokenizer["pre_tokenizer"] = .object(["type": .string("Sequence"), "pretokenizers": .array(steps)])
            tokenizer["decoder"] = .object(["type": .string("ByteLevel")])
            tokenizer["normalizer"] = .null
            addBos = try f.optionalBool("tokenizer.ggml.add_bos_token") ?? false
        case "llama":
            let scores = try f.numberArray("tokenizer.ggml.scores") ?? []
            guard scores.count == tokens.count else {
                throw StrataError.invalidFile(path: f.path, detail: "metadata 'tokenizer.ggml.scores' has \(scores.count) entries for \(tokens.count) tokens")
            }
            var model: [String: JSONValue] = ["type": .string("BPE"), "vocab": .object(vocab),
                                              "merges": .array(SentencePieceMerges.derive(tokens: tokens, scores: scores, types: types)),
                                              "byte_fallback": .bool(true), "fuse_unk": .bool(true)]
            if let unk { model["unk_token"] = .string(tokens[unk]) }
            tokenizer["model"] = .object(model)
            let prefixSpace = try f.optionalBool("tokenizer.ggml.add_space_prefix") ?? true
            var normalizers: [JSONValue] = []
            if prefixSpace { normalizers.append(.object(["type": .string("Prepend"), "prepend": .string("\u{2581}")])) }
            normalizers.append(.object(["type": .string("Replace"), "pattern": .object(["String": .string(" ")]), "content": .string("\u{2581}")]))
            tokenizer["normalizer"] = .object(["type": .string("Sequence"), "normalizers": .array(normalizers)])
            tokenizer["pre_tokenizer"] = .null
            var decoders: [JSONValue] = [
                .object(["type": .string("Replace"), "pattern": .object(["String": .string("\u{2581}")]), "content": .string(" ")]),
                .object(["type": .string("ByteFallback")]), .object(["type": .string("Fuse")]),
            ]
            if prefixSpace {
                decoders.append(.object(["type": .string("Strip"), "content": .string(" "), "start": .number(1), "stop": .number(0)]))
            }
            tokenizer["decoder"] = .object(["type": .string("Sequence"), "decoders": .array(decoders)])
            addBos = try f.optionalBool("tokenizer.ggml.add_bos_token") ?? true
        default:
            throw StrataError.invalidFile(path: f.path, detail: "metadata 'tokenizer.ggml.model' is '\(model)'; supported: gpt2, llama")
        }

        var tokenizerConfig: [String: JSONValue] = [
            "add_bos_token": .bool(addBos), "add_eos_token": .bool(addEos),
            "model_max_length": config["max_position_embeddings"] ?? .null,
        ]
        for (key, i) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
            if let i { tokenizerConfig[key] = .string(tokens[i]) }
        }
        if let template = try f.optionalString("tokenizer.chat_template") { tokenizerConfig["chat_template"] = .string(template) }
        var generation: [String: JSONValue] = [:]
        let stops = [eos, eot].compactMap { $0 }.reduce(into: [Int]()) { if !$0.contains($1) { $0.append($1) } }
        if !stops.isEmpty { generation["eos_token_id"] = stops.count == 1 ? .number(Double(stops[0])) : .array(stops.map { .number(Double($0)) }) }
        if let bos { generation["bos_token_id"] = .number(Double(bos)) }
        if let pad { generation["pad_token_id"] = .number(Double(pad)) }
        return ["tokenizer.json": .object(tokenizer), "tokenizer_config.json": .object(tokenizerConfig),
                "generation_config.json": .object(generation)]
    }

    /// llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) as Hugging Face pre-tokenizers,
    /// and whether whole-word vocabulary hits skip the merges (Llama 3).
    static func preTokenizer(_ name: String, path: String) throws -> ([JSONValue], Bool) {
        func split(_ regex: String) -> JSONValue {
            .object(["type": .string("Split"), "pattern": .object(["Regex": .string(regex)]), "behavior": .string("Isolated"),
                     "invert": .bool(false)])
        }
        let byteLevel = JSONValue.object(["type": .string("ByteLevel"), "add_prefix_space": .bool(false), "use_regex": .bool(true)])
        let byteLevelNoRegex = JSONValue.object(["type": .string("ByteLevel"), "add_prefix_space": .bool(false), "use_regex": .bool(false)])
        let digits = JSONValue.object(["type": .string("Digits"), "individual_digits": .bool(true)])
        switch name {
        case "default", "gpt-2", "gpt2": return ([byteLevel], false)
        case "smollm", "starcoder", "refact": return ([digits, byteLevel], false)
        case "llama3", "llama-v3", "llama-bpe": return ([split(SplitPattern.llama3Source), byteLevelNoRegex], true)
        case "qwen2", "deepseek-r1-qwen": return ([split(SplitPattern.qwen2Source), byteLevelNoRegex], false)
        default:
            throw StrataError.invalidFile(path: path, detail: "metadata 'tokenizer.ggml.pre' is '\(name)'; supported: default, gpt2, smollm, starcoder, refact, llama-bpe, llama3, qwen2")
        }
    }
}

/// A SentencePiece BPE vocabulary (tokens with scores, no merge list) as ranked merges: every
/// way to split a piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score, so BPE by rank makes the merge SentencePiece would (highest score first).
enum SentencePieceMerges {
    static func derive(tokens: [String], scores: [Double], types: [Int]) -> [JSONValue] {
        var index: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where types[i] == 1 || types[i] == 6 { index[t] = i }
        var merges: [(score: Double, id: Int, left: Int, pair: String)] = []
        for (i, t) in tokens.enumerated() where types[i] == 1 {
            let chars = Array(t)
            guard chars.count >= 2 else { continue }
            for cut in 1..<chars.count {
                let left = String(chars[..<cut]), right = String(chars[cut...])
                if let l = index[left], index[right] != nil { merges.append((scores[i], i, l, left + " " + right)) }
            }
        }
        merges.sort { $0.score != $1.score ? $0.score > $1.score : ($0.id != $1.id ? $0.id < $1.id : $0.left < $1.left) }
        return merges.map { .string($0.pair) }
    }
}
