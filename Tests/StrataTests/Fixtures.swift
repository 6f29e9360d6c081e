import StrataCore
import StrataFormats
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Paths of the committed reference fixtures (made by scripts/make_fixtures.py).
enum Fixtures {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path + "/fixtures"
    }()

    static func model(_ name: String) -> String { root + "/models/" + name }
    static func tokenizer(_ name: String) -> String { root + "/tokenizers/" + name }

    /// SmolLM2-135M-Instruct (Q4_1 GGUF), fetched by scripts/fetch_smollm2.sh into a cache; nil
    /// when absent (scripts/test.sh fetches it, so only a bare `swift test` offline lacks it).
    static let smolLM2: String? = {
        let env = ProcessInfo.processInfo.environment
        let path = env["STRATA_SMOLLM2"]
            ?? ((env["STRATA_CACHE"] ?? (env["HOME"] ?? "/root") + "/.cache/strata") + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }()
    /// Model directories, and one GGUF file (its references sit beside it).
    static let modelNames = ["opt-tiny", "opt-postln-proj", "llama-gqa", "llama3-tied", "gguf-tiny/model.gguf", "gguf-llama3/model.gguf"]
    static let tokenizerNames = ["gpt2-bpe", "gpt2-files", "llama3-bpe", "sentencepiece-bpe", "metaspace-bpe"]

    /// A fresh empty directory for a test.
    static func scratch(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.path + "/strata-tests-\(name)-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func reference(_ name: String) throws -> FixtureReference {
        var dir = model(name)
        if name.hasSuffix(".gguf") { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
        return try FixtureReference(directory: dir)
    }
}

/// Runs `body`, which must throw an error whose message mentions every fragment.
func expectError(_ fragments: [String], _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error mentioning \(fragments)")
    } catch {
        let text = "\(error)"
        for f in fragments { #expect(text.contains(f), "error '\(text)' should mention '\(f)'") }
    }
}
