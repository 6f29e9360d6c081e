import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// SmolLM2-135M-Instruct, a real Llama-architecture instruct model, loaded straight from its
/// Q4_1 GGUF against transformers on the same file (`gguf_file=`, fp32; references made by
/// scripts/make_gguf_fixtures.py). The file is fetched by scripts/test.sh; a bare `swift test`
/// without it skips these and says why.
@Suite(.enabled(if: Fixtures.smolLM2 != nil, "SmolLM2 GGUF not in the cache: run scripts/fetch_smollm2.sh (scripts/test.sh does)"),
       .serialized)
struct RealModelTests {
    // The issue asks for 1e-3; measured 7.7e-5 at most over 30 layers (Intel Xeon, OpenBLAS).
    static let logitTolerance: Float = 2.5e-4
    static let perplexityTolerance = 0.001  // relative

    let reference: JSONValue
    let bundle: ModelBundle

    init() throws {
        reference = try JSONValue.load(path: Fixtures.root + "/real/smollm2-135m-instruct.json")
        bundle = try ModelBundle(directory: Fixtures.smolLM2!, backend: CPUBackend(threads: 2))
    }

    func ids(_ v: JSONValue?) -> [[Int]] { (v?.array ?? []).map { ($0.array ?? []).compactMap(\.int) } }

    @Test func weightsStayQ4() throws {
        let config = bundle.model.config
        #expect(config.numLayers == 30 && config.hiddenSize == 576 && config.numKVHeads == 3 && config.vocabSize == 49152)
        #expect(config.storedPrecision?.bits == Dictionary(uniqueKeysWithValues: (0..<30).map { ($0, 4) }))
        #expect(bundle.eosTokenIds == [2])
    }

    @Test func lastPositionLogitsMatchTransformers() throws {
        let expected = try SafeTensorsFile(path: Fixtures.root + "/real/smollm2-135m-instruct.safetensors").tensor("last_logits")!.floats()
        let prompts = (reference["logit_prompts"]?.array ?? []).compactMap(\.string)
        #expect(prompts.count == 4)
        let vocab = bundle.model.config.vocabSize
        for (i, prompt) in prompts.enumerated() {
            let ids = bundle.tokenizer.encode(prompt)
            #expect(ids == self.ids(reference["logit_prompt_ids"])[i])
            let model = bundle.model
            let step = ForwardStep(tokens: ids.map(Int32.init), batch: 1, length: ids.count, pastLength: 0, padding: [0])
            let logits = model.backend.download(model.forward(step, cache: model.makeCache(batch: 1, capacity: ids.count)))
            let want = expected[(i * vocab)..<((i + 1) * vocab)]
            let maxError = zip(logits, want).map { abs($0 - $1) }.max() ?? .infinity
            #expect(maxError <= Self.logitTolerance, "prompt \(i): max |strata - transformers| = \(maxError)")
        }
    }

    /// A batch of chat prompts (left-padded together) generates transformers' one-by-one
    /// greedy tokens, 48 at most, stopping at <|im_end|>.
    @Test func greedyChatGenerationsMatch() throws {
        let prompts = ids(reference["rendered_ids"])
        let rendered = (reference["rendered"]?.array ?? []).compactMap(\.string)
        // The file's own chat template, rendered by Strata, gives jinja2's text and ids.
        let chats = (reference["chats"]?.array ?? []).map { $0.array ?? [] }
        #expect(chats.count == 4)
        #expect(try chats.map { try bundle.renderChat($0) } == rendered)
        #expect(try chats.map { try bundle.encodeChat($0).ids } == prompts)
        let generator = Generator(bundle: bundle)
        var timing = GenerationTiming()
        let requests = prompts.map { GenerationRequest(promptIds: $0, maxNewTokens: reference["max_new_tokens"]!.int!) }
        let results = try generator.generate(requests, sampling: SamplingParameters(), timing: &timing)
        #expect(results.map(\.tokenIds) == ids(reference["greedy"]))
        #expect(results[0].text == "The capital of France is Paris.")
    }

    @Test func tokenizerMatchesTransformersOnTrickyStrings() throws {
        let cases = reference["tokenizer"]?.array ?? []
        #expect(cases.count > 30)
        for c in cases {
            let text = c["text"]!.string!
            #expect(bundle.tokenizer.encode(text) == c["ids"]!.array!.compactMap(\.int), "\(text.debugDescription)")
        }
    }

    @Test func perplexityMatchesTransformers() throws {
        let ref = reference["perplexity"]!
        let text = try String(contentsOfFile: Fixtures.root + "/text/heldout.txt", encoding: .utf8)
        let result = try Perplexity.evaluate(bundle: bundle, text: text, window: ref["window"]!.int!)
        #expect(result.windows == ref["windows"]!.int!)
        #expect(result.tokensScored == ref["tokens"]!.int!)
        let relative = abs(result.perplexity / ref["value"]!.double! - 1)
        #expect(relative < Self.perplexityTolerance, "strata \(result.perplexity) vs transformers \(ref["value"]!.double!)")
    }
}
