#if canImport(Glibc)
import Glibc
#endif

/// Which bf16 matrix hardware serves `--weight-format bf16` matmuls, decided once per process
/// from the CPU's flags (`CPUSetup.cpuFlags`) and oneDNN's availability. The binary itself is
/// built for Haswell, so nothing here runs as AVX-512 code from Swift: oneDNN JIT-compiles for
/// the CPU it finds.
public enum MatrixUnits {
    public enum Kind: String, Sendable {
        /// Intel AMX tiles (TMUL), bf16 in, f32 accumulate (Sapphire Rapids and later).
        case amx = "amx-bf16"
        /// AVX512-BF16 `vdpbf16ps` dot products (Zen 4, Cooper Lake, Sapphire Rapids without AMX).
        case avx512bf16 = "avx512-bf16"
    }

    public struct Status: Sendable {
        /// nil: bf16 weights are widened to f32 and multiplied by the backend's own kernels.
        public let kind: Kind?
        /// oneDNN's kernel name, or why no matrix path serves.
        public let detail: String
    }

    /// `STRATA_CPU_ISA` overrides the detection: `baseline` forces the fallback (what a CPU
    /// without AVX-512 runs, testable anywhere); `avx512-bf16` keeps oneDNN off AMX.
    public static let environmentKey = "STRATA_CPU_ISA"

    private static let detected: (status: Status, oneDNN: OneDNN?) = detect()
    public static var status: Status { detected.status }
    static var oneDNN: OneDNN? { detected.oneDNN }

    static func detect() -> (status: Status, oneDNN: OneDNN?) {
        let requested = getenv(environmentKey).map { String(cString: $0) } ?? "auto"
        let flags = CPUSetup.cpuFlags()
        let hardware: Kind?
        switch requested {
        case "baseline":
            return (Status(kind: nil, detail: "\(environmentKey)=baseline"), nil)
        case Kind.avx512bf16.rawValue:
            // oneDNN reads its ISA cap when it first dispatches, which is after this.
            setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", 1)
            hardware = flags.contains("avx512_bf16") ? .avx512bf16 : nil
        case "auto", Kind.amx.rawValue:
            if flags.contains("amx_bf16") && flags.contains("amx_tile") {
                hardware = .amx
            } else {
                hardware = flags.contains("avx512_bf16") ? .avx512bf16 : nil
            }
        default:
            return (Status(kind: nil, detail: "\(environmentKey)=\(requested) is not one of auto, amx-bf16, avx512-bf16, baseline"), nil)
        }
        guard let hardware else { return (Status(kind: nil, detail: "this CPU has neither AMX-BF16 nor AVX512-BF16"), nil) }
        // oneDNN's Debian build threads with OpenMP; libgomp reads its settings when oneDNN
        // loads it. Idle team threads spin for a while by default, taking the cores from
        // Strata's own workers between prefill matmuls; passive waiting sleeps at once. A
        // user's own setting wins.
        setenv("OMP_WAIT_POLICY", "PASSIVE", 0)
        switch OneDNN.load() {
        case .success(let d): return (Status(kind: hardware, detail: d.kernel), d)
        case .failure(let e): return (Status(kind: nil, detail: e.reason), nil)
        }
    }
}
