import StrataCore

/// A value inside a chat template, with Python/Jinja semantics for truth, equality, printing
/// and JSON. Dictionaries keep insertion order (messages print and serialize in order).
public indirect enum JinjaValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case dict(JinjaDict)
    /// A `namespace(...)` object: mutable through `set ns.attr = ...`.
    case namespace(JinjaNamespace)
    case macro(JinjaMacro)

    public init(json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .number(let n): self = n.rounded() == n && abs(n) < 9e15 ? .int(Int(n)) : .double(n)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(JinjaValue.init(json:)))
        case .object(let o):
            // JSON objects carry no order; sorted keys make the rendering deterministic.
            self = .dict(JinjaDict(o.keys.sorted().map { ($0, JinjaValue(json: o[$0]!)) }))
        }
    }

    var isTrue: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l): return !l.isEmpty
        case .dict(let d): return !d.keys.isEmpty
        case .namespace, .macro: return true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: "undefined"
        case .none: "none"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "string"
        case .list: "list"
        case .dict: "dict"
        case .namespace: "namespace"
        case .macro: "macro"
        }
    }

    /// What `{{ value }}` prints (Python's str()).
    var rendered: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's repr(), as lists and dicts print their items.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return d.rounded() == d && abs(d) < 1e16 ? String(format1: d) : "\(d)"
        case .string(let s): return "'" + s.replacingAll("\\", with: "\\\\").replacingAll("'", with: "\\'").replacingAll("\n", with: "\\n") + "'"
        case .list(let l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d): return "{" + d.keys.map { "'\($0)': \(d[$0]!.repr)" }.joined(separator: ", ") + "}"
        case .namespace: return "<Namespace>"
        case .macro(let m): return "<Macro \(m.name)>"
        }
    }

    /// JSON as Hugging Face's `tojson` writes it (json.dumps, ensure_ascii=False, ", " and ": ").
    func json(indent: Int?, level: Int = 0) -> String {
        let pad = indent.map { "\n" + String(repeating: " ", count: $0 * (level + 1)) }
        let close = indent.map { "\n" + String(repeating: " ", count: $0 * level) } ?? ""
        let separator = indent == nil ? ", " : ","
        switch self {
        case .undefined, .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return d.rounded() == d && abs(d) < 1e16 ? String(format1: d) : "\(d)"
        case .string(let s): return Self.jsonString(s)
        case .list(let l):
            if l.isEmpty { return "[]" }
            return "[" + l.map { (pad ?? "") + $0.json(indent: indent, level: level + 1) }.joined(separator: separator) + close + "]"
        case .dict(let d):
            if d.keys.isEmpty { return "{}" }
            return "{" + d.keys.map { (pad ?? "") + Self.jsonString($0) + ": " + d[$0]!.json(indent: indent, level: level + 1) }
                .joined(separator: separator) + close + "}"
        case .namespace, .macro: return "null"
        }
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.int(let x), .double(let y)), (.double(let y), .int(let x)): return Double(x) == y
        case (.double(let x), .double(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)): return x == y
        case (.dict(let x), .dict(let y)): return x.keys == y.keys && x.keys.allSatisfy { x[$0] == y[$0] }
        case (.namespace(let x), .namespace(let y)): return x === y
        default: return false
        }
    }
}

/// An insertion-ordered dictionary.
public struct JinjaDict: Sendable {
    public private(set) var keys: [String] = []
    private var values: [String: JinjaValue] = [:]

    public init(_ pairs: [(String, JinjaValue)] = []) { for (k, v) in pairs { self[k] = v } }

    public subscript(_ key: String) -> JinjaValue? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            values[key] = newValue
        }
    }
}

/// `namespace()`: the one mutable object templates have (for state across loop iterations).
public final class JinjaNamespace: @unchecked Sendable {
    var attributes = JinjaDict()
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A `{% macro %}` definition.
public struct JinjaMacro: Sendable {
    let name: String
    let parameters: [(String, JinjaExpression?)]
    let body: [JinjaNode]
}

extension String {
    /// Python's repr of a whole float: "3.0".
    init(format1 d: Double) { self = String(Int(d)) + ".0" }
}
