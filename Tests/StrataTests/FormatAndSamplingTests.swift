import StrataBackend
import StrataCore
import StrataFormats
import StrataRuntime
import Testing

@Suite struct FormatAndSamplingTests {
    @Test func safetensorsRoundTripInAllDtypes() throws {
        let path = Fixtures.scratch("roundtrip") + "/t.safetensors"
        let values: [Float] = [1.5, -2.25, 0.0078125, 65504]
        let f16 = values.flatMap { v -> [UInt8] in let b = Float16(v).bitPattern; return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        let bf16 = values.flatMap { v -> [UInt8] in let b = Precision.floatToBF16(v); return [UInt8(b & 0xFF), UInt8(b >> 8)] }
        try SafeTensorsWriter.write([
            .init(name: "a", shape: [2, 2], floats: values),
            .init(name: "b", dtype: .f16, shape: [4], data: f16),
            .init(name: "c", dtype: .bf16, shape: [1, 4], data: bf16),
        ], metadata: ["format": "pt"], to: path)
        let file = try SafeTensorsFile(path: path)
        #expect(file.tensorNames == ["a", "b", "c"])
        #expect(file.metadata["format"] == "pt")
        #expect(try #require(file.tensor("a")).floats() == values)
        #expect(try #require(file.tensor("b")).floats() == values)
        #expect(try #require(file.tensor("c")).shape == [1, 4])
        #expect(try #require(file.tensor("c")).floats() == [1.5, -2.25, 0.0078125, 65536])
    }

    @Test func shardedCheckpointResolvesEveryTensor() throws {
        let checkpoint = try Checkpoint(directory: Fixtures.model("opt-postln-proj"))
        #expect(checkpoint.tensorNames.count > 20)
        #expect(checkpoint.tensor("model.decoder.project_in.weight")?.shape == [64, 32])
    }

    @Test func seededSamplingIsReproducibleAndVaries() throws {
        let generator = Generator(bundle: try ModelBundle(directory: Fixtures.model("llama-gqa"), backend: CPUBackend()))
        let ids = try generator.bundle.encodePrompt("You may")
        func run(seed: UInt64, batch: Int) throws -> [Int] {
            var timing = GenerationTiming()
            let requests = (0..<batch).map { GenerationRequest(promptIds: ids, maxNewTokens: 12, sampleIndex: UInt64($0)) }
            return try generator.generate(requests, sampling: SamplingParameters(temperature: 1.0, topK: 50, topP: 0.95, seed: seed), timing: &timing)[0].tokenIds
        }
        #expect(try run(seed: 7, batch: 1) == run(seed: 7, batch: 1))
        // Row 0's draw does not depend on the batch it is in.
        #expect(try run(seed: 7, batch: 1) == run(seed: 7, batch: 3))
        #expect(try run(seed: 7, batch: 1) != run(seed: 8, batch: 1))
    }

    @Test func topKOneIsGreedy() {
        var rng = SeededGenerator(seed: 1)
        let logits: [Float] = [0.1, 3, 2.9, -1]
        logits.withUnsafeBufferPointer { p in
            for _ in 0..<20 { #expect(Sampler.sample(p, SamplingParameters(temperature: 2, topK: 1, seed: 1), rng: &rng) == 1) }
        }
    }

    @Test func stopStringEndsTheRowAndCutsTheText() throws {
        let bundle = try ModelBundle(directory: Fixtures.model("opt-tiny"), backend: CPUBackend())
        let generator = Generator(bundle: bundle)
        let ids = try bundle.encodePrompt("You may")
        var timing = GenerationTiming()
        let free = try generator.generate([GenerationRequest(promptIds: ids, maxNewTokens: 24)], sampling: .init(), timing: &timing)[0]
        // Stop on a piece of text the model is known to produce.
        let stop = String(free.text.dropFirst(8).prefix(4))
        let r = try generator.generate([GenerationRequest(promptIds: ids, maxNewTokens: 24, stopStrings: [stop])], sampling: .init(), timing: &timing)[0]
        #expect(r.finishReason == .stop)
        #expect(!r.text.contains(stop))
        #expect(free.text.hasPrefix(r.text))
        #expect(r.tokenIds.count < free.tokenIds.count)
    }

    @Test func unknownModelTypeConfigError() {
        #expect(throws: StrataError.unsupportedArchitecture(modelType: "gpt_neox", supported: ModelConfig.supportedModelTypes)) {
            _ = try ModelConfig(json: .object(["model_type": .string("gpt_neox")]), path: "config.json")
        }
    }
}
