import COpenBLAS
import CStrataKernels
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Process-wide settings that decide CPU backend speed and must be made before work starts.
public enum CPUSetup {
    /// The cores this process may use (load-time work such as quantizing is spread over them).
    public static var cores: Int { ProcessInfo.processInfo.activeProcessorCount }

    /// OpenBLAS 0.3.21 detects AVX-512 Zen/Sapphire Rapids CPUs as Haswell and picks AVX2
    /// kernels; its SkylakeX kernels run GEMM 1.2-1.9x faster there (PLATFORM-NOTES). OpenBLAS
    /// reads OPENBLAS_CORETYPE when the library loads, before `main`, so the only way to pick
    /// the kernels for the user is to set it and re-execute once. A user's own setting wins.
    public static func selectOpenBLASKernels() {
        #if os(Linux) && arch(x86_64)
        guard getenv("OPENBLAS_CORETYPE") == nil, cpuHasAVX512() else { return }
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // execv returns only on failure: carry on with the default kernels.
        #endif
    }

    /// Whether Strata's own AVX-512 kernels (f16 matmul tile, SwiGLU, softmax) serve:
    /// `strata_avx512_supported` (CPUID and the OS's register state), unless
    /// `STRATA_CPU_ISA=baseline` forces the AVX2 code a CPU without AVX-512 runs.
    static let avx512Kernels: Bool = {
        if let isa = getenv(MatrixUnits.environmentKey), String(cString: isa) == "baseline" { return false }
        return strata_avx512_supported() != 0
    }()

    static func cpuHasAVX512() -> Bool {
        let set = cpuFlags()
        return ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy { set.contains(Substring($0)) }
    }

    /// The CPU's feature flags: CPUID as the kernel reports it in /proc/cpuinfo (so a feature
    /// whose register state the OS does not enable, such as AMX tiles, is absent).
    static func cpuFlags() -> Set<Substring> {
        guard let data = FileManager.default.contents(atPath: "/proc/cpuinfo"),
              let line = String(decoding: data, as: UTF8.self).split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return [] }
        return Set(line.split(separator: " "))
    }

    /// Keeps freed activation buffers in the heap instead of returning them to the kernel: with
    /// glibc's defaults every multi-megabyte activation is mmap'd and unmapped per op, and the
    /// page faults cost as much system time as the GEMMs.
    public static func retainFreedMemory() {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, 512 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, Int32.max)
        // The model runs on worker threads, whose per-thread arenas live in 64 MiB heaps that
        // glibc unmaps as soon as they empty, whatever the thresholds above: a prefill's 50 MB
        // activations were faulted in afresh on every layer (strace: hundreds of mmap/munmap
        // per prefill). One arena keeps them in the main heap.
        _ = mallopt(M_ARENA_MAX, 1)
        #endif
    }
}
