import StrataBackend
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA side that can be checked without a GPU: the loader's absence path and that every
/// kernel compiles with NVRTC (set STRATA_NVRTC_DIR to the nvidia-cuda-nvrtc wheel's lib
/// directory; scripts/test.sh does). Running the kernels needs a GPU.
@Suite struct CUDATests {
    static let nvrtc: NVRTC? = try? NVRTC()

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
        // And a broken kernel is reported, not ignored.
        #expect(throws: NVRTC.NVRTCError.self) { _ = try compiler.ptx(source: "extern \"C\" __global__ void k() { undefined(); }", name: "bad.cu") }
    }
}
