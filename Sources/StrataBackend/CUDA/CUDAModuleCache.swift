#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The kernel module for one device: compiled by NVRTC once per (kernel source, NVRTC version,
/// compute capability) and kept on disk, so later runs skip the compile.
public struct CUDAModuleCache: Sendable {
    public let directory: String?

    public init(directory: String?) { self.directory = directory }

    /// `STRATA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/strata/kernels`, else `~/.cache/strata/kernels`.
    public static func defaultDirectory() -> String? {
        if let v = getenv("STRATA_KERNEL_CACHE") { return String(cString: v) }
        if let v = getenv("XDG_CACHE_HOME") { return String(cString: v) + "/strata/kernels" }
        if let v = getenv("HOME") { return String(cString: v) + "/.cache/strata/kernels" }
        return nil
    }

    /// FNV-1a over the bytes: a stable key (Swift's Hasher is seeded per process).
    static func fingerprint(_ parts: [String]) -> String {
        var h: UInt64 = 0xcbf29ce484222325
        for part in parts {
            for byte in part.utf8 { h = (h ^ UInt64(byte)) &* 0x100000001b3 }
            h = (h ^ 0xff) &* 0x100000001b3
        }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The file a module for `capability` is cached in.
    public func path(capability: (major: Int, minor: Int), nvrtcVersion: (major: Int, minor: Int)) -> String? {
        guard let directory else { return nil }
        let key = Self.fingerprint([CUDAKernels.source, "\(nvrtcVersion.major).\(nvrtcVersion.minor)", NVRTC.options.joined(separator: " ")])
        return "\(directory)/strata-\(key)-sm\(capability.major)\(capability.minor).ptx"
    }

    /// PTX for the device: from the cache when present, else compiled and stored.
    public func ptx(capability: (major: Int, minor: Int)) throws -> String {
        let compiler = try NVRTC(directories: CUDADriver.libraryDirectories())
        let file = path(capability: capability, nvrtcVersion: compiler.version)
        if let file, let data = FileManager.default.contents(atPath: file) {
            let cached = String(decoding: data, as: UTF8.self)
            if cached.contains(".entry") { return cached }
        }
        let ptx = try compiler.ptx(source: CUDAKernels.source, name: "strata_kernels.cu",
                                   architecture: "compute_\(capability.major)\(capability.minor)")
        if let file, let directory {
            // Best effort: a cache that cannot be written only costs the next run a compile.
            // Atomic, so a concurrent reader never sees half a file.
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try? Data(ptx.utf8).write(to: URL(fileURLWithPath: file), options: .atomic)
        }
        return ptx
    }

    func load(driver: CUDADriver, capability: (major: Int, minor: Int)) throws -> OpaquePointer? {
        let text = try ptx(capability: capability)
        var module: OpaquePointer?
        try text.withCString { p in try driver.check(driver.cuModuleLoadData(&module, p), "cuModuleLoadData(strata kernels)") }
        return module
    }
}
