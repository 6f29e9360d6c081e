#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Bits per decoder layer (16 = unquantized), the format `strata convert --precision`, the
/// load-time `--precision` option and the cluster planner share:
///
///     {"format": "strata-precision-map", "group_size": 64, "bits": {"0": 16, "1": 4, "2": 8}}
///
/// `bits` may also be an array indexed by layer. Layers not named stay at 16 bits. Strata never
/// quantizes embeddings or the LM head itself (their rows are gathered, not multiplied, or they
/// are the one matrix whose error reaches every logit). A checkpoint that arrives with its head
/// quantized (a GGUF file's Q6_K or Q8_0 `output.weight`) says so in the stored map's
/// `"head": {"bits": 8, "group_size": 16}`; it is then stored both ways, and a backend that holds
/// weights in bf16 anyway takes the quantized copy.
public struct PrecisionMap: Sendable, Equatable {
    public static let formatName = "strata-precision-map"
    public static let allowedBits = [2, 3, 4, 8, 16]

    public var bits: [Int: Int]
    public var groupSize: Int
    /// The stored quantized copy of the LM head, when there is one.
    public var head: QuantizationScheme? = nil

    public init(bits: [Int: Int], groupSize: Int = 64) {
        self.bits = bits
        self.groupSize = groupSize
    }

    /// Every layer at `bits`.
    public static func uniform(layers: Int, bits: Int, groupSize: Int = 64) -> PrecisionMap {
        PrecisionMap(bits: Dictionary(uniqueKeysWithValues: (0..<layers).map { ($0, bits) }), groupSize: groupSize)
    }

    public func bits(forLayer layer: Int) -> Int { bits[layer] ?? 16 }

    /// The quantization of a layer's matrices, nil when it stays at 16 bits.
    public func scheme(forLayer layer: Int) throws -> QuantizationScheme? {
        let b = bits(forLayer: layer)
        return b >= 16 ? nil : try QuantizationScheme(bits: b, groupSize: groupSize)
    }

    /// Mean bits over `layers` decoder layers.
    public func averageBits(layers: Int) -> Double {
        layers == 0 ? 16 : Double((0..<layers).reduce(0) { $0 + bits(forLayer: $1) }) / Double(layers)
    }

    public static func load(path: String) throws -> PrecisionMap {
        try PrecisionMap(json: JSONValue.load(path: path), path: path)
    }

    public init(json: JSONValue, path: String) throws {
        let fields = try JSONFields(json, path: path)
        if let format = try fields.string("format", default: nil), format != Self.formatName {
            throw StrataError.invalidFile(path: path, detail: "field 'format' is '\(format)', expected '\(Self.formatName)'")
        }
        groupSize = try fields.int("group_size", default: 64)
        guard groupSize >= 8, groupSize % 8 == 0 else {
            throw StrataError.invalidFile(path: path, detail: "field 'group_size' must be a positive multiple of 8, not \(groupSize)")
        }
        var map: [Int: Int] = [:]
        switch fields.object["bits"] {
        case .array(let list)?:
            for (layer, value) in list.enumerated() {
                guard let b = value.int else { throw fields.wrong("bits[\(layer)]", "an integer") }
                map[layer] = b
            }
        case .object(let object)?:
            for (key, value) in object {
                guard let layer = Int(key), layer >= 0 else {
                    throw StrataError.invalidFile(path: path, detail: "field 'bits' has key '\(key)', expected a layer index")
                }
                guard let b = value.int else { throw fields.wrong("bits.\(key)", "an integer") }
                map[layer] = b
            }
        case nil:
            throw fields.missing("bits")
        default:
            throw fields.wrong("bits", "an object of layer index to bits, or an array")
        }
        if let head = fields.object["head"], !head.isNull {
            let h = try JSONFields(head, path: path + " (head)")
            let bits = try h.int("bits"), size = try h.int("group_size")
            guard bits == 4 || bits == 8 else { throw h.wrong("bits", "4 or 8") }
            guard size >= 8, size % 8 == 0 else { throw h.wrong("group_size", "a positive multiple of 8") }
            self.head = try QuantizationScheme(bits: bits, groupSize: size)
        }
        for (layer, b) in map where !Self.allowedBits.contains(b) {
            throw StrataError.invalidFile(
                path: path, detail: "field 'bits' gives layer \(layer) \(b) bits; allowed: \(Self.allowedBits.map(String.init).joined(separator: ", "))")
        }
        bits = map
    }

    /// Checks the map against a model's layer count (a map for another model is an error).
    public func validate(layers: Int, path: String) throws {
        if let bad = bits.keys.filter({ $0 >= layers }).min() {
            throw StrataError.invalidFile(path: path, detail: "field 'bits' names layer \(bad), but the model has \(layers) layers")
        }
    }

    public var json: JSONValue {
        var fields: [String: JSONValue] = [
            "format": .string(Self.formatName),
            "group_size": .number(Double(groupSize)),
            "bits": .object(Dictionary(uniqueKeysWithValues: bits.map { (String($0.key), .number(Double($0.value))) })),
        ]
        if let head { fields["head"] = .object(["bits": .number(Double(head.bits)), "group_size": .number(Double(head.groupSize))]) }
        return .object(fields)
    }
}
