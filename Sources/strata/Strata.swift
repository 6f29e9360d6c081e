import ArgumentParser
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime

@main
enum Main {
    static func main() async {
        CPUSetup.selectOpenBLASKernels()
        await Strata.main()
    }
}

struct Strata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "High-throughput LLM inference for batches of text on small hardware.",
        subcommands: [Generate.self, Bench.self, Tokenize.self, Convert.self, PerplexityCommand.self, Indicator.self,
                      Plan.self, Profile.self, Cluster.self, Serve.self, RunBatch.self, Score.self, BenchTokenizer.self, BenchGEMM.self])
}

/// Options every model-running command shares.
struct BackendOptions: ParsableArguments {
    @Option(help: "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer files).")
    var model: String

    @Option(help: "Compute threads (OpenBLAS and Strata's own kernels).")
    var threads: Int = 2

    @Option(help: "How f16/bf16 weights are held on the CPU: as-stored (half the memory; widened in registers for decode, in slabs for prefill) or f32 (converted once at load).")
    var weightFormat: String = "as-stored"

    @Flag(help: "Store decoder-layer weights 4-bit group-quantized (FlexGen's compress_weight).")
    var compressWeight = false

    @Flag(help: "Store the KV cache 4-bit group-quantized along head_dim (FlexGen's compress_cache).")
    var compressCache = false

    @Option(help: "Per-layer precision map (JSON, layer -> 2/3/4/8/16 bits) applied at load.")
    var precision: String?

    @Option(help: "Quantization group size for --compress-weight and --compress-cache.")
    var groupSize = 64

    @Option(help: "Compute backend: auto (CUDA if usable, else CPU; --verbose says why), cpu, or cuda.")
    var backend = "auto"

    @Flag(help: "No progress bars or notes on stderr (errors and results still print).")
    var quiet = false

    @Flag(help: "Resident models: multiply 4/8-bit weights by int8-quantized activations with the CPU's integer dot products (AVX512-VNNI) for decode batches of up to 4 rows, as llama.cpp does; results move by ~1e-3 relative, so it is opt-in. A no-op where the CPU lacks VNNI.")
    var int8Activations = false

    @Flag(help: "Say which compute backend runs and why (e.g. why CUDA is not used).")
    var verbose = false

    /// Parsing is where every command that takes these options passes, so `--quiet` is set here.
    func validate() throws {
        Console.quietFlag.store(quiet, ordering: .relaxed)
    }

    func makeBackend() throws -> CPUBackend {
        guard threads > 0 else { throw StrataError.invalidRequest("--threads must be positive") }
        switch backend {
        case "cpu":
            break
        case "auto", "cuda":
            switch CUDALoader.probe() {
            case .unavailable(let reason):
                if backend == "cuda" { throw StrataError.invalidRequest("--backend cuda: \(reason)") }
                // No CUDA on the machine is the ordinary case for --backend auto: say so only when asked.
                if verbose { Console.note("note: CUDA unavailable (\(reason)); running on the CPU backend") }
            case .available(let devices, _):
                // The kernels and loader exist; executing on the GPU is not in this build.
                let why = "\(devices) CUDA device(s) found, but this build has no CUDA execution backend yet"
                if backend == "cuda" { throw StrataError.invalidRequest("--backend cuda: \(why)") }
                Console.note("note: \(why); running on the CPU backend")
            }
        default:
            throw StrataError.invalidRequest("--backend must be auto, cpu or cuda, not '\(backend)'")
        }
        return CPUBackend(threads: threads, weightFormat: try weightFormatOption(), int8Activations: int8Activations)
    }

    func weightFormatOption() throws -> CPUBackend.WeightFormat {
        guard let format = CPUBackend.WeightFormat(rawValue: weightFormat) else {
            throw StrataError.invalidRequest("--weight-format must be one of \(CPUBackend.WeightFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return format
    }

    func compression() throws -> Compression {
        if compressWeight && precision != nil {
            throw StrataError.invalidRequest("--compress-weight and --precision both set weight precision; give one")
        }
        var result = Compression()
        if let precision {
            result.weights = try PrecisionMap.load(path: precision)
        } else if compressWeight {
            result.weights = PrecisionMap.uniform(layers: try ModelConfig(directory: model).numLayers, bits: 4, groupSize: groupSize)
        }
        if compressCache { result.cache = try QuantizationScheme(bits: 4, groupSize: groupSize) }
        return result
    }

    func loadBundle() throws -> ModelBundle {
        try ModelBundle(directory: model, backend: makeBackend(), compression: compression())
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
