import StrataCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Strata's offload store: a model directory (config.json, tokenizer files) whose tensors are
/// one file each under `tensors/`, padded to 4096 bytes so any 4096-aligned range can be read
/// with direct I/O, listed with dtype, shape and checksum in `strata-store.json`. Written by
/// `strata convert --out`, readable as a model directory and as the disk tier's source.
public final class OffloadStore: TensorSource, @unchecked Sendable {
    public static let manifestName = "strata-store.json"
    public static let formatName = "strata-offload-store"

    public struct Entry: Sendable, Equatable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var file: String
        public var bytes: Int
        public var checksum: UInt64

        public var json: JSONValue {
            .object(["name": .string(name), "dtype": .string(dtype.rawValue), "shape": .array(shape.map { .number(Double($0)) }),
                     "file": .string(file), "bytes": .number(Double(bytes)), "checksum": .string(String(checksum, radix: 16))])
        }
    }

    public let directory: String
    public let entries: [String: Entry]
    private let mapped = Mutex<[String: MappedFile]>([:])

    public init(directory: String) throws {
        self.directory = directory
        entries = try Self.readManifest(directory: directory)
    }

    static func readManifest(directory: String) throws -> [String: Entry] {
        let path = FileSystem.join(directory, manifestName)
        let f = try JSONFields(JSONValue.load(path: path), path: path)
        guard try f.string("format") == formatName else { throw f.wrong("format", "'\(formatName)'") }
        guard let list = f.object["tensors"]?.array else { throw f.missing("tensors") }
        var result: [String: Entry] = [:]
        for (i, item) in list.enumerated() {
            let e = try JSONFields(item, path: path + " (tensors[\(i)])")
            let name = try e.string("name")
            guard let dtype = DType(rawValue: try e.string("dtype")) else { throw e.wrong("dtype", "F32, F16, BF16 or U8") }
            let shape = try e.intList("shape")
            let bytes = try e.int("bytes")
            guard bytes == dtype.byteCount(shape) else {
                throw StrataError.invalidFile(path: path, detail: "tensor '\(name)': shape \(shape) x \(dtype.rawValue) is not \(bytes) bytes")
            }
            guard let checksum = UInt64(try e.string("checksum"), radix: 16) else { throw e.wrong("checksum", "a hex string") }
            let file = try e.string("file")
            guard !file.contains("..") else { throw e.wrong("file", "a path inside the store") }
            result[name] = Entry(name: name, dtype: dtype, shape: shape, file: file, bytes: bytes, checksum: checksum)
        }
        return result
    }

    public var tensorNames: [String] { entries.keys.sorted() }
    public func contains(_ name: String) -> Bool { entries[name] != nil }
    /// From the manifest, without opening the tensor's file.
    public func shapeAndType(_ name: String) -> (shape: [Int], dtype: DType)? { entries[name].map { ($0.shape, $0.dtype) } }

    public func path(of entry: Entry) -> String { FileSystem.join(directory, entry.file) }

    public func tensor(_ name: String) -> TensorView? {
        guard let e = entries[name] else { return nil }
        let file: MappedFile? = mapped.withLock { cache in
            if let f = cache[name] { return f }
            guard let f = try? MappedFile(path: path(of: e)), f.size >= e.bytes else { return nil }
            cache[name] = f
            return f
        }
        guard let file else { return nil }
        return TensorView(name: name, dtype: e.dtype, shape: e.shape, bytes: file.bytes(0..<e.bytes), file: file)
    }

    public func unreadable(_ name: String) -> StrataError? {
        guard let e = entries[name] else { return nil }
        let path = path(of: e)
        do {
            let file = try MappedFile(path: path)
            guard file.size >= e.bytes else {
                return .invalidFile(path: path, detail: "tensor '\(name)' needs \(e.bytes) bytes but the file has \(file.size) (truncated store)")
            }
            return nil
        } catch StrataError.invalidFile(_, let detail) {
            return .invalidFile(path: path, detail: "tensor '\(name)' cannot be read: \(detail)")
        } catch {
            return .invalidFile(path: path, detail: "tensor '\(name)' cannot be read (missing from the store)")
        }
    }

    /// Unmaps every tensor file mapped so far (views handed out keep their own mapping alive).
    /// The offloading engine calls this after placement so resident set size reflects what the
    /// tiers hold, not the store pages it read once.
    public func releaseMappings() { mapped.withLock { $0.removeAll() } }

    /// Re-reads every tensor and compares its checksum; the first mismatch is an error.
    public func verify() throws {
        for name in tensorNames {
            let e = entries[name]!
            guard let view = tensor(name) else { throw StrataError.invalidFile(path: path(of: e), detail: "missing or truncated") }
            guard Checksum.of(view.bytes) == e.checksum else {
                throw StrataError.invalidFile(path: path(of: e), detail: "checksum mismatch for tensor '\(name)' (corrupt store)")
            }
        }
    }
}

