import StrataBackend
import StrataCore
import StrataRuntime
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA backend's own code (host side and kernels) run on the CPU through the emulator of
/// the CUDA driver and cuBLAS in Tests/cuda-emulator, which scripts/test.sh builds and names in
/// STRATA_CUDA_EMULATOR: launches, argument passing, layouts, cuBLAS transposes, the caching
/// allocator, the 4-bit cache and the offload engine's device paths, against the CPU backend and
/// transformers. It proves the logic, not a GPU's speed or its hardware behaviour.
@Suite(.serialized) struct CUDAEmulatorTests {
    static let directory: String? = getenv("STRATA_CUDA_EMULATOR").map { String(cString: $0) }
    static let available = directory != nil && (try? NVRTC()) != nil
    static let why = "STRATA_CUDA_EMULATOR unset or NVRTC missing (scripts/test.sh builds the emulator and installs NVRTC): the emulated CUDA tests are skipped"

    static func backend(_ precision: CUDABackend.ComputePrecision, account: MemoryAccount? = nil) throws -> CUDABackend {
        CUDABackend(device: try CUDADevice(account: account, kernelCache: Fixtures.scratch("emulated-kernels"), libraryDirectories: [directory!]),
                    precision: precision)
    }

    @Test(.enabled(if: available, Comment(rawValue: why)), arguments: CUDABackend.ComputePrecision.allCases)
    func everyOpMatchesTheCPU(precision: CUDABackend.ComputePrecision) throws {
        let cuda = try Self.backend(precision)
        #expect(cuda.device.name.contains("emulator"))
        let results = BackendConformance(halfPrecisionProducts: precision == .f16).run(candidate: cuda, reference: CPUBackend(threads: 2, weightFormat: .f32))
        #expect(results.count >= 43)
        for r in results { #expect(r.passed, "\(r.op): error \(r.error) over tolerance \(r.tolerance)") }
    }

    @Test(.enabled(if: available, Comment(rawValue: why)), arguments: ["opt-tiny", "llama-gqa", "gguf-tiny/model.gguf"])
    func fixturesMatchTransformers(model: String) throws {
        for precision in CUDABackend.ComputePrecision.allCases {
            let r = try FixtureCheck.run(model: Fixtures.model(model), backend: try Self.backend(precision))
            #expect(FixtureCheck.passes(r, sixteenBit: precision == .f16), "\(precision): \(r)")
        }
    }

    /// A policy over all three tiers with host attention and 4-bit cache: staging on the device,
    /// page-locked host memory, disk bounce buffers, host rows attended by the CPU backend.
    @Test(.enabled(if: available, Comment(rawValue: why)), arguments: [false, true])
    func offloadedGenerationGivesTheResidentTokens(cpuAttention: Bool) throws {
        let (expected, _) = try OffloadTests.reference("opt-tiny", count: 4, newTokens: 5)
        let directory = Fixtures.model("opt-tiny")
        var policy = TransferOrderTests.everyTier
        policy.cpuAttention = cpuAttention
        let emulator = Self.directory!
        let engine = try OffloadEngine(directory: directory, policy: policy, budgets: TierBudgets(), offloadDirectory: Fixtures.scratch("emulated"),
                                       threads: 2, promptLength: 16, capacity: 64, compute: { @Sendable account in
                                           CUDABackend(device: try CUDADevice(account: account, kernelCache: Fixtures.scratch("emulated-kernels"),
                                                                              libraryDirectories: [emulator]), precision: .f32)
                                       })
        let bundle = try ModelBundle(directory: directory, model: engine.model)
        var timing = GenerationTiming()
        let results = try Generator(bundle: bundle, engine: engine).generate(try OffloadTests.requests(bundle, count: 4, newTokens: 5),
                                                                            sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
        #expect(results.map(\.tokenIds) == expected)
        #expect(engine.computeName == "cuda")
        #expect(engine.accounts.device.peak > 0)
    }
}
