#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StrataCore

/// A tensor inside a mapped safetensors file: a typed view of its bytes, no copy.
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer
    /// Keeps the mapping alive while the view is in use.
    public let file: MappedFile

    public var elementCount: Int { shape.reduce(1, *) }

    /// The elements as f32 (converting f16/bf16).
    public func floats() -> [Float] {
        let count = elementCount
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                Precision.convertToFloat(bytes.baseAddress!, dtype: dtype, count: count, into: buffer.baseAddress!)
            }
            initialized = count
        }
    }
}

/// One `.safetensors` file, memory-mapped and validated before any tensor is handed out.
///
/// Layout: 8-byte little-endian header length N, N bytes of JSON, then the data region. Every
/// entry is checked: known dtype, non-negative shape, `shape x dtype size == byte range`, range
/// inside the data region, no two ranges overlapping.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Headers above this are refused (the reference implementation uses the same bound).
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    public let file: MappedFile
    public let metadata: [String: String]
    public private(set) var entries: [String: (dtype: DType, shape: [Int], range: Range<Int>)] = [:]

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        guard file.size >= 8 else {
            throw StrataError.invalidFile(path: path, detail: "truncated: \(file.size) bytes, a safetensors file has at least an 8-byte header length")
        }
        let lengthBytes = file.bytes(0..<8)
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(lengthBytes[i]) << (8 * UInt64(i)) }
        guard headerLength <= UInt64(Self.maxHeaderBytes) else {
            throw StrataError.invalidFile(path: path, detail: "header length \(headerLength) exceeds the \(Self.maxHeaderBytes)-byte limit (corrupt header)")
        }
        guard 8 + Int(headerLength) <= file.size else {
            throw StrataError.invalidFile(path: path, detail: "truncated: header length \(headerLength) runs past the end of the \(file.size)-byte file")
        }
        let headerData = Data(file.bytes(8..<(8 + Int(headerLength))))
        let header = try JSONValue.parse(headerData, path: path)
        guard let object = header.object else {
            throw StrataError.invalidFile(path: path, detail: "header is not a JSON object")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart
        var metadata: [String: String] = [:]
        var ranges: [(Range<Int>, String)] = []
        for (name, value) in object {
            if name == "__metadata__" {
                for (k, v) in value.object ?? [:] { metadata[k] = v.string ?? v.serialized() }
                continue
            }
            let entry = try Self.parseEntry(name: name, value: value, path: path, dataSize: dataSize)
            entries[name] = (entry.dtype, entry.shape, (dataStart + entry.range.lowerBound)..<(dataStart + entry.range.upperBound))
            ranges.append((entry.range, name))
        }
        ranges.sort { $0.0.lowerBound < $1.0.lowerBound }
        for i in ranges.indices.dropFirst() where ranges[i].0.lowerBound < ranges[i - 1].0.upperBound {
            throw StrataError.invalidFile(path: path, detail: "tensor '\(ranges[i].1)' overlaps tensor '\(ranges[i - 1].1)'")
        }
        self.metadata = metadata
    }

    private static func parseEntry(name: String, value: JSONValue, path: String, dataSize: Int)
        throws -> (dtype: DType, shape: [Int], range: Range<Int>)
    {
        func bad(_ detail: String) -> StrataError { .invalidFile(path: path, detail: "tensor '\(name)': \(detail)") }
        guard let fields = value.object else { throw bad("entry is not an object") }
        guard let dtypeName = fields["dtype"]?.string else { throw bad("missing 'dtype'") }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw bad("unsupported dtype '\(dtypeName)' (supported: F32, F16, BF16)")
        }
        guard let shapeValues = fields["shape"]?.array else { throw bad("missing 'shape'") }
        var shape: [Int] = []
        for v in shapeValues {
            guard let d = v.int, d >= 0 else { throw bad("shape \(shapeValues.map { $0.serialized() }) has a non-integer or negative dimension") }
            shape.append(d)
        }
        guard let offsets = fields["data_offsets"]?.array, offsets.count == 2,
              let begin = offsets[0].int, let end = offsets[1].int
        else { throw bad("missing or malformed 'data_offsets'") }
        guard begin >= 0, end >= begin else { throw bad("data_offsets [\(begin), \(end)] are not an increasing range") }
        guard end <= dataSize else {
            throw bad("data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes; file truncated?)")
        }
        let bytes = dtype.byteCount(shape)
        guard bytes == end - begin else {
            throw bad("shape \(shape) x \(dtype.rawValue) needs \(bytes.map(String.init) ?? "too many") bytes but data_offsets span \(end - begin)")
        }
        return (dtype, shape, begin..<end)
    }

    public var tensorNames: [String] { entries.keys.sorted() }

    public func tensor(_ name: String) -> TensorView? {
        guard let e = entries[name] else { return nil }
        return TensorView(name: name, dtype: e.dtype, shape: e.shape, bytes: file.bytes(e.range), file: file)
    }
}

