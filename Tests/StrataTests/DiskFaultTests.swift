import StrataCore
import StrataFormats
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A disk that fills up and an offload file that cannot be read, in the middle of real runs:
/// the error names the file, and the output holds only whole lines (resumable).
@Suite(.serialized) struct DiskFaultTests {
    /// A small tmpfs is a real full disk; mounting one needs root (CI runs as root here).
    static let canMount: Bool = {
        guard getuid() == 0 else { return false }
        let dir = Fixtures.scratch("probe-mount")
        guard mount(dir, bytes: 4096) else { return false }
        unmount(dir)
        return true
    }()

    @discardableResult
    static func mount(_ dir: String, bytes: Int) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/mount")
        p.arguments = ["-t", "tmpfs", "-o", "size=\(bytes)", "tmpfs", dir]
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    static func unmount(_ dir: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/umount")
        p.arguments = [dir]
        try? p.run()
        p.waitUntilExit()
    }

    static let model = CrashSafetyTests.model

    /// Runs `body` with `dir` (created) mounted as a tmpfs of `bytes`, unmounted afterwards.
    static func withSmallDisk(_ dir: String, bytes: Int, _ body: () throws -> Void) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        #expect(mount(dir, bytes: bytes))
        defer { unmount(dir) }
        try body()
    }

    /// Every line of `path` parses and ends with a newline; returns how many there are.
    static func wholeLines(_ path: String) throws -> Int {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { return 0 }
        #expect(data.last == UInt8(ascii: "\n"), "\(path) ends in the middle of a line")
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n")
        for line in lines { _ = try JSONValue.parse(Data(line.utf8), path: path) }
        return lines.count
    }

    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"))
    func outputOnAFullDiskKeepsWholeLinesAndResumes() throws {
        let dir = Fixtures.scratch("full-output")
        let arguments = try CrashSafetyTests.job(dir)
        let disk = dir + "/disk"
        let output = disk + "/out.jsonl"
        let moved = dir + "/out.jsonl"
        try Self.withSmallDisk(disk, bytes: 8192) {
            let (status, _, stderr) = try CommandLineTests.run(arguments(output))
            #expect(status != 0)
            #expect(stderr.contains(output) && stderr.contains("No space left on device"), "\(stderr)")
            let kept = try Self.wholeLines(output)
            #expect(kept > 0 && kept < CrashSafetyTests.prompts)
            try FileManager.default.copyItem(atPath: output, toPath: moved)
        }
        // Moved to a disk with room, the same job finishes with every line once.
        let (again, _, _) = try CommandLineTests.run(arguments(moved))
        #expect(again == 0)
        #expect(try CrashSafetyTests.outputs(moved).count == CrashSafetyTests.prompts)
    }

    @Test(.enabled(if: canMount, "needs root to mount a small tmpfs"))
    func diskTierOnAFullDiskNamesTheFile() throws {
        let dir = Fixtures.scratch("full-offload")
        let arguments = try CrashSafetyTests.job(dir)
        let disk = dir + "/offload"
        let output = dir + "/out.jsonl"
        try Self.withSmallDisk(disk, bytes: 256 << 10) {
            let (status, _, stderr) = try CommandLineTests.run(
                arguments(output) + ["--percent", "0", "0", "100", "0", "100", "0", "--offload-dir", disk])
            #expect(status != 0)
            #expect(stderr.contains(disk + "/weights/L") && stderr.contains("No space left on device"), "\(stderr)")
        }
        #expect(try Self.wholeLines(output) == 0)
    }

    @Test func unreadableStoreFileInADiskTierRunNamesIt() throws {
        let dir = Fixtures.scratch("bad-store")
        let store = dir + "/store"
        let (converted, _, _) = try CommandLineTests.run(["convert", "--model", Self.model, "--out", store, "--quiet"])
        #expect(converted == 0)
        let manifest = try OffloadStore(directory: store)
        let layerTensor = try #require(manifest.entries["model.decoder.layers.1.fc2.weight"])
        let embedding = try #require(manifest.entries["model.decoder.embed_tokens.weight"])
        let arguments = try CrashSafetyTests.job(dir)
        let output = dir + "/out.jsonl"
        let disk = ["--percent", "0", "0", "100", "0", "100", "0", "--offload-dir", dir + "/offload"]
        func run(model: String) throws -> String {
            var args = arguments(output)
            args[args.firstIndex(of: "--model")! + 1] = model
            let (status, _, stderr) = try CommandLineTests.run(args + disk)
            #expect(status != 0)
            return stderr
        }
        // A layer's file cut short: read from the store during the run.
        let layerFile = manifest.path(of: layerTensor)
        #expect(truncate(layerFile, 100) == 0)
        let cut = try run(model: store)
        #expect(cut.contains(layerFile) && cut.contains("end of file"), "\(cut)")
        #expect(try Self.wholeLines(output) == 0)
        // The embedding's file replaced by a directory: refused while loading, by name.
        let embeddingFile = manifest.path(of: embedding)
        try FileManager.default.removeItem(atPath: embeddingFile)
        try FileManager.default.createDirectory(atPath: embeddingFile, withIntermediateDirectories: false)
        let gone = try run(model: store)
        #expect(gone.contains(embeddingFile) && gone.contains("embed_tokens"), "\(gone)")
        #expect(try Self.wholeLines(output) == 0)
    }
}
