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

    struct Item { var index: Int; var fields: [String: JSONValue]; var prompt: String; var ids: [Int] }

    /// Checks that the output can be written before any model work starts.
    public func prepareOutput() throws -> OutputFile {
        try OutputFile(path: outputPath, truncate: overwrite)
    }

    public func run(generator: Generator, output: OutputFile, progress: (Progress) -> Void = { _ in }) throws -> Summary {
        guard batchSize > 0 else { throw StrataError.invalidRequest("--batch-size must be positive") }
        guard maxNewTokens > 0 else { throw StrataError.invalidRequest("--max-new-tokens must be positive") }
        guard let data = FileManager.default.contents(atPath: inputPath) else { throw StrataError.fileNotFound(path: inputPath) }
        var summary = Summary()
        let done = overwrite ? [] : Self.completedIndexes(outputPath)
        var items: [Item] = []
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        for (n, raw) in lines.enumerated() {
            let lineNumber = n + 1
            if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            summary.total += 1
            if done.contains(lineNumber) { summary.alreadyDone += 1; continue }
            do {
                let value = try JSONValue.parse(Data(raw), path: "\(inputPath):\(lineNumber)")
                guard let object = value.object else { throw StrataError.invalidRequest("line is not a JSON object") }
                if let messages = object["messages"] {
                    // A chat line: rendered by the model's chat template; the rendered text is
                    // written back as "prompt".
                    guard let list = messages.array else { throw StrataError.invalidRequest("field \"messages\" is not a list") }
                    let (prompt, ids) = try generator.bundle.encodeChat(list)
                    var fields = object
                    fields["prompt"] = .string(prompt)
                    items.append(Item(index: lineNumber, fields: fields, prompt: prompt, ids: ids))
                    continue
                }
                guard let prompt = object["prompt"]?.string else {
                    throw StrataError.invalidRequest("missing string field \"prompt\" (or a \"messages\" list)")
                }
                let ids = try generator.bundle.encodePrompt(prompt)
                items.append(Item(index: lineNumber, fields: object, prompt: prompt, ids: ids))
            } catch {
                let reason = "\(error)".replacing("\(inputPath):\(lineNumber): ", with: "")
                summary.skipped.append("\(inputPath):\(lineNumber): \(reason)")
            }
        }
        let started = Clock.now()
        for start in stride(from: 0, to: items.count, by: batchSize) {
            let chunk = Array(items[start..<min(start + batchSize, items.count)])
            let requests = chunk.map {
                GenerationRequest(promptIds: $0.ids, maxNewTokens: maxNewTokens, stopStrings: stopStrings, sampleIndex: UInt64($0.index))
            }
            let results = try generator.generate(requests, sampling: sampling, timing: &summary.timing)
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
    static func completedIndexes(_ path: String) -> Set<Int> {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        var done = Set<Int>()
        for line in data.split(separator: UInt8(ascii: "\n")) {
            if let v = try? JSONValue.parse(Data(line), path: path), let i = v["index"]?.int { done.insert(i) }
        }
        return done
    }
}

/// An output file opened for appending; every append is flushed so a crash loses nothing
/// already generated.
public final class OutputFile: @unchecked Sendable {
    public let path: String
    private let handle: UnsafeMutablePointer<FILE>

    public init(path: String, truncate: Bool) throws {
        self.path = path
        guard let h = fopen(path, truncate ? "w" : "a") else {
            throw StrataError.ioFailure(path: path, detail: "cannot open for writing (\(String(cString: strerror(errno))))")
        }
        handle = h
    }

    public func append(_ text: String) throws {
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, handle) }
        guard written == bytes.count, fflush(handle) == 0 else {
            throw StrataError.ioFailure(path: path, detail: "write failed (\(String(cString: strerror(errno))))")
        }
    }

    deinit { fclose(handle) }
}
