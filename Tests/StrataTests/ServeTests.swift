import Foundation
import StrataBackend
import StrataCore
import StrataModels
import StrataRuntime
@testable import StrataServe
import Synchronization
import Testing

/// The continuous-batching scheduler: sequences that join and leave a running batch get
/// exactly the tokens they get alone.
@Suite struct ServeTests {
    /// Runs sequences through a scheduler and returns each one's gathered output.
    static func serve(_ engine: any BatchEngine, bundle: ModelBundle, _ sequences: [(ids: [Int], parameters: SequenceParameters)],
                      maxPrefillTokens: Int = 1) async throws -> [SequenceOutput] {
        let scheduler = Scheduler(engine: engine, bundle: bundle, maxPrefillTokens: maxPrefillTokens, metrics: ServerMetrics())
        scheduler.start()
        defer { scheduler.shutdown() }
        let service = OpenAIService(scheduler: scheduler, modelName: "test")
        return try await service.collect(sequences)
    }

    static func greedy(_ maxTokens: Int) -> SequenceParameters { SequenceParameters(maxTokens: maxTokens) }

    /// Two slots, eight sequences: sequences join mid-run, the last slot moves into a freed
    /// one, the timeline shifts right for long prompts and compacts when it reaches the cache's
    /// end. With a prefill budget of 5 tokens per boundary the longer prompts are prefilled in
    /// chunks while others decode; with 64 newcomers are prefilled together. Tokens must equal
    /// transformers' one-by-one greedy output.
    @Test(arguments: ["opt-tiny", "opt-postln-proj", "llama-gqa", "llama3-tied"], [5, 64])
    func continuousBatchingMatchesTransformers(model name: String, prefillBudget: Int) async throws {
        let reference = try Fixtures.reference(name)
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend(threads: 2))
        let longest = reference.promptIds.map(\.count).max()! + reference.maxNewTokens
        let engine = SlotBatch(model: bundle.model, slots: 2, context: longest)
        let order = [0, 1, 2, 3, 3, 2, 1, 0]
        let outputs = try await Self.serve(engine, bundle: bundle, order.map { (reference.promptIds[$0], Self.greedy(reference.maxNewTokens)) },
                                           maxPrefillTokens: prefillBudget)
        for (k, i) in order.enumerated() {
            #expect(outputs[k].tokens == reference.singleGreedy[i], "sequence \(k) (prompt \(i)) of \(name)")
        }
        #expect(engine.occupied == 0)
    }

    /// A 4-bit KV cache moves between slots and positions as packed groups: the scheduler's
    /// output equals the plain generator's with the same compressed cache.
    @Test func compressedCacheSlotsMatchTheGenerator() async throws {
        let name = "llama-gqa"
        let reference = try Fixtures.reference(name)
        let scheme = try QuantizationScheme(bits: 4, groupSize: 8)
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend(threads: 2), compression: Compression(cache: scheme))
        var timing = GenerationTiming()
        let alone = try reference.promptIds.map {
            try Generator(bundle: bundle).generate([GenerationRequest(promptIds: $0, maxNewTokens: 16)], sampling: SamplingParameters(),
                                                   ignoreEOS: true, timing: &timing)[0].tokenIds
        }
        var parameters = Self.greedy(16)
        parameters.ignoreEOS = true
        let engine = SlotBatch(model: bundle.model, slots: 3, context: 40)
        let order = [2, 0, 1, 3, 2, 0]
        let outputs = try await Self.serve(engine, bundle: bundle, order.map { (reference.promptIds[$0], parameters) })
        for (k, i) in order.enumerated() { #expect(outputs[k].tokens == alone[i], "sequence \(k) (prompt \(i))") }
    }

    /// Under an offloading policy (weights and cache split over device, host and disk) sequences
    /// run in the policy's blocks and still get transformers' tokens.
    @Test func blockEngineUnderAPolicyMatchesTransformers() async throws {
        let name = "opt-tiny"
        let reference = try Fixtures.reference(name)
        let policy = Policy(gpuBatchSize: 2, numGPUBatches: 1, weights: TierSplit(device: 30, host: 40),
                            cache: TierSplit(device: 50, host: 50), activations: TierSplit(device: 100, host: 0))
        let offload = try OffloadEngine(directory: Fixtures.model(name), policy: policy, budgets: TierBudgets(),
                                        offloadDirectory: Fixtures.scratch("serve-offload"), threads: 2, promptLength: 32, capacity: 64)
        let bundle = try ModelBundle(directory: Fixtures.model(name), model: offload.model)
        let order = [0, 1, 2, 3, 1]
        let outputs = try await Self.serve(BlockEngine(engine: offload, context: 64), bundle: bundle,
                                           order.map { (reference.promptIds[$0], Self.greedy(reference.maxNewTokens)) }, maxPrefillTokens: 512)
        for (k, i) in order.enumerated() { #expect(outputs[k].tokens == reference.singleGreedy[i], "sequence \(k) (prompt \(i))") }
    }

    /// Per-sequence stopping: stop token ids, min_tokens holding EOS back, a stop string cut
    /// from the text, max_tokens 0 with echo (prompt logprobs only).
    @Test func perSequenceStopping() async throws {
        let bundle = try ModelBundle(directory: Fixtures.model("opt-licenses"), backend: CPUBackend(threads: 2))
        let ids = bundle.tokenizer.encode("The license")
        let engine = SlotBatch(model: bundle.model, slots: 4, context: 64)
        let free = try await Self.serve(engine, bundle: bundle, [(ids, Self.greedy(12))])[0]
        #expect(free.tokens.count == 12 && free.finish == .length)

        var byToken = Self.greedy(12)
        byToken.stopTokenIds = [free.tokens[3]]
        var minimum = Self.greedy(12)
        minimum.minTokens = 5
        minimum.stopTokenIds = [free.tokens[2]]
        let text = bundle.tokenizer.decode(free.tokens)
        let stop = String(text.split(separator: " ")[2])
        var byString = Self.greedy(12)
        byString.stopStrings = [stop]
        var echo = Self.greedy(0)
        echo.promptLogprobs = true
        echo.logprobs = 2
        let out = try await Self.serve(engine, bundle: bundle, [(ids, byToken), (ids, minimum), (ids, byString), (ids, echo)], maxPrefillTokens: 64)
        #expect(out[0].tokens == Array(free.tokens.prefix(4)) && out[0].finish == .stop)
        // min_tokens masks the stop id for the first five tokens, so the output departs from
        // the free run where the stop token would have been.
        #expect(out[1].tokens.count >= 5 && !out[1].tokens.prefix(5).contains(free.tokens[2]))
        #expect(out[2].finish == .stop && out[2].stoppedText.map { !$0.contains(stop) && text.hasPrefix($0) } == true)
        #expect(out[3].tokens.isEmpty && out[3].promptLogprobs.count == ids.count && out[3].promptLogprobs[0] == nil)
        #expect(out[3].promptLogprobs.dropFirst().allSatisfy { ($0?.top.count ?? 0) == 2 && $0!.logprob <= 0 })
    }

    static func service(_ name: String, slots: Int = 4, context: Int = 64, prefillBudget: Int = 512, maxWaiting: Int = 4096) throws -> OpenAIService {
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend(threads: 2))
        let scheduler = Scheduler(engine: SlotBatch(model: bundle.model, slots: slots, context: context), bundle: bundle,
                                  maxPrefillTokens: prefillBudget, maxWaiting: maxWaiting, metrics: ServerMetrics())
        scheduler.start()
        return OpenAIService(scheduler: scheduler, modelName: name)
    }

    static func body(_ text: String) throws -> JSONValue { try JSONValue.parse(Data(text.utf8), path: "test body") }

    /// `echo: true, logprobs: 2` (as lm-evaluation-harness and HELM score text): every prompt
    /// token's logprob equals transformers' log_softmax within 1e-4, the first is null, and
    /// each position's top alternatives hold transformers' most likely token; also when the
    /// prompts are prefilled in chunks of 4 tokens.
    @Test(arguments: ["opt-tiny", "opt-postln-proj", "llama-gqa", "llama3-tied"], [4, 512])
    func echoLogprobsMatchTransformers(model name: String, prefillBudget: Int) async throws {
        let reference = try JSONValue.load(path: Fixtures.model(name) + "/echo_logprobs.json")
        let service = try Self.service(name, prefillBudget: prefillBudget)
        defer { service.scheduler.shutdown() }
        let prompts = reference["prompt_ids"]!.array!
        let prompt = JSONValue.array(prompts).serialized()
        for maxTokens in [0, 1] {
            let response = try await service.completions(try Self.body(
                #"{"prompt": \#(prompt), "echo": true, "max_tokens": \#(maxTokens), "logprobs": 2, "temperature": 0}"#))
            let choices = response["choices"]!.array!
            #expect(choices.count == prompts.count)
            for (i, choice) in choices.enumerated() {
                let expected = reference["token_logprobs"]!.array![i].array!
                let top2 = reference["top2_ids"]!.array![i].array!
                let logprobs = choice["logprobs"]!
                let got = logprobs["token_logprobs"]!.array!
                #expect(got.count == expected.count + maxTokens)
                #expect(got[0].isNull)
                for t in 1..<expected.count {
                    let error = abs(got[t].double! - expected[t].double!)
                    #expect(error <= 1e-4, "\(name) prompt \(i) token \(t): |strata - transformers| = \(error)")
                    let best = service.tokenText(top2[t].array![0].int!)
                    #expect(logprobs["top_logprobs"]!.array![t][best] != nil, "\(name) prompt \(i) token \(t): top alternatives miss \(best)")
                }
            }
        }
    }

    /// Bad requests get OpenAI error objects with the right status, naming the field; the
    /// service keeps answering good requests afterwards.
    @Test func badRequestsNameTheField() async throws {
        let service = try Self.service("opt-tiny", context: 32, maxWaiting: 4)
        defer { service.scheduler.shutdown() }
        let cases: [(String, Int, String?, String)] = [
            (#"{"prompt": "hi", "model": "gpt-9"}"#, 404, "model", "gpt-9"),
            (#"{"prompt": "hi", "max_tokens": 40}"#, 400, "max_tokens", "32"),
            (#"{"prompt": "hi", "temperature": -1}"#, 400, "temperature", "temperature"),
            (#"{"prompt": "hi", "top_p": 0}"#, 400, "top_p", "top_p"),
            (#"{"prompt": "hi", "max_tokens": "ten"}"#, 400, "max_tokens", "integer"),
            (#"{"prompt": [1, 2, 99999]}"#, 400, "prompt", "99999"),
            (#"{"prompt": []}"#, 400, "prompt", "prompt"),
            (#"{"max_tokens": 3}"#, 400, "prompt", "required"),
            (#"{"prompt": "hi", "n": 0}"#, 400, "n", "n"),
            (#"{"prompt": "hi", "stop": 7}"#, 400, "stop", "stop"),
            (#"{"prompt": "hi", "max_tokens": 0}"#, 400, "max_tokens", "echo"),
            (#"{"prompt": "hi", "min_tokens": 9, "max_tokens": 4}"#, 400, "min_tokens", "min_tokens"),
            (#"[1, 2]"#, 400, nil, "object"),
            (#"{"prompt": "hi", "n": 5}"#, 503, nil, "--max-waiting"),
        ]
        for (text, status, param, fragment) in cases {
            let body = try Self.body(text)
            do {
                _ = try await service.completions(body)
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.status == status, "\(text): \(error)")
                #expect(error.param == param, "\(text): \(error)")
                #expect(error.message.contains(fragment), "\(text): \(error.message)")
                #expect(error.body["error"]?["type"]?.string != nil && error.body["error"]?["message"]?.string != nil)
            }
        }
        let wizard = try Self.body(#"{"messages": [{"role": "wizard", "content": "hi"}]}"#)
        do {
            _ = try await service.chat(wizard)
            Issue.record("accepted a wizard")
        } catch {
            #expect(error.status == 400 && error.param == "messages" && error.message.contains("wizard"))
        }
        let ok = try await service.completions(try Self.body(#"{"prompt": "hi", "max_tokens": 3, "temperature": 0}"#))
        #expect(ok["usage"]?["completion_tokens"]?.int == 3)
    }

    /// Streamed chunks of every choice (two prompts, n = 2, echo, logprobs, a stop string) add
    /// up to the non-streamed answer: same text per choice, the stop string held back, one
    /// finish reason each, a usage chunk, then [DONE].
    @Test func streamedChoicesAddUpToTheAnswer() async throws {
        let service = try Self.service("opt-licenses", slots: 3, context: 64)
        defer { service.scheduler.shutdown() }
        let whole = try await service.completions(try Self.body(#"{"prompt": ["The license", "Permission"], "max_tokens": 12, "temperature": 0}"#))
        let texts = whole["choices"]!.array!.map { $0["text"]!.string! }
        let stop = String(texts[0].split(separator: " ")[2])
        let fields = #""max_tokens": 12, "temperature": 0, "n": 2, "echo": true, "logprobs": 1, "stop": "\#(stop)""#
        let expected = try await service.completions(try Self.body(#"{"prompt": ["The license", "Permission"], \#(fields)}"#))
        let (payloads, _) = try service.completionStream(try Self.body(
            #"{"prompt": ["The license", "Permission"], \#(fields), "stream": true, "stream_options": {"include_usage": true}}"#))
        var streamed = [String](repeating: "", count: 4), finishes = [String?](repeating: nil, count: 4)
        var all: [String] = []
        for await p in payloads { all.append(p) }
        #expect(all.last == "[DONE]")
        let usage = try JSONValue.parse(Data(all[all.count - 2].utf8), path: "usage chunk")
        #expect(usage["usage"]?["completion_tokens"]?.int == expected["usage"]?["completion_tokens"]?.int)
        for p in all.dropLast(2) {
            let choice = try JSONValue.parse(Data(p.utf8), path: "chunk")["choices"]!.array![0]
            let i = choice["index"]!.int!
            streamed[i] += choice["text"]!.string!
            if let f = choice["finish_reason"]?.string { #expect(finishes[i] == nil); finishes[i] = f }
        }
        for (i, choice) in expected["choices"]!.array!.enumerated() {
            #expect(streamed[i] == choice["text"]!.string!, "choice \(i)")
            #expect(finishes[i] == choice["finish_reason"]!.string!, "choice \(i)")
        }
        #expect(!streamed[0].contains(stop) && finishes[0] == "stop")
    }

    /// A prompt longer than the prefill budget goes in chunks between decode steps: the running
    /// sequence keeps getting a token per boundary instead of waiting for the whole prefill.
    @Test func longPromptsDoNotStallRunningSequences() async throws {
        let reference = try Fixtures.reference("opt-tiny")
        let bundle = try ModelBundle(directory: Fixtures.model("opt-tiny"), backend: CPUBackend(threads: 2))
        let scheduler = Scheduler(engine: SlotBatch(model: bundle.model, slots: 2, context: 100), bundle: bundle, maxPrefillTokens: 4,
                                  metrics: ServerMetrics())
        scheduler.start()
        defer { scheduler.shutdown() }
        let service = OpenAIService(scheduler: scheduler, modelName: "t")
        let long = Array((reference.promptIds[2] + reference.promptIds[3] + reference.promptIds[0]).prefix(40))
        var running = Self.greedy(30)
        running.ignoreEOS = true
        let (events, _) = try service.submit([(reference.promptIds[1], running), (long, Self.greedy(4))])
        var order: [Int] = []
        for await (i, event) in events { if case .token = event { order.append(i) } }
        let beforeLong = order.prefix { $0 == 0 }.count
        // 40 prompt tokens at 4 per boundary: 10 boundaries, each with a decode step of the running sequence.
        #expect(beforeLong >= 9, "the running sequence got \(beforeLong) tokens before the long prompt's first")
        #expect(order.filter { $0 == 0 }.count == 30 && order.filter { $0 == 1 }.count >= 1)
    }

    @Test func streamedTextHoldsBackPossibleStopStrings() {
        #expect(StopStrings.safePrefix("hello wor", ["world"]) == 6)
        #expect(StopStrings.safePrefix("hello", ["xyz"]) == 5)
        #expect(StopStrings.safePrefix("abc\u{FFFD}", []) == 3)
        #expect(StopStrings.match("one. two. three", [". t", "three"]) == "one")
    }
}
