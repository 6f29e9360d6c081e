#if canImport(Glibc)
import Glibc
#endif

/// A CUDA driver or cuBLAS call that failed, named with its status.
public struct CUDAError: Error, CustomStringConvertible {
    public let call: String
    public let status: Int32
    public let detail: String
    public var description: String { "\(call) failed: \(detail) (\(status))" }
}

/// The driver API and cuBLAS entry points the CUDA backend uses, resolved with `dlsym` from
/// libraries opened at run time (`CUDALoader`): nothing CUDA is needed to build Strata. Device
/// addresses are `CUdeviceptr` (UInt64).
public final class CUDADriver: @unchecked Sendable {
    public typealias Pointer = UnsafeMutableRawPointer
    typealias Status = Int32
    // Driver API (the _v2 symbols are the 64-bit ones the headers map to).
    let cuInit: @convention(c) (UInt32) -> Status
    let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Status
    let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Status
    let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Status
    let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Status
    let cuCtxSetCurrent: @convention(c) (OpaquePointer?) -> Status
    let cuMemAlloc: @convention(c) (UnsafeMutablePointer<UInt64>, Int) -> Status
    let cuMemFree: @convention(c) (UInt64) -> Status
    let cuMemHostAlloc: @convention(c) (UnsafeMutablePointer<Pointer?>, Int, UInt32) -> Status
    let cuMemFreeHost: @convention(c) (Pointer?) -> Status
    let cuMemcpyHtoDAsync: @convention(c) (UInt64, UnsafeRawPointer?, Int, OpaquePointer?) -> Status
    let cuMemcpyDtoHAsync: @convention(c) (Pointer?, UInt64, Int, OpaquePointer?) -> Status
    let cuMemcpyDtoDAsync: @convention(c) (UInt64, UInt64, Int, OpaquePointer?) -> Status
    let cuMemsetD8Async: @convention(c) (UInt64, UInt8, Int, OpaquePointer?) -> Status
    let cuStreamCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Status
    let cuStreamSynchronize: @convention(c) (OpaquePointer?) -> Status
    let cuStreamWaitEvent: @convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> Status
    let cuEventCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Status
    let cuEventRecord: @convention(c) (OpaquePointer?, OpaquePointer?) -> Status
    let cuEventDestroy: @convention(c) (OpaquePointer?) -> Status
    let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Status
    let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Status
    let cuFuncSetAttribute: @convention(c) (OpaquePointer?, Int32, Int32) -> Status
    let cuLaunchKernel: @convention(c) (OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, OpaquePointer?,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Status
    let cuGetErrorName: @convention(c) (Status, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Status
    // cuBLAS
    let cublasCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    let cublasSetStream: @convention(c) (OpaquePointer?, OpaquePointer?) -> Status
    let cublasSetMathMode: @convention(c) (OpaquePointer?, Int32) -> Status
    let cublasGemmEx: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer, UInt64, Int32, Int32,
                                      UInt64, Int32, Int32, UnsafeRawPointer, UInt64, Int32, Int32, Int32, Int32) -> Status

    /// Opens the driver and cuBLAS (`STRATA_CUDA_LIB_DIRS`, colon-separated, is searched too:
    /// pip's nvidia-cublas wheels put the library outside the loader's path; `directories` come
    /// first, as the tests' CPU emulator of the CUDA libraries does).
    public init(directories: [String] = []) throws {
        let extra = directories + CUDADriver.libraryDirectories()
        let (driver, driverError) = CUDALoader.open(CUDALoader.driverNames, extraDirectories: extra, directoriesFirst: !directories.isEmpty)
        guard let driver else { throw CUDAError(call: "dlopen(libcuda)", status: -1, detail: driverError) }
        let (blas, blasError) = CUDALoader.open(CUDALoader.cublasNames, extraDirectories: extra, directoriesFirst: !directories.isEmpty)
        guard let blas else { throw CUDAError(call: "dlopen(libcublas)", status: -1, detail: blasError) }
        func symbol<T>(_ handle: UnsafeMutableRawPointer, _ name: String, _ type: T.Type = T.self) throws -> T {
            guard let s = dlsym(handle, name) else { throw CUDAError(call: "dlsym(\(name))", status: -1, detail: "symbol missing") }
            return unsafeBitCast(s, to: type)
        }
        cuInit = try symbol(driver, "cuInit")
        cuDeviceGet = try symbol(driver, "cuDeviceGet")
        cuDeviceGetAttribute = try symbol(driver, "cuDeviceGetAttribute")
        cuDeviceGetName = try symbol(driver, "cuDeviceGetName")
        cuDevicePrimaryCtxRetain = try symbol(driver, "cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try symbol(driver, "cuCtxSetCurrent")
        cuMemAlloc = try symbol(driver, "cuMemAlloc_v2")
        cuMemFree = try symbol(driver, "cuMemFree_v2")
        cuMemHostAlloc = try symbol(driver, "cuMemHostAlloc")
        cuMemFreeHost = try symbol(driver, "cuMemFreeHost")
        cuMemcpyHtoDAsync = try symbol(driver, "cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try symbol(driver, "cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try symbol(driver, "cuMemcpyDtoDAsync_v2")
        cuMemsetD8Async = try symbol(driver, "cuMemsetD8Async")
        cuStreamCreate = try symbol(driver, "cuStreamCreate")
        cuStreamSynchronize = try symbol(driver, "cuStreamSynchronize")
        cuStreamWaitEvent = try symbol(driver, "cuStreamWaitEvent")
        cuEventCreate = try symbol(driver, "cuEventCreate")
        cuEventRecord = try symbol(driver, "cuEventRecord")
        cuEventDestroy = try symbol(driver, "cuEventDestroy_v2")
        cuModuleLoadData = try symbol(driver, "cuModuleLoadData")
        cuModuleGetFunction = try symbol(driver, "cuModuleGetFunction")
        cuFuncSetAttribute = try symbol(driver, "cuFuncSetAttribute")
        cuLaunchKernel = try symbol(driver, "cuLaunchKernel")
        cuGetErrorName = try symbol(driver, "cuGetErrorName")
        cublasCreate = try symbol(blas, "cublasCreate_v2")
        cublasSetStream = try symbol(blas, "cublasSetStream_v2")
        cublasSetMathMode = try symbol(blas, "cublasSetMathMode")
        cublasGemmEx = try symbol(blas, "cublasGemmEx")
    }

    public static func libraryDirectories() -> [String] {
        guard let value = getenv("STRATA_CUDA_LIB_DIRS") else { return [] }
        return String(cString: value).split(separator: ":").map(String.init)
    }

    /// Throws a `CUDAError` naming `call` unless `status` is success.
    func check(_ status: Status, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        var name: UnsafePointer<CChar>?
        let detail = cuGetErrorName(status, &name) == 0 && name != nil ? String(cString: name!) : "CUDA error"
        throw CUDAError(call: call(), status: status, detail: detail)
    }

    func checkBLAS(_ status: Status, _ call: String) throws {
        guard status != 0 else { return }
        throw CUDAError(call: call, status: status, detail: "cuBLAS status")
    }

    /// For calls whose failure leaves nothing sensible to do but stop (a kernel launch on valid
    /// arguments, a copy between live buffers): the message names the call.
    func must(_ status: Status, _ call: @autoclosure () -> String) {
        do { try check(status, call()) } catch { fatalError("\(error)") }
    }
}

/// cuBLAS and CUDA enumerations used here (values from the CUDA 11-13 headers).
enum CUDAConstants {
    static let attributeComputeMajor: Int32 = 75, attributeComputeMinor: Int32 = 76
    static let funcMaxDynamicShared: Int32 = 8
    static let streamNonBlocking: UInt32 = 1
    static let eventDisableTiming: UInt32 = 2
    static let hostAllocPortable: UInt32 = 1
    static let opN: Int32 = 0, opT: Int32 = 1
    static let realF32: Int32 = 0, realF16: Int32 = 2, realBF16: Int32 = 14
    static let compute32F: Int32 = 68
    static let gemmDefault: Int32 = -1
    /// CUBLAS_DEFAULT_MATH: tensor cores for f16/bf16 inputs, exact f32 (no TF32) for f32.
    static let defaultMath: Int32 = 0
}

/// Kernel arguments in 8-byte slots: the driver reads each argument's own size from the start
/// of its slot, so 4-byte ints and floats sit in the low bytes (x86-64 and arm64 are little-endian).
struct KernelArguments {
    var slots: [UInt64] = []
    mutating func pointer(_ address: UInt64) { slots.append(address) }
    mutating func int(_ value: Int) { slots.append(UInt64(UInt32(bitPattern: Int32(value)))) }
    mutating func size(_ value: Int) { slots.append(UInt64(value)) }
    mutating func float(_ value: Float) { slots.append(UInt64(value.bitPattern)) }
}
