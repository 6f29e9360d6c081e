import ArgumentParser
import StrataCore
import StrataPlanning
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `strata profile`: measures this machine and writes a HardwareProfile JSON.
struct Profile: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure this machine (memory copy, GEMM, attention, dequantization, direct-I/O disk) and write a hardware profile.")

    @Option(help: "Compute threads.") var threads = 2
    @Option(help: "Directory on the disk to measure (the offload directory).") var offloadDir = "/tmp/strata-offload"
    @Option(help: "Write the profile JSON here (default: the cache --policy auto reads).") var output: String?
    @Flag(help: "More samples and larger transfers (slower, steadier).") var thorough = false
    @Option(help: "Measure direct reads on these existing files (a file or directory, e.g. a store's tensors/) instead of a freshly written file.")
    var diskReadSample: String?
    @Flag(help: "Print the profile JSON to stdout.") var json = false

    func run() throws {
        try reportingErrors {
            var profiler = Profiler(threads: threads, offloadDirectory: offloadDir, thorough: thorough)
            profiler.diskReadSample = diskReadSample
            if !json { profiler.report = { print($0) } }
            let profile = try profiler.measure()
            let path = output ?? ProfileCache.path
            try ProfileCache.write(profile, to: path)
            if json { print(profile.json.serialized()) } else { print("wrote \(path)") }
        }
    }
}

/// Where `strata profile` leaves its result and `--policy auto` looks for it.
enum ProfileCache {
    static var path: String {
        let base = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"]
            ?? ((ProcessInfo.processInfo.environment["HOME"] ?? "/tmp") + "/.cache")
        return base + "/strata/profile-\(Profiler.hostname()).json"
    }

    static func write(_ profile: HardwareProfile, to path: String) throws {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        do { try Data(profile.json.serialized().utf8).write(to: URL(fileURLWithPath: path)) } catch {
            throw StrataError.ioFailure(path: path, detail: "\(error)")
        }
    }

    /// The cached profile, or a fresh quick measurement (then cached).
    static func loadOrMeasure(threads: Int, offloadDirectory: String) throws -> HardwareProfile {
        if FileSystem.exists(path) { return try HardwareProfile(json: JSONValue.load(path: path), path: path) }
        Console.note("no cached hardware profile; measuring this machine (strata profile) ...")
        let profile = try Profiler(threads: threads, offloadDirectory: offloadDirectory, thorough: false).measure()
        try write(profile, to: path)
        return profile
    }
}
