import StrataCore

/// A metadata value of a GGUF file.
public indirect enum GGUFValue: Sendable, Equatable {
    case int(Int64)
    case uint(UInt64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case .int(let v): return Int(exactly: v)
        case .uint(let v): return Int(exactly: v)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .float(let v): return v
        case .int(let v): return Double(v)
        case .uint(let v): return Double(v)
        default: return nil
        }
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [GGUFValue]? { if case .array(let a) = self { return a }; return nil }
}

/// One tensor of a GGUF file: its ggml type, its shape in Hugging Face order (outermost first;
/// GGUF stores dimensions innermost first) and where its bytes are.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let type: GGMLType
    public let shape: [Int]
    /// Absolute byte range in the file.
    public let range: Range<Int>
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A GGUF file (llama.cpp's model format, versions 2 and 3), memory-mapped and validated before
/// anything is handed out: counts and string lengths against the bytes left, value types,
/// tensor dimensions (at most 4, positive, no overflow, whole blocks per row), offsets aligned
/// and inside the data region, no two tensors overlapping. Every error names the file and the
/// key or tensor at fault.
public final class GGUFFile: @unchecked Sendable {
    public static let magic: UInt32 = 0x4655_4747  // "GGUF" little-endian
    /// Limits on what a header may ask for, checked before anything is allocated.
    public static let maxStringBytes = 64 << 20
    public static let maxArrayCount = 16 << 20
    public static let maxTensors = 1 << 20
    public static let maxDimensions = 4

    public let path: String
    public let file: MappedFile
    public let version: Int
    public let metadata: [String: GGUFValue]
    public let tensors: [GGUFTensorInfo]
    public let tensorsByName: [String: GGUFTensorInfo]
    public let alignment: Int

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var r = Reader(bytes: file.bytes(0..<file.size), path: path)
        let magic = try r.u32("magic")
        guard magic == Self.magic else {
            throw StrataError.invalidFile(path: path, detail: "not a GGUF file (magic 0x\(String(magic, radix: 16)), expected 0x\(String(Self.magic, radix: 16)) 'GGUF')")
        }
        let version = Int(try r.u32("version"))
        guard version == 2 || version == 3 else {
            throw StrataError.invalidFile(path: path, detail: "GGUF version \(version) is not supported (supported: 2, 3)")
        }
        self.version = version
        let tensorCount = try r.count("tensor_count", limit: Self.maxTensors, minimumBytesEach: 24)
        let kvCount = try r.count("metadata_kv_count", limit: Self.maxArrayCount, minimumBytesEach: 13)
        var metadata: [String: GGUFValue] = [:]
        for i in 0..<kvCount {
            let key = try r.string("metadata key #\(i)")
            guard metadata[key] == nil else { throw StrataError.invalidFile(path: path, detail: "metadata key '\(key)' appears twice") }
            let type = try r.u32("type of '\(key)'")
            metadata[key] = try r.value(type: type, key: key, depth: 0)
        }
        self.metadata = metadata
        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.int, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw StrataError.invalidFile(path: path, detail: "metadata 'general.alignment' must be a power of two up to 1 MiB")
            }
            alignment = v
        }
        self.alignment = alignment

        var infos: [(name: String, type: GGMLType, dims: [Int], offset: Int)] = []
        infos.reserveCapacity(tensorCount)
        for i in 0..<tensorCount {
            let name = try r.string("name of tensor #\(i)")
            func bad(_ d: String) -> StrataError { .invalidFile(path: path, detail: "tensor '\(name)': \(d)") }
            let nDims = Int(try r.u32("dimension count of '\(name)'"))
            guard (1...Self.maxDimensions).contains(nDims) else { throw bad("has \(nDims) dimensions (1 to \(Self.maxDimensions) allowed)") }
            var dims: [Int] = []
            for _ in 0..<nDims {
                let d = try r.u64("dimension of '\(name)'")
                guard d > 0, d < 1 << 40 else { throw bad("dimension \(d) is not between 1 and 2^40") }
                dims.append(Int(d))
            }
            let rawType = try r.u32("type of '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else { throw bad("ggml type \(rawType) is unknown") }
            let offset = try r.u64("offset of '\(name)'")
            guard offset < 1 << 50 else { throw bad("offset \(offset) is past any file") }
            infos.append((name, type, dims, Int(offset)))
        }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        var tensors: [GGUFTensorInfo] = []
        var byName: [String: GGUFTensorInfo] = [:]
        for info in infos {
            func bad(_ d: String) -> StrataError { .invalidFile(path: path, detail: "tensor '\(info.name)': \(d)") }
            guard byName[info.name] == nil else { throw bad("appears twice") }
            var count = 1
            for d in info.dims {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, p < 1 << 48 else { throw bad("shape \(info.dims) has too many elements") }
                count = p
            }
            let block = info.type.blockSize
            guard info.dims[0] % block == 0 else {
                throw bad("rows of \(info.dims[0]) values are not whole \(info.type) blocks of \(block)")
            }
            let bytes = count / block * info.type.blockBytes
            guard info.offset % alignment == 0 else { throw bad("offset \(info.offset) is not a multiple of the alignment \(alignment)") }
            let start = dataStart + info.offset
            guard start <= file.size, bytes <= file.size - start else {
                throw bad("bytes \(start)..<\(start + bytes) run past the end of the \(file.size)-byte file (truncated?)")
            }
            let t = GGUFTensorInfo(name: info.name, type: info.type, shape: info.dims.reversed(), range: start..<(start + bytes))
            tensors.append(t)
            byName[info.name] = t
        }
        let sorted = tensors.sorted { $0.range.lowerBound < $1.range.lowerBound }
        for i in sorted.indices.dropFirst() where sorted[i].range.lowerBound < sorted[i - 1].range.upperBound {
            throw StrataError.invalidFile(path: path, detail: "tensor '\(sorted[i].name)' overlaps tensor '\(sorted[i - 1].name)'")
        }
        self.tensors = tensors
        tensorsByName = byName
    }

    public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer { file.bytes(tensor.range) }

    // MARK: Typed metadata access (errors name the key)

    public func string(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw missing(key) }
        guard let s = v.string else { throw wrong(key, "a string") }
        return s
    }
    public func optionalString(_ key: String) throws -> String? { metadata[key] == nil ? nil : try string(key) }

    public func int(_ key: String) throws -> Int {
        guard let v = metadata[key] else { throw missing(key) }
        guard let i = v.int else { throw wrong(key, "an integer") }
        return i
    }
    public func optionalInt(_ key: String) throws -> Int? { metadata[key] == nil ? nil : try int(key) }

    public func double(_ key: String) throws -> Double {
        guard let v = metadata[key] else { throw missing(key) }
        guard let d = v.double else { throw wrong(key, "a number") }
        return d
    }
    public func optionalDouble(_ key: String) throws -> Double? { metadata[key] == nil ? nil : try double(key) }

    public func optionalBool(_ key: String) throws -> Bool? {
        guard let v = metadata[key] else { return nil }
        guard let b = v.bool else { throw wrong(key, "a boolean") }
        return b
    }

    public func stringArray(_ key: String) throws -> [String] {
        guard let v = metadata[key] else { throw missing(key) }
        guard let a = v.array else { throw wrong(key, "an array of strings") }
        return try a.enumerated().map { i, item in
            guard let s = item.string else { throw wrong("\(key)[\(i)]", "a string") }
            return s
        }
    }

    public func numberArray(_ key: String) throws -> [Double]? {
        guard let v = metadata[key] else { return nil }
        guard let a = v.array else { throw wrong(key, "an array of numbers") }
        return try a.enumerated().map { i, item in
            guard let d = item.double else { throw wrong("\(key)[\(i)]", "a number") }
            return d
        }
    }

    public func missing(_ key: String) -> StrataError { .invalidFile(path: path, detail: "metadata key '\(key)' is missing") }
    public func wrong(_ key: String, _ expected: String) -> StrataError {
        .invalidFile(path: path, detail: "metadata key '\(key)' is not \(expected)")
    }

    public static func isGGUF(_ path: String) -> Bool { path.lowercased().hasSuffix(".gguf") && !FileSystem.isDirectory(path) }

    /// Whether `path` names a model Strata can open: a directory, or a GGUF file.
    public static func isModel(_ path: String) -> Bool { FileSystem.isDirectory(path) || isGGUF(path) && FileSystem.exists(path) }
}

