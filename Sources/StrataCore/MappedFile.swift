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
