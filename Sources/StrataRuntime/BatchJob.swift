import StrataCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A JSONL batch job: each input line `{"prompt": ...}` or `{"messages": [...]}` (a chat,
/// rendered by the model's template; other fields carried through) becomes
/// one output line with `index`, `prompt`, `text`, `token_ids`, `finish_reason`. Outputs are
/// appended and flushed batch by batch, so an interrupted job resumes where it stopped: lines
/// whose `index` is already in the output are skipped.
public struct BatchJob: Sendable {
    public var inputPath: String
    public var outputPath: String
    public var batchSize: Int
    public var maxNewTokens: Int
    public var stopStrings: [String]
    public var sampling: SamplingParameters
    /// Start a fresh output instead of resuming an existing one.
    public var overwrite: Bool

    public init(inputPath: String, outputPath: String, batchSize: Int, maxNewTokens: Int, stopStrings: [String] = [],
                sampling: SamplingParameters = SamplingParameters(), overwrite: Bool = false) {
        self.inputPath = inputPath; self.outputPath = outputPath; self.batchSize = batchSize
        self.maxNewTokens = maxNewTokens; self.stopStrings = stopStrings; self.sampling = sampling; self.overwrite = overwrite
    }

    public struct Summary: Sendable {
        public var total = 0
        public var alreadyDone = 0
        public var completed = 0
        /// "FILE:LINE: reason" for each skipped input line.
        public var skipped: [String] = []
        public var timing = GenerationTiming()
        public var wallSeconds = 0.0
    }

    public struct Progress: Sendable {
        public var done: Int
        public var total: Int
        public var newTokens: Int
        public var seconds: Double
    }

    /// One input line made into a request.
    public struct Item: Sendable {
        public var index: Int
        public var fields: [String: JSONValue]
        public var prompt: String
        public var ids: [Int]
    }

    /// Checks that the output can be written before any model work starts.
    public func prepareOutput() throws -> OutputFile {
        try OutputFile(path: outputPath, truncate: overwrite)
    }

    /// Input line `index` (its raw bytes): `{"prompt": ...}` or `{"messages": [...]}`. Errors
    /// say what is wrong with the line; the caller prefixes FILE:LINE.
    public static func item(_ raw: [UInt8], index: Int, origin: String, encoder: some PromptEncoder) throws -> Item {
        let value = try JSONValue.parse(Data(raw), path: origin)
        guard let object = value.object else { throw StrataError.invalidRequest("line is not a JSON object") }
        if let messages = object["messages"] {
            // A chat line: rendered by the model's chat template; the rendered text is
            // written back as "prompt".
            guard let list = messages.array else { throw StrataError.invalidRequest("field \"messages\" is not a list") }
            let (prompt, ids) = try encoder.encodeChat(list)
            var fields = object
            fields["prompt"] = .string(prompt)
            return Item(index: index, fields: fields, prompt: prompt, ids: ids)
        }
        guard let prompt = object["prompt"]?.string else {
            throw StrataError.invalidRequest("missing string field \"prompt\" (or a \"messages\" list)")
        }
        return Item(index: index, fields: object, prompt: prompt, ids: try encoder.encodePrompt(prompt, addSpecialTokens: true))
    }

    public func run(generator: Generator, output: OutputFile, progress: (Progress) -> Void = { _ in }) throws -> Summary {
        try run(encoder: generator.bundle, output: output, progress: progress) { requests, timing in
            try generator.generate(requests, sampling: sampling, timing: &timing)
        }
    }

    /// Runs the job with `generate` producing each batch's results (a resident or offloading
    /// generator, or a pipeline's first stage).
    public func run(encoder: some PromptEncoder, output: OutputFile, progress: (Progress) -> Void = { _ in },
                    generate: ([GenerationRequest], inout GenerationTiming) throws -> [GenerationResult]) throws -> Summary {
        guard batchSize > 0 else { throw StrataError.invalidRequest("--batch-size must be positive") }
        guard maxNewTokens > 0 else { throw StrataError.invalidRequest("--max-new-tokens must be positive") }
        let lines = try LineReader(path: inputPath)
        var summary = Summary()
        let done = overwrite ? [] : try Self.completedIndexes(outputPath)
        var items: [Item] = []
        while let (lineNumber, line) = try lines.next() {
            let origin = "\(inputPath):\(lineNumber)"
            guard case .text(let raw) = line else {
                summary.total += 1
                summary.skipped.append("\(origin): line longer than the \(LineReader.defaultMaxLineBytes)-byte limit")
                continue
            }
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            summary.total += 1
            if done.contains(lineNumber) { summary.alreadyDone += 1; continue }
            do {
                items.append(try Self.item(raw, index: lineNumber, origin: origin, encoder: encoder))
            } catch {
                let reason = "\(error)".replacing("\(origin): ", with: "")
                summary.skipped.append("\(origin): \(reason)")
            }
        }
        let started = Clock.now()
        for start in stride(from: 0, to: items.count, by: batchSize) {
            let chunk = Array(items[start..<min(start + batchSize, items.count)])
            let requests = chunk.map {
                GenerationRequest(promptIds: $0.ids, maxNewTokens: maxNewTokens, stopStrings: stopStrings, sampleIndex: UInt64($0.index))
            }
            let results = try generate(requests, &summary.timing)
            var text = ""
            for (item, result) in zip(chunk, results) {
                var fields = item.fields
                fields["index"] = .number(Double(item.index))
                fields["text"] = .string(result.text)
                fields["token_ids"] = .array(result.tokenIds.map { .number(Double($0)) })
                fields["finish_reason"] = .string(result.finishReason.rawValue)
                text += JSONValue.object(fields).serialized() + "\n"
            }
            try output.append(text)
            summary.completed += chunk.count
            progress(Progress(done: summary.alreadyDone + summary.completed, total: summary.alreadyDone + items.count,
                              newTokens: summary.timing.newTokens, seconds: Clock.now() - started))
        }
        summary.wallSeconds = Clock.now() - started
        return summary
    }

    /// Input line numbers already present in an existing output file.
    static func completedIndexes(_ path: String) throws -> Set<Int> {
        Set(try OutputFile.fieldValues(path, key: "index").compactMap(\.int))
    }
}

/// What a batch job needs of a model to turn input lines into token ids.
public protocol PromptEncoder {
    func encodePrompt(_ prompt: String, addSpecialTokens: Bool) throws -> [Int]
    func encodeChat(_ messages: [JSONValue]) throws -> (prompt: String, ids: [Int])
}

extension ModelBundle: PromptEncoder {}

/// An output file opened for appending; every append goes straight to the file (no stdio
/// buffer), so a crash loses nothing already generated. A process killed in the middle of a
/// write can leave a torn last line; opening the file again cuts it off (its input line is then
/// generated again), so the next append never glues a new line onto a fragment.
public final class OutputFile: @unchecked Sendable {
    public let path: String
    /// Bytes of a torn last line removed on opening (0 when the file ended cleanly).
    public let discardedBytes: Int
    private let fd: Int32

    /// The values of field `key` in the JSON lines of an existing output file (a resumed job's
    /// record of what is done); lines that are not JSON objects with the key are passed over.
    public static func fieldValues(_ path: String, key: String) throws -> [JSONValue] {
        guard FileSystem.exists(path) else { return [] }
        let lines = try LineReader(path: path)
        var values: [JSONValue] = []
        while let (_, line) = try lines.next() {
            if case .text(let raw) = line, let v = try? JSONValue.parse(Data(raw), path: path), let value = v[key] { values.append(value) }
        }
        return values
    }

    public init(path: String, truncate: Bool) throws {
        self.path = path
        let fd = open(path, O_RDWR | O_CREAT | O_APPEND | (truncate ? O_TRUNC : 0), 0o644)
        guard fd >= 0 else {
            throw StrataError.ioFailure(path: path, detail: "cannot open for writing (\(String(cString: strerror(errno))))")
        }
        self.fd = fd
        do { discardedBytes = truncate ? 0 : try Self.cutTornLine(fd, path: path) } catch { close(fd); throw error }
    }

    /// Truncates the file after its last newline; returns how many bytes went.
    private static func cutTornLine(_ fd: Int32, path: String) throws -> Int {
        let size = Int(lseek(fd, 0, SEEK_END))
        guard size > 0 else { return 0 }
        var end = size
        var chunk = [UInt8](repeating: 0, count: 4096)
        while end > 0 {
            let start = max(0, end - chunk.count)
            let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, end - start, off_t(start)) }
            guard n == end - start else { throw StrataError.ioFailure(path: path, detail: "cannot read back the output file") }
            if let nl = chunk[0..<n].lastIndex(of: 0x0A) { end = start + nl + 1; break }
            end = start
        }
        guard end < size else { return 0 }
        guard ftruncate(fd, off_t(end)) == 0 else {
            throw StrataError.ioFailure(path: path, detail: "cannot cut the torn last line (\(String(cString: strerror(errno))))")
        }
        return size - end
    }

    /// Appends whole lines. A failed write (a full disk) is rolled back to the previous end of
    /// the file, so the output never holds part of a line.
    public func append(_ text: String) throws {
        let bytes = Array(text.utf8)
        let before = lseek(fd, 0, SEEK_END)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = n < 0 ? String(cString: strerror(errno)) : "no progress"
                _ = ftruncate(fd, before)
                throw StrataError.ioFailure(
                    path: path, detail: "write failed (\(reason)); the file keeps the \(before) bytes of complete lines written before")
            }
            done += n
        }
    }

    deinit { close(fd) }
}
