import Dispatch
import StrataBackend
import StrataCore
import StrataDistributed
import StrataModels
import StrataRuntime
import Synchronization
import Testing

/// The pipeline's logic with ranks as threads of this process (`LocalTransport`): each rank
/// loads only its layers; tokens must equal `Generator`'s and every logit row the resident
/// model's within 1e-5. The same code runs over MPI in ClusterRunTests.
@Suite struct PipelineTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var model: String
        var stages: [Int]
        var eta: Int
        var xi: Int
        var bits: [Int: Int]?
        /// Rank -> FlexGen percentages (weights, cache, activations on device / host; the rest on
        /// disk), gpu batch size and number of gpu batches: that rank runs under an offloading policy.
        var policies: [Int: ([Double], Int, Int)] = [:]
        var testDescription: String {
            "\(model) stages \(stages) eta \(eta) xi \(xi) bits \(bits.map { "\($0.sorted { $0.key < $1.key })" } ?? "f32")"
                + (policies.isEmpty ? "" : " policies \(policies.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" })")
        }
    }

    static let cases: [Case] = [
        Case(model: "opt-tiny", stages: [1, 1], eta: 3, xi: 2, bits: nil),
        Case(model: "llama-gqa", stages: [1, 1], eta: 2, xi: 5, bits: nil),
        Case(model: "opt-licenses", stages: [2, 1, 1], eta: 2, xi: 3, bits: [0: 4, 1: 16, 2: 8, 3: 3]),
        Case(model: "llama3-tied", stages: [2], eta: 4, xi: 1, bits: [0: 8, 1: 4]),
        // Ranks under offloading policies of their own: weights split over device, host and
        // disk, KV cache and activations partly on host and disk, blocks of 2 gpu batches of 3.
        Case(model: "opt-licenses", stages: [1, 3], eta: 3, xi: 6, bits: [1: 4], policies: [1: ([20, 40, 50, 30, 60, 20], 3, 2)]),
        Case(model: "llama-gqa", stages: [1, 1], eta: 6, xi: 3, bits: nil,
             policies: [0: ([100, 0, 100, 0, 100, 0], 3, 2), 1: ([0, 50, 0, 100, 30, 30], 3, 2)]),
    ]

    static let prompts = ["Hello there", "The license grants", "a", "Permission is hereby granted, free of charge, to any person",
                          "THE SOFTWARE IS PROVIDED"]

    @Test(arguments: cases) func pipelineMatchesTheResidentModel(_ c: Case) throws {
        let dir = Fixtures.model(c.model)
        let compression = Compression(weights: c.bits.map { PrecisionMap(bits: $0) })
        let resident = try ModelBundle(directory: dir, backend: CPUBackend(threads: 1), compression: compression)
        // A policy's block is the batch: 6 rows (the 5 prompts and one more).
        let prompts = c.policies.isEmpty ? Self.prompts : Self.prompts + ["Redistribution and use"]
        let requests = try prompts.enumerated().map { i, p in
            GenerationRequest(promptIds: try resident.encodePrompt(p), maxNewTokens: 3 + i, stopStrings: [], sampleIndex: UInt64(i))
        }
        let sampling = SamplingParameters()
        var timing = GenerationTiming()
        let expected = try Generator(bundle: resident).generate(requests, sampling: sampling, timing: &timing)
        let reference = try Self.referenceLogits(resident, requests, steps: expected.map(\.tokenIds))

        var stages: [Range<Int>] = []
        var next = 0
        for n in c.stages { stages.append(next..<(next + n)); next += n }
        let layout = PipelineLayout(stages: stages, prefillMicroBatch: c.eta, decodeMicroBatch: c.xi,
                                    blockRows: c.policies.isEmpty ? nil : requests.count)
        let offload = Fixtures.scratch("pipeline-offload")
        let transports = LocalTransport.world(size: c.stages.count)
        let observed = Mutex<[Int: [[Float]]]>([:])   // row -> logits per step
        let outcome = Mutex<Result<[GenerationResult], any Error>?>(nil)
        let group = DispatchGroup()
        for (r, transport) in transports.enumerated() {
            let stageRange = stages[r]
            let t = transport
            DispatchQueue.global().async(group: group) {
                do {
                    let share = ModelShare(layers: stageRange, embedding: r == 0, head: r == 0)
                    var engine: OffloadEngine?
                    let bundle: ModelBundle
                    if let (percent, gbs, nb) = c.policies[r] {
                        engine = try OffloadEngine(directory: dir, policy: Policy(percent: percent, gpuBatchSize: gbs, numGPUBatches: nb),
                                                   budgets: TierBudgets(), offloadDirectory: offload + "/rank-\(r)", threads: 1,
                                                   precision: compression.weights, promptLength: 64, capacity: 64, share: share)
                        bundle = try ModelBundle(directory: dir, model: engine!.model)
                    } else {
                        bundle = try ModelBundle(directory: dir, backend: CPUBackend(threads: 1), compression: compression, share: share)
                    }
                    let stage = try PipelineStage(transport: t, bundle: bundle, layout: layout, sampling: sampling, engine: engine)
                    stage.logitsObserver = { rows, _, logits in
                        let vocab = logits.count / rows.count
                        observed.withLock { seen in
                            for (i, b) in rows.enumerated() { seen[b, default: []].append(Array(logits[(i * vocab)..<((i + 1) * vocab)])) }
                        }
                    }
                    if r == 0 {
                        var timing = GenerationTiming()
                        let results = try stage.generate(requests, timing: &timing)
                        _ = try stage.shutdown()
                        outcome.withLock { $0 = .success(results) }
                    } else {
                        try stage.serve()
                    }
                } catch {
                    outcome.withLock { $0 = .failure(error) }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success, "pipeline did not finish")
        let results = try #require(outcome.withLock { $0 }).get()
        #expect(results.map(\.tokenIds) == expected.map(\.tokenIds))
        #expect(results.map(\.text) == expected.map(\.text))
        #expect(results.map(\.finishReason) == expected.map(\.finishReason))
        let seen = observed.withLock { $0 }
        for (b, steps) in reference.enumerated() {
            // A finished row rides along in its micro-batch; only its own steps are compared.
            let got = try #require(seen[b])
            #expect(got.count >= steps.count)
            for (s, want) in steps.enumerated() {
                // 1e-5 of the row's scale (at least 1): micro-batches are GEMMs of fewer rows,
                // whose kernels may sum in another order than the full batch's.
                let scale = max(1, want.map { abs($0) }.max()!)
                let diff = zip(got[s], want).map { abs($0 - $1) }.max()!
                #expect(diff <= 1e-5 * scale, "row \(b) step \(s): max |logit difference| \(diff), row scale \(scale)")
            }
        }
    }

    /// The resident model's logits of each row at each of its steps, feeding the tokens
    /// `steps` gives (a full-batch forward, as `generate` runs it).
    static func referenceLogits(_ bundle: ModelBundle, _ requests: [GenerationRequest], steps: [[Int]]) throws -> [[[Float]]] {
        let model = bundle.model
        let batch = requests.count
        let promptLength = requests.map(\.promptIds.count).max()!
        let padding = requests.map { promptLength - $0.promptIds.count }
        var tokens = [Int32](repeating: Int32(bundle.padTokenId), count: batch * promptLength)
        for (b, r) in requests.enumerated() {
            for (t, id) in r.promptIds.enumerated() { tokens[b * promptLength + padding[b] + t] = Int32(id) }
        }
        let longest = steps.map(\.count).max()!
        let cache = model.makeCache(batch: batch, capacity: promptLength + longest)
        var step = ForwardStep(tokens: tokens, batch: batch, length: promptLength, pastLength: 0, padding: padding)
        var out = [[[Float]]](repeating: [], count: batch)
        for s in 0..<longest {
            let logits = model.backend.download(model.forward(step, cache: cache))
            let vocab = logits.count / batch
            for b in 0..<batch where s < steps[b].count { out[b].append(Array(logits[(b * vocab)..<((b + 1) * vocab)])) }
            let next = (0..<batch).map { Int32(s < steps[$0].count ? steps[$0][s] : bundle.padTokenId) }
            step = ForwardStep(tokens: next, batch: batch, length: 1, pastLength: step.pastLength + step.length, padding: padding)
        }
        return out
    }
}

/// Reading `strata cluster plan --json` output into what `cluster run` executes.
@Suite struct StagePlanTests {
    @Test func readsAMethodsStagesBitsAndBudgets() throws {
        let path = Fixtures.scratch("stage-plan") + "/plan.json"
        try #"{"methods": {"llm-pq": {"eta": 2, "xi": 4, "global_batch": 8, "prompt_length": 32, "gen_length": 16, "stages": [{"layers": [0, 3], "bits": [16, 8, 4], "memory_capacity_bytes": 1048576}, {"layers": [3, 3], "bits": []}, {"layers": [3, 5], "bits": [16, 16]}]}, "uniform": {"infeasible": true}}}"#
            .write(toFile: path, atomically: true, encoding: .utf8)
        let plan = try StagePlan.load(path: path, method: "llm-pq")
        // The device left without layers gets no rank.
        #expect(plan.layout.stages == [0..<3, 3..<5])
        #expect(plan.layout.prefillMicroBatch == 2 && plan.layout.decodeMicroBatch == 4)
        #expect(plan.precision?.bits == [0: 16, 1: 8, 2: 4, 3: 16, 4: 16])
        #expect(plan.budgets == [1_048_576, nil])
        #expect(plan.globalBatch == 8 && plan.promptLength == 32 && plan.genLength == 16)
        #expect(plan.share(rank: 0) == ModelShare(layers: 0..<3, embedding: true, head: true))
        #expect(plan.share(rank: 1) == ModelShare(layers: 3..<5, embedding: false, head: false))
        expectError(["'methods.uniform.infeasible'"]) { _ = try StagePlan.load(path: path, method: "uniform") }
        #expect(try StagePlan.stages("2, 1,3") == [0..<2, 2..<3, 3..<6])
        expectError(["--stages", "'0'"]) { _ = try StagePlan.stages("2,0") }
    }
}
