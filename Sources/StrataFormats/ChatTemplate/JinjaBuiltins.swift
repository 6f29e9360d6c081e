#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The globals, filters, tests and string/dict methods chat templates call.
enum JinjaBuiltins {
    static func global(_ name: String, _ args: [JinjaValue], _ named: [String: JinjaValue]) throws -> JinjaValue {
        switch name {
        case "raise_exception":
            throw JinjaRenderError(message: "chat template: \(args.first?.rendered ?? "error")")
        case "namespace":
            var d = JinjaDict()
            for k in named.keys.sorted() { d[k] = named[k] }
            if case .dict(let initial)? = args.first { for k in initial.keys { d[k] = initial[k] } }
            return .namespace(JinjaNamespace(d))
        case "range":
            let ints = try args.map { v -> Int in
                guard case .int(let i) = v else { throw JinjaRenderError(message: "range() takes integers") }
                return i
            }
            // Bounded magnitudes keep the arithmetic below (and stride's) clear of overflow.
            guard (1...3).contains(ints.count), ints.allSatisfy({ abs($0) < 1 << 52 }) else {
                throw JinjaRenderError(message: "range() takes 1 to 3 integers below 2^52")
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count > 2 ? ints[2] : 1)
            guard step != 0, (stop - start) / step < 1 << 20 else { throw JinjaRenderError(message: "range() too large or step 0") }
            return .list(stride(from: start, to: stop, by: step).map { .int($0) })
        case "strftime_now":
            // Llama 3.x templates date their system prompt; only the formats they use are needed.
            let now = Date()
            let parts = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: now)
            let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
            var s = args.first?.rendered ?? ""
            let day = parts.day ?? 1, month = parts.month ?? 1, year = parts.year ?? 1970
            s = s.replacingAll("%d", with: day < 10 ? "0\(day)" : "\(day)").replacingAll("%B", with: months[month - 1])
                .replacingAll("%b", with: String(months[month - 1].prefix(3))).replacingAll("%Y", with: "\(year)")
                .replacingAll("%m", with: month < 10 ? "0\(month)" : "\(month)")
            return .string(s)
        case "dict":
            var d = JinjaDict()
            for k in named.keys.sorted() { d[k] = named[k] }
            return .dict(d)
        default:
            throw JinjaRenderError(message: "function '\(name)' is not defined")
        }
    }

    static func method(_ base: JinjaValue, _ name: String, _ args: [JinjaValue], _ named: [String: JinjaValue]) throws -> JinjaValue {
        switch base {
        case .string(let s):
            func chars(_ v: JinjaValue?) -> Set<Character> {
                if case .string(let c)? = v { return Set(c) }
                return []
            }
            switch name {
            case "strip", "lstrip", "rstrip":
                let set = chars(args.first)
                let drop: (Character) -> Bool = set.isEmpty ? { $0.isWhitespace } : { set.contains($0) }
                var t = Substring(s)
                if name != "rstrip" { t = t.drop(while: drop) }
                if name != "lstrip" { while let l = t.last, drop(l) { t = t.dropLast() } }
                return .string(String(t))
            case "upper": return .string(s.uppercased())
            case "lower": return .string(s.lowercased())
            case "title": return .string(titleCase(s))
            case "capitalize": return .string(s.prefix(1).uppercased() + s.dropFirst().lowercased())
            case "startswith", "endswith":
                let options: [String]
                switch args.first {
                case .string(let p)?: options = [p]
                case .list(let l)?: options = l.map(\.rendered)
                default: throw JinjaRenderError(message: "\(name)() takes a string")
                }
                return .bool(options.contains { name == "startswith" ? s.hasPrefix($0) : s.hasSuffix($0) })
            case "split":
                if case .string(let sep)? = args.first {
                    guard !sep.isEmpty else { throw JinjaRenderError(message: "split() separator is empty") }
                    return .list(s.split(separator: sep, omittingEmptySubsequences: false).map { .string(String($0)) })
                }
                return .list(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
            case "replace":
                guard args.count >= 2 else { throw JinjaRenderError(message: "replace() takes two strings") }
                return .string(s.replacingAll(args[0].rendered, with: args[1].rendered))
            case "join":
                return .string(try JinjaRenderer.iterate(args.first ?? .list([])).map(\.rendered).joined(separator: s))
            case "count":
                let needle = args.first?.rendered ?? ""
                return .int(needle.isEmpty ? 0 : s.split(separator: needle, omittingEmptySubsequences: false).count - 1)
            default: break
            }
        case .dict(let d):
            switch name {
            case "items": return .list(d.keys.map { .list([.string($0), d[$0]!]) })
            case "keys": return .list(d.keys.map { .string($0) })
            case "values": return .list(d.keys.map { d[$0]! })
            case "get": return d[args.first?.rendered ?? ""] ?? (args.count > 1 ? args[1] : .none)
            default: break
            }
        default: break
        }
        throw JinjaRenderError(message: "a \(base.typeName) has no method '\(name)'")
    }

    static func titleCase(_ s: String) -> String {
        var out = "", previousLetter = false
        for c in s {
            out += previousLetter ? c.lowercased() : c.uppercased()
            previousLetter = c.isLetter
        }
        return out
    }

    static func filter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ named: [String: JinjaValue]) throws -> JinjaValue {
        switch name {
        case "trim": return try method(.string(v.rendered), "strip", args, [:])
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.count)
            case .list(let l): return .int(l.count)
            case .dict(let d): return .int(d.keys.count)
            case .undefined, .none: return .int(0)
            default: throw JinjaRenderError(message: "a \(v.typeName) has no length")
            }
        case "tojson":
            var indent: Int? = nil
            if case .int(let i)? = named["indent"] ?? args.first {
                guard (0...64).contains(i) else { throw JinjaRenderError(message: "tojson indent must be 0 to 64, not \(i)") }
                indent = i
            }
            return .string(v.json(indent: indent))
        case "upper": return .string(v.rendered.uppercased())
        case "lower": return .string(v.rendered.lowercased())
        case "title": return .string(titleCase(v.rendered))
        case "capitalize": return try method(.string(v.rendered), "capitalize", [], [:])
        case "string": return .string(v.rendered)
        case "safe", "e", "escape": return v
        case "default", "d":
            let boolean = (named["boolean"] ?? (args.count > 1 ? args[1] : .bool(false))).isTrue
            if case .undefined = v { return args.first ?? .string("") }
            if boolean && !v.isTrue { return args.first ?? .string("") }
            return v
        case "first": return try JinjaRenderer.iterate(v).first ?? .undefined
        case "last": return try JinjaRenderer.iterate(v).last ?? .undefined
        case "list": return .list(try JinjaRenderer.iterate(v))
        case "reverse":
            if case .string(let s) = v { return .string(String(s.reversed())) }
            return .list(try JinjaRenderer.iterate(v).reversed())
        case "join":
            let sep = args.first?.rendered ?? ""
            if case .string(let attribute)? = named["attribute"] {
                return .string(try JinjaRenderer.iterate(v).map { try JinjaRenderer.item($0, .string(attribute)).rendered }.joined(separator: sep))
            }
            return .string(try JinjaRenderer.iterate(v).map(\.rendered).joined(separator: sep))
        case "int":
            switch v {
            case .int: return v
            case .double(let d):
                guard let i = Int(exactly: d.rounded(.towardZero)) else { throw JinjaRenderError(message: "int() of \(d)") }
                return .int(i)
            case .string: return .int(Int(try method(v, "strip", [], [:]).rendered) ?? 0)
            case .bool(let b): return .int(b ? 1 : 0)
            default: return .int(0)
            }
        case "float":
            switch v {
            case .int(let i): return .double(Double(i))
            case .double: return v
            case .string: return .double(Double(try method(v, "strip", [], [:]).rendered) ?? 0)
            default: return .double(0)
            }
        case "abs":
            if case .int(let i) = v { return i == Int.min ? .double(-Double(i)) : .int(abs(i)) }
            if case .double(let d) = v { return .double(abs(d)) }
            throw JinjaRenderError(message: "abs of a \(v.typeName)")
        case "replace":
            guard args.count >= 2 else { throw JinjaRenderError(message: "replace takes two arguments") }
            return .string(v.rendered.replacingAll(args[0].rendered, with: args[1].rendered))
        case "items": return try method(v, "items", [], [:])
        case "selectattr", "rejectattr":
            guard let attribute = args.first?.rendered else { throw JinjaRenderError(message: "\(name) needs an attribute") }
            let keep = try JinjaRenderer.iterate(v).filter { item in
                let value = try JinjaRenderer.item(item, .string(attribute))
                let passed = args.count > 1 ? try test(args[1].rendered, value, Array(args.dropFirst(2))) : value.isTrue
                return passed == (name == "selectattr")
            }
            return .list(keep)
        case "map":
            if case .string(let attribute)? = named["attribute"] {
                return .list(try JinjaRenderer.iterate(v).map { try JinjaRenderer.item($0, .string(attribute)) })
            }
            if let f = args.first?.rendered {
                return .list(try JinjaRenderer.iterate(v).map { try filter(f, $0, Array(args.dropFirst()), [:]) })
            }
            throw JinjaRenderError(message: "map needs attribute= or a filter name")
        case "indent":
            let width: Int
            if case .int(let w)? = args.first ?? named["width"] { width = w } else { width = 4 }
            guard (0...1024).contains(width) else { throw JinjaRenderError(message: "indent width must be 0 to 1024, not \(width)") }
            let first = (named["first"] ?? (args.count > 1 ? args[1] : .bool(false))).isTrue
            let pad = String(repeating: " ", count: width)
            let lines = v.rendered.split(separator: "\n", omittingEmptySubsequences: false)
            return .string(lines.enumerated().map { n, l in (n == 0 && !first) || l.isEmpty ? String(l) : pad + l }.joined(separator: "\n"))
        default:
            throw JinjaRenderError(message: "filter '\(name)' is not supported")
        }
    }

    static func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        switch name {
        case "defined": if case .undefined = v { return false }; return true
        case "undefined": if case .undefined = v { return true }; return false
        case "none": if case .none = v { return true }; return false
        case "string": if case .string = v { return true }; return false
        case "number": switch v { case .int, .double: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": return v == .bool(true)
        case "false": return v == .bool(false)
        case "mapping": if case .dict = v { return true }; return false
        case "sequence", "iterable": switch v { case .list, .string, .dict: return true; default: return false }
        case "callable": if case .macro = v { return true }; return false
        case "even", "odd":
            guard case .int(let i) = v else { return false }
            return (i % 2 == 0) == (name == "even")
        case "divisibleby":
            guard case .int(let i) = v, case .int(let n)? = args.first, n != 0 else { return false }
            return i % n == 0
        case "equalto", "eq", "==", "sameas": return v == (args.first ?? .undefined)
        case "ne", "!=": return v != (args.first ?? .undefined)
        case "in": return try JinjaRenderer.binary("in", v, args.first ?? .list([])).isTrue
        case "lower": return v.rendered == v.rendered.lowercased()
        case "upper": return v.rendered == v.rendered.uppercased()
        default: throw JinjaRenderError(message: "test '\(name)' is not supported")
        }
    }
}
