import ArgumentParser
import StrataBackend
import StrataCore
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Options of the checks that need no model: which backend to check.
struct CheckedBackendOptions: ParsableArguments {
    @Option(help: "Backend to check: auto, cpu or cuda.") var backend = "auto"
    @Option(help: "CUDA: f16 or f32 compute.") var computePrecision = "f16"
    @Option(help: "CUDA: which GPU (ordinal).") var cudaDevice = 0
    @Option(help: "CPU threads.") var threads = 2
    @Flag(help: "Print one JSON object.") var json = false

    func choice() throws -> BackendChoice {
        try resolveBackend(backend, computePrecision: computePrecision, cudaDevice: cudaDevice, verbose: false,
                           cpu: .cpu(threads: threads, weightFormat: .asStored, int8Activations: false))
    }

    func label(_ choice: BackendChoice) -> String { choice.isCUDA ? "cuda (\(computePrecision))" : "cpu" }
}

struct CheckBackend: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-backend",
        abstract: "Every backend op against the CPU backend's f32 results, with stated tolerances (exit 1 if any fails).")

    @OptionGroup var options: CheckedBackendOptions

    func run() throws {
        try reportingErrors {
            let choice = try options.choice()
            let candidate = try makeResolvedBackend(choice, flag: options.backend)
            var halfProducts = false
            if case .cuda(_, let precision) = choice { halfProducts = precision == .f16 }
            let results = BackendConformance(halfPrecisionProducts: halfProducts)
                .run(candidate: candidate, reference: CPUBackend(threads: options.threads, weightFormat: .f32)) { Console.status("checking \($0)") }
            Console.status("")
            let failed = results.filter { !$0.passed }
            if options.json {
                print(JSONValue.object([
                    "backend": .string(options.label(choice)), "ops": .number(Double(results.count)), "failed": .number(Double(failed.count)),
                    "results": .array(results.map { .object(["op": .string($0.op), "error": .number(Double($0.error)),
                                                             "tolerance": .number(Double($0.tolerance)), "passed": .bool($0.passed)]) }),
                ]).serialized())
            } else {
                print("op | error | tolerance | ok")
                for r in results { print("\(r.op) | \(String(format: "%.2e", r.error)) | \(String(format: "%.0e", r.tolerance)) | \(r.passed ? "yes" : "NO")") }
                print("\(options.label(choice)): \(results.count - failed.count) of \(results.count) ops within tolerance")
            }
            if !failed.isEmpty { throw ExitCode(1) }
        }
    }
}

struct CheckFixtures: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-fixtures",
        abstract: "The fixture models on a backend against their transformers references: logits and greedy tokens (exit 1 on a mismatch).")

    @OptionGroup var options: CheckedBackendOptions
    @Option(help: "Folder of fixture models (each with reference.json).") var fixtures = "fixtures/models"
    @Option(help: "Largest allowed |logit - reference| (default: 1e-4; for CUDA in f16, 2% of the largest reference |logit|, tokens reported but not required).")
    var tolerance: Float?

    func run() throws {
        try reportingErrors {
            let choice = try options.choice()
            var sixteenBit = false
            if case .cuda(_, .f16) = choice { sixteenBit = true }
            let backend = try makeResolvedBackend(choice, flag: options.backend)
            var rows: [JSONValue] = []
            var failures = 0
            if !options.json { print("model | max logit error | tolerance | batched tokens | single tokens") }
            for model in try Self.models(in: fixtures) {
                let r = try FixtureCheck.run(model: model, backend: backend)
                let ok = FixtureCheck.passes(r, sixteenBit: sixteenBit, tolerance: tolerance)
                let limit = FixtureCheck.bound(r, sixteenBit: sixteenBit, tolerance: tolerance)
                if !ok { failures += 1 }
                let name = String(model.dropFirst(fixtures.count + 1))
                rows.append(.object(["model": .string(name), "max_logit_error": .number(Double(r.maxLogitError)), "tolerance": .number(Double(limit)),
                                     "batched_tokens_match": .bool(r.batchedTokensMatch), "single_tokens_match": .bool(r.singleTokensMatch),
                                     "passed": .bool(ok)]))
                if !options.json {
                    print("\(name) | \(String(format: "%.2e", r.maxLogitError)) | \(String(format: "%.0e", limit)) | "
                          + "\(r.batchedTokensMatch ? "identical" : "DIFFER") | \(r.singleTokensMatch ? "identical" : "DIFFER")")
                }
            }
            if options.json {
                print(JSONValue.object(["backend": .string(options.label(choice)), "tokens_required": .bool(!sixteenBit), "models": .array(rows),
                                        "failed": .number(Double(failures))]).serialized())
            }
            if failures > 0 { throw ExitCode(1) }
        }
    }

    /// Model directories with a reference, and GGUF files in directories with one.
    static func models(in root: String) throws -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else {
            throw StrataError.invalidRequest("--fixtures \(root): not a readable directory")
        }
        var models: [String] = []
        for name in names.sorted() {
            let directory = root + "/" + name
            guard FileManager.default.fileExists(atPath: directory + "/reference.json") else { continue }
            let gguf = directory + "/model.gguf"
            models.append(FileManager.default.fileExists(atPath: gguf) ? gguf : directory)
        }
        guard !models.isEmpty else { throw StrataError.invalidRequest("--fixtures \(root): no model directory with a reference.json") }
        return models
    }
}

struct BenchTransfer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-transfer",
        abstract: "Copy bandwidth between host-tier memory (page-locked on a GPU) and device memory, as the offload engine copies.")

    @OptionGroup var options: CheckedBackendOptions
    @Option(help: "Bytes per copy.") var bytes = "1GiB"

    func run() throws {
        try reportingErrors {
            let choice = try options.choice()
            let count = try ByteSize.parse(bytes, option: "--bytes")
            let compute = try explainingCUDAFailures(flag: options.backend) { try choice.make() }
            let r = TransferBandwidth.measure(compute, bytes: count)
            if options.json {
                print(JSONValue.object(["backend": .string(options.label(choice)), "bytes": .number(Double(count)),
                                        "host_to_device_bytes_per_s": .number(r.hostToDevice),
                                        "device_to_host_bytes_per_s": .number(r.deviceToHost)]).serialized())
            } else {
                print("\(options.label(choice)): host to device \((r.hostToDevice / 1e9).formatted(2)) GB/s, device to host \((r.deviceToHost / 1e9).formatted(2)) GB/s (\(ByteSize.format(count)) copies, median of 5)")
            }
        }
    }
}
