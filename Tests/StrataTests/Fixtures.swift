import StrataCore
import StrataFormats
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
    static let modelNames = ["opt-tiny", "opt-postln-proj", "llama-gqa", "llama3-tied"]
    static let tokenizerNames = ["gpt2-bpe", "gpt2-files", "llama3-bpe", "sentencepiece-bpe", "metaspace-bpe"]

    /// A fresh empty directory for a test.
    static func scratch(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.path + "/strata-tests-\(name)-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    struct ModelReference {
        let promptIds: [[Int]]
        let prompts: [String]
        let padTokenId: Int
        let eosTokenId: Int
        let maxNewTokens: Int
        let batchedGreedy: [[Int]]
        let singleGreedy: [[Int]]
        let lastLogits: [Float]
    }

    static func reference(_ name: String) throws -> ModelReference {
        let dir = model(name)
        let j = try JSONValue.load(path: dir + "/reference.json")
        func ints(_ v: JSONValue?) -> [[Int]] { (v?.array ?? []).map { ($0.array ?? []).compactMap(\.int) } }
        let logits = try SafeTensorsFile(path: dir + "/reference_logits.safetensors").tensor("last_logits")!.floats()
        return ModelReference(
            promptIds: ints(j["prompt_ids"]), prompts: (j["prompts"]?.array ?? []).compactMap(\.string),
            padTokenId: j["pad_token_id"]!.int!, eosTokenId: j["eos_token_id"]!.int!, maxNewTokens: j["max_new_tokens"]!.int!,
            batchedGreedy: ints(j["batched_greedy"]), singleGreedy: ints(j["single_greedy"]), lastLogits: logits)
    }
}
