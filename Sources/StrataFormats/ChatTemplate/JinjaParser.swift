/// The syntax tree of a chat template: the Jinja subset Hugging Face chat templates use.
public indirect enum JinjaExpression: Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpression])
    case dict([(JinjaExpression, JinjaExpression)])
    case attribute(JinjaExpression, String)
    case subscriptItem(JinjaExpression, JinjaExpression)
    case slice(JinjaExpression, JinjaExpression?, JinjaExpression?, JinjaExpression?)
    case call(JinjaExpression, [JinjaExpression], [(String, JinjaExpression)])
    case filter(JinjaExpression, String, [JinjaExpression], [(String, JinjaExpression)])
    case test(JinjaExpression, String, [JinjaExpression], negated: Bool)
    case unary(String, JinjaExpression)
    case binary(String, JinjaExpression, JinjaExpression)
    case conditional(JinjaExpression, condition: JinjaExpression, otherwise: JinjaExpression?)
}

public indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpression)
    case ifBlock([(JinjaExpression, [JinjaNode])], otherwise: [JinjaNode])
    case forBlock(targets: [String], iterable: JinjaExpression, condition: JinjaExpression?, body: [JinjaNode], otherwise: [JinjaNode])
    case set(targets: [String], attribute: String?, JinjaExpression)
    case setBlock(String, [JinjaNode])
    case macro(JinjaMacro)
    case breakLoop, continueLoop
}

struct JinjaParser {
    var pieces: [JinjaPiece]
    var index = 0
    /// Blocks nest at most this deep (parsing and rendering recurse once per level; fuzzing
    /// found deep nesting overflowing the stack).
    static let maxDepth = 64
    var depth = 0

    static func parse(_ source: String) throws -> [JinjaNode] {
        var p = JinjaParser(pieces: try JinjaLexer.pieces(source))
        let (nodes, end) = try p.nodes(until: [])
        if let end { throw JinjaSyntaxError(message: "unexpected '{% \(end) %}'") }
        return nodes
    }

    /// Nodes up to a statement whose keyword is in `terminators` (returned, not consumed further).
    mutating func nodes(until terminators: Set<String>) throws -> ([JinjaNode], String?) {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw JinjaSyntaxError(message: "blocks nested deeper than \(Self.maxDepth)") }
        var out: [JinjaNode] = []
        while index < pieces.count {
            let piece = pieces[index]
            index += 1
            switch piece {
            case .text(let t): out.append(.text(t))
            case .output(let tokens):
                var e = ExpressionParser(tokens: tokens)
                out.append(.output(try e.parseWhole()))
            case .statement(let tokens):
                guard case .name(let keyword)? = tokens.first else { throw JinjaSyntaxError(message: "empty statement") }
                if terminators.contains(keyword) {
                    index -= 1
                    return (out, keyword)
                }
                out.append(try statement(keyword, Array(tokens.dropFirst())))
            }
        }
        if !terminators.isEmpty { throw JinjaSyntaxError(message: "missing {% \(terminators.sorted().joined(separator: " or ")) %}") }
        return (out, nil)
    }

    /// Consumes the terminator statement at `index`, returning its tokens after the keyword.
    mutating func take() -> [JinjaToken] {
        guard case .statement(let tokens) = pieces[index] else { return [] }
        index += 1
        return Array(tokens.dropFirst())
    }

    mutating func statement(_ keyword: String, _ rest: [JinjaToken]) throws -> JinjaNode {
        var e = ExpressionParser(tokens: rest)
        switch keyword {
        case "if":
            var branches: [(JinjaExpression, [JinjaNode])] = []
            var condition = try e.parseWhole()
            var otherwise: [JinjaNode] = []
            while true {
                let (body, end) = try nodes(until: ["elif", "else", "endif"])
                let tail = take()
                branches.append((condition, body))
                if end == "elif" {
                    var c = ExpressionParser(tokens: tail)
                    condition = try c.parseWhole()
                    continue
                }
                if end == "else" {
                    (otherwise, _) = try nodes(until: ["endif"])
                    _ = take()
                }
                break
            }
            return .ifBlock(branches, otherwise: otherwise)
        case "for":
            var targets = [try e.name()]
            while e.accept(.op(",")) { targets.append(try e.name()) }
            try e.expect(.name("in"))
            let iterable = try e.parseOr()  // no conditional: a trailing `if` filters the items
            var condition: JinjaExpression? = nil
            if e.accept(.name("if")) { condition = try e.parseExpression() }
            _ = e.accept(.name("recursive"))
            try e.end()
            let (body, end) = try nodes(until: ["else", "endfor"])
            _ = take()
            var otherwise: [JinjaNode] = []
            if end == "else" {
                (otherwise, _) = try nodes(until: ["endfor"])
                _ = take()
            }
            return .forBlock(targets: targets, iterable: iterable, condition: condition, body: body, otherwise: otherwise)
        case "set":
            var targets = [try e.name()]
            var attribute: String? = nil
            if e.accept(.op(".")) { attribute = try e.name() }
            while e.accept(.op(",")) { targets.append(try e.name()) }
            if e.atEnd {
                let (body, _) = try nodes(until: ["endset"])
                _ = take()
                return .setBlock(targets[0], body)
            }
            try e.expect(.op("="))
            let value = try e.parseWhole()
            return .set(targets: targets, attribute: attribute, value)
        case "macro":
            let name = try e.name()
            try e.expect(.op("("))
            var parameters: [(String, JinjaExpression?)] = []
            while !e.accept(.op(")")) {
                let p = try e.name()
                parameters.append((p, e.accept(.op("=")) ? try e.parseExpression() : nil))
                _ = e.accept(.op(","))
            }
            let (body, _) = try nodes(until: ["endmacro"])
            _ = take()
            return .macro(JinjaMacro(name: name, parameters: parameters, body: body))
        case "break": return .breakLoop
        case "continue": return .continueLoop
        case "generation":
            // Hugging Face's marker for assistant-token masks: renders its body unchanged.
            let (body, _) = try nodes(until: ["endgeneration"])
            _ = take()
            return .ifBlock([(.literal(.bool(true)), body)], otherwise: [])
        default:
            throw JinjaSyntaxError(message: "statement '\(keyword)' is not supported")
        }
    }
}

