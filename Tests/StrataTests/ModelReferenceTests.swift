import StrataBackend
import StrataModels
import StrataRuntime
import Testing

/// Strata against transformers on the fixture models: logits of a left-padded batch within
/// 1e-4 (max abs) and greedy generations token for token.
@Suite struct ModelReferenceTests {
    static let logitTolerance: Float = 1e-4

    /// Last-position logits of the reference prompts as one left-padded prefill, beside the
    /// transformers reference they are compared with.
    static func prefillLogits(_ name: String, weights: CPUBackend.WeightFormat) throws -> (logits: [Float], reference: FixtureReference) {
        let reference = try Fixtures.reference(name)
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend(threads: 2, weightFormat: weights))
        return (FixtureCheck.prefillLogits(bundle, reference), reference)
    }

    @Test(arguments: Fixtures.modelNames, [CPUBackend.WeightFormat.f32, .asStored])
    func lastPositionLogitsMatchTransformers(model name: String, weights: CPUBackend.WeightFormat) throws {
        let (logits, reference) = try Self.prefillLogits(name, weights: weights)
        #expect(logits.count == reference.lastLogits.count)
        let maxError = zip(logits, reference.lastLogits).map { abs($0 - $1) }.max() ?? .infinity
        #expect(maxError <= Self.logitTolerance, "max |strata - transformers| = \(maxError) for \(name)")
    }

    @Test(arguments: Fixtures.modelNames)
    func greedyGenerationMatchesTransformers(model name: String) throws {
        let reference = try Fixtures.reference(name)
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend(threads: 2))
        let generator = Generator(bundle: bundle)
        var timing = GenerationTiming()
        let requests = reference.promptIds.map { GenerationRequest(promptIds: $0, maxNewTokens: reference.maxNewTokens) }
        let batched = try generator.generate(requests, sampling: SamplingParameters(), timing: &timing)
        #expect(batched.map(\.tokenIds) == reference.batchedGreedy)
        for (i, r) in requests.enumerated() {
            let single = try generator.generate([r], sampling: SamplingParameters(), timing: &timing)
            #expect(single[0].tokenIds == reference.singleGreedy[i], "prompt \(i) of \(name) one by one")
        }
    }

    /// The library's fixture check (what `strata check-fixtures` runs on a GPU machine) passes on
    /// the CPU at the tests' own tolerance.
    @Test(arguments: Fixtures.modelNames)
    func fixtureCheckPassesOnTheCPU(model name: String) throws {
        let result = try FixtureCheck.run(model: Fixtures.model(name), backend: CPUBackend(threads: 2))
        #expect(result.maxLogitError <= Self.logitTolerance && result.batchedTokensMatch && result.singleTokensMatch, "\(result)")
    }

    @Test(arguments: Fixtures.modelNames)
    func promptsTokenizeAsTransformers(model name: String) throws {
        let reference = try Fixtures.reference(name)
        let bundle = try ModelBundle(directory: Fixtures.model(name), backend: CPUBackend())
        #expect(reference.prompts.map { bundle.tokenizer.encode($0) } == reference.promptIds)
    }
}
