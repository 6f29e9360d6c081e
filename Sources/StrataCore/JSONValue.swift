#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A parsed JSON document. Hugging Face files (config.json, tokenizer.json, safetensors
/// headers) are heterogeneous, so they are decoded into this value first and then read field by
/// field with errors that name the field.
public enum JSONValue: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let b = try? container.decode(Bool.self) { self = .bool(b) }
        else if let n = try? container.decode(Double.self) { self = .number(n) }
        else if let s = try? container.decode(String.self) { self = .string(s) }
        else if let a = try? container.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let b): try container.encode(b)
        case .number(let n):
            if n.rounded() == n, abs(n) < 9.0e15 { try container.encode(Int64(n)) } else { try container.encode(n) }
        case .string(let s): try container.encode(s)
        case .array(let a): try container.encode(a)
        case .object(let o): try container.encode(o)
        }
    }

    /// Parses `data`; a syntax error is reported against `path`.
    public static func parse(_ data: Data, path: String) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw StrataError.invalidFile(path: path, detail: "not well-formed JSON (\(Self.describe(error)))")
        }
    }

    /// Reads and parses the file at `path`.
    public static func load(path: String) throws -> JSONValue {
        try parse(Data(TextFile.read(path: path, limit: TextFile.maxJSONBytes)), path: path)
    }

    public func serialized(sortedKeys: Bool = true) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = sortedKeys ? [.sortedKeys, .withoutEscapingSlashes] : [.withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    private static func describe(_ error: Error) -> String {
        if let decoding = error as? DecodingError {
            switch decoding {
            case .dataCorrupted(let context): return context.debugDescription
            default: return "\(decoding)"
            }
        }
        return "\(error)"
    }

    // MARK: Accessors

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
    public var object: [String: JSONValue]? { if case .object(let o) = self { return o }; return nil }
    public var array: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var double: Double? { if case .number(let n) = self { return n }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }
    /// An integer value; nil for non-integral numbers.
    public var int: Int? {
        if case .number(let n) = self, n.rounded() == n, abs(n) < 9.0e15 { return Int(n) }
        return nil
    }
}

/// Reads typed fields out of a JSON object, reporting missing or mistyped fields by name.
public struct JSONFields: Sendable {
    public let object: [String: JSONValue]
    public let path: String

    public init(_ value: JSONValue, path: String) throws {
        guard let object = value.object else {
            throw StrataError.invalidFile(path: path, detail: "expected a JSON object at the top level")
        }
        self.object = object
        self.path = path
    }

    public func has(_ key: String) -> Bool {
        guard let v = object[key] else { return false }
        return !v.isNull
    }

    public func int(_ key: String) throws -> Int {
        guard let v = object[key], !v.isNull else { throw missing(key) }
        guard let i = v.int else { throw wrong(key, "an integer") }
        return i
    }
    public func int(_ key: String, default value: Int) throws -> Int {
        has(key) ? try int(key) : value
    }
    public func double(_ key: String) throws -> Double {
        guard let v = object[key], !v.isNull else { throw missing(key) }
        guard let d = v.double else { throw wrong(key, "a number") }
        return d
    }
    public func double(_ key: String, default value: Double) throws -> Double {
        has(key) ? try double(key) : value
    }
    public func bool(_ key: String, default value: Bool) throws -> Bool {
        guard has(key) else { return value }
        guard let b = object[key]?.bool else { throw wrong(key, "a boolean") }
        return b
    }
    public func string(_ key: String) throws -> String {
        guard let v = object[key], !v.isNull else { throw missing(key) }
        guard let s = v.string else { throw wrong(key, "a string") }
        return s
    }
    public func string(_ key: String, default value: String?) throws -> String? {
        has(key) ? try string(key) : value
    }
    /// An integer or a list of integers (e.g. `eos_token_id`).
    public func intList(_ key: String) throws -> [Int] {
        guard let v = object[key], !v.isNull else { return [] }
        if let i = v.int { return [i] }
        if let a = v.array {
            return try a.map { guard let i = $0.int else { throw wrong(key, "an integer or a list of integers") }; return i }
        }
        throw wrong(key, "an integer or a list of integers")
    }

    public func missing(_ key: String) -> StrataError {
        .invalidFile(path: path, detail: "missing field '\(key)'")
    }
    public func wrong(_ key: String, _ expected: String) -> StrataError {
        .invalidFile(path: path, detail: "field '\(key)' must be \(expected)")
    }
}

extension JSONValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}
