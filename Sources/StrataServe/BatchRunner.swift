import Foundation
import StrataCore
import StrataRuntime

/// `strata run-batch`: OpenAI Batch API input lines (`custom_id`, `method`, `url`, `body`)
/// through the same service the server answers with, all lines in flight at once (the
/// scheduler batches them), each output line (`id`, `custom_id`, `response: {status_code,
/// request_id, body}`, `error`) appended the moment its request finishes. A rerun skips the
/// custom_ids already in the output, so a killed job resumes with nothing lost or duplicated.
public struct BatchRunner: Sendable {
    public let service: OpenAIService
    public let inputPath: String
    public let output: OutputFile
    /// Requests in flight at once (the rest wait their turn in this process, not the scheduler).
    public let inFlight: Int

    public init(service: OpenAIService, inputPath: String, output: OutputFile, inFlight: Int) {
        self.service = service
        self.inputPath = inputPath
        self.output = output
        self.inFlight = inFlight
    }

    public struct Summary: Sendable {
        public var total = 0
        public var alreadyDone = 0
        public var succeeded = 0
        public var failed = 0
    }

    struct Line: Sendable {
        var number: Int
        var customId: String?
        var url: String
        var body: JSONValue
        /// Set when the line itself is bad: written as an error line without running.
        var problem: APIError?
    }

    /// Runs every line not yet in the output; `progress(done, total)` after each.
    public func run(progress: @escaping @Sendable (Int, Int) -> Void) async throws -> Summary {
        var summary = Summary()
        let done = try Self.completedIds(output.path)
        var lines: [Line] = []
        var seen = Set<String>()
        let reader = try LineReader(path: inputPath)
        while let (number, raw) = try reader.next() {
            guard case .text(let bytes) = raw else {
                summary.total += 1
                lines.append(Line(number: number, customId: nil, url: "", body: .null,
                                  problem: APIError(status: 400, "\(inputPath):\(number): line longer than the \(LineReader.defaultMaxLineBytes)-byte limit")))
                continue
            }
            if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            summary.total += 1
            var line = Self.parse(bytes, number: number, origin: inputPath)
            if let id = line.customId {
                if done.contains(id) { summary.alreadyDone += 1; continue }
                if !seen.insert(id).inserted {
                    line.problem = APIError(status: 400, "\(inputPath):\(number): custom_id '\(id)' repeats an earlier line's", param: "custom_id")
                }
            }
            lines.append(line)
        }
        let total = summary.total, already = summary.alreadyDone
        let counts = try await withThrowingTaskGroup(of: Bool.self) { group in
            var next = 0, finished = 0, ok = 0
            func launch() {
                guard next < lines.count else { return }
                let line = lines[next]
                next += 1
                group.addTask { try await answer(line) }
            }
            for _ in 0..<min(inFlight, lines.count) { launch() }
            while let success = try await group.next() {
                finished += 1
                if success { ok += 1 }
                progress(already + finished, total)
                launch()
            }
            return (ok, finished - ok)
        }
        summary.succeeded = counts.0
        summary.failed = counts.1
        return summary
    }

    /// Answers one line and appends its output line; true when it succeeded.
    private func answer(_ line: Line) async throws -> Bool {
        let requestId = "req-\(OpenAIService.requestId())"
        var result: Result<JSONValue, APIError>
        if let problem = line.problem {
            result = .failure(problem)
        } else {
            while true {
                do throws(APIError) {
                    switch line.url {
                    case "/v1/completions": result = .success(try await service.completions(line.body))
                    case "/v1/chat/completions": result = .success(try await service.chat(line.body))
                    default: throw APIError(status: 400, "\(inputPath):\(line.number): url '\(line.url)' is not /v1/completions or /v1/chat/completions", param: "url")
                    }
                } catch {
                    result = .failure(error)
                    // A full queue is not the line's fault: wait for room instead of answering 503.
                    if error.status == 503 { try await Task.sleep(for: .milliseconds(50)); continue }
                }
                break
            }
        }
        let record: JSONValue
        switch result {
        case .success(let body):
            record = .object(["id": .string("batch_\(requestId)"), "custom_id": line.customId.map { .string($0) } ?? .null,
                              "response": .object(["status_code": .number(200), "request_id": .string(requestId), "body": body]), "error": .null])
        case .failure(let e):
            record = .object(["id": .string("batch_\(requestId)"), "custom_id": line.customId.map { .string($0) } ?? .null,
                              "response": .object(["status_code": .number(Double(e.status)), "request_id": .string(requestId), "body": e.body]),
                              "error": .object(["code": .string(e.type), "message": .string(e.message)])])
        }
        try output.append(record.serialized(sortedKeys: false) + "\n")
        if case .success = result { return true }
        return false
    }

    static func parse(_ bytes: [UInt8], number: Int, origin: String) -> Line {
        let at = "\(origin):\(number)"
        guard let value = try? JSONValue.parse(Data(bytes), path: at), let o = value.object else {
            return Line(number: number, customId: nil, url: "", body: .null, problem: APIError(status: 400, "\(at): not a JSON object"))
        }
        let customId = o["custom_id"]?.string
        func bad(_ field: String, _ message: String) -> Line {
            Line(number: number, customId: customId, url: "", body: .null, problem: APIError(status: 400, "\(at): \(message)", param: field))
        }
        guard customId != nil else { return bad("custom_id", "'custom_id' (a string) is required") }
        guard let method = o["method"]?.string, method.uppercased() == "POST" else { return bad("method", "'method' must be \"POST\"") }
        guard let url = o["url"]?.string else { return bad("url", "'url' (a string) is required") }
        guard let body = o["body"], body.object != nil else { return bad("body", "'body' must be a JSON object") }
        return Line(number: number, customId: customId, url: url, body: body, problem: nil)
    }

    /// custom_ids already answered in an existing output file.
    static func completedIds(_ path: String) throws -> Set<String> {
        Set(try OutputFile.fieldValues(path, key: "custom_id").compactMap(\.string))
    }
}
