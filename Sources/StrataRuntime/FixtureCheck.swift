import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// A fixture model's transformers reference (made by scripts/make_fixtures.py): prompts, their
/// ids, last-position logits of the left-padded batch, greedy tokens batched and one by one.
public struct FixtureReference: Sendable {
    public let promptIds: [[Int]]
    public let prompts: [String]
    public let padTokenId: Int
    public let eosTokenId: Int
    public let maxNewTokens: Int
    public let batchedGreedy: [[Int]]
    public let singleGreedy: [[Int]]
    public let lastLogits: [Float]

    /// Reads `reference.json` and `reference_logits.safetensors` from `directory`.
    public init(directory: String) throws {
        let j = try JSONValue.load(path: directory + "/reference.json")
        func ints(_ v: JSONValue?) -> [[Int]] { (v?.array ?? []).map { ($0.array ?? []).compactMap(\.int) } }
        func int(_ key: String) throws -> Int {
            guard let v = j[key]?.int else { throw StrataError.invalidRequest("\(directory)/reference.json: field '\(key)' is missing or not an integer") }
            return v
        }
        let logitsPath = directory + "/reference_logits.safetensors"
        guard let logits = try SafeTensorsFile(path: logitsPath).tensor("last_logits") else {
            throw StrataError.invalidRequest("\(logitsPath): no tensor 'last_logits'")
        }
        promptIds = ints(j["prompt_ids"])
        prompts = (j["prompts"]?.array ?? []).compactMap(\.string)
        padTokenId = try int("pad_token_id")
        eosTokenId = try int("eos_token_id")
        maxNewTokens = try int("max_new_tokens")
        batchedGreedy = ints(j["batched_greedy"])
        singleGreedy = ints(j["single_greedy"])
        lastLogits = logits.floats()
    }
}

/// A model on some backend against its transformers reference: the largest logit difference of
/// one left-padded prefill, and whether greedy generation (batched, and each prompt alone)
/// gives the reference's tokens. `strata check-fixtures` runs it on a GPU machine.
///
/// The criteria: f32 compute within 1e-4 and identical tokens. 16-bit compute (f16, or bf16 for
/// a bf16 checkpoint) rounds every GEMM input: within 2% of the largest |logit|, tokens reported
/// but not required. transformers' own fp16 run of opt-tiny is 0.0186 off its fp32 logits
/// (largest 7.08), so an absolute 2e-3 holds no 16-bit implementation, and a near-tied greedy
/// choice (opt-tiny's closest top-2 gap is 0.066) may flip.
public enum FixtureCheck {
    public struct Result: Sendable {
        public let model: String
        public let maxLogitError: Float
        /// The reference's largest |logit|: 16-bit compute is held to a share of it.
        public let referenceScale: Float
        public let batchedTokensMatch: Bool
        public let singleTokensMatch: Bool
    }

    /// Last-position logits of the reference prompts as one left-padded prefill.
    public static func prefillLogits(_ bundle: ModelBundle, _ reference: FixtureReference) -> [Float] {
        let model = bundle.model
        let batch = reference.promptIds.count
        let width = reference.promptIds.map(\.count).max() ?? 0
        let padding = reference.promptIds.map { width - $0.count }
        var tokens: [Int32] = []
        for (b, ids) in reference.promptIds.enumerated() {
            tokens += Array(repeating: Int32(reference.padTokenId), count: padding[b]) + ids.map(Int32.init)
        }
        let step = ForwardStep(tokens: tokens, batch: batch, length: width, pastLength: 0, padding: padding)
        return model.backend.download(model.forward(step, cache: model.makeCache(batch: batch, capacity: width)))
    }

    /// `model` is a model directory, or a GGUF file whose reference sits beside it.
    public static func run(model: String, backend: any Backend) throws -> Result {
        let directory = model.hasSuffix(".gguf") ? String(model[..<(model.lastIndex(of: "/") ?? model.startIndex)]) : model
        let reference = try FixtureReference(directory: directory)
        let bundle = try ModelBundle(directory: model, backend: backend)
        let logits = prefillLogits(bundle, reference)
        let error = logits.count == reference.lastLogits.count
            ? zip(logits, reference.lastLogits).map { abs($0 - $1) }.max() ?? 0 : .infinity
        let generator = Generator(bundle: bundle)
        var timing = GenerationTiming()
        let requests = reference.promptIds.map { GenerationRequest(promptIds: $0, maxNewTokens: reference.maxNewTokens) }
        let batched = try generator.generate(requests, sampling: SamplingParameters(), timing: &timing).map(\.tokenIds)
        var single: [[Int]] = []
        for r in requests { single += try generator.generate([r], sampling: SamplingParameters(), timing: &timing).map(\.tokenIds) }
        return Result(model: model, maxLogitError: error.isNaN ? .infinity : error, referenceScale: reference.lastLogits.map { abs($0) }.max() ?? 0,
                      batchedTokensMatch: batched == reference.batchedGreedy,
                      singleTokensMatch: single == reference.singleGreedy)
    }

    /// Whether `r` meets the criteria above; `tolerance` overrides the logit bound (absolute).
    public static func passes(_ r: Result, sixteenBit: Bool, tolerance: Float? = nil) -> Bool {
        r.maxLogitError <= bound(r, sixteenBit: sixteenBit, tolerance: tolerance) && (sixteenBit || (r.batchedTokensMatch && r.singleTokensMatch))
    }

    /// The logit bound the criteria above set for `r`.
    public static func bound(_ r: Result, sixteenBit: Bool, tolerance: Float? = nil) -> Float {
        tolerance ?? (sixteenBit ? 0.02 * r.referenceScale : 1e-4)
    }
}
