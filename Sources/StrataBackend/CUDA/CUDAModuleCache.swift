#if canImport(Glibc)
import Glibc
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
        if let file, let cached = Self.read(file), cached.contains(".entry") { return cached }
        let ptx = try compiler.ptx(source: CUDAKernels.source, name: "strata_kernels.cu",
                                   architecture: "compute_\(capability.major)\(capability.minor)")
        if let file, let directory { Self.makeDirectories(directory); Self.write(ptx, to: file) }
        return ptx
    }

    func load(driver: CUDADriver, capability: (major: Int, minor: Int)) throws -> OpaquePointer? {
        let text = try ptx(capability: capability)
        var module: OpaquePointer?
        try text.withCString { p in try driver.check(driver.cuModuleLoadData(&module, p), "cuModuleLoadData(strata kernels)") }
        return module
    }

    static func read(_ path: String) -> String? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Written to a temporary name and renamed, so a concurrent reader never sees half a file.
    static func write(_ text: String, to path: String) {
        let temporary = path + ".\(getpid()).tmp"
        guard let f = fopen(temporary, "wb") else { return }
        let bytes = Array(text.utf8)
        let written = fwrite(bytes, 1, bytes.count, f)
        fclose(f)
        if written == bytes.count { rename(temporary, path) } else { unlink(temporary) }
    }

    static func makeDirectories(_ path: String) {
        var prefix = ""
        for part in path.split(separator: "/", omittingEmptySubsequences: false) {
            prefix += (prefix.isEmpty && path.hasPrefix("/") ? "/" : (prefix.isEmpty ? "" : "/")) + part
            if !part.isEmpty { mkdir(prefix, 0o755) }
        }
    }
}