/// Pratt-style expression parser with Jinja's precedence: conditional, or, and, not,
/// comparisons/in/is, `~`, + -, * / // %, **, unary, then postfix (. [] () |filter).
struct ExpressionParser {
    let tokens: [JinjaToken]
    var i = 0
    /// One tag holds at most this many tokens and nests at most `maxDepth` deep, so parsing and
    /// evaluating its expression cannot recurse without bound.
    static let maxTokens = 512
    static let maxDepth = 64
    var depth = 0

    /// Enters one level of nesting (a parenthesis, list, conditional, `not` or unary sign).
    mutating func nest() throws {
        depth += 1
        guard depth <= Self.maxDepth, tokens.count <= Self.maxTokens else {
            throw JinjaSyntaxError(message: "expression nested deeper than \(Self.maxDepth) or longer than \(Self.maxTokens) tokens")
        }
    }

    init(tokens: [JinjaToken]) { self.tokens = tokens }

    var atEnd: Bool { i >= tokens.count }
    var peek: JinjaToken? { i < tokens.count ? tokens[i] : nil }

    mutating func accept(_ t: JinjaToken) -> Bool {
        if peek == t { i += 1; return true }
        return false
    }
    mutating func expect(_ t: JinjaToken) throws {
        guard accept(t) else { throw JinjaSyntaxError(message: "expected \(t), found \(peek.map { "\($0)" } ?? "end") in \(tokens)") }
    }
    mutating func name() throws -> String {
        guard case .name(let n)? = peek else { throw JinjaSyntaxError(message: "expected a name in \(tokens)") }
        i += 1
        return n
    }
    mutating func end() throws {
        guard atEnd else { throw JinjaSyntaxError(message: "unexpected \(peek!) in \(tokens)") }
    }

    mutating func parseWhole() throws -> JinjaExpression {
        let e = try parseExpression()
        try end()
        return e
    }

    mutating func parseExpression() throws -> JinjaExpression {
        try nest()
        defer { depth -= 1 }
        let value = try parseOr()
        if accept(.name("if")) {
            let condition = try parseOr()
            let otherwise = accept(.name("else")) ? try parseExpression() : nil
            return .conditional(value, condition: condition, otherwise: otherwise)
        }
        return value
    }

    mutating func parseOr() throws -> JinjaExpression {
        var left = try parseAnd()
        while accept(.name("or")) { left = .binary("or", left, try parseAnd()) }
        return left
    }
    mutating func parseAnd() throws -> JinjaExpression {
        var left = try parseNot()
        while accept(.name("and")) { left = .binary("and", left, try parseNot()) }
        return left
    }
    mutating func parseNot() throws -> JinjaExpression {
        if accept(.name("not")) {
            try nest()
            defer { depth -= 1 }
            return .unary("not", try parseNot())
        }
        return try parseCompare()
    }
    mutating func parseCompare() throws -> JinjaExpression {
        var left = try parseConcat()
        while true {
            if case .op(let o)? = peek, ["==", "!=", "<", ">", "<=", ">="].contains(o) {
                i += 1
                left = .binary(o, left, try parseConcat())
            } else if accept(.name("in")) {
                left = .binary("in", left, try parseConcat())
            } else if peek == .name("not"), i + 1 < tokens.count, tokens[i + 1] == .name("in") {
                i += 2
                left = .unary("not", .binary("in", left, try parseConcat()))
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                let testName = try name()
                var args: [JinjaExpression] = []
                if accept(.op("(")) {
                    while !accept(.op(")")) { args.append(try parseExpression()); _ = accept(.op(",")) }
                } else if let p = peek, Self.startsTestArgument(p) {
                    args.append(try parsePrimary())  // `x is divisibleby 3`, `x is sameas y`
                }
                left = .test(left, testName, args, negated: negated)
            } else {
                return left
            }
        }
    }
    /// A token that begins a test's single unparenthesised argument.
    static func startsTestArgument(_ t: JinjaToken) -> Bool {
        switch t {
        case .name(let n): return !["and", "or", "else", "if", "in", "not"].contains(n)
        case .string, .int: return true
        default: return false
        }
    }

