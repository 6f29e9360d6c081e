import ArgumentParser
import StrataBackend
import StrataCore
import StrataRuntime

@main
enum Main {
    static func main() {
        CPUSetup.selectOpenBLASKernels()
        Strata.main()
    }
}

struct Strata: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "High-throughput LLM inference for batches of text on small hardware.",
        subcommands: [Generate.self, Bench.self, Tokenize.self, BenchTokenizer.self, BenchGEMM.self])
}

/// Options every model-running command shares.
struct BackendOptions: ParsableArguments {
    @Option(help: "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer files).")
    var model: String

    @Option(help: "Compute threads (OpenBLAS and Strata's own kernels).")
    var threads: Int = 2

    @Option(help: "How f16/bf16 weights are held on the CPU: as-stored (half the memory; widened in registers for decode, in slabs for prefill) or f32 (converted once at load).")
    var weightFormat: String = "as-stored"

    func loadBundle() throws -> ModelBundle {
        guard threads > 0 else { throw StrataError.invalidRequest("--threads must be positive") }
        guard let format = CPUBackend.WeightFormat(rawValue: weightFormat) else {
            throw StrataError.invalidRequest("--weight-format must be one of \(CPUBackend.WeightFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return try ModelBundle(directory: model, backend: CPUBackend(threads: threads, weightFormat: format))
    }
}

/// Runs `body`, turning Strata's errors into one clear line on stderr and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as StrataError {
        Console.error("error: \(error)")
        throw ExitCode(1)
    }
}
