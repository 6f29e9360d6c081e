/// Refuses split patterns that a backtracking engine (Swift Regex is one) can take exponential
/// time on: a repeated group (`*`, `+`, `{n,}`, `{n,m}` with m > 1) whose body itself repeats
/// or alternates, as in `(a+)+`, `(a|a)*` or `(\s*\w)+`. Every pre-tokenizer pattern of a
/// released model is either recognised and run by a hand-written scanner or has no such group.
struct RegexSafety: Error, CustomStringConvertible {
    let description: String

    static func check(_ pattern: String) throws {
        let s = Array(pattern.unicodeScalars)
        // Per open group: does its body repeat or alternate?
        var groups: [(repeats: Bool, alternates: Bool)] = [(false, false)]
        var i = 0
        /// The quantifier at i: (length, whether it repeats more than once); (0, false) if none.
        func quantifier(_ i: Int) -> (Int, Bool) {
            guard i < s.count else { return (0, false) }
            var n = 0
            switch s[i] {
            case "*", "+": n = 1
            case "?": return (1 + lazyOrPossessive(i + 1), false)
            case "{":
                var j = i + 1, text = ""
                while j < s.count, s[j] != "}" { text.unicodeScalars.append(s[j]); j += 1 }
                guard j < s.count else { return (0, false) }
                let parts = text.split(separator: ",", omittingEmptySubsequences: false)
                guard (1...2).contains(parts.count), parts.allSatisfy({ $0.isEmpty || Int($0) != nil }), !parts[0].isEmpty else { return (0, false) }
                let repeats = parts.count == 2 ? (parts[1].isEmpty || Int(parts[1])! > 1) : Int(parts[0])! > 1
                return (j - i + 1 + lazyOrPossessive(j + 1), repeats)
            default: return (0, false)
            }
            return (n + lazyOrPossessive(i + n), true)
        }
        func lazyOrPossessive(_ i: Int) -> Int { i < s.count && (s[i] == "?" || s[i] == "+") ? 1 : 0 }

        while i < s.count {
            let c = s[i]
            switch c {
            case "\\":
                i += 2
                let (n, repeats) = quantifier(i)
                if repeats { groups[groups.count - 1].repeats = true }
                i += n
                continue
            case "[":
                // A character class: skip to its closing bracket (escapes and a leading ] inside).
                var j = i + 1
                if j < s.count, s[j] == "^" { j += 1 }
                if j < s.count, s[j] == "]" { j += 1 }
                while j < s.count, s[j] != "]" { j += s[j] == "\\" ? 2 : 1 }
                i = j + 1
            case "(":
                groups.append((false, false))
                i += 1
                continue
            case ")":
                guard groups.count > 1 else { throw RegexSafety(description: "unbalanced ')' at offset \(i)") }
                let body = groups.removeLast()
                let (n, repeats) = quantifier(i + 1)
                if repeats && (body.repeats || body.alternates) {
                    throw RegexSafety(description: "the group ending at offset \(i) repeats a body that itself \(body.repeats ? "repeats" : "alternates"); a backtracking engine can take exponential time on it")
                }
                if repeats || body.repeats { groups[groups.count - 1].repeats = true }
                i += 1 + n
                continue
            case "|":
                groups[groups.count - 1].alternates = true
                i += 1
                continue
            default:
                i += 1
            }
            let (n, repeats) = quantifier(i)
            if repeats { groups[groups.count - 1].repeats = true }
            i += n
        }
    }
}
