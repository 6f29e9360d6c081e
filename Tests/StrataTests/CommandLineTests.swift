import StrataBackend
import StrataCore
import StrataPlanning
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation

/// Terminal manners of the `strata` binary the test build made: a log file gets plain progress
/// lines (no carriage-return stream), `--quiet` silences them, and `--json` is the only thing on
/// stdout.
@Suite struct CommandLineTests {
    static let binary: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path + "/.build/debug/strata"
    }()

    /// Runs `executable` (the strata binary unless told) and collects its exit status and output.
    static func run(_ arguments: [String], environment: [String: String] = [:], executable: String = binary) throws
        -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read both pipes before waiting, so a full pipe cannot stall the child.
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    static func prompts(_ count: Int) throws -> String {
        let dir = Fixtures.scratch("cli")
        let path = dir + "/in.jsonl"
        let lines = (0..<count).map { "{\"prompt\": \"License number \($0)\"}" }.joined(separator: "\n") + "\n"
        try lines.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// `--backend auto` on a machine without CUDA runs on the CPU silently; `--verbose` says why,
    /// and `--backend cuda` is an error that says why.
    @Test func cudaFallbackIsQuietUnlessAsked() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "no binary at \(Self.binary) (swift build first)")
        guard case .unavailable = CUDALoader.probe() else { return }   // a CUDA machine has other notes to give
        let common = ["generate", "--model", Fixtures.model("opt-tiny"), "--prompt", "License", "--max-new-tokens", "1"]
        let plain = try Self.run(common)
        #expect(plain.status == 0 && !plain.stderr.contains("CUDA"), "\(plain.stderr)")
        let verbose = try Self.run(common + ["--verbose"])
        #expect(verbose.status == 0 && verbose.stderr.contains("CUDA unavailable"), "\(verbose.stderr)")
        let cuda = try Self.run(common + ["--backend", "cuda"])
        #expect(cuda.status != 0 && cuda.stderr.contains("--backend cuda"), "\(cuda.stderr)")
    }

    @Test func progressInALogIsPlainLinesAndQuietSilencesIt() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "no binary at \(Self.binary) (swift build first)")
        let input = try Self.prompts(24)
        let common = ["generate", "--model", Fixtures.model("opt-tiny"), "--input", input, "--batch-size", "1", "--max-new-tokens", "2",
                      "--backend", "cpu", "--overwrite"]
        let logged = try Self.run(common + ["--output", input + ".out1"])
        #expect(logged.status == 0, "\(logged.stderr)")
        #expect(!logged.stderr.contains("\r") && !logged.stderr.contains("\u{1B}["), "carriage returns or escapes in a log")
        let progress = logged.stderr.split(separator: "\n").filter { $0.contains("% ") && $0.contains("prompts") }
        // One line per tenth of the work (24 batches: 0%..100% at most 11 lines), not one per batch.
        #expect(progress.count >= 5 && progress.count <= 11, "\(progress)")
        #expect(progress.last?.hasPrefix("100% 24/24 prompts") == true, "\(progress)")
        #expect(logged.stdout.isEmpty)

        let quiet = try Self.run(common + ["--output", input + ".out2", "--quiet"])
        #expect(quiet.status == 0)
        #expect(!quiet.stderr.contains("% "), "\(quiet.stderr)")
        #expect(quiet.stderr.contains("done: 24 generated"), "the result line stays: \(quiet.stderr)")
    }

    /// `bench --json --policy auto`: stdout is exactly one JSON object with the prediction and
    /// the measured-vs-predicted error; the chosen policy goes to stderr.
    @Test func benchJSONIsTheOnlyThingOnStdout() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "no binary at \(Self.binary) (swift build first)")
        // A cached profile, so no measurement runs.
        let cache = Fixtures.scratch("cache")
        try FileManager.default.createDirectory(atPath: cache + "/strata", withIntermediateDirectories: true)
        try MemoryModelTests.cpu.json.serialized().write(toFile: cache + "/strata/profile-\(Profiler.hostname()).json", atomically: true,
                                                          encoding: .utf8)
        let r = try Self.run(["bench", "--model", Fixtures.model("opt-licenses"), "--batch-size", "4", "--prompt-len", "16", "--gen-len", "4",
                              "--policy", "auto", "--device-mem", "16MiB", "--host-mem", "8MiB", "--json", "--backend", "cpu"],
                             environment: ["XDG_CACHE_HOME": cache])
        #expect(r.status == 0, "\(r.stderr)")
        let object = try JSONValue.parse(Data(r.stdout.utf8), path: "stdout")
        #expect(object["predicted_tokens_per_s"]?.double ?? 0 > 0)
        #expect(object["prediction_error"]?.double != nil)
        #expect(object["tiers"]?["device"]?["peak_bytes"]?.double ?? .infinity <= 16 * 1024 * 1024)
        #expect(r.stdout.split(separator: "\n").count == 1)
        #expect(r.stderr.contains("--policy auto: --percent"))
    }

    /// A GGUF file on the command line: --chat renders its template, a JSONL chat line is
    /// answered like the same prompt given as text, and misuse names what is wrong.
    @Test func ggufChatAndErrors() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "no binary at \(Self.binary) (swift build first)")
        let gguf = Fixtures.model("gguf-tiny/model.gguf")
        let chat = try Self.run(["generate", "--model", gguf, "--chat", "--prompt", "Hello", "--max-new-tokens", "4", "--quiet"])
        #expect(chat.status == 0, "\(chat.stderr)")
        let rendered = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        let plain = try Self.run(["generate", "--model", gguf, "--prompt", rendered, "--max-new-tokens", "4", "--quiet"])
        let ids = { (out: String) in try JSONValue.parse(Data(out.utf8), path: "stdout")["token_ids"] }
        // The tiny tokenizer adds BOS to plain prompts but not to rendered chats; both generate.
        #expect(try ids(chat.stdout)?.array?.count == 4)
        #expect(try ids(plain.stdout)?.array?.count == 4)

        let dir = Fixtures.scratch("cli-gguf")
        try "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}\n{\"messages\": \"oops\"}\n"
            .write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        let job = try Self.run(["generate", "--model", gguf, "--input", dir + "/in.jsonl", "--output", dir + "/out.jsonl",
                                "--max-new-tokens", "4", "--quiet"])
        #expect(job.status == 0, "\(job.stderr)")
        #expect(job.stderr.contains("in.jsonl:2: field \"messages\" is not a list"), "\(job.stderr)")
        let line = try JSONValue.parse(Data(try String(contentsOfFile: dir + "/out.jsonl", encoding: .utf8).utf8), path: "out")
        #expect(line["prompt"]?.string == rendered)
        #expect(line["token_ids"] == (try JSONValue.parse(Data(chat.stdout.utf8), path: "stdout"))["token_ids"])

        let requant = try Self.run(["convert", "--model", gguf, "--output", dir + "/q", "--compress-weight"])
        #expect(requant.status != 0 && requant.stderr.contains("is a GGUF file"), "\(requant.stderr)")
        let truncated = dir + "/cut.gguf"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: gguf))
        try bytes.prefix(100_000).write(to: URL(fileURLWithPath: truncated))
        let cut = try Self.run(["generate", "--model", truncated, "--prompt", "x"])
        #expect(cut.status != 0 && cut.stderr.contains("cut.gguf") && cut.stderr.contains("past the end"), "\(cut.stderr)")
        let noTemplate = try Self.run(["generate", "--model", Fixtures.model("opt-tiny"), "--chat", "--prompt", "x"])
        #expect(noTemplate.status != 0 && noTemplate.stderr.contains("has no chat template"), "\(noTemplate.stderr)")
    }
}