/// All safetensors files of a checkpoint directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
public final class Checkpoint: TensorSource, @unchecked Sendable {
    public let directory: String
    private var files: [SafeTensorsFile] = []
    private var location: [String: SafeTensorsFile] = [:]

    public init(directory: String) throws {
        self.directory = directory
        let single = FileSystem.join(directory, "model.safetensors")
        let index = FileSystem.join(directory, "model.safetensors.index.json")
        if FileSystem.exists(single) {
            let f = try SafeTensorsFile(path: single)
            files = [f]
            for name in f.entries.keys { location[name] = f }
        } else if FileSystem.exists(index) {
            let fields = try JSONFields(JSONValue.load(path: index), path: index)
            guard let map = fields.object["weight_map"]?.object else { throw fields.missing("weight_map") }
            var opened: [String: SafeTensorsFile] = [:]
            for (tensor, fileValue) in map {
                guard let shard = fileValue.string else { throw fields.wrong("weight_map.\(tensor)", "a file name") }
                guard !shard.contains("/") else {
                    throw StrataError.invalidFile(path: index, detail: "weight_map.\(tensor) names '\(shard)' outside the model directory")
                }
                if opened[shard] == nil { opened[shard] = try SafeTensorsFile(path: FileSystem.join(directory, shard)) }
                let file = opened[shard]!
                guard file.entries[tensor] != nil else {
                    throw StrataError.invalidFile(path: file.path, detail: "tensor '\(tensor)' listed in model.safetensors.index.json is not in this shard")
                }
                location[tensor] = file
            }
            files = opened.keys.sorted().map { opened[$0]! }
        } else {
            throw StrataError.fileNotFound(path: single + " (nor model.safetensors.index.json)")
        }
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    public func tensor(_ name: String) -> TensorView? { location[name]?.tensor(name) }

}

/// Writes safetensors files in the layout Hugging Face writes: header padded with spaces to
/// an 8-byte boundary, tensors in name order, contiguous.
public enum SafeTensorsWriter {
    public struct Entry {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let data: [UInt8]
        public init(name: String, dtype: DType, shape: [Int], data: [UInt8]) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
        }
        public init(name: String, shape: [Int], floats: [Float]) {
            self.init(name: name, dtype: .f32, shape: shape, data: floats.withUnsafeBytes { Array($0) })
        }
    }

    public static func write(_ entries: [Entry], metadata: [String: String] = [:], to path: String) throws {
        var header: [String: JSONValue] = [:]
        if !metadata.isEmpty { header["__metadata__"] = .object(metadata.mapValues { .string($0) }) }
        var offset = 0
        let sorted = entries.sorted { $0.name < $1.name }
        for e in sorted {
            let expected = e.shape.reduce(1, *) * e.dtype.byteSize
            guard expected == e.data.count else {
                throw StrataError.invalidRequest("tensor '\(e.name)': shape \(e.shape) needs \(expected) bytes, got \(e.data.count)")
            }
            header[e.name] = .object([
                "dtype": .string(e.dtype.rawValue),
                "shape": .array(e.shape.map { .number(Double($0)) }),
                "data_offsets": .array([.number(Double(offset)), .number(Double(offset + e.data.count))]),
            ])
            offset += e.data.count
        }
        var json = Array(JSONValue.object(header).serialized().utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        let n = UInt64(json.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        out += json
        for e in sorted { out += e.data }
        guard FileManager.default.createFile(atPath: path, contents: Data(out)) else {
            throw StrataError.ioFailure(path: path, detail: "cannot write file")
        }
    }
}
