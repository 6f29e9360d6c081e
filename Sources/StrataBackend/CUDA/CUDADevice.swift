import StrataCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One GPU as the backend uses it: its primary context, the streams FlexGen's schedule needs
/// (compute, weight loads, cache loads, cache stores), cuBLAS on the compute stream, the kernel
/// module and a caching allocator.
public final class CUDADevice: @unchecked Sendable {
    public let driver: CUDADriver
    public let ordinal: Int32
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    let context: OpaquePointer?
    /// Kernels and cuBLAS run here, in order: a buffer freed after an op is safe to hand to the
    /// next op on the same stream, which is what lets the allocator reuse memory at once.
    public let compute: CUDAStream
    public let weightLoads: CUDAStream
    public let cacheLoads: CUDAStream
    public let cacheStores: CUDAStream
    let blas: OpaquePointer?
    let functions: [String: OpaquePointer]
    public let allocator: CUDAAllocator
    /// Largest dynamic shared memory a block may ask for (the attention kernels keep one score
    /// per key position there).
    let maxDynamicShared: Int

    /// `libraryDirectories` are searched first for the driver and cuBLAS (the tests point them at
    /// the CPU emulator); NVRTC is found as usual.
    public init(ordinal: Int = 0, account: MemoryAccount? = nil, kernelCache: String? = CUDAModuleCache.defaultDirectory(),
                libraryDirectories: [String] = []) throws {
        let driver = try CUDADriver(directories: libraryDirectories)
        self.driver = driver
        self.ordinal = Int32(ordinal)
        try driver.check(driver.cuInit(0), "cuInit")
        var device: Int32 = 0
        try driver.check(driver.cuDeviceGet(&device, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        func attribute(_ a: Int32) throws -> Int {
            var v: Int32 = 0
            try driver.check(driver.cuDeviceGetAttribute(&v, a, device), "cuDeviceGetAttribute(\(a))")
            return Int(v)
        }
        computeCapability = (try attribute(CUDAConstants.attributeComputeMajor), try attribute(CUDAConstants.attributeComputeMinor))
        maxDynamicShared = (try? attribute(97)) ?? 48 * 1024   // CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        var text = [CChar](repeating: 0, count: 256)
        _ = driver.cuDeviceGetName(&text, 256, device)
        name = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var context: OpaquePointer?
        try driver.check(driver.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain")
        self.context = context
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
        compute = try CUDAStream(driver: driver, context: context, label: "compute")
        weightLoads = try CUDAStream(driver: driver, context: context, label: "weight-load")
        cacheLoads = try CUDAStream(driver: driver, context: context, label: "cache-load")
        cacheStores = try CUDAStream(driver: driver, context: context, label: "cache-store")
        var handle: OpaquePointer?
        try driver.checkBLAS(driver.cublasCreate(&handle), "cublasCreate")
        try driver.checkBLAS(driver.cublasSetStream(handle, compute.handle), "cublasSetStream")
        try driver.checkBLAS(driver.cublasSetMathMode(handle, CUDAConstants.defaultMath), "cublasSetMathMode")
        blas = handle
        let module = try CUDAModuleCache(directory: kernelCache).load(driver: driver, capability: computeCapability)
        var functions: [String: OpaquePointer] = [:]
        for kernel in CUDAKernels.names {
            var f: OpaquePointer?
            try driver.check(kernel.withCString { driver.cuModuleGetFunction(&f, module, $0) }, "cuModuleGetFunction(\(kernel))")
            functions[kernel] = f
        }
        for kernel in ["attention_decode", "attention_prefill"] {
            _ = driver.cuFuncSetAttribute(functions[kernel], CUDAConstants.funcMaxDynamicShared, Int32(maxDynamicShared - 1024))
        }
        self.functions = functions
        allocator = CUDAAllocator(driver: driver, context: context, account: account)
    }

    /// Makes this device's context current on the calling thread (the runtime may call a backend
    /// from more than one thread; the driver keeps the current context per thread).
    @inline(__always) func makeCurrent() { driver.must(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent") }

    /// Launches `kernel` on the compute stream with a 1-D grid.
    func launch(_ kernel: String, blocks: Int, threads: Int, sharedBytes: Int = 0, _ arguments: KernelArguments) {
        guard blocks > 0 else { return }
        guard let f = functions[kernel] else { fatalError("CUDA kernel \(kernel) is not in the module") }
        var slots = arguments.slots
        slots.withUnsafeMutableBufferPointer { values in
            var pointers: [UnsafeMutableRawPointer?] = (0..<values.count).map { UnsafeMutableRawPointer(values.baseAddress! + $0) }
            pointers.withUnsafeMutableBufferPointer { p in
                driver.must(driver.cuLaunchKernel(f, UInt32(blocks), 1, 1, UInt32(threads), 1, 1, UInt32(sharedBytes), compute.handle,
                                                  p.baseAddress, nil), "cuLaunchKernel(\(kernel), \(blocks) blocks)")
            }
        }
    }
}

/// A CUDA stream, and events recorded on it for other streams to wait on.
public final class CUDAStream: @unchecked Sendable {
    let driver: CUDADriver
    let context: OpaquePointer?
    public let label: String
    let handle: OpaquePointer?

    init(driver: CUDADriver, context: OpaquePointer?, label: String) throws {
        self.driver = driver
        self.context = context
        self.label = label
        var s: OpaquePointer?
        try driver.check(driver.cuStreamCreate(&s, CUDAConstants.streamNonBlocking), "cuStreamCreate(\(label))")
        handle = s
    }

    /// An event marking everything enqueued here so far.
    public func record() -> CUDAEvent {
        let event = CUDAEvent(driver: driver, context: context)
        driver.must(driver.cuEventRecord(event.handle, handle), "cuEventRecord(\(label))")
        return event
    }

    /// Work enqueued here after this call starts only once `event` has happened.
    public func wait(for event: CUDAEvent) {
        driver.must(driver.cuStreamWaitEvent(handle, event.handle, 0), "cuStreamWaitEvent(\(label))")
    }

    public func synchronize() { driver.must(driver.cuStreamSynchronize(handle), "cuStreamSynchronize(\(label))") }
}

public final class CUDAEvent: @unchecked Sendable {
    let driver: CUDADriver
    let context: OpaquePointer?
    let handle: OpaquePointer?

    init(driver: CUDADriver, context: OpaquePointer?) {
        self.driver = driver
        self.context = context
        var e: OpaquePointer?
        driver.must(driver.cuEventCreate(&e, CUDAConstants.eventDisableTiming), "cuEventCreate")
        handle = e
    }

    /// Events die on whichever thread drops the last fence: that thread may have no current context.
    deinit {
        _ = driver.cuCtxSetCurrent(context)
        _ = driver.cuEventDestroy(handle)
    }
}

/// Device memory with a cache of freed blocks by size, so a steady-state decode step allocates
/// nothing from the driver (cuMemAlloc synchronizes the device). The account is charged with
/// what is held from the driver, cached blocks included: that is the device tier's high-water
/// mark. Plain cuMemAlloc, never managed memory.
public final class CUDAAllocator: @unchecked Sendable {
    let driver: CUDADriver
    let context: OpaquePointer?
    public let account: MemoryAccount?
    private let cached = Mutex<[Int: [UInt64]]>([:])

    init(driver: CUDADriver, context: OpaquePointer?, account: MemoryAccount?) {
        self.driver = driver
        self.context = context
        self.account = account
    }

    /// Sizes are rounded so that activations of nearby shapes share blocks: 512 bytes below
    /// 1 MiB, 2 MiB above.
    static func rounded(_ bytes: Int) -> Int {
        let b = max(bytes, 512)
        return b < (1 << 20) ? (b + 511) & ~511 : (b + (2 << 20) - 1) & ~((2 << 20) - 1)
    }

    public func allocate(_ bytes: Int, backendName: String = "cuda") -> DeviceBuffer {
        let size = Self.rounded(bytes)
        let reused = cached.withLock { $0[size]?.popLast() }
        let address: UInt64
        if let reused {
            address = reused
        } else {
            var fresh: UInt64 = 0
            var status = driver.cuMemAlloc(&fresh, size)
            if status != 0 {
                // Out of memory with blocks cached: give them back and try once more.
                releaseCached()
                status = driver.cuMemAlloc(&fresh, size)
            }
            driver.must(status, "cuMemAlloc(\(size) bytes; \(account.map { "\($0.live) held" } ?? ""))")
            account?.charge(size)
            address = fresh
        }
        return DeviceBuffer(pointer: UnsafeMutableRawPointer(bitPattern: UInt(address))!, byteCount: bytes, backendName: backendName) { [self] p in
            let a = UInt64(UInt(bitPattern: p))
            cached.withLock { $0[size, default: []].append(a) }
        }
    }

    /// Returns every cached block to the driver.
    public func releaseCached() {
        let blocks = cached.withLock { c -> [(Int, UInt64)] in
            defer { c.removeAll() }
            return c.flatMap { size, list in list.map { (size, $0) } }
        }
        _ = driver.cuCtxSetCurrent(context)
        for (size, address) in blocks {
            _ = driver.cuMemFree(address)
            account?.refund(size)
        }
    }

    /// Page-locked host memory (the host tier and disk staging): copies from it run at the
    /// link's full speed and asynchronously.
    public func pinnedHost(_ bytes: Int, account: MemoryAccount? = nil) throws -> DeviceBuffer {
        var p: UnsafeMutableRawPointer?
        try driver.check(driver.cuMemHostAlloc(&p, max(bytes, 64), CUDAConstants.hostAllocPortable), "cuMemHostAlloc(\(bytes) bytes)")
        account?.charge(bytes)
        return DeviceBuffer(pointer: p!, byteCount: bytes, backendName: "cuda-pinned") { [self] pointer in
            _ = driver.cuCtxSetCurrent(context)   // released on any thread
            _ = driver.cuMemFreeHost(pointer)
            account?.refund(bytes)
        }
    }
}

extension DeviceBuffer {
    /// The buffer's address as a CUdeviceptr.
    var deviceAddress: UInt64 { UInt64(UInt(bitPattern: pointer)) }
}
