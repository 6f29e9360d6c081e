/// Splits a template into text, `{{ output }}` and `{% statement %}` pieces, applying the
/// whitespace control Hugging Face renders chat templates with: `trim_blocks` (the newline after
/// a block tag goes), `lstrip_blocks` (spaces before a block tag on its own line go), and the
/// explicit `{%-`, `-%}`, `{{-`, `-}}` markers. Comments are dropped.
enum JinjaPiece: Equatable {
    case text(String)
    case output([JinjaToken])
    case statement([JinjaToken])
}

enum JinjaToken: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    case op(String)
}

struct JinjaSyntaxError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

enum JinjaLexer {
    private enum Kind { case output, statement, comment }
    private struct Tag { var kind: Kind; var body: String; var stripBefore: Bool; var stripAfter: Bool; var keepBefore: Bool }

    static func pieces(_ source: String) throws -> [JinjaPiece] {
        // jinja2 drops one trailing newline of the source (keep_trailing_newline=False).
        var chars = Array(source.unicodeScalars)
        if chars.last == "\n" { chars.removeLast(); if chars.last == "\r" { chars.removeLast() } }
        var texts: [String] = []
        var tags: [Tag] = []
        var i = 0, textStart = 0
        func text(_ a: Int, _ b: Int) -> String { var s = ""; s.unicodeScalars.append(contentsOf: chars[a..<b]); return s }
        while i < chars.count - 1 {
            guard chars[i] == "{", chars[i + 1] == "{" || chars[i + 1] == "%" || chars[i + 1] == "#" else { i += 1; continue }
            let kind: Kind = chars[i + 1] == "{" ? .output : chars[i + 1] == "%" ? .statement : .comment
            let close: Unicode.Scalar = kind == .output ? "}" : kind == .statement ? "%" : "#"
            texts.append(text(textStart, i))
            var j = i + 2
            var stripBefore = false, keepBefore = false
            if j < chars.count, chars[j] == "-" { stripBefore = true; j += 1 } else if j < chars.count, chars[j] == "+" { keepBefore = true; j += 1 }
            let bodyStart = j
            var quote: Unicode.Scalar? = nil
            var end = -1
            while j < chars.count - 1 {
                let c = chars[j]
                if let q = quote {
                    if c == "\\" { j += 2; continue }
                    if c == q { quote = nil }
                } else if kind != .comment && (c == "'" || c == "\"") {
                    quote = c
                } else if chars[j + 1] == "}" && c == close {
                    end = j
                    break
                }
                j += 1
            }
            guard end >= 0 else { throw JinjaSyntaxError(message: "unclosed tag starting at character \(i)") }
            var bodyEnd = end, stripAfter = false
            if bodyEnd > bodyStart, chars[bodyEnd - 1] == "-" { stripAfter = true; bodyEnd -= 1 }
            tags.append(Tag(kind: kind, body: text(bodyStart, max(bodyStart, bodyEnd)), stripBefore: stripBefore, stripAfter: stripAfter,
                            keepBefore: keepBefore))
            i = end + 2
            textStart = i
        }
        texts.append(text(textStart, chars.count))

        var out: [JinjaPiece] = []
        for (n, raw) in texts.enumerated() {
            var t = Substring(raw)
            if n > 0 {
                let previous = tags[n - 1]
                if previous.stripAfter {
                    t = t.drop { $0.isWhitespace }
                } else if previous.kind != .output {
                    if t.hasPrefix("\r\n") { t = t.dropFirst() } else if t.hasPrefix("\n") { t = t.dropFirst() }
                }
            }
            if n < tags.count {
                let next = tags[n]
                if next.stripBefore {
                    while let last = t.last, last.isWhitespace { t = t.dropLast() }
                } else if next.kind != .output && !next.keepBefore {
                    // lstrip_blocks: spaces and tabs between a line start in the source (or the
                    // template's start) and the tag go.
                    let scalars = Array(raw.unicodeScalars)
                    var k = scalars.count
                    while k > 0, scalars[k - 1] == " " || scalars[k - 1] == "\t" { k -= 1 }
                    let atLineStart = k == 0 ? n == 0 : scalars[k - 1] == "\n"
                    if atLineStart, k < scalars.count {
                        var run = scalars.count - k
                        while run > 0, let last = t.unicodeScalars.last, last == " " || last == "\t" {
                            t = Substring(t.unicodeScalars.dropLast())
                            run -= 1
                        }
                    }
                }
            }
            if !t.isEmpty { out.append(.text(String(t))) }
            if n < tags.count {
                let tag = tags[n]
                switch tag.kind {
                case .output: out.append(.output(try tokens(tag.body)))
                case .statement: out.append(.statement(try tokens(tag.body)))
                case .comment: break
                }
            }
        }
        return out
    }

    static let operators = ["==", "!=", "<=", ">=", "//", "**", "<", ">", "+", "-", "*", "/", "%", "~", "|", ".", ",", ":", "(", ")",
                            "[", "]", "{", "}", "="]

    static func tokens(_ body: String) throws -> [JinjaToken] {
        let c = Array(body.unicodeScalars)
        var out: [JinjaToken] = []
        var i = 0
        func isNameStart(_ u: Unicode.Scalar) -> Bool { u == "_" || u.properties.isAlphabetic }
        while i < c.count {
            let u = c[i]
            if u.properties.isWhitespace { i += 1; continue }
            if u == "'" || u == "\"" {
                var s = ""
                var j = i + 1
                while j < c.count && c[j] != u {
                    if c[j] == "\\", j + 1 < c.count {
                        j += 1
                        switch c[j] {
                        case "n": s += "\n"
                        case "t": s += "\t"
                        case "r": s += "\r"
                        case "\\": s += "\\"
                        case "'": s += "'"
                        case "\"": s += "\""
                        default: s += "\\"; s.unicodeScalars.append(c[j])
                        }
                    } else {
                        s.unicodeScalars.append(c[j])
                    }
                    j += 1
                }
                guard j < c.count else { throw JinjaSyntaxError(message: "unterminated string in '\(body)'") }
                out.append(.string(s))
                i = j + 1
                continue
            }
            if u.properties.numericType != nil && u.value < 128 {
                var j = i
                while j < c.count, c[j].value >= 48 && c[j].value <= 57 || c[j] == "_" { j += 1 }
                if j + 1 < c.count, c[j] == ".", c[j + 1].value >= 48 && c[j + 1].value <= 57 {
                    j += 1
                    while j < c.count, c[j].value >= 48 && c[j].value <= 57 { j += 1 }
                    out.append(.double(Double(String(String.UnicodeScalarView(c[i..<j]))) ?? 0))
                } else {
                    out.append(.int(Int(String(String.UnicodeScalarView(c[i..<j])).filter { $0 != "_" }) ?? 0))
                }
                i = j
                continue
            }
            if isNameStart(u) {
                var j = i
                while j < c.count, isNameStart(c[j]) || (c[j].value >= 48 && c[j].value <= 57) { j += 1 }
                out.append(.name(String(String.UnicodeScalarView(c[i..<j]))))
                i = j
                continue
            }
            guard let op = operators.first(where: { op in
                let o = Array(op.unicodeScalars)
                return i + o.count <= c.count && Array(c[i..<(i + o.count)]) == o
            }) else {
                throw JinjaSyntaxError(message: "unexpected character '\(u)' in '\(body)'")
            }
            out.append(.op(op))
            i += op.unicodeScalars.count
        }
        return out
    }
}
