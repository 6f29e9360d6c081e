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
        // Before the first worker thread allocates: the arena limit binds threads created later.
        CPUSetup.retainFreedMemory()
        await Strata.main()
    }
}

struct Strata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "strata",
        abstract: "High-throughput LLM inference for batches of text on small hardware.",
        subcommands: [Generate.self, Bench.self, Tokenize.self, Convert.self, PerplexityCommand.self, Indicator.self,
                      Plan.self, Profile.self, Cluster.self, Serve.self, RunBatch.self, Score.self, BenchTokenizer.self, BenchGEMM.self,
                      CheckBackend.self, CheckFixtures.self, BenchTransfer.self])
}

/// Options every model-running command shares.
struct BackendOptions: ParsableArguments {
    @Option(help: "Model directory (Hugging Face layout: config.json, *.safetensors, tokenizer files).")
    var model: String

    @Option(help: "Compute threads (OpenBLAS and Strata's own kernels).")
    var threads: Int = 2

    @Option(help: "How f16/bf16 weights are held on the CPU: as-stored (half the memory; widened in registers for decode, in slabs for prefill), f32 (converted once at load), bf16 (bf16 matrix units: AMX or AVX512-BF16; opt-in, logits move by ~1e-2) or int8 (int8 per row with int8 activations on AMX-INT8, else AVX2 integer kernels, W8A8; opt-in, resident models only).")
    var weightFormat: String = "as-stored"

    @Option(help: "How the KV cache is held on the CPU (unless --compress-cache): auto (bf16 with --weight-format bf16 or int8, else f32), f32, or bf16 or f16 (half the bytes each decode step reads; f16 is llama.cpp's default cache type, with 3 more bits than bf16 and values up to 65504).")
    var cacheFormat = "auto"

    @Option(help: "Prefill-sized matmuls against weights held as stored or in f32: f32 (exact) or bf16x3 (AMX tiles: each operand split into two bf16 parts, three products summed in f32; f16 weights stay exact, activations keep ~16 bits; opt-in, each sum moves by ~1e-6 of its terms' magnitude). Decode-sized products, and CPUs without AMX, stay f32.")
    var matmulPrecision = "f32"

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

    @Flag(help: "Resident models: multiply 4/8-bit weights by int8-quantized activations with the CPU's integer dot products (AVX512-VNNI; without it AVX2, 4-bit weights, 2-4 rows) for decode batches of up to 4 rows, as llama.cpp does; results move by ~1e-3 relative, so it is opt-in.")
    var int8Activations = false

    @Flag(help: "Say which compute backend runs and why (e.g. why CUDA is not used).")
    var verbose = false

    /// Parsing is where every command that takes these options passes, so `--quiet` is set here.
    func validate() throws {
        Console.quietFlag.store(quiet, ordering: .relaxed)
    }

    @Option(help: "CUDA only: f16 (weights in 16 bits on tensor cores, f32 accumulation) or f32 (exact sgemm, for checking).")
    var computePrecision = "f16"

    @Option(help: "CUDA only: which GPU (ordinal).")
    var cudaDevice = 0

    /// The backend `--backend` resolves to on this machine.
    func backendChoice() throws -> BackendChoice {
        try resolveBackend(backend, computePrecision: computePrecision, cudaDevice: cudaDevice, verbose: verbose,
                           cpu: .cpu(threads: threads, weightFormat: try weightFormatOption(), int8Activations: int8Activations,
                                     cacheFormat: try cacheFormatOption(), matmulPrecision: try matmulPrecisionOption()))
    }

    func makeBackend() throws -> any Backend { try makeResolvedBackend(backendChoice(), flag: backend) }

    /// The offload engine's compute backend: nil (its own CPU backend) unless CUDA is chosen.
    func offloadCompute() throws -> (@Sendable (MemoryAccount) throws -> any TierTransfers)? {
        let choice = try backendChoice(), flag = backend
        guard choice.isCUDA else { return nil }
        return { account in try explainingCUDAFailures(flag: flag) { try choice.make(account: account, packsWeights: false) } }
    }

    func weightFormatOption() throws -> CPUBackend.WeightFormat {
        guard let format = CPUBackend.WeightFormat(rawValue: weightFormat) else {
            throw StrataError.invalidRequest("--weight-format must be one of \(CPUBackend.WeightFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return format
    }

    func matmulPrecisionOption() throws -> CPUBackend.MatmulPrecision {
        guard let precision = CPUBackend.MatmulPrecision(rawValue: matmulPrecision) else {
            throw StrataError.invalidRequest("--matmul-precision must be one of \(CPUBackend.MatmulPrecision.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return precision
    }

    func cacheFormatOption() throws -> CPUBackend.CacheFormat {
        if cacheFormat == "auto" { return [.bf16, .int8].contains(try weightFormatOption()) ? .bf16 : .f32 }
        guard let format = CPUBackend.CacheFormat(rawValue: cacheFormat) else {
            throw StrataError.invalidRequest("--cache-format must be one of auto, \(CPUBackend.CacheFormat.allCases.map(\.rawValue).joined(separator: ", "))")
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

/// What `--backend` (auto, cpu or cuda) means on this machine: CUDA when asked for or usable
/// (auto), else `cpu`. Without CUDA, auto says why only when `verbose`.
func resolveBackend(_ backend: String, computePrecision: String, cudaDevice: Int, verbose: Bool, cpu: BackendChoice) throws -> BackendChoice {
    if case .cpu(let threads, _, _, _, _) = cpu, threads <= 0 { throw StrataError.invalidRequest("--threads must be positive") }
    switch backend {
    case "cpu":
        return cpu
    case "auto", "cuda":
        switch CUDALoader.probe() {
        case .unavailable(let reason):
            if backend == "cuda" { throw StrataError.invalidRequest("--backend cuda: \(reason)") }
            // No CUDA on the machine is the ordinary case for --backend auto: say so only when asked.
            if verbose { Console.note("note: CUDA unavailable (\(reason)); running on the CPU backend") }
            return cpu
        case .available(let devices, _):
            guard let precision = CUDABackend.ComputePrecision(rawValue: computePrecision) else {
                throw StrataError.invalidRequest("--compute-precision must be f16 or f32, not '\(computePrecision)'")
            }
            guard cudaDevice >= 0 && cudaDevice < devices else {
                throw StrataError.invalidRequest("--cuda-device \(cudaDevice): this machine has \(devices) CUDA device(s)")
            }
            if verbose { Console.note("note: running on CUDA device \(cudaDevice) of \(devices), \(precision) compute") }
            return .cuda(ordinal: cudaDevice, precision: precision)
        }
    default:
        throw StrataError.invalidRequest("--backend must be auto, cpu or cuda, not '\(backend)'")
    }
}

/// The backend for a choice, CUDA set-up failures turned into one clear line.
func makeResolvedBackend(_ choice: BackendChoice, flag: String, account: MemoryAccount? = nil) throws -> any Backend {
    try explainingCUDAFailures(flag: flag) { try choice.make(account: account) }
}

func explainingCUDAFailures<T>(flag: String, _ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as CUDAError {
        throw StrataError.invalidRequest("--backend \(flag): the CUDA device could not be set up: \(error)")
    } catch let error as NVRTC.NVRTCError {
        throw StrataError.invalidRequest("--backend \(flag): the CUDA kernels could not be compiled: \(error)")
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
