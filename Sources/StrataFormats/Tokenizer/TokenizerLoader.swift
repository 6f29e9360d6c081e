#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StrataCore

extension Tokenizer {
    /// Loads the tokenizer of a model directory: `tokenizer.json` if present, else
    /// `vocab.json` + `merges.txt` (GPT-2 style, as OPT ships). `tokenizer_config.json` decides
    /// BOS/EOS handling where the tokenizer file has no post-processor.
    public static func load(directory: String) throws -> Tokenizer {
        let config = try TokenizerConfig(directory: directory)
        if let file = try ModelFiles.json(directory, "tokenizer.json") {
            return try load(tokenizerJSON: file.value, path: file.path, config: config)
        }
        let json = FileSystem.join(directory, "tokenizer.json")
        let vocab = FileSystem.join(directory, "vocab.json")
        let merges = FileSystem.join(directory, "merges.txt")
        if FileSystem.exists(vocab) && FileSystem.exists(merges) {
            return try load(vocabJSON: vocab, mergesTXT: merges, config: config)
        }
        throw StrataError.fileNotFound(path: json + " (nor vocab.json + merges.txt)")
    }

    /// A tokenizer from a parsed `tokenizer.json` (errors name `path`).
    public static func load(tokenizerJSON json: JSONValue, path: String, config: TokenizerConfig) throws -> Tokenizer {
        let root = try JSONFields(json, path: path)
        func bad(_ d: String) -> StrataError { .invalidFile(path: path, detail: d) }

        guard let modelValue = root.object["model"] else { throw root.missing("model") }
        let m = try JSONFields(modelValue, path: path)
        let type = try m.string("type", default: "BPE") ?? "BPE"
        guard type == "BPE" else { throw bad("model.type '\(type)' is not supported (supported: BPE)") }
        guard let vocabObject = m.object["vocab"]?.object else { throw bad("missing or malformed 'model.vocab'") }
        let vocab = try vocabulary(vocabObject, path: path, field: "model.vocab")
        let merges = try parseMerges(m.object["merges"]?.array ?? [], path: path)

        var added: [AddedToken] = []
        for (i, v) in (root.object["added_tokens"]?.array ?? []).enumerated() {
            let t = try JSONFields(v, path: path + " (added_tokens[\(i)])")
            let id = try t.int("id")
            guard id >= 0 && id < maxVocabulary else { throw t.wrong("id", "an id from 0 to \(maxVocabulary - 1)") }
            added.append(AddedToken(
                id: id, content: try t.string("content"), special: try t.bool("special", default: false),
                lstrip: try t.bool("lstrip", default: false), rstrip: try t.bool("rstrip", default: false),
                singleWord: try t.bool("single_word", default: false)))
        }

        let normalizers = try parseNormalizer(root.object["normalizer"] ?? .null, path: path)
        var byteLevelInput = false
        let preTokenizers = try parsePreTokenizer(root.object["pre_tokenizer"] ?? .null, path: path, byteLevel: &byteLevelInput)
        let decoders = try parseDecoder(root.object["decoder"] ?? .null, path: path)
        if decoders.contains(where: { if case .byteLevel = $0 { return true }; return false }) { byteLevelInput = true }

        let bpe = try BPEModel(
            vocab: vocab, merges: merges, ignoreMerges: try m.bool("ignore_merges", default: false),
            byteFallback: try m.bool("byte_fallback", default: false), unkToken: try m.string("unk_token", default: nil),
            fuseUnk: try m.bool("fuse_unk", default: false), source: path)

        func idOf(_ token: String?) -> Int? {
            guard let token else { return nil }
            return added.first(where: { $0.content == token })?.id ?? vocab[token]
        }
        var prefix: [Int] = []
        var suffix: [Int] = []
        let processor = root.object["post_processor"] ?? .null
        let hasProcessor = try parsePostProcessor(processor, path: path, tokenId: idOf, prefix: &prefix, suffix: &suffix)
        if !hasProcessor {
            if config.addBosToken == true, let bos = idOf(config.bosToken) { prefix = [bos] }
            if config.addEosToken == true, let eos = idOf(config.eosToken) { suffix = [eos] }
        }
        return Tokenizer(
            model: bpe, addedTokens: added, normalizers: normalizers, preTokenizers: preTokenizers,
            decoders: decoders, byteLevelInput: byteLevelInput, prefixIds: prefix, suffixIds: suffix,
            bos: idOf(config.bosToken), eos: idOf(config.eosToken), pad: idOf(config.padToken))
    }

