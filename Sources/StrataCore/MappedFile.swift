#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory mapping of a whole file. Pages load lazily, so opening a multi-gigabyte
/// checkpoint costs nothing until tensors are touched.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw StrataError.fileNotFound(path: path) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw StrataError.invalidFile(path: path, detail: "cannot stat file") }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            throw StrataError.invalidFile(path: path, detail: "is a directory, expected a file")
        }
        size = Int(info.st_size)
        if size == 0 {
            base = nil
            return
        }
        let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw StrataError.invalidFile(path: path, detail: "cannot memory-map file")
        }
        base = UnsafeRawPointer(mapped)
    }

    /// Anonymous memory standing in for a file: bytes derived from `path` (a decoded or
    /// re-laid-out tensor) that views hand out like mapped ones. `fill` writes all `size` bytes.
    public init(derivedFrom path: String, size: Int, fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        self.path = path
        self.size = size
        guard size > 0 else { base = nil; return }
        let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw StrataError.ioFailure(path: path, detail: "cannot allocate \(size) bytes for a decoded tensor")
        }
        base = UnsafeRawPointer(mapped)
        try fill(UnsafeMutableRawBufferPointer(start: mapped, count: size))
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// The bytes in `range`, which the caller has checked lies inside the file.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}

public enum FileSystem {
    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }
    public static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
}

/// Small text files (JSON, YAML, merges.txt) read whole, after checking that the path is a
/// regular file no larger than `limit`: a FIFO, /dev/zero or a multi-gigabyte "config" is
/// refused by name before any of it is read.
public enum TextFile {
    /// JSON documents: the largest released tokenizer.json (Gemma 3's 262k vocabulary) is
    /// ~33 MB; a file claiming ten million tokens is over this before a byte is parsed.
    public static let maxJSONBytes = 64 << 20

    public static func read(path: String, limit: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw StrataError.fileNotFound(path: path) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw StrataError.invalidFile(path: path, detail: "cannot stat file") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw StrataError.invalidFile(path: path, detail: "not a regular file") }
        let size = Int(info.st_size)
        guard size <= limit else {
            throw StrataError.invalidFile(path: path, detail: "\(size) bytes exceeds the \(limit)-byte limit for this kind of file")
        }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, size - done) }
            guard n > 0 else { throw StrataError.invalidFile(path: path, detail: "read failed after \(done) of \(size) bytes") }
            done += n
        }
        return bytes
    }
}