    mutating func parseConcat() throws -> JinjaExpression {
        var left = try parseAdd()
        while accept(.op("~")) { left = .binary("~", left, try parseAdd()) }
        return left
    }
    mutating func parseAdd() throws -> JinjaExpression {
        var left = try parseMultiply()
        while case .op(let o)? = peek, o == "+" || o == "-" {
            i += 1
            left = .binary(o, left, try parseMultiply())
        }
        return left
    }
    mutating func parseMultiply() throws -> JinjaExpression {
        var left = try parseUnary()
        while case .op(let o)? = peek, ["*", "/", "//", "%"].contains(o) {
            i += 1
            left = .binary(o, left, try parseUnary())
        }
        return left
    }
    mutating func parseUnary() throws -> JinjaExpression {
        if accept(.op("-")) || accept(.op("+")) {
            let sign = tokens[i - 1]
            try nest()
            defer { depth -= 1 }
            let operand = try parseUnary()
            return sign == .op("-") ? .unary("-", operand) : operand
        }
        return try parsePostfix(try parsePrimary())
    }

    mutating func arguments() throws -> ([JinjaExpression], [(String, JinjaExpression)]) {
        var args: [JinjaExpression] = [], kwargs: [(String, JinjaExpression)] = []
        while !accept(.op(")")) {
            if case .name(let n)? = peek, i + 1 < tokens.count, tokens[i + 1] == .op("=") {
                i += 2
                kwargs.append((n, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if !accept(.op(",")) { try expect(.op(")")); break }
        }
        return (args, kwargs)
    }

    mutating func parsePostfix(_ base: JinjaExpression) throws -> JinjaExpression {
        var e = base
        while true {
            if accept(.op(".")) {
                e = .attribute(e, try name())
            } else if accept(.op("[")) {
                var parts: [JinjaExpression?] = [nil]
                var sawColon = false
                while !accept(.op("]")) {
                    if accept(.op(":")) { sawColon = true; parts.append(nil); continue }
                    parts[parts.count - 1] = try parseExpression()
                }
                if sawColon {
                    while parts.count < 3 { parts.append(nil) }
                    e = .slice(e, parts[0], parts[1], parts[2])
                } else {
                    guard let index = parts[0] else { throw JinjaSyntaxError(message: "empty subscript") }
                    e = .subscriptItem(e, index)
                }
            } else if accept(.op("(")) {
                let (args, kwargs) = try arguments()
                e = .call(e, args, kwargs)
            } else if accept(.op("|")) {
                let f = try name()
                var args: [JinjaExpression] = [], kwargs: [(String, JinjaExpression)] = []
                if accept(.op("(")) { (args, kwargs) = try arguments() }
                e = .filter(e, f, args, kwargs)
            } else {
                return e
            }
        }
    }

    mutating func parsePrimary() throws -> JinjaExpression {
        guard let t = peek else { throw JinjaSyntaxError(message: "expression ends early in \(tokens)") }
        i += 1
        switch t {
        case .string(var s):
            while case .string(let more)? = peek { s += more; i += 1 }  // adjacent literals concatenate
            return .literal(.string(s))
        case .int(let n): return .literal(.int(n))
        case .double(let d): return .literal(.double(d))
        case .name(let n):
            switch n {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(n)
            }
        case .op("("):
            let e = try parseExpression()
            if accept(.op(",")) {
                var items = [e]
                while !accept(.op(")")) { items.append(try parseExpression()); _ = accept(.op(",")) }
                return .list(items)
            }
            try expect(.op(")"))
            return e
        case .op("["):
            var items: [JinjaExpression] = []
            while !accept(.op("]")) { items.append(try parseExpression()); _ = accept(.op(",")) }
            return .list(items)
        case .op("{"):
            var pairs: [(JinjaExpression, JinjaExpression)] = []
            while !accept(.op("}")) {
                let k = try parseExpression()
                try expect(.op(":"))
                pairs.append((k, try parseExpression()))
                _ = accept(.op(","))
            }
            return .dict(pairs)
        default:
            throw JinjaSyntaxError(message: "unexpected \(t) in \(tokens)")
        }
    }
}