    static func load(vocabJSON: String, mergesTXT: String, config: TokenizerConfig) throws -> Tokenizer {
        guard let vocabObject = try JSONValue.load(path: vocabJSON).object else {
            throw StrataError.invalidFile(path: vocabJSON, detail: "expected an object mapping tokens to ids")
        }
        let vocab = try vocabulary(vocabObject, path: vocabJSON, field: "vocabulary")
        let data = try TextFile.read(path: mergesTXT, limit: TextFile.maxJSONBytes)
        var merges: [(String, String)] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.hasPrefix("#version") || line.isEmpty { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw StrataError.invalidFile(path: mergesTXT, detail: "line \(n + 1) is not two space-separated tokens")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        // GPT-2's slow tokenizer treats its special-token strings as added tokens.
        var added: [AddedToken] = []
        for token in [config.bosToken, config.eosToken, config.unkToken, config.padToken].compactMap({ $0 }) {
            if let id = vocab[token], !added.contains(where: { $0.id == id }) {
                added.append(AddedToken(id: id, content: token, special: true, lstrip: false, rstrip: false, singleWord: false))
            }
        }
        let bpe = try BPEModel(vocab: vocab, merges: merges, ignoreMerges: false, byteFallback: false,
                               unkToken: config.unkToken, fuseUnk: false, source: mergesTXT)
        let prefix = config.addBosToken == true ? [config.bosToken.flatMap { vocab[$0] }].compactMap { $0 } : []
        let suffix = config.addEosToken == true ? [config.eosToken.flatMap { vocab[$0] }].compactMap { $0 } : []
        return Tokenizer(
            model: bpe, addedTokens: added, normalizers: [],
            preTokenizers: [.byteLevel(addPrefixSpace: false, useRegex: true)], decoders: [.byteLevel],
            byteLevelInput: true, prefixIds: prefix, suffixIds: suffix,
            bos: config.bosToken.flatMap { vocab[$0] }, eos: config.eosToken.flatMap { vocab[$0] },
            pad: config.padToken.flatMap { vocab[$0] })
    }

    /// Vocabularies above this are refused (the largest released ones have ~262k tokens); ids
    /// index a table, so each must be below it too.
    public static let maxVocabulary = 1 << 21

    /// Token -> id, checked: at most `maxVocabulary` entries, ids in 0..<maxVocabulary.
    static func vocabulary(_ object: [String: JSONValue], path: String, field: String) throws -> [String: Int] {
        guard object.count <= maxVocabulary else {
            throw StrataError.invalidFile(path: path, detail: "\(field) has \(object.count) entries, more than the \(maxVocabulary)-token limit")
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(object.count)
        for (token, v) in object {
            guard let id = v.int, id >= 0, id < maxVocabulary else {
                throw StrataError.invalidFile(path: path, detail: "\(field)['\(token)'] is not an id from 0 to \(maxVocabulary - 1)")
            }
            vocab[token] = id
        }
        return vocab
    }

    private static func parseMerges(_ values: [JSONValue], path: String) throws -> [(String, String)] {
        var merges: [(String, String)] = []
        merges.reserveCapacity(values.count)
        for (i, v) in values.enumerated() {
            if let s = v.string {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw StrataError.invalidFile(path: path, detail: "model.merges[\(i)] '\(s)' is not 'a b'") }
                merges.append((String(parts[0]), String(parts[1])))
            } else if let a = v.array, a.count == 2, let l = a[0].string, let r = a[1].string {
                merges.append((l, r))
            } else {
                throw StrataError.invalidFile(path: path, detail: "model.merges[\(i)] is neither 'a b' nor [a, b]")
            }
        }
        return merges
    }

    private static func parseNormalizer(_ v: JSONValue, path: String) throws -> [Normalizer] {
        if v.isNull { return [] }
        let f = try JSONFields(v, path: path + " (normalizer)")
        switch try f.string("type") {
        case "Sequence":
            return try (f.object["normalizers"]?.array ?? []).flatMap { try parseNormalizer($0, path: path) }
        case "Prepend": return [.prepend(try f.string("prepend"))]
        case "Replace":
            guard let pattern = f.object["pattern"]?["String"]?.string else {
                throw StrataError.invalidFile(path: path, detail: "normalizer Replace: only literal String patterns are supported")
            }
            return [.replace(pattern: pattern, content: try f.string("content"))]
        case "Lowercase": return [.lowercase]
        case "NFC": return [.nfc]
        case let other:
            throw StrataError.invalidFile(path: path, detail: "normalizer '\(other)' is not supported (supported: Sequence, Prepend, Replace, Lowercase, NFC)")
        }
    }

    private static func parsePreTokenizer(_ v: JSONValue, path: String, byteLevel: inout Bool) throws -> [PreTokenizerStep] {
        if v.isNull { return [] }
        let f = try JSONFields(v, path: path + " (pre_tokenizer)")
        switch try f.string("type") {
        case "Sequence":
            var steps: [PreTokenizerStep] = []
            for p in f.object["pretokenizers"]?.array ?? [] { steps += try parsePreTokenizer(p, path: path, byteLevel: &byteLevel) }
            return steps
        case "ByteLevel":
            byteLevel = true
            return [.byteLevel(addPrefixSpace: try f.bool("add_prefix_space", default: false), useRegex: try f.bool("use_regex", default: true))]
        case "Split":
            let pattern: SplitPattern
            if let regex = f.object["pattern"]?["Regex"]?.string {
                do { pattern = try SplitPattern.fromRegex(regex) } catch {
                    throw StrataError.invalidFile(path: path, detail: "pre_tokenizer Split regex is refused: \(error)")
                }
            } else if let literal = f.object["pattern"]?["String"]?.string {
                pattern = .literal(Array(literal.utf8))
            } else {
                throw StrataError.invalidFile(path: path, detail: "pre_tokenizer Split has no pattern")
            }
            let behaviorName = try f.string("behavior", default: "Isolated") ?? "Isolated"
            guard let behavior = SplitBehavior(rawValue: behaviorName) else {
                throw StrataError.invalidFile(path: path, detail: "pre_tokenizer Split behavior '\(behaviorName)' is not supported (supported: Isolated, Removed)")
            }
            return [.split(pattern, behavior, invert: try f.bool("invert", default: false))]
        case "Metaspace":
            let replacement = try f.string("replacement", default: "\u{2581}") ?? "\u{2581}"
            var scheme = try f.string("prepend_scheme", default: nil)
            if scheme == nil { scheme = try f.bool("add_prefix_space", default: true) ? "always" : "never" }
            return [.metaspace(replacement: replacement, prependScheme: scheme!, split: try f.bool("split", default: true))]
        case "Digits":
            return [.digits(individual: try f.bool("individual_digits", default: false))]
        case let other:
            throw StrataError.invalidFile(path: path, detail: "pre_tokenizer '\(other)' is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Digits)")
        }
    }

    private static func parseDecoder(_ v: JSONValue, path: String) throws -> [DecoderStep] {
        if v.isNull { return [] }
        let f = try JSONFields(v, path: path + " (decoder)")
        switch try f.string("type") {
        case "Sequence": return try (f.object["decoders"]?.array ?? []).flatMap { try parseDecoder($0, path: path) }
        case "ByteLevel": return [.byteLevel]
        case "ByteFallback": return [.byteFallback]
        case "Fuse": return [.fuse]
        case "Replace":
            guard let pattern = f.object["pattern"]?["String"]?.string else {
                throw StrataError.invalidFile(path: path, detail: "decoder Replace: only literal String patterns are supported")
            }
            return [.replace(pattern: pattern, content: try f.string("content"))]
        case "Strip":
            let content = try f.string("content")
            guard let ch = content.first, content.count == 1 else { throw f.wrong("content", "one character") }
            return [.strip(content: ch, start: try f.int("start", default: 0), stop: try f.int("stop", default: 0))]
        case "Metaspace":
            let replacement = try f.string("replacement", default: "\u{2581}") ?? "\u{2581}"
            var scheme = try f.string("prepend_scheme", default: nil)
            if scheme == nil { scheme = try f.bool("add_prefix_space", default: true) ? "always" : "never" }
            return [.metaspace(replacement: replacement, prependScheme: scheme!)]
        case let other:
            throw StrataError.invalidFile(path: path, detail: "decoder '\(other)' is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)")
        }
    }

    /// Returns false when there is no post-processor that adds tokens (null or ByteLevel).
    private static func parsePostProcessor(_ v: JSONValue, path: String, tokenId: (String?) -> Int?,
                                           prefix: inout [Int], suffix: inout [Int]) throws -> Bool {
        if v.isNull { return false }
        let f = try JSONFields(v, path: path + " (post_processor)")
        switch try f.string("type") {
        case "ByteLevel": return false
        case "Sequence":
            var any = false
            for p in f.object["processors"]?.array ?? [] {
                if try parsePostProcessor(p, path: path, tokenId: tokenId, prefix: &prefix, suffix: &suffix) { any = true }
            }
            return any
        case "TemplateProcessing":
            let specials = f.object["special_tokens"]?.object ?? [:]
            var seenSequence = false
            for item in f.object["single"]?.array ?? [] {
                if item["Sequence"] != nil { seenSequence = true; continue }
                guard let name = item["SpecialToken"]?["id"]?.string else { continue }
                let ids = specials[name]?["ids"]?.array?.compactMap(\.int) ?? [tokenId(name)].compactMap { $0 }
                guard !ids.isEmpty else {
                    throw StrataError.invalidFile(path: path, detail: "post_processor template uses unknown special token '\(name)'")
                }
                if seenSequence { suffix += ids } else { prefix += ids }
            }
            return true
        case "RobertaProcessing", "BertProcessing":
            if let cls = f.object["cls"]?.array, cls.count == 2, let id = cls[1].int { prefix.append(id) }
            if let sep = f.object["sep"]?.array, sep.count == 2, let id = sep[1].int { suffix.append(id) }
            return true
        case let other:
            throw StrataError.invalidFile(path: path, detail: "post_processor '\(other)' is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)")
        }
    }
}
