import StrataCore

/// An error a template raised (`raise_exception`) or ran into (an unsupported filter, a wrong
/// type); rendering stops with it.
public struct JinjaRenderError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Evaluates a parsed template against variables, with Python's semantics where templates rely
/// on them (truthiness, `+` on strings and lists, negative indices and slices, string methods).
struct JinjaRenderer {
    enum Flow: Error { case breakLoop, continueLoop }
    /// Guards against templates that never finish or grow without bound (a loop over a huge
    /// range, a string or list doubled in a loop, a macro calling itself): every node rendered
    /// and every expression evaluated is a step; no string may pass the output limit, no list
    /// 2^20 items, no macro call nest deeper than 64. Real chat templates use a few thousand steps.
    static let maxOutputBytes = 16 << 20
    static let maxSteps = 250_000
    static let maxListCount = 1 << 20
    static let maxCallDepth = 64

    var scopes: [[String: JinjaValue]]
    var steps = 0

    init(globals: [String: JinjaValue]) { scopes = [globals] }

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined
    }

    /// An integer result, or an error where Python would have grown a big integer.
    static func checked(_ r: (partialValue: Int, overflow: Bool)) throws -> JinjaValue {
        guard !r.overflow else { throw JinjaRenderError(message: "integer overflow") }
        return .int(r.partialValue)
    }

    mutating func assign(_ name: String, _ value: JinjaValue) { scopes[scopes.count - 1][name] = value }

    mutating func render(_ nodes: [JinjaNode], into out: inout String) throws {
        for node in nodes {
            steps += 1
            guard steps < Self.maxSteps, out.utf8.count < Self.maxOutputBytes else {
                throw JinjaRenderError(message: "template exceeded \(Self.maxSteps) steps or \(Self.maxOutputBytes) bytes of output")
            }
            switch node {
            case .text(let t): out += t
            case .output(let e): out += try eval(e).rendered
            case .ifBlock(let branches, let otherwise):
                var taken = false
                for (condition, body) in branches where try eval(condition).isTrue {
                    try render(body, into: &out)
                    taken = true
                    break
                }
                if !taken { try render(otherwise, into: &out) }
            case .forBlock(let targets, let iterable, let condition, let body, let otherwise):
                var items = try Self.iterate(try eval(iterable))
                if let condition {
                    items = try items.filter { item in
                        scopes.append(Self.bind(targets, item))
                        defer { scopes.removeLast() }
                        return try eval(condition).isTrue
                    }
                }
                if items.isEmpty { try render(otherwise, into: &out); continue }
                for (n, item) in items.enumerated() {
                    var scope = Self.bind(targets, item)
                    scope["loop"] = .dict(JinjaDict([
                        ("index", .int(n + 1)), ("index0", .int(n)), ("first", .bool(n == 0)), ("last", .bool(n == items.count - 1)),
                        ("length", .int(items.count)), ("revindex", .int(items.count - n)), ("revindex0", .int(items.count - n - 1)),
                        ("previtem", n > 0 ? items[n - 1] : .undefined), ("nextitem", n + 1 < items.count ? items[n + 1] : .undefined),
                    ]))
                    scopes.append(scope)
                    defer { scopes.removeLast() }
                    do { try render(body, into: &out) } catch Flow.breakLoop { break } catch Flow.continueLoop { continue }
                }
            case .set(let targets, let attribute, let e):
                let value = try eval(e)
                if let attribute {
                    guard case .namespace(let ns) = lookup(targets[0]) else {
                        throw JinjaRenderError(message: "cannot set attribute '\(attribute)' on '\(targets[0])', which is not a namespace")
                    }
                    ns.attributes[attribute] = value
                } else if targets.count == 1 {
                    assign(targets[0], value)
                } else {
                    for (name, v) in Self.bind(targets, value) { assign(name, v) }
                }
            case .setBlock(let name, let body):
                var captured = ""
                try render(body, into: &captured)
                assign(name, .string(captured))
            case .macro(let m): assign(m.name, .macro(m))
            case .breakLoop: throw Flow.breakLoop
            case .continueLoop: throw Flow.continueLoop
            }
        }
    }

    static func bind(_ targets: [String], _ item: JinjaValue) -> [String: JinjaValue] {
        if targets.count == 1 { return [targets[0]: item] }
        guard case .list(let parts) = item else { return [targets[0]: item] }
        var scope: [String: JinjaValue] = [:]
        for (n, t) in targets.enumerated() { scope[t] = n < parts.count ? parts[n] : .undefined }
        return scope
    }

    static func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case .list(let l): return l
        case .dict(let d): return d.keys.map { .string($0) }
        case .string(let s): return s.map { .string(String($0)) }
        case .undefined, .none: return []
        default: throw JinjaRenderError(message: "cannot iterate over a \(v.typeName)")
        }
    }

    // MARK: Expressions

    mutating func eval(_ e: JinjaExpression) throws -> JinjaValue {
        steps += 1
        guard steps < Self.maxSteps else { throw JinjaRenderError(message: "template exceeded \(Self.maxSteps) steps") }
        let value = try evaluate(e)
        switch value {
        case .string(let s) where s.utf8.count > Self.maxOutputBytes:
            throw JinjaRenderError(message: "template built a string over \(Self.maxOutputBytes) bytes")
        case .list(let l) where l.count > Self.maxListCount:
            throw JinjaRenderError(message: "template built a list over \(Self.maxListCount) items")
        default: return value
        }
    }

    private mutating func evaluate(_ e: JinjaExpression) throws -> JinjaValue {
        switch e {
        case .literal(let v): return v
        case .name(let n): return lookup(n)
        case .list(let items): return .list(try items.map { try eval($0) })
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs { d[try eval(k).rendered] = try eval(v) }
            return .dict(d)
        case .attribute(let base, let name):
            let b = try eval(base)
            switch b {
            case .dict(let d): return d[name] ?? .undefined
            case .namespace(let ns): return ns.attributes[name] ?? .undefined
            default: return .undefined  // methods resolve in .call
            }
        case .subscriptItem(let base, let index): return try Self.item(try eval(base), try eval(index))
        case .slice(let base, let a, let b, let c):
            return try Self.slice(try eval(base), try a.map { try eval($0) }, try b.map { try eval($0) }, try c.map { try eval($0) })
        case .call(let callee, let args, let kwargs):
            let values = try args.map { try eval($0) }
            var named: [String: JinjaValue] = [:]
            for (k, v) in kwargs { named[k] = try eval(v) }
            if case .attribute(let base, let method) = callee {
                return try JinjaBuiltins.method(try eval(base), method, values, named)
            }
            if case .name(let n) = callee, case .macro(let m) = lookup(n) { return try call(m, values, named) }
            if case .name(let n) = callee { return try JinjaBuiltins.global(n, values, named) }
            throw JinjaRenderError(message: "this expression cannot be called")
        case .filter(let base, let name, let args, let kwargs):
            var named: [String: JinjaValue] = [:]
            for (k, v) in kwargs { named[k] = try eval(v) }
            return try JinjaBuiltins.filter(name, try eval(base), try args.map { try eval($0) }, named)
        case .test(let base, let name, let args, let negated):
            let result = try JinjaBuiltins.test(name, try eval(base), try args.map { try eval($0) })
            return .bool(result != negated)
        case .unary(let op, let operand):
            let v = try eval(operand)
            switch (op, v) {
            case ("not", _): return .bool(!v.isTrue)
            case ("-", .int(let i)): return try Self.checked((0).subtractingReportingOverflow(i))
            case ("-", .double(let d)): return .double(-d)
            default: throw JinjaRenderError(message: "cannot apply '\(op)' to a \(v.typeName)")
            }
        case .binary(let op, let l, let r):
            if op == "and" { let a = try eval(l); return a.isTrue ? try eval(r) : a }
            if op == "or" { let a = try eval(l); return a.isTrue ? a : try eval(r) }
            return try Self.binary(op, try eval(l), try eval(r))
        case .conditional(let value, let condition, let otherwise):
            return try eval(condition).isTrue ? try eval(value) : try otherwise.map { try eval($0) } ?? .undefined
        }
    }

    mutating func call(_ m: JinjaMacro, _ args: [JinjaValue], _ named: [String: JinjaValue]) throws -> JinjaValue {
        var scope: [String: JinjaValue] = [:]
        for (n, (name, defaultValue)) in m.parameters.enumerated() {
            scope[name] = n < args.count ? args[n] : try named[name] ?? defaultValue.map { try eval($0) } ?? .undefined
        }
        guard scopes.count < Self.maxCallDepth else { throw JinjaRenderError(message: "macro calls nested deeper than \(Self.maxCallDepth)") }
        scopes.append(scope)
        defer { scopes.removeLast() }
        var out = ""
        do { try render(m.body, into: &out) } catch is Flow {
            throw JinjaRenderError(message: "'break' or 'continue' outside a loop")
        }
        return .string(out)
    }

    static func item(_ base: JinjaValue, _ index: JinjaValue) throws -> JinjaValue {
        switch (base, index) {
        case (.list(let l), .int(let i)):
            let k = i < 0 ? l.count + i : i
            return k >= 0 && k < l.count ? l[k] : .undefined
        case (.string(let s), .int(let i)):
            let chars = Array(s)
            let k = i < 0 ? chars.count + i : i
            return k >= 0 && k < chars.count ? .string(String(chars[k])) : .undefined
        case (.dict(let d), _): return d[index.rendered] ?? .undefined
        case (.namespace(let ns), _): return ns.attributes[index.rendered] ?? .undefined
        case (.undefined, _): return .undefined
        default: throw JinjaRenderError(message: "cannot index a \(base.typeName) with a \(index.typeName)")
        }
    }

    static func slice(_ base: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?) throws -> JinjaValue {
        func int(_ v: JinjaValue?) throws -> Int? {
            switch v {
            case nil, .none?, .undefined?: return nil
            case .int(let i)?: return i
            default: throw JinjaRenderError(message: "slice bounds must be integers")
            }
        }
        let step = try int(c) ?? 1
        guard step != 0 else { throw JinjaRenderError(message: "slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ v: Int?, _ fallback: Int) -> Int {
                guard var v else { return fallback }
                if v < 0 { v += n }
                return step > 0 ? min(max(v, 0), n) : min(max(v, -1), n - 1)
            }
            let start = clamp(try int(a), step > 0 ? 0 : n - 1), stop = clamp(try int(b), step > 0 ? n : -1)
            return Array(stride(from: start, to: stop, by: step))
        }
        switch base {
        case .list(let l): return .list(try indices(l.count).map { l[$0] })
        case .string(let s):
            let chars = Array(s)
            return .string(String(try indices(chars.count).map { chars[$0] }))
        default: throw JinjaRenderError(message: "cannot slice a \(base.typeName)")
        }
    }

    static func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        func number(_ v: JinjaValue) -> Double? {
            switch v { case .int(let i): return Double(i); case .double(let d): return d; case .bool(let x): return x ? 1 : 0; default: return nil }
        }
        switch op {
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "~": return .string(a.rendered + b.rendered)
        case "in":
            switch b {
            case .string(let s): return .bool(a.rendered.isEmpty || s.contains(a.rendered))
            case .list(let l): return .bool(l.contains(a))
            case .dict(let d): return .bool(d[a.rendered] != nil)
            case .undefined, .none: return .bool(false)
            default: throw JinjaRenderError(message: "'in' needs a string, list or dict, not a \(b.typeName)")
            }
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.list(let x), .list(let y)): return .list(x + y)
            case (.int(let x), .int(let y)): return try Self.checked(x.addingReportingOverflow(y))
            default: break
            }
        case "-", "*", "%", "//":
            if case .int(let x) = a, case .int(let y) = b {
                switch op {
                case "-": return try Self.checked(x.subtractingReportingOverflow(y))
                case "*": return try Self.checked(x.multipliedReportingOverflow(by: y))
                default:
                    // Python's floor division and modulo, in integers (Int.min // -1 overflows).
                    guard y != 0 else { throw JinjaRenderError(message: "division by zero") }
                    guard !(x == Int.min && y == -1) else { throw JinjaRenderError(message: "integer overflow") }
                    var q = x / y
                    if x % y != 0 && (x < 0) != (y < 0) { q -= 1 }
                    return .int(op == "//" ? q : x - q * y)
                }
            }
            if op == "*", case .string(let s) = a, case .int(let n) = b {
                let count = max(0, min(n, 1 << 20))
                guard s.utf8.count * count <= Self.maxOutputBytes else {
                    throw JinjaRenderError(message: "template built a string over \(Self.maxOutputBytes) bytes")
                }
                return .string(String(repeating: s, count: count))
            }
        default: break
        }
        if ["<", ">", "<=", ">="].contains(op) {
            if case .string(let x) = a, case .string(let y) = b {
                return .bool(op == "<" ? x < y : op == ">" ? x > y : op == "<=" ? x <= y : x >= y)
            }
        }
        guard let x = number(a), let y = number(b) else {
            throw JinjaRenderError(message: "cannot apply '\(op)' to a \(a.typeName) and a \(b.typeName)")
        }
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw JinjaRenderError(message: "division by zero") }
            return .double(x / y)
        case "//": return .double((x / y).rounded(.down))
        case "%": return .double(x - (x / y).rounded(.down) * y)
        case "<": return .bool(x < y)
        case ">": return .bool(x > y)
        case "<=": return .bool(x <= y)
        case ">=": return .bool(x >= y)
        default: throw JinjaRenderError(message: "operator '\(op)' is not supported")
        }
    }
}
