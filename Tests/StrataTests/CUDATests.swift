import StrataBackend
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA side that can be checked without a GPU: the loader's absence path and that every
/// kernel compiles with NVRTC (set STRATA_NVRTC_DIR to the nvidia-cuda-nvrtc wheel's lib
/// directory; scripts/test.sh does). Running the kernels needs a GPU.
@Suite struct CUDATests {
    static let nvrtc: NVRTC? = try? NVRTC()

    static let gpu: String? = {
        if case .unavailable(let reason) = CUDALoader.probe() { return reason }
        return nil
    }()

    /// On a machine with a GPU: every op against the CPU backend, and the fixture models' logits
    /// and greedy tokens, in both compute precisions (what scripts/gpu-check.sh runs there too).
    @Test(.enabled(if: gpu == nil, "no usable CUDA device (\(gpu ?? "")): the CUDA op and fixture tests are skipped"),
          arguments: CUDABackend.ComputePrecision.allCases)
    func cudaBackendMatchesTheCPU(precision: CUDABackend.ComputePrecision) throws {
        let backend = CUDABackend(device: try CUDADevice(), precision: precision)
        let results = BackendConformance(halfPrecisionProducts: precision == .f16).run(candidate: backend, reference: CPUBackend(threads: 2, weightFormat: .f32))
        for r in results { #expect(r.passed, "\(r.op): error \(r.error) over tolerance \(r.tolerance)") }
        for name in Fixtures.modelNames {
            let r = try FixtureCheck.run(model: Fixtures.model(name), backend: backend)
            #expect(FixtureCheck.passes(r, sixteenBit: precision == .f16), "\(precision): \(r)")
        }
    }

    @Test func loaderExplainsAbsenceInOneLine() {
        switch CUDALoader.probe() {
        case .unavailable(let reason):
            #expect(!reason.isEmpty && !reason.contains("\n"))
        case .available(let devices, _):
            #expect(devices > 0)
        }
    }

    @Test(.enabled(if: nvrtc != nil, "NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 and set STRATA_NVRTC_DIR to its lib directory"))
    func everyKernelCompiles() throws {
        let compiler = try #require(Self.nvrtc)
        let ptx = try compiler.ptx(source: CUDAKernels.source, name: "strata_kernels.cu")
        for name in CUDAKernels.names {
            #expect(ptx.contains(".entry \(name)"), "kernel \(name) missing from the PTX")
        }
        #expect(CUDAKernels.names.count == Set(CUDAKernels.names).count)
        // And a broken kernel is reported, not ignored.
        #expect(throws: NVRTC.NVRTCError.self) { _ = try compiler.ptx(source: "extern \"C\" __global__ void k() { undefined(); }", name: "bad.cu") }
    }

    /// Kernels are compiled once per (source, NVRTC version, compute capability) and read back
    /// from the cache directory afterwards; another capability is another file.
    @Test(.enabled(if: nvrtc != nil, "NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 and set STRATA_NVRTC_DIR to its lib directory"))
    func kernelsAreCompiledOncePerCapabilityAndCached() throws {
        let directory = Fixtures.scratch("kernel-cache") + "/nested/kernels"
        let cache = CUDAModuleCache(directory: directory)
        let hopper = try cache.ptx(capability: (9, 0))
        #expect(hopper.contains(".target sm_90"))
        let version = try #require(Self.nvrtc).version
        let file = try #require(cache.path(capability: (9, 0), nvrtcVersion: version))
        #expect(FileManager.default.fileExists(atPath: file))
        // A planted marker in the cached file comes back: the second call compiled nothing.
        try (hopper + "\n// cached").write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try cache.ptx(capability: (9, 0)).hasSuffix("// cached"))
        let ampere = try cache.ptx(capability: (8, 0))
        #expect(ampere.contains(".target sm_80") && !ampere.hasSuffix("// cached"))
        #expect(cache.path(capability: (8, 0), nvrtcVersion: version) != file)
    }
}
