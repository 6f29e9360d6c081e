import StrataCore
import StrataFormats
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `kill -9` at random points of a batch job and of a store conversion, then the same command
/// again: every input line is in the output exactly once, with the tokens of an uninterrupted
/// run, and a torn last line (a write cut short) is detected and rewritten.
@Suite(.serialized) struct CrashSafetyTests {
    static let model = Fixtures.root + "/models/opt-licenses"
    static let prompts = 40

    /// Starts the strata binary with output discarded (a pipe nobody reads could stall it).
    static func start(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLineTests.binary)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Waits until `ready()` holds or the process ends, then kills it with SIGKILL; true when the
    /// kill landed while it was still running.
    static func kill9(_ process: Process, when ready: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && !ready() && Date() < deadline { usleep(200) }
        let wasRunning = process.isRunning
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return wasRunning && process.terminationReason == .uncaughtSignal
    }

    static func lines(_ path: String) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    /// index -> token ids, failing on a line that does not parse or an index seen twice.
    static func outputs(_ path: String) throws -> [Int: [Int]] {
        var result: [Int: [Int]] = [:]
        for line in lines(path) {
            let v = try JSONValue.parse(Data(line.utf8), path: path)
            let index = try #require(v["index"]?.int)
            #expect(result[index] == nil, "input line \(index) appears twice in \(path)")
            result[index] = try #require(v["token_ids"]?.array).compactMap(\.int)
        }
        return result
    }

    /// The `generate` arguments of a 40-prompt job in `dir`, given its output path.
    static func job(_ dir: String) throws -> (String) -> [String] {
        let input = dir + "/in.jsonl"
        let text = (0..<prompts).map { "{\"prompt\": \"License number \($0) says\", \"id\": \($0)}" }.joined(separator: "\n") + "\n"
        try text.write(toFile: input, atomically: true, encoding: .utf8)
        return { ["generate", "--model", model, "--input", input, "--output", $0, "--batch-size", "2", "--max-new-tokens", "24", "--quiet"] }
    }

    @Test func generateKilledAtRandomPointsResumesWithEveryLineOnce() throws {
        let dir = Fixtures.scratch("kill-generate")
        let arguments = try Self.job(dir)
        let reference = dir + "/reference.jsonl"
        #expect(try CommandLineTests.run(arguments(reference)).status == 0)
        let expected = try Self.outputs(reference)
        #expect(expected.count == Self.prompts)

        let output = dir + "/out.jsonl"
        var rng = SeededGenerator(seed: 0x5eed)
        var kills = 0
        for _ in 0..<6 {
            let target = Int.random(in: 1..<Self.prompts, using: &rng)
            let process = try Self.start(arguments(output))
            if Self.kill9(process, when: { Self.lines(output).count >= target }) { kills += 1 }
        }
        #expect(try CommandLineTests.run(arguments(output)).status == 0)
        #expect(kills >= 3, "only \(kills) of 6 kills landed while the job was running")
        let resumed = try Self.outputs(output)
        #expect(resumed.count == Self.prompts)
        for (index, ids) in expected { #expect(resumed[index] == ids, "line \(index) differs after resuming") }
    }

    @Test func tornLastLineIsCutAndRewritten() throws {
        let dir = Fixtures.scratch("torn")
        let arguments = try Self.job(dir)
        let output = dir + "/out.jsonl"
        #expect(try CommandLineTests.run(arguments(output)).status == 0)
        let expected = try Self.outputs(output)
        // A write cut short: the last line loses its end, newline included.
        var bytes = try #require(FileManager.default.contents(atPath: output))
        bytes.removeLast(40)
        try bytes.write(to: URL(fileURLWithPath: output))
        let (status, _, stderr) = try CommandLineTests.run(Array(arguments(output).dropLast()))
        #expect(status == 0)
        #expect(stderr.contains("torn last line"))
        let repaired = try Self.outputs(output)
        #expect(repaired == expected)
        // The rewritten line was generated again, not glued onto the fragment.
        #expect(Self.lines(output).count == Self.prompts)
    }

    @Test func convertKilledAtRandomPointsResumesToTheSameStore() throws {
        let dir = Fixtures.scratch("kill-convert")
        let reference = dir + "/reference"
        #expect(try CommandLineTests.run(["convert", "--model", Self.model, "--out", reference, "--quiet"]).status == 0)
        let expected = try OffloadStore(directory: reference).entries

        let store = dir + "/store"
        let manifest = store + "/" + OffloadStore.manifestName
        var rng = SeededGenerator(seed: 0xc0de)
        var kills = 0
        func listed() -> Int {
            guard let data = FileManager.default.contents(atPath: manifest),
                  let v = try? JSONValue.parse(data, path: manifest) else { return 0 }
            return v["tensors"]?.array?.count ?? 0
        }
        for _ in 0..<4 {
            // A few tensors past what the previous runs finished.
            let target = listed() + Int.random(in: 1...3, using: &rng)
            let process = try Self.start(["convert", "--model", Self.model, "--out", store, "--quiet"])
            kills += Self.kill9(process) { listed() >= target } ? 1 : 0
        }
        #expect(kills >= 2, "only \(kills) of 4 kills landed while the conversion was running")
        #expect(try CommandLineTests.run(["convert", "--model", Self.model, "--out", store, "--quiet"]).status == 0)
        let resumed = try OffloadStore(directory: store)
        try resumed.verify()
        #expect(resumed.entries.count == expected.count)
        for (name, e) in expected {
            #expect(resumed.entries[name]?.checksum == e.checksum, "tensor \(name) differs after resuming")
        }
    }
}
