#if canImport(Glibc)
import Glibc
#endif
import Synchronization

enum Console {
    /// Set by `--quiet`: progress and notes are silenced; errors and results are not.
    static let quietFlag = Atomic<Bool>(false)
    static var quiet: Bool { quietFlag.load(ordering: .relaxed) }
    /// Whether stderr is a terminal (progress bars redraw there; logs get plain lines).
    static let stderrIsTerminal = isatty(2) != 0

    /// Information a user may want but a script does not (silenced by `--quiet`).
    static func note(_ line: String) {
        if !quiet { error(line) }
    }

    /// Writes straight to file descriptor 2 (the C `stderr` global is not concurrency-safe).
    private static func writeStderr(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
            if n <= 0 { return }
            offset += n
        }
        bytes.removeAll()
    }

    static func error(_ line: String) {
        writeStderr(line + "\n")
    }

    /// Rewrites the current stderr line (progress bars).
    static func status(_ line: String) {
        writeStderr("\r\u{1B}[2K" + line)
    }

    static func progressBar(done: Int, total: Int, width: Int = 30) -> String {
        let filled = total > 0 ? width * done / total : width
        return "[" + String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled) + "]"
    }
}

extension Double {
    func formatted(_ digits: Int) -> String {
        var p = 1.0
        for _ in 0..<digits { p *= 10 }
        let v = (self * p).rounded() / p
        var s = "\(v)"
        if let dot = s.firstIndex(of: ".") {
            let decimals = s.distance(from: dot, to: s.endIndex) - 1
            if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
        } else if digits > 0 {
            s += "." + String(repeating: "0", count: digits)
        }
        return s
    }
}

extension String {
    /// Pads with spaces to `width` characters (on the left for right-aligned numbers).
    func padding(_ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - count))
        return left ? fill + self : self + fill
    }
}

/// Progress of a long command on stderr: a bar redrawn in place on a terminal; when stderr is a
/// file or a pipe, one plain line per tenth of the work (a log gets no carriage-return stream);
/// nothing with `--quiet`.
final class ProgressLine: Sendable {
    private let lastTenth = Mutex(-1)
    private let drawn = Mutex(false)

    func update(done: Int, total: Int, _ detail: String) {
        guard !Console.quiet else { return }
        if Console.stderrIsTerminal {
            Console.status("\(Console.progressBar(done: done, total: total)) \(detail)")
            drawn.withLock { $0 = true }
            return
        }
        let tenth = total > 0 ? min(10, done * 10 / total) : 10
        let due = lastTenth.withLock { last -> Bool in
            guard tenth > last else { return false }
            last = tenth
            return true
        }
        if due { Console.error("\(total > 0 ? 100 * done / total : 100)% \(detail)") }
    }

    /// Clears a drawn bar so the next line starts clean.
    func finish() {
        if drawn.withLock({ $0 }) { Console.status("") }
    }
}