/// Reads little-endian GGUF fields, checking each length against the bytes left.
private struct Reader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0

    init(bytes: UnsafeRawBufferPointer, path: String) { self.bytes = bytes; self.path = path }

    func truncated(_ what: String) -> StrataError {
        .invalidFile(path: path, detail: "truncated while reading \(what) at byte \(offset) of \(bytes.count)")
    }

    mutating func take<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws -> T {
        let n = MemoryLayout<T>.size
        guard bytes.count - offset >= n else { throw truncated(what) }
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += n
        return v
    }
    mutating func u32(_ what: String) throws -> UInt32 { try take(UInt32.self, what) }
    mutating func u64(_ what: String) throws -> UInt64 { try take(UInt64.self, what) }

    /// A count that cannot ask for more items than the remaining bytes could hold.
    mutating func count(_ what: String, limit: Int, minimumBytesEach: Int) throws -> Int {
        let n = try u64(what)
        guard n <= UInt64(limit), Int(n) * minimumBytesEach <= bytes.count - offset else {
            throw StrataError.invalidFile(path: path, detail: "\(what) \(n) is more than the file's \(bytes.count - offset) remaining bytes can hold (limit \(limit))")
        }
        return Int(n)
    }

    mutating func string(_ what: String) throws -> String {
        let n = try u64("length of \(what)")
        guard n <= UInt64(GGUFFile.maxStringBytes) else {
            throw StrataError.invalidFile(path: path, detail: "\(what) claims \(n) bytes (limit \(GGUFFile.maxStringBytes))")
        }
        guard Int(n) <= bytes.count - offset else { throw truncated(what) }
        let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + Int(n))]), as: UTF8.self)
        offset += Int(n)
        return s
    }

    mutating func value(type: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint(UInt64(try take(UInt8.self, key)))
        case 1: return .int(Int64(try take(Int8.self, key)))
        case 2: return .uint(UInt64(try take(UInt16.self, key)))
        case 3: return .int(Int64(try take(Int16.self, key)))
        case 4: return .uint(UInt64(try take(UInt32.self, key)))
        case 5: return .int(Int64(try take(Int32.self, key)))
        case 6: return .float(Double(Float(bitPattern: try take(UInt32.self, key))))
        case 7:
            let b = try take(UInt8.self, key)
            guard b <= 1 else { throw StrataError.invalidFile(path: path, detail: "metadata '\(key)': boolean byte \(b) is not 0 or 1") }
            return .bool(b == 1)
        case 8: return .string(try string("metadata '\(key)'"))
        case 9:
            guard depth == 0 else { throw StrataError.invalidFile(path: path, detail: "metadata '\(key)': arrays nest deeper than one level") }
            let itemType = try u32("array type of '\(key)'")
            let minimum = [0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 10: 8, 11: 8, 12: 8][Int(itemType)] ?? 12
            let n = try count("metadata '\(key)' array length", limit: GGUFFile.maxArrayCount, minimumBytesEach: minimum)
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try value(type: itemType, key: key, depth: depth + 1)) }
            return .array(items)
        case 10: return .uint(try take(UInt64.self, key))
        case 11: return .int(try take(Int64.self, key))
        case 12: return .float(Double(bitPattern: try take(UInt64.self, key)))
        default:
            throw StrataError.invalidFile(path: path, detail: "metadata '\(key)' has unknown value type \(type)")
        }
    }
}
