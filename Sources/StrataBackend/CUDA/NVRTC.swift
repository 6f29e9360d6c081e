#if canImport(Glibc)
import Glibc
#endif

/// CUDA C compiled at run time by NVRTC (loaded with dlopen). The CUDA backend compiles its
/// kernels at first use; the test suite compiles every kernel with NVRTC alone (the
/// `nvidia-cuda-nvrtc` wheel provides it on a machine with no GPU) so kernels cannot rot.
public final class NVRTC: @unchecked Sendable {
    typealias Create = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                       UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias Compile = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias SizeOf = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
    typealias Read = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
    typealias Destroy = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Version = @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32

    let create: Create, compile: Compile, logSize: SizeOf, log: Read, ptxSize: SizeOf, ptx: Read, destroy: Destroy
    public let version: (major: Int, minor: Int)

    /// Loads libnvrtc from the system, `STRATA_NVRTC_DIR`, or the given directories.
    public init(directories: [String] = []) throws {
        var dirs = directories
        if let env = getenv("STRATA_NVRTC_DIR") { dirs.insert(String(cString: env), at: 0) }
        let (handle, error) = CUDALoader.open(CUDALoader.nvrtcNames, extraDirectories: dirs)
        guard let handle else { throw NVRTCError.unavailable(error) }
        func symbol<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let s = dlsym(handle, name) else { throw NVRTCError.unavailable("libnvrtc lacks \(name)") }
            return unsafeBitCast(s, to: type)
        }
        create = try symbol("nvrtcCreateProgram", Create.self)
        compile = try symbol("nvrtcCompileProgram", Compile.self)
        logSize = try symbol("nvrtcGetProgramLogSize", SizeOf.self)
        log = try symbol("nvrtcGetProgramLog", Read.self)
        ptxSize = try symbol("nvrtcGetPTXSize", SizeOf.self)
        ptx = try symbol("nvrtcGetPTX", Read.self)
        destroy = try symbol("nvrtcDestroyProgram", Destroy.self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = try symbol("nvrtcVersion", Version.self)(&major, &minor)
        version = (Int(major), Int(minor))
    }

    public enum NVRTCError: Error, CustomStringConvertible {
        case unavailable(String)
        case compile(name: String, log: String)
        public var description: String {
            switch self {
            case .unavailable(let why): return "NVRTC unavailable: \(why)"
            case .compile(let name, let log): return "NVRTC could not compile \(name):\n\(log)"
            }
        }
    }

    /// Without --use_fast_math: its approximate division and flush-to-zero would move the
    /// quantizer's codes and the f32 path off the CPU backend's results; the kernels call the
    /// fast intrinsics (`__expf`) where they want them.
    public static let options = ["-std=c++17"]

    /// Compiles `source` to PTX for `architecture` (e.g. compute_80).
    public func ptx(source: String, name: String, architecture: String = "compute_80") throws -> String {
        var program: OpaquePointer?
        var status = source.withCString { src in name.withCString { create(&program, src, $0, 0, nil, nil) } }
        guard status == 0 else { throw NVRTCError.compile(name: name, log: "nvrtcCreateProgram failed (\(status))") }
        defer { _ = destroy(&program) }
        let options = ["--gpu-architecture=\(architecture)"] + Self.options
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        status = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { compile(program, Int32(options.count), $0.baseAddress) }
        if status != 0 {
            var size = 0
            _ = logSize(program, &size)
            var text = [CChar](repeating: 0, count: max(size, 1))
            _ = log(program, &text)
            throw NVRTCError.compile(name: name, log: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        var size = 0
        _ = ptxSize(program, &size)
        var text = [CChar](repeating: 0, count: max(size, 1))
        _ = ptx(program, &text)
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
