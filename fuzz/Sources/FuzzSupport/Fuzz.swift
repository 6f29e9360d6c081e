import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// What every harness shares: a scratch directory for the input file, and the rule that a
/// refused input is a `StrataError` naming the file it came from. Anything else (a trap, an
/// ASan report, a hang past libFuzzer's -timeout, an allocation past -malloc_limit_mb) is a bug.
public enum Fuzz {
    /// Per process, in /dev/shm where there is one (writing each input there costs no disk I/O).
    public static let scratch: String = {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        var template = Array("\(base)/strata-fuzz-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            fatalError("cannot create a scratch directory under \(base)")
        }
        return String(cString: dir)
    }()

    /// The repository's root (fixtures are read from there), from this file's own path.
    public static let repository: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(4)  // fuzz/Sources/FuzzSupport/Fuzz.swift
        return parts.joined(separator: "/")
    }()

    public static func fixture(_ relative: String) -> String { repository + "/" + relative }

    /// A fresh, empty directory for one input (its files removed, the directory kept).
    public static func directory(_ name: String) -> String {
        let dir = scratch + "/" + name
        mkdir(dir, 0o755)
        if let d = opendir(dir) {
            while let entry = readdir(d) {
                let n = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if n != "." && n != ".." { unlink(dir + "/" + n) }
            }
            closedir(d)
        }
        return dir
    }

    /// Writes `bytes` to `path`, replacing what was there.
    public static func write<C: Collection>(_ bytes: C, to path: String) where C.Element == UInt8 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { fatalError("cannot write \(path)") }
        let array = Array(bytes)
        var done = 0
        array.withUnsafeBytes { raw in
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                guard n > 0 else { fatalError("short write to \(path)") }
                done += n
            }
        }
        close(fd)
    }

    /// The input as bytes.
    public static func input(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
        guard let data, size > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// For harnesses that take two files: the input up to its first NUL byte goes to `first`,
    /// the rest to `second`.
    public static func writeSplit(_ bytes: [UInt8], _ first: String, _ second: String) {
        let cut = bytes.firstIndex(of: 0) ?? bytes.count
        write(bytes[..<cut], to: first)
        write(bytes[min(cut + 1, bytes.count)...], to: second)
    }

    /// Runs `body`; a thrown error must be a StrataError whose message names one of `names`.
    public static func refusalNames(_ names: [String], _ body: () throws -> Void) {
        do { try body() } catch let error as StrataError {
            let message = error.description
            if case .unsupportedArchitecture = error { return }
            guard names.contains(where: { message.contains($0) }) else {
                fatalError("error names none of \(names): \(message)")
            }
        } catch {
            fatalError("not a StrataError: \(error)")
        }
    }
}

import StrataFormats

extension Fuzz {
    /// A loaded tokenizer must encode and decode without trapping and give ids in range.
    public static func checkRoundTrip(_ tokenizer: Tokenizer, _ sample: String) {
        let ids = tokenizer.encode(sample, addSpecialTokens: true)
        if let bad = ids.first(where: { $0 < 0 || $0 >= tokenizer.vocabularySize }) {
            fatalError("id \(bad) outside the vocabulary of \(tokenizer.vocabularySize)")
        }
        _ = tokenizer.decode(ids, skipSpecialTokens: false)
        _ = tokenizer.decode([0, 1, 2, tokenizer.vocabularySize, -1])
    }
}
