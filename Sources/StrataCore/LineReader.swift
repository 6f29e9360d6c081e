#if canImport(Glibc)
import Glibc
#endif

/// Reads a text file line by line through a fixed-size buffer, so neither a large file nor a
/// single huge line is ever held whole: a line longer than `maxLineBytes` is skipped as it
/// streams past and reported as `.tooLong`, before anything its size asks for is allocated.
public final class LineReader {
    /// A JSONL line above this is refused (a prompt this long exceeds any model's context).
    public static let defaultMaxLineBytes = 16 << 20

    public enum Line: Equatable {
        case text([UInt8])
        case tooLong(bytes: Int)
    }

    public let path: String
    public let maxLineBytes: Int
    private let handle: UnsafeMutablePointer<FILE>
    private var buffer: [UInt8] = []
    private var start = 0
    /// Bytes after `start` already searched for a newline (so a long line is scanned once).
    private var scanned = 0
    private var atEOF = false
    private var number = 0

    public init(path: String, maxLineBytes: Int = LineReader.defaultMaxLineBytes) throws {
        guard let h = fopen(path, "r") else { throw StrataError.fileNotFound(path: path) }
        self.path = path
        self.maxLineBytes = maxLineBytes
        handle = h
    }

    deinit { fclose(handle) }

    /// The next line (1-based number, without its newline), nil at the end of the file.
    public func next() throws -> (number: Int, line: Line)? {
        var skipped = 0  // bytes of an over-long line already dropped
        while true {
            if let nl = buffer[(start + scanned)...].firstIndex(of: 0x0A) {
                let length = nl - start
                scanned = 0
                let line: Line = skipped > 0 || length > maxLineBytes ? .tooLong(bytes: skipped + length) : .text(Array(buffer[start..<nl]))
                start = nl + 1
                number += 1
                return (number, line)
            }
            let pending = buffer.count - start
            scanned = pending
            if atEOF {
                guard pending > 0 || skipped > 0 else { return nil }
                let line: Line = skipped > 0 || pending > maxLineBytes ? .tooLong(bytes: skipped + pending) : .text(Array(buffer[start...]))
                buffer.removeAll(); start = 0; scanned = 0
                number += 1
                return (number, line)
            }
            if pending > maxLineBytes {
                skipped += pending
                buffer.removeAll(keepingCapacity: true); start = 0; scanned = 0
            } else if start > 0 {
                buffer.removeSubrange(0..<start); start = 0
            }
            try fill()
        }
    }

    private func fill() throws {
        let chunk = 1 << 20
        let old = buffer.count
        buffer.reserveCapacity(old + chunk)
        var got = 0
        buffer.append(contentsOf: repeatElement(0, count: chunk))
        buffer.withUnsafeMutableBytes { raw in got = fread(raw.baseAddress! + old, 1, chunk, handle) }
        buffer.removeLast(chunk - got)
        if got < chunk {
            if ferror(handle) != 0 { throw StrataError.ioFailure(path: path, detail: "read failed (\(String(cString: strerror(errno))))") }
            atEOF = true
        }
    }
}