/// 64-bit checksum over 8-byte words (multiply-xorshift), fast enough for tens of GB and
/// computable in chunks (every chunk but the last a multiple of 8 bytes).
public struct Checksum {
    public private(set) var value: UInt64 = 0x9E37_79B9_7F4A_7C15

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var h = value
        let words = bytes.count / 8
        for i in 0..<words {
            h = (h ^ bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 29
        }
        for i in (words * 8)..<bytes.count { h = (h ^ UInt64(bytes[i])) &* 0xC4CE_B9FE_1A85_EC53 }
        value = h
    }

    public static func of(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var c = Checksum()
        c.update(bytes)
        return c.value
    }
}

/// Writes an offload store tensor by tensor. The manifest is rewritten after every tensor, so
/// an interrupted conversion resumes where it stopped: tensors already listed (with a file of
/// the right size) are skipped.
public final class OffloadStoreWriter {
    public let directory: String
    private var entries: [String: OffloadStore.Entry]
    private var order: [String]

    public init(directory: String) throws {
        self.directory = directory
        do {
            try FileManager.default.createDirectory(atPath: FileSystem.join(directory, "tensors"), withIntermediateDirectories: true)
        } catch {
            throw StrataError.ioFailure(path: directory, detail: "cannot create the store directory: \(error)")
        }
        if FileSystem.exists(FileSystem.join(directory, OffloadStore.manifestName)) {
            entries = try OffloadStore.readManifest(directory: directory)
        } else {
            entries = [:]
        }
        order = entries.keys.sorted()
    }

    /// Whether `name` is already complete with this dtype and shape.
    public func has(_ name: String, dtype: DType, shape: [Int]) -> Bool {
        guard let e = entries[name], e.dtype == dtype, e.shape == shape else { return false }
        let path = FileSystem.join(directory, e.file)
        return (try? DiskFile(path: path, create: false).size) == DiskFile.alignUp(e.bytes)
    }

    /// Writes one tensor of `bytes` bytes; `fill(buffer, offset, count)` produces bytes
    /// [offset, offset + count) into `buffer`, chunk by chunk, so no tensor is ever whole in memory.
    public func write(name: String, dtype: DType, shape: [Int], bytes: Int,
                      fill: (UnsafeMutableRawPointer, Int, Int) throws -> Void) throws {
        let file = "tensors/" + (entries[name]?.file.split(separator: "/").last.map(String.init) ?? "\(order.count).bin")
        let path = FileSystem.join(directory, file)
        let disk = try DiskFile(path: path, create: true)
        let chunk = DiskFile.chunk
        guard let buffer = alignedAllocation(chunk) else {
            throw StrataError.ioFailure(path: path, detail: "out of memory for the write buffer")
        }
        defer { free(buffer) }
        var checksum = Checksum()
        var offset = 0
        while offset < bytes {
            let count = min(chunk, bytes - offset)
            try fill(buffer, offset, count)
            checksum.update(UnsafeRawBufferPointer(start: buffer, count: count))
            let padded = DiskFile.alignUp(count)
            if padded > count { (buffer + count).initializeMemory(as: UInt8.self, repeating: 0, count: padded - count) }
            try disk.write(from: buffer, count: padded, at: offset)
            offset += count
        }
        try disk.truncate(to: DiskFile.alignUp(bytes))
        if entries[name] == nil { order.append(name) }
        entries[name] = OffloadStore.Entry(name: name, dtype: dtype, shape: shape, file: file, bytes: bytes, checksum: checksum.value)
        try saveManifest()
    }

    private func alignedAllocation(_ bytes: Int) -> UnsafeMutableRawPointer? {
        var raw: UnsafeMutableRawPointer?
        return posix_memalign(&raw, DiskFile.alignment, bytes) == 0 ? raw : nil
    }

    private func saveManifest() throws {
        let list = order.compactMap { entries[$0]?.json }
        let text = JSONValue.object(["format": .string(OffloadStore.formatName), "version": .number(1), "tensors": .array(list)]).serialized()
        let path = FileSystem.join(directory, OffloadStore.manifestName)
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path + ".tmp"))
            _ = rename(path + ".tmp", path)
        } catch {
            throw StrataError.ioFailure(path: path, detail: "\(error)")
        }
    }
}
