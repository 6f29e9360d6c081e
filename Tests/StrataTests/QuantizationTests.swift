import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
@testable import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct QuantizationTests {
    static func randoms(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<count).map { _ in Float.random(in: -scale...scale, using: &rng) }
    }

    @Test(arguments: [2, 3, 4, 8])
    func exactlyRepresentableValuesRoundTrip(bits: Int) throws {
        let scheme = try QuantizationScheme(bits: bits, groupSize: 16)
        let levels = (1 << bits) - 1
        // Each group spans min .. min + levels * 0.25 and holds only grid points.
        let values = (0..<64).map { i -> Float in
            let group = i / 16, j = i % 16
            let code = j == 0 ? 0 : (j == 1 ? levels : (j * 7 + group) % (levels + 1))
            return Float(group) - 2 + Float(code) * 0.25
        }
        let q = GroupQuantizer.quantize(values, shape: [4, 16], scheme: scheme)
        #expect(GroupQuantizer.dequantize(q) == values)
        #expect(q.data.count == 4 * 16 * bits / 8)
    }

    /// |x - decode(x)| <= step / 2 (+ f32 rounding), with odd shapes whose last group is padded,
    /// on either group axis and on a 3-D tensor.
    @Test(arguments: [2, 3, 4, 8])
    func errorIsAtMostHalfAStep(bits: Int) throws {
        for (shape, axis, groupSize) in [([7, 45], -1, 16), ([45, 7], 0, 16), ([3, 5, 33], 1, 8), ([2, 130], 1, 64)] {
            let scheme = try QuantizationScheme(bits: bits, groupSize: groupSize, groupAxis: axis)
            let count = shape.reduce(1, *)
            let values = Self.randoms(count, seed: UInt64(bits * 100 + count), scale: 3)
            let q = GroupQuantizer.quantize(values, shape: shape, scheme: scheme)
            let g = scheme.geometry(shape)
            #expect(q.steps.count == g.groupCount && q.data.count == g.groupCount * groupSize * bits / 8)
            let decoded = GroupQuantizer.dequantize(q)
            for index in 0..<count {
                let o = index / (g.extent * g.inner), a = (index / g.inner) % g.extent, i = index % g.inner
                let group = (o * g.groupsAlongAxis + a / groupSize) * g.inner + i
                let bound = Float(q.steps[group]) / 2 * (1 + 1e-5) + 1e-6
                let error = abs(decoded[index] - values[index])
                #expect(error <= bound, "\(bits)-bit \(shape) axis \(axis): element \(index) off by \(error) > \(bound)")
            }
        }
    }

    /// The CPU backend quantizes slabs of rows on its threads: the codes are exactly the
    /// single-threaded quantizer's, uneven last slab included.
    @Test(arguments: [2, 4, 8])
    func threadedQuantizationIsExact(bits: Int) throws {
        let scheme = try QuantizationScheme(bits: bits, groupSize: 64)
        var rng = SeededGenerator(seed: UInt64(bits))
        let shape = [301, 250]
        let values = (0..<(shape[0] * shape[1])).map { _ in Float.random(in: -2...2, using: &rng) }
        let backend = CPUBackend(threads: 3)
        let threaded = backend.download(backend.quantize(backend.upload(floats: values, shape: shape), scheme: scheme))
        #expect(threaded == GroupQuantizer.dequantize(GroupQuantizer.quantize(values, shape: shape, scheme: scheme)))
    }

    @Test func constantGroupsAndBadSchemes() throws {
        let q = GroupQuantizer.quantize([Float](repeating: 0.5, count: 24), shape: [24], scheme: try QuantizationScheme(bits: 4, groupSize: 8))
        #expect(GroupQuantizer.dequantize(q) == [Float](repeating: 0.5, count: 24))
        #expect(throws: StrataError.self) { try QuantizationScheme(bits: 5) }
        #expect(throws: StrataError.self) { try QuantizationScheme(bits: 4, groupSize: 12) }
    }

    /// The fused quantized kernel and decode-then-sgemm both equal x times the decoded weight.
    @Test(arguments: [2, 3, 4, 8])
    func quantizedLinearMatchesDecodedWeight(bits: Int) throws {
        let backend = CPUBackend(threads: 2)
        for (m, n, k, axis) in [(5, 9, 96, -1), (70, 33, 130, -1), (3, 40, 64, 0)] {
            let scheme = try QuantizationScheme(bits: bits, groupSize: 32, groupAxis: axis)
            let weights = Self.randoms(n * k, seed: 7), input = Self.randoms(m * k, seed: 8)
            let quantized = backend.quantize(backend.upload(floats: weights, shape: [n, k]), scheme: scheme)
            let decoded = backend.download(quantized)
            #expect(decoded == GroupQuantizer.dequantize(GroupQuantizer.quantize(weights, shape: [n, k], scheme: scheme)))
            let x = backend.upload(floats: input, shape: [m, k])
            let reference = backend.download(backend.linear(x, weight: backend.upload(floats: decoded, shape: [n, k]), bias: nil))
            for path in [CPUBackend.GEMMPath.fusedHalf, .widenThenBLAS] {
                let got = backend.download(backend.linear(x, weight: quantized, bias: nil, path: path))
                let worst = zip(got, reference).map { abs($0 - $1) }.max() ?? 0
                #expect(worst <= 1e-4, "\(bits)-bit \(path) m=\(m) n=\(n) k=\(k) axis \(axis): \(worst)")
            }
        }
    }

    /// Attention over a 4-bit cache equals attention over an f32 cache holding the decoded values.
    @Test func compressedCacheAttentionMatchesDecodedCache() throws {
        let backend = CPUBackend(threads: 2)
        let batch = 2, heads = 4, kvHeads = 2, d = 32, capacity = 12, length = 7
        let scheme = try QuantizationScheme(bits: 4, groupSize: 16)
        let layout = AttentionLayout(batch: batch, length: length, pastLength: 0, padding: [0, 2], heads: heads,
                                     kvHeads: kvHeads, headDim: d, scale: 0.2)
        let key = backend.upload(floats: Self.randoms(batch * length * kvHeads * d, seed: 11), shape: [batch * length, kvHeads * d])
        let value = backend.upload(floats: Self.randoms(batch * length * kvHeads * d, seed: 12), shape: [batch * length, kvHeads * d])
        let query = backend.upload(floats: Self.randoms(batch * length * heads * d, seed: 13), shape: [batch * length, heads * d])
        let shape = [batch, kvHeads, capacity, d]
        let qk = backend.cacheTensor(shape: shape, compression: scheme), qv = backend.cacheTensor(shape: shape, compression: scheme)
        backend.storeKV(key: key, value: value, keyCache: qk, valueCache: qv, layout: layout)
        let fk = backend.upload(floats: backend.download(qk), shape: shape), fv = backend.upload(floats: backend.download(qv), shape: shape)
        #expect(qk.byteCount < fk.byteCount / 4)
        // The stored rows decode within half a step of what was written.
        let written = backend.download(key), stored = backend.download(qk)
        let firstRow = Array(stored[0..<d]), original = Array(written[0..<d])
        #expect(zip(firstRow, original).allSatisfy { abs($0 - $1) < 0.07 })
        for queries in [length, 1] {
            let step = AttentionLayout(batch: batch, length: queries, pastLength: length - queries, padding: [0, 2], heads: heads,
                                       kvHeads: kvHeads, headDim: d, scale: 0.2)
            let q = queries == length ? query : backend.gatherRows(query, [length - 1, 2 * length - 1])
            let a = backend.download(backend.attention(query: q, keyCache: qk, valueCache: qv, layout: step))
            let b = backend.download(backend.attention(query: q, keyCache: fk, valueCache: fv, layout: step))
            #expect(zip(a, b).map { abs($0 - $1) }.max()! <= 1e-5)
        }
    }

    @Test func precisionMapParsingAndErrors() throws {
        let map = try PrecisionMap(json: JSONValue.parse(Data(#"{"format": "strata-precision-map", "group_size": 32, "bits": {"0": 4, "2": 8}}"#.utf8), path: "m.json"), path: "m.json")
        #expect(map.bits(forLayer: 0) == 4 && map.bits(forLayer: 1) == 16 && map.bits(forLayer: 2) == 8 && map.groupSize == 32)
        let array = try PrecisionMap(json: JSONValue.parse(Data(#"{"bits": [3, 16]}"#.utf8), path: "a.json"), path: "a.json")
        #expect(array.bits == [0: 3, 1: 16])
        for (text, needle) in [(#"{"bits": {"0": 5}}"#, "5 bits"), (#"{"bits": {"x": 4}}"#, "'x'"), (#"{"group_size": 64}"#, "bits"),
                               (#"{"bits": [4], "group_size": 10}"#, "group_size")] {
            do {
                _ = try PrecisionMap(json: JSONValue.parse(Data(text.utf8), path: "bad.json"), path: "bad.json")
                Issue.record("accepted \(text)")
            } catch let error as StrataError {
                #expect("\(error)".contains("bad.json") && "\(error)".contains(needle), "\(error)")
            }
        }
        #expect(throws: StrataError.self) { try PrecisionMap(bits: [5: 4]).validate(layers: 2, path: "p") }
    }

    /// A model loaded with a precision map, the same model written by `convert`-style storage,
    /// and a 16-bit map: logits agree as they must.
    @Test func precisionMapAtLoadMatchesStoredAndSixteenBitsIsExact() throws {
        let directory = Fixtures.model("opt-tiny")
        let step = ForwardStep(tokens: [2, 10, 20, 30, 40], batch: 1, length: 5, pastLength: 0, padding: [0])
        func logits(_ compression: Compression) throws -> [Float] {
            let model = try ModelLoader.load(directory: directory, backend: CPUBackend(threads: 2), compression: compression)
            return model.backend.download(model.forward(step, cache: model.makeCache(batch: 1, capacity: 5)))
        }
        let plain = try logits(.none)
        #expect(try logits(Compression(weights: PrecisionMap.uniform(layers: 2, bits: 16))) == plain)
        let mixed = PrecisionMap(bits: [0: 3, 1: 8], groupSize: 32)
        let quantized = try logits(Compression(weights: mixed))
        #expect(quantized != plain)
        // Stored by convert, loaded with no flags: the same tensors, so the same logits.
        let converted = Fixtures.scratch("convert") + "/model"
        let summary = try ModelConverter.convert(model: directory, output: converted, precision: mixed, mapPath: "map")
        #expect(summary.convertedBytes < summary.originalBytes)
        let stored = try ModelLoader.load(directory: converted, backend: CPUBackend(threads: 2))
        #expect(stored.config.storedPrecision == mixed)
        #expect(stored.backend.download(stored.forward(step, cache: stored.makeCache(batch: 1, capacity: 5))) == quantized)
        #expect(throws: StrataError.self) {
            _ = try ModelLoader.load(directory: converted, backend: CPUBackend(), compression: Compression(weights: mixed))
        }
        let eightBit = try logits(Compression(weights: PrecisionMap.uniform(layers: 2, bits: 8, groupSize: 32)))
        let error8 = zip(eightBit, plain).map { abs($0 - $1) }.max()!, error3 = zip(quantized, plain).map { abs($0 - $1) }.max()!
        #expect(error8 < error3)
    }

    @Test func indicatorFollowsTheFormulaAndPicksTheCheapestMap() throws {
        let text = String(repeating: "This program is free software; you can redistribute it. ", count: 20)
        let indicator = try QualityIndicator.measure(directory: Fixtures.model("opt-tiny"), backend: CPUBackend(threads: 2),
                                                     text: text, window: 64, samples: 3)
        #expect(indicator.calibrationTokens == 192)
        for layer in indicator.omega {
            // omega(b) is proportional to 1 / (2^(b-1) - 1)^2: 2 bits vs 3 bits is exactly 9x.
            #expect(abs(layer[0] / layer[1] - 9) < 1e-9)
            #expect(layer[0] > layer[1] && layer[1] > layer[2] && layer[2] > layer[3] && layer[3] > layer[4] && layer[4] > 0)
        }
        let synthetic = QualityIndicator(bits: [3, 4, 8, 16], omega: [[9, 4, 1, 0], [90, 40, 10, 0], [5, 2, 1, 0]], calibrationTokens: 0)
        // 4 + 8 + 4 = 16 bits (5.33 mean) costs 4 + 10 + 2 = 16; nothing else within 16 bits costs less.
        let best = try synthetic.bestPrecision(averageBits: 16.0 / 3, choices: [3, 4, 8, 16], groupSize: 64)
        #expect(best.bits == [0: 4, 1: 8, 2: 4])
    }

    /// Variance is over all rows of all calls together: two samples with different means must
    /// not be averaged per sample (the bug in LLM-PQ's public code).
    @Test func inputVarianceIsPooledOverSamples() {
        let cpu = CPUBackend(threads: 1)
        let recorder = RecordingBackend(inner: cpu)
        let weight = cpu.upload(floats: [1, 0, 0, 1], shape: [2, 2])
        recorder.watch([weight])
        let first: [Float] = [0, 10, 2, 10], second: [Float] = [10, 0, 12, 0, 14, 0]   // rows of 2 features
        _ = recorder.linear(cpu.upload(floats: first, shape: [2, 2]), weight: weight, bias: nil)
        _ = recorder.linear(cpu.upload(floats: second, shape: [3, 2]), weight: weight, bias: nil)
        let feature0: [Double] = [0, 2, 10, 12, 14], feature1: [Double] = [10, 10, 0, 0, 0]
        func variance(_ v: [Double]) -> Double { let m = v.reduce(0, +) / Double(v.count); return v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(v.count) }
        #expect(abs(recorder.inputVarianceSum(of: weight) - (variance(feature0) + variance(feature1))) < 1e-9)
    }
}

/// The bundled trained model: Strata's perplexity equals transformers' on held-out text.
@Suite struct TrainedModelTests {
    @Test func perplexityMatchesTransformers() throws {
        let directory = Fixtures.model("opt-licenses")
        let reference = try JSONFields(JSONValue.load(path: directory + "/perplexity_reference.json"), path: "reference")
        let text = try #require(FileManager.default.contents(atPath: Fixtures.root + "/text/heldout.txt"))
        let bundle = try ModelBundle(directory: directory, backend: CPUBackend(threads: 2))
        let result = try Perplexity.evaluate(bundle: bundle, text: String(decoding: text, as: UTF8.self), window: try reference.int("window"))
        #expect(result.tokensScored == (try reference.int("tokens")))
        let expected = try reference.double("perplexity")
        // f32 on both sides over 23,506 tokens: relative 1e-5 leaves room for summation order only.
        #expect(abs(result.perplexity - expected) / expected < 1e-5, "strata \(result.perplexity) vs transformers \(expected)")
    }

    @Test func compressionKeepsPerplexityClose() throws {
        let directory = Fixtures.model("opt-licenses")
        let text = String(decoding: try #require(FileManager.default.contents(atPath: Fixtures.root + "/text/heldout.txt")), as: UTF8.self)
        let sample = String(text.prefix(12_000))
        func ppl(_ compression: Compression) throws -> Double {
            let bundle = try ModelBundle(directory: directory, backend: CPUBackend(threads: 2), compression: compression)
            return try Perplexity.evaluate(bundle: bundle, text: sample, window: 512).perplexity
        }
        let full = try ppl(.none)
        let int4 = try ppl(Compression(weights: PrecisionMap.uniform(layers: 4, bits: 4), cache: .int4))
        let int2 = try ppl(Compression(weights: PrecisionMap.uniform(layers: 4, bits: 2)))
        #expect(int4 > full * 0.98 && int4 < full * 1.05, "4-bit weights+cache \(int4) vs \(full)")
        #expect(int2 > int4, "2-bit \(int2) should be worse than 4-bit \(int4)")
    }
}
