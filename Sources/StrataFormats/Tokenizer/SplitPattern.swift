/// The regex that splits text into pieces before BPE. The patterns used by GPT-2/OPT,
/// Llama 3 and Qwen2 are recognised and run by hand-written scanners (the generic regex engine
/// is far slower); any other pattern runs through Swift Regex on Unicode scalars.
enum SplitPattern: @unchecked Sendable {
    case gpt2
    /// Llama-3 style; `maxDigits` is 3 for Llama 3 (`\p{N}{1,3}`) and 1 for Qwen2 (`\p{N}`).
    case llama3(maxDigits: Int)
    case literal([UInt8])
    case regex(Regex<AnyRegexOutput>, source: String)

    static let gpt2Source = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Source = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Source = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    static func fromRegex(_ source: String) throws -> SplitPattern {
        switch source {
        case gpt2Source: return .gpt2
        case llama3Source: return .llama3(maxDigits: 3)
        case qwen2Source: return .llama3(maxDigits: 1)
        default:
            try RegexSafety.check(source)
            return .regex(try Regex(source).matchingSemantics(.unicodeScalar), source: source)
        }
    }

    /// Match ranges, in scalar indices, of the pattern over `text[range]`.
    func matches(in text: ScalarText, range: Range<Int>) -> [Range<Int>] {
        switch self {
        case .gpt2: return Self.scan(text, range, step: Self.gpt2Step)
        case .llama3(let maxDigits): return Self.scan(text, range) { Self.llama3Step($0, $1, $2, maxDigits) }
        case .literal(let needle): return Self.literalMatches(needle, text, range)
        case .regex(let regex, _): return Self.regexMatches(regex, text, range)
        }
    }

    private static func scan(_ t: ScalarText, _ range: Range<Int>, step: (ScalarText, Int, Int) -> Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = range.lowerBound
        while i < range.upperBound {
            let end = step(t, i, range.upperBound)
            out.append(i..<end)
            i = end
        }
        return out
    }

    @inline(__always) private static func isApostrophe(_ t: ScalarText, _ i: Int) -> Bool { t.scalars[i] == 0x27 }

    /// Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
    private static func contraction(_ t: ScalarText, _ i: Int, _ end: Int, caseInsensitive: Bool) -> Int {
        guard isApostrophe(t, i), i + 1 < end else { return 0 }
        func lower(_ k: Int) -> UInt32 {
            let s = t.scalars[k]
            return caseInsensitive && s >= 65 && s <= 90 ? s + 32 : s
        }
        let c1 = lower(i + 1)
        switch c1 {
        case 0x73, 0x74, 0x6D, 0x64: return 2 // s t m d
        case 0x72, 0x76: // r v -> needs e
            return i + 2 < end && lower(i + 2) == 0x65 ? 3 : 0
        case 0x6C: // l -> needs l
            return i + 2 < end && lower(i + 2) == 0x6C ? 3 : 0
        default: return 0
        }
    }

    private static func run(_ t: ScalarText, from i: Int, _ end: Int, _ cls: CharacterClass) -> Int {
        var j = i
        while j < end && t.classes[j] == cls { j += 1 }
        return j
    }

    /// `\s+(?!\S)|\s+` starting at a whitespace scalar i.
    private static func trailingWhitespace(_ t: ScalarText, _ i: Int, _ end: Int) -> Int {
        let j = run(t, from: i, end, .whitespace)
        if j == end || j - i == 1 { return j }
        return j - 1
    }

    static func gpt2Step(_ t: ScalarText, _ i: Int, _ end: Int) -> Int {
        let c = contraction(t, i, end, caseInsensitive: false)
        if c > 0 { return i + c }
        var start = i
        if t.scalars[i] == 0x20, i + 1 < end, t.classes[i + 1] != .whitespace { start = i + 1 }
        switch t.classes[start] {
        case .letter: return run(t, from: start, end, .letter)
        case .number: return run(t, from: start, end, .number)
        case .other: return run(t, from: start, end, .other)
        case .whitespace: return trailingWhitespace(t, i, end)
        }
    }

    static func llama3Step(_ t: ScalarText, _ i: Int, _ end: Int, _ maxDigits: Int) -> Int {
        let c = contraction(t, i, end, caseInsensitive: true)
        if c > 0 { return i + c }
        let cls = t.classes[i]
        let s = t.scalars[i]
        let isNewline = s == 0x0A || s == 0x0D
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if cls == .letter { return run(t, from: i, end, .letter) }
        if cls != .number, !isNewline, i + 1 < end, t.classes[i + 1] == .letter {
            return run(t, from: i + 1, end, .letter)
        }
        // \p{N}{1,maxDigits}
        if cls == .number {
            var j = i
            while j < end && j - i < maxDigits && t.classes[j] == .number { j += 1 }
            return j
        }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        var start = i
        if s == 0x20, i + 1 < end, t.classes[i + 1] == .other { start = i + 1 }
        if t.classes[start] == .other {
            var j = run(t, from: start, end, .other)
            while j < end && (t.scalars[j] == 0x0A || t.scalars[j] == 0x0D) { j += 1 }
            return j
        }
        // \s*[\r\n]+ : up to and including the last newline of the whitespace run
        let j = run(t, from: i, end, .whitespace)
        var lastNewline = -1
        for k in i..<j where t.scalars[k] == 0x0A || t.scalars[k] == 0x0D { lastNewline = k }
        if lastNewline >= 0 { return lastNewline + 1 }
        return trailingWhitespace(t, i, end)
    }

    private static func literalMatches(_ needle: [UInt8], _ t: ScalarText, _ range: Range<Int>) -> [Range<Int>] {
        guard !needle.isEmpty else { return [] }
        var out: [Range<Int>] = []
        var i = range.lowerBound
        while i < range.upperBound {
            let b = t.offsets[i]
            if b + needle.count <= t.offsets[range.upperBound], t.bytes[b..<(b + needle.count)].elementsEqual(needle) {
                var j = i
                while t.offsets[j] < b + needle.count { j += 1 }
                out.append(i..<j)
                i = j
            } else {
                i += 1
            }
        }
        return out
    }

    private static func regexMatches(_ regex: Regex<AnyRegexOutput>, _ t: ScalarText, _ range: Range<Int>) -> [Range<Int>] {
        let piece = String(decoding: t.bytes[t.offsets[range.lowerBound]..<t.offsets[range.upperBound]], as: UTF8.self)
        var out: [Range<Int>] = []
        // Map scalar positions of `piece` back to indices of `t`.
        let scalarStarts = piece.unicodeScalars.indices
        var indexOf: [String.Index: Int] = [:]
        var k = range.lowerBound
        for idx in scalarStarts { indexOf[idx] = k; k += 1 }
        indexOf[piece.endIndex] = range.upperBound
        for match in piece.matches(of: regex) where !match.range.isEmpty {
            guard let a = indexOf[match.range.lowerBound], let b = indexOf[match.range.upperBound] else { continue }
            out.append(a..<b)
        }
        return out
    }
}
