#if canImport(Glibc)
import Glibc
#endif

/// Finds the CUDA driver, cuBLAS and NVRTC at run time with `dlopen`: nothing CUDA is needed to
/// build Strata, and a machine without it runs the CPU backend and says why in one line.
public enum CUDALoader {
    public enum Availability: Sendable, Equatable {
        case available(devices: Int, driverVersion: Int)
        case unavailable(reason: String)
    }

    static let driverNames = ["libcuda.so.1", "libcuda.so"]
    static let cublasNames = ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"]
    public static let nvrtcNames = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"]

    /// dlopen of the first name that loads, or the first error (the most specific name's).
    public static func open(_ names: [String], extraDirectories: [String] = [], directoriesFirst: Bool = false)
        -> (handle: UnsafeMutableRawPointer?, error: String) {
        var firstError: String?
        for directory in directoriesFirst ? extraDirectories + [""] : [""] + extraDirectories {
            for name in names {
                let path = directory.isEmpty ? name : directory + "/" + name
                if let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) { return (handle, "") }
                if let e = dlerror(), firstError == nil { firstError = String(cString: e) }
            }
        }
        return (nil, firstError ?? "not found")
    }

    /// Whether a CUDA device can be used, and if not, why (one line).
    public static func probe() -> Availability {
        let (driver, error) = open(driverNames)
        guard let driver else { return .unavailable(reason: "no CUDA driver (\(error))") }
        typealias CuInit = @convention(c) (UInt32) -> Int32
        typealias CuCount = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
        typealias CuVersion = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
        guard let initSymbol = dlsym(driver, "cuInit"), let countSymbol = dlsym(driver, "cuDeviceGetCount"),
              let versionSymbol = dlsym(driver, "cuDriverGetVersion") else {
            return .unavailable(reason: "libcuda.so.1 lacks cuInit/cuDeviceGetCount")
        }
        let initialize = unsafeBitCast(initSymbol, to: CuInit.self)
        let count = unsafeBitCast(countSymbol, to: CuCount.self)
        let version = unsafeBitCast(versionSymbol, to: CuVersion.self)
        let status = initialize(0)
        guard status == 0 else { return .unavailable(reason: "cuInit failed with CUDA error \(status)") }
        var devices: Int32 = 0, driverVersion: Int32 = 0
        guard count(&devices) == 0, devices > 0 else { return .unavailable(reason: "the CUDA driver reports no devices") }
        _ = version(&driverVersion)
        // pip's nvidia-* wheels keep cuBLAS and NVRTC outside the loader's path: the directories
        // the backend searches are searched here too.
        var directories = CUDADriver.libraryDirectories()
        if let nvrtc = getenv("STRATA_NVRTC_DIR") { directories.append(String(cString: nvrtc)) }
        let blas = open(cublasNames, extraDirectories: directories)
        guard blas.handle != nil else { return .unavailable(reason: "cuBLAS not found (\(blas.error))") }
        let nvrtc = open(nvrtcNames, extraDirectories: directories)
        guard nvrtc.handle != nil else { return .unavailable(reason: "NVRTC not found (\(nvrtc.error))") }
        return .available(devices: Int(devices), driverVersion: Int(driverVersion))
    }
}
