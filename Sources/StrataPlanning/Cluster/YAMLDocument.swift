import StrataCore
import Yams

/// A YAML document as plain values ([String: Any], [Any], Int, Double, Bool, String, nil),
/// built from Yams' node tree rather than with `Yams.load`: Yams' constructor force-unwraps
/// mapping keys and traps on a key that is itself a mapping or list (found by fuzzing), and it
/// would expand an alias bomb without bound. Here such keys are an error naming the line, and
/// expansion stops after `maxNodes` nodes.
enum YAMLDocument {
    static let maxNodes = 100_000
    /// libyaml and Yams' composer recurse once per nesting level; deeper documents are refused
    /// before parsing (fuzzing found 60,000 `{` overflowing the stack).
    static let maxDepth = 64

    static func load(_ text: String, path: String) throws -> Any? {
        let depth = nestingBound(text)
        guard depth <= maxDepth else {
            throw StrataError.invalidFile(path: path, detail: "YAML nested deeper than \(maxDepth) levels (a bound of \(depth))")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw StrataError.invalidFile(path: path, detail: "not valid YAML: \(error)")
        }
        guard let node else { return nil }
        var budget = maxNodes
        return try value(node, path: path, budget: &budget)
    }

    /// An upper bound on the document's nesting: open flow brackets plus, per line, the
    /// indentation and every block indicator (`-`, `?`, `:`) on it. Brackets inside quotes and
    /// comments count too: telling those apart needs a YAML scanner, and a bound that skipped
    /// them could be fooled; overcounting only refuses documents no cluster spec resembles.
    static func nestingBound(_ text: String) -> Int {
        var flow = 0, deepest = 0
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            var block = line.prefix { $0 == UInt8(ascii: " ") }.count
            for c in line {
                switch c {
                case UInt8(ascii: "["), UInt8(ascii: "{"): flow += 1
                case UInt8(ascii: "]"), UInt8(ascii: "}"): flow = max(0, flow - 1)
                case UInt8(ascii: "-"), UInt8(ascii: "?"), UInt8(ascii: ":"): block += 1
                default: continue
                }
                deepest = max(deepest, flow + block)
            }
            deepest = max(deepest, flow + block)
        }
        return deepest
    }

    private static func value(_ node: Node, path: String, budget: inout Int) throws -> Any? {
        budget -= 1
        guard budget >= 0 else {
            throw StrataError.invalidFile(path: path, detail: "more than \(maxNodes) YAML nodes (aliases expanding without bound?)")
        }
        switch node {
        case .scalar(let scalar):
            switch node.tag.description {
            case Tag.Name.null.rawValue: return nil
            case Tag.Name.bool.rawValue: return Bool.construct(from: scalar) ?? scalar.string
            case Tag.Name.int.rawValue: return Int.construct(from: scalar) ?? scalar.string
            case Tag.Name.float.rawValue: return Double.construct(from: scalar) ?? scalar.string
            default: return scalar.string
            }
        case .sequence(let sequence):
            return try sequence.map { try value($0, path: path, budget: &budget) as Any }
        case .mapping(let mapping):
            var result: [String: Any] = [:]
            for (key, item) in mapping {
                guard case .scalar(let k) = key else {
                    throw StrataError.invalidFile(path: path, detail: "line \(key.mark?.line ?? 0): a mapping key must be a plain value, not a list or mapping")
                }
                result[k.string] = try value(item, path: path, budget: &budget) as Any
            }
            return result
        }
    }
}
