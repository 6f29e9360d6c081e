#if canImport(Glibc)
import Glibc
#endif

/// A file read and written with direct I/O (O_DIRECT): 4096-aligned buffers, offsets and sizes,
/// so the page cache neither holds a second copy nor makes disk reads look like memory reads.
/// Where the file system refuses O_DIRECT (tmpfs), the file is opened buffered and every
/// transfer is followed by POSIX_FADV_DONTNEED, which drops the cached pages.
public final class DiskFile: @unchecked Sendable {
    public static let alignment = 4096
    /// Transfers are split into chunks of this size (16 MiB reached the disk's sequential speed).
    public static let chunk = 16 << 20

    #if arch(x86_64)
    static let directFlag: Int32 = 0o40000
    #else
    static let directFlag: Int32 = 0o200000
    #endif

    public let path: String
    public let direct: Bool
    public let descriptor: Int32

    public init(path: String, create: Bool) throws {
        self.path = path
        let flags = (create ? O_RDWR | O_CREAT : O_RDWR)
        var fd = open(path, flags | Self.directFlag, 0o644)
        var direct = true
        if fd < 0 && errno == EINVAL {
            fd = open(path, flags, 0o644)
            direct = false
        }
        guard fd >= 0 else { throw StrataError.ioFailure(path: path, detail: "cannot open: \(String(cString: strerror(errno)))") }
        descriptor = fd
        self.direct = direct
    }

    deinit { close(descriptor) }

    public static func alignUp(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
    public static func alignDown(_ n: Int) -> Int { n / alignment * alignment }

    /// Reads `count` bytes (a multiple of 4096) at `offset` (a multiple of 4096) into `buffer`
    /// (4096-aligned).
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws {
        try transfer(buffer, count: count, offset: offset) { pread(descriptor, $0, $1, off_t($2)) }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, at offset: Int) throws {
        try transfer(UnsafeMutableRawPointer(mutating: buffer), count: count, offset: offset) { pwrite(descriptor, $0, $1, off_t($2)) }
    }

    private func transfer(_ buffer: UnsafeMutableRawPointer, count: Int, offset: Int,
                          _ call: (UnsafeMutableRawPointer, Int, Int) -> Int) throws {
        precondition(count % Self.alignment == 0 && offset % Self.alignment == 0 && Int(bitPattern: buffer) % Self.alignment == 0,
                     "direct I/O needs 4096-aligned buffer, offset and size")
        var done = 0
        while done < count {
            let n = call(buffer + done, min(Self.chunk, count - done), offset + done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw StrataError.ioFailure(path: path, detail: n == 0 ? "unexpected end of file at byte \(offset + done)"
                                                                       : String(cString: strerror(errno)))
            }
            done += n
        }
        if !direct { _ = posix_fadvise(descriptor, off_t(offset), off_t(count), 4 /* POSIX_FADV_DONTNEED */) }
    }

    public func truncate(to size: Int) throws {
        guard ftruncate(descriptor, off_t(size)) == 0 else {
            throw StrataError.ioFailure(path: path, detail: "cannot resize: \(String(cString: strerror(errno)))")
        }
    }

    public var size: Int {
        var s = stat()
        return fstat(descriptor, &s) == 0 ? Int(s.st_size) : 0
    }
}
