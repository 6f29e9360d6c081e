import ArgumentParser
import Foundation
import StrataCore
import StrataFormats
import StrataRuntime
import StrataServe

/// The engine options `serve` and `run-batch` share: the model, a policy (or none: resident
/// with continuous batching), batch size, context and the prefill budget per step.
struct ServingOptions: ParsableArguments {
    @OptionGroup var backend: BackendOptions
    @OptionGroup var offload: PolicyOptions
    @Option(help: "Sequences decoded together (resident: KV-cache slots; under a policy the policy's block is the batch).")
    var maxBatch: Int = 16
    @Option(help: "Most positions per sequence, prompt plus generated (default: the model's maximum, at most 2048).")
    var context: Int?
    @Option(help: "Prompt tokens prefilled per step boundary at most (one newcomer always fits), so newcomers never stall running sequences for long.")
    var maxPrefillTokens: Int = 512
    @Option(help: "Sequences that may wait for a slot; requests beyond are refused with 503.")
    var maxWaiting: Int = 4096
    @Option(help: "The model name clients send (default: the model directory's last component).")
    var servedModelName: String?

    func validate() throws {
        guard maxBatch > 0 else { throw ValidationError("--max-batch must be positive") }
        guard maxPrefillTokens > 0 else { throw ValidationError("--max-prefill-tokens must be positive") }
        guard maxWaiting > 0 else { throw ValidationError("--max-waiting must be positive") }
        if let context, context < 2 { throw ValidationError("--context must be at least 2") }
    }

    func makeService() throws -> OpenAIService {
        let config = try ModelConfig(directory: backend.model)
        let context = min(self.context ?? min(config.maxPositions, 2048), config.maxPositions)
        let bundle: ModelBundle
        let engine: any BatchEngine
        if offload.active {
            let made = try offload.makeGenerator(backend, promptLength: context, capacity: context, batchSize: nil)
            bundle = made.generator.bundle
            engine = BlockEngine(engine: made.engine!, context: context)
            Console.note("under the policy: blocks of \(made.engine!.policy.blockSize) sequences, admitted when the previous block ends")
        } else {
            bundle = try backend.loadBundle()
            let bytes = SlotBatch.cacheBytes(config: config, compression: bundle.model.compression.cache, slots: maxBatch, context: context)
            let mib = (Double(bytes) / 1048576).formatted(1)
            if let available = Self.availableMemory(), bytes > available {
                throw StrataError.invalidRequest(
                    "the KV cache for --max-batch \(maxBatch) x --context \(context) needs \(mib) MiB but \((Double(available) / 1048576).formatted(1)) MiB of memory is available; lower one of them, or add --compress-cache")
            }
            Console.note("KV cache: \(maxBatch) slots x \(context) positions = \(mib) MiB")
            engine = SlotBatch(model: bundle.model, slots: maxBatch, context: context)
        }
        let scheduler = Scheduler(engine: engine, bundle: bundle, maxPrefillTokens: maxPrefillTokens, maxWaiting: maxWaiting,
                                  metrics: ServerMetrics())
        scheduler.start()
        let name = servedModelName ?? String(backend.model.split(separator: "/").last ?? Substring(backend.model))
        return OpenAIService(scheduler: scheduler, modelName: name)
    }

    /// MemAvailable from /proc/meminfo, in bytes (nil where there is none).
    static func availableMemory() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model over an OpenAI-compatible HTTP API (completions, chat, tokenize, metrics).",
        discussion: """
        Routes: POST /v1/completions, /v1/chat/completions, /tokenize, /detokenize; GET /v1/models,
        /tokenizer_info, /health, /metrics. Requests from all clients share one continuously
        batched engine. Prints "listening on HOST:PORT" when ready (--port 0 picks a free port).
        """)

    @OptionGroup var serving: ServingOptions
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port).") var port = 8000
    @Option(help: "Largest request body accepted, bytes.") var maxBodyBytes = 32 << 20

    func run() async throws {
        let service: OpenAIService
        do { service = try serving.makeService() } catch { Console.error("error: \(error)"); throw ExitCode.failure }
        let host = self.host
        try await HTTPServer(service: service, host: host, port: port, maxBodyBytes: maxBodyBytes).run { bound in
            // Unbuffered: a parent process waits for this line on a pipe.
            FileHandle.standardOutput.write(Data("listening on \(host):\(bound)\n".utf8))
        }
        service.scheduler.shutdown()
    }
}

struct RunBatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run-batch",
        abstract: "Run an OpenAI Batch API file (/v1/completions and /v1/chat/completions lines) through the server's engine.",
        discussion: """
        Output lines are OpenAI Batch output objects, appended as each request finishes; rerunning
        the same command skips the custom_ids already answered (--overwrite starts afresh).
        """)

    @OptionGroup var serving: ServingOptions
    @Option(name: [.customShort("i"), .long], help: "Batch input JSONL.") var input: String
    @Option(name: [.customShort("o"), .long], help: "Batch output JSONL.") var output: String
    @Option(help: "Requests in flight at once (default: 4 x --max-batch).") var inFlight: Int?
    @Flag(help: "Start a fresh output file instead of resuming.") var overwrite = false

    func run() async throws {
        do {
            guard FileSystem.exists(input) else { throw StrataError.fileNotFound(path: input) }
            let out = try OutputFile(path: output, truncate: overwrite)
            if out.discardedBytes > 0 {
                Console.error("\(output): cut a torn last line (\(out.discardedBytes) bytes, from an interrupted run); its request runs again")
            }
            let service = try serving.makeService()
            let line = ProgressLine()
            let started = Clock.now()
            let summary = try await BatchRunner(service: service, inputPath: input, output: out,
                                                inFlight: inFlight ?? 4 * serving.maxBatch).run { done, total in
                line.update(done: done, total: total, "\(done)/\(total) requests")
            }
            line.finish()
            service.scheduler.shutdown()
            Console.error("done: \(summary.succeeded) answered, \(summary.failed) failed, \(summary.alreadyDone) already in \(output); \((Clock.now() - started).formatted(2)) s")
        } catch {
            Console.error("error: \(error)")
            throw ExitCode.failure
        }
    }
}
