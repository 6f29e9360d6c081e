/// The steps of a Hugging Face tokenizer pipeline that Strata implements, as parsed from
/// `tokenizer.json`. Anything else is refused at load with the step named.

struct AddedToken: Sendable {
    let id: Int
    let content: String
    /// `content` as UTF-8, matched against raw input bytes.
    let bytes: [UInt8]
    let special: Bool
    let lstrip: Bool
    let rstrip: Bool
    let singleWord: Bool

    init(id: Int, content: String, special: Bool, lstrip: Bool, rstrip: Bool, singleWord: Bool) {
        self.id = id; self.content = content; self.bytes = Array(content.utf8)
        self.special = special; self.lstrip = lstrip; self.rstrip = rstrip; self.singleWord = singleWord
    }
}

enum Normalizer: Sendable {
    case prepend(String)
    case replace(pattern: String, content: String)
    case lowercase
    /// Canonical composition. Strata's text path is Foundation-free, so this passes text through
    /// unchanged: exact for text already in NFC (what editors and the web produce).
    case nfc

    func apply(_ s: String) -> String {
        switch self {
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .replace(let pattern, let content): return s.replacingAll(pattern, with: content)
        case .lowercase: return s.lowercased()
        case .nfc: return s
        }
    }
}

enum SplitBehavior: String, Sendable { case isolated = "Isolated", removed = "Removed" }

enum PreTokenizerStep: @unchecked Sendable {
    case split(SplitPattern, SplitBehavior, invert: Bool)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case metaspace(replacement: String, prependScheme: String, split: Bool)
    case digits(individual: Bool)

    /// Splits `pieces`; `first` tells whether the segment starts the input (Metaspace "first").
    func apply(_ pieces: [String], first: Bool) -> [String] {
        var out: [String] = []
        out.reserveCapacity(pieces.count)
        for (index, piece) in pieces.enumerated() {
            switch self {
            case .split(let pattern, let behavior, let invert):
                out += Self.split(piece, pattern, behavior, invert)
            case .byteLevel(let addPrefixSpace, let useRegex):
                var p = piece
                if addPrefixSpace && !p.hasPrefix(" ") { p = " " + p }
                out += useRegex ? Self.split(p, .gpt2, .isolated, false) : [p]
            case .metaspace(let replacement, let scheme, let split):
                var p = piece.replacingAll(" ", with: replacement)
                let prepend = scheme == "always" || (scheme == "first" && first && index == 0)
                if prepend && !p.hasPrefix(replacement) { p = replacement + p }
                out += split ? Self.splitBefore(p, replacement) : [p]
            case .digits(let individual):
                out += Self.splitDigits(piece, individual: individual)
            }
        }
        return out
    }

    private static func split(_ piece: String, _ pattern: SplitPattern, _ behavior: SplitBehavior, _ invert: Bool) -> [String] {
        let text = ScalarText(utf8: piece.utf8)
        let matches = pattern.matches(in: text, range: 0..<text.count)
        func str(_ r: Range<Int>) -> String {
            String(decoding: text.bytes[text.offsets[r.lowerBound]..<text.offsets[r.upperBound]], as: UTF8.self)
        }
        var out: [String] = []
        var cursor = 0
        for m in matches {
            if m.lowerBound > cursor {
                let gapKept = invert ? behavior == .isolated : true
                if gapKept { out.append(str(cursor..<m.lowerBound)) }
            }
            let matchKept = invert ? true : behavior == .isolated
            if matchKept { out.append(str(m)) }
            cursor = m.upperBound
        }
        if cursor < text.count {
            let gapKept = invert ? behavior == .isolated : true
            if gapKept { out.append(str(cursor..<text.count)) }
        }
        return out
    }

    /// Each occurrence of `marker` starts a new piece (Metaspace with `split: true`).
    private static func splitBefore(_ s: String, _ marker: String) -> [String] {
        var out: [String] = []
        var current = String.UnicodeScalarView()
        let m = marker.unicodeScalars.first
        for u in s.unicodeScalars {
            if u == m && !current.isEmpty { out.append(String(current)); current = String.UnicodeScalarView() }
            current.append(u)
        }
        if !current.isEmpty { out.append(String(current)) }
        return out
    }

    private static func splitDigits(_ s: String, individual: Bool) -> [String] {
        var out: [String] = []
        var current = ""
        var currentIsDigit = false
        for u in s.unicodeScalars {
            let isDigit = CharacterClass.of(u.value) == .number
            if !current.isEmpty && (isDigit != currentIsDigit || (isDigit && individual)) {
                out.append(current); current = ""
            }
            current.unicodeScalars.append(u)
            currentIsDigit = isDigit
        }
        if !current.isEmpty { out.append(current) }
        return out
    }
}

enum DecoderStep: Sendable {
    case byteLevel
    case replace(pattern: String, content: String)
    case byteFallback
    case fuse
    case strip(content: Character, start: Int, stop: Int)
    case metaspace(replacement: String, prependScheme: String)

    func apply(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for t in tokens { ByteLevel.decode(t, into: &bytes) }
            return [String(decoding: bytes, as: UTF8.self)]
        case .replace(let pattern, let content):
            return tokens.map { $0.replacingAll(pattern, with: content) }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if let s = String(validating: pending, as: UTF8.self) { out.append(s) }
                else { out += Array(repeating: "\u{FFFD}", count: pending.count) }
                pending = []
            }
            for t in tokens {
                if let b = Self.byteToken(t) { pending.append(b) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { t in
                var chars = Array(t)
                var s = 0
                while s < start && s < chars.count && chars[s] == content { s += 1 }
                var e = chars.count
                var removed = 0
                while removed < stop && e > s && chars[e - 1] == content { e -= 1; removed += 1 }
                chars = Array(chars[s..<e])
                return String(chars)
            }
        case .metaspace(let replacement, let scheme):
            // As in `tokenizers`: every marker of the first token is dropped (it stood for the
            // prepended space), the others become spaces.
            return tokens.enumerated().map { i, t in
                t.replacingAll(replacement, with: i == 0 && scheme != "never" ? "" : " ")
            }
        }
    }

    /// The byte of a `<0xNN>` token.
    static func byteToken(_ t: String) -> UInt8? {
        let u = Array(t.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3...4], as: UTF8.self), radix: 16)
    }
}

extension String {
    /// Literal replacement of every occurrence, matched on Unicode scalars (not grapheme
    /// clusters: a space followed by a combining accent must still match " ").
    func replacingAll(_ pattern: String, with replacement: String) -> String {
        let p = Array(pattern.unicodeScalars)
        guard !p.isEmpty else { return self }
        let s = Array(unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        var changed = false
        while i < s.count {
            if s[i] == p[0], i + p.count <= s.count, s[i..<(i + p.count)].elementsEqual(p) {
                out.append(contentsOf: replacement.unicodeScalars)
                i += p.count
                changed = true
            } else {
                out.append(s[i]); i += 1
            }
        }
        return changed ? String(out) : self
    }
}
