import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime

/// Measures what a pipeline stage spends per decoder layer, as LLM-PQ profiles its devices:
/// one layer's prefill of a micro-batch of b prompts of s tokens, and its decode step for b
/// rows at i tokens past the prompt, at each bit width; and the LM head for b rows. The samples
/// are the `calibration:` file a cluster spec names (`LatencyCalibration` fits them), so the
/// planner and its simulator predict with this machine's own latencies.
public struct LayerLatencyProbe {
    public var directory: String
    /// The device type the samples are for: the spec's `type` for these devices.
    public var device: String
    public var bits: [Int]
    public var batchSizes: [Int]
    public var promptLength: Int
    public var genLength: Int
    public var repeats = 5

    public init(directory: String, device: String, bits: [Int], batchSizes: [Int], promptLength: Int, genLength: Int) {
        self.directory = directory; self.device = device; self.bits = bits; self.batchSizes = batchSizes
        self.promptLength = promptLength; self.genLength = genLength
    }

    /// `{"samples": [...]}` in LatencyCalibration's format.
    public func run(backend: any Backend, progress: (String) -> Void = { _ in }) throws -> JSONValue {
        var samples: [JSONValue] = []
        func sample(_ bits: Int, _ phase: String, _ batch: Int, prompt: Int = promptLength, generated: Int = 0, _ seconds: Double) {
            samples.append(.object([
                "device": .string(device), "bits": .number(Double(bits)), "phase": .string(phase), "batch": .number(Double(batch)),
                "prompt_len": .number(Double(prompt)), "generated": .number(Double(generated)), "seconds": .number(seconds),
            ]))
        }
        var rng = SeededGenerator(seed: 1)
        for (n, b) in bits.enumerated() {
            // A few consecutive layers, timed one after another and averaged: a stage runs
            // different layers in turn, so one layer timed alone would sit warmer in the caches
            // than any layer of a running pipeline. The head too, once (bits do not change it).
            let config = try ModelConfig(directory: directory)
            let measured = 0..<min(4, config.numLayers)
            let precision = b < 16 ? PrecisionMap(bits: Dictionary(uniqueKeysWithValues: measured.map { ($0, b) })) : nil
            let model = try ModelLoader.load(directory: directory, backend: backend, compression: Compression(weights: precision),
                                             share: ModelShare(layers: measured, embedding: false, head: n == 0))
            let c = model.config
            func layers(_ input: Tensor, _ cache: [LayerCache], _ step: ForwardStep) {
                for j in measured { _ = model.layer(j, input, weights: model.residentLayers[j], cache: cache[j], step: step) }
            }
            let s = promptLength, capacity = promptLength + genLength
            for batch in batchSizes {
                progress("\(b) bits, batch \(batch)")
                let shape = [batch, c.numKVHeads, capacity, c.headDim]
                let cache = measured.map { _ in
                    LayerCache(key: backend.cacheTensor(shape: shape, compression: nil), value: backend.cacheTensor(shape: shape, compression: nil))
                }
                let per = Double(measured.count)
                let padding = [Int](repeating: 0, count: batch)
                func hidden(_ rows: Int) -> Tensor {
                    backend.upload(floats: (0..<(rows * c.hiddenSize)).map { _ in Float.random(in: -1...1, using: &rng) },
                                   shape: [rows, c.hiddenSize])
                }
                // Prefill at the workload's prompt length and at half of it: the fit has five
                // features (b, s, b*s, b*s^2, 1), which one prompt length cannot separate.
                for length in Set([max(1, s / 2), s]).sorted() {
                    let prompt = hidden(batch * length)
                    let prefill = ForwardStep(tokens: [Int32](repeating: 0, count: batch * length), batch: batch, length: length,
                                              pastLength: 0, padding: padding)
                    sample(b, "prefill", batch, prompt: length, median { layers(prompt, cache, prefill) } / per)
                }
                let token = hidden(batch)
                for generated in Set([1, max(1, genLength / 2), genLength]).sorted() {
                    let step = ForwardStep(tokens: [Int32](repeating: 0, count: batch), batch: batch, length: 1,
                                           pastLength: s + generated - 1, padding: padding)
                    sample(b, "decode", batch, generated: generated, median { layers(token, cache, step) } / per)
                }
                if n == 0 {
                    // What rank 0 does per pass after the layers: logits of each row's last
                    // position, brought back to the host for sampling.
                    let rows = Array(0..<batch)
                    sample(16, "head", batch, median { _ = backend.download(model.head(token, rows: rows)) })
                }
            }
        }
        return .object(["device": .string(device), "samples": .array(samples)])
    }

    /// Median seconds of `repeats` runs after one warm-up.
    private func median(_ body: () -> Void) -> Double {
        body()
        var times: [Double] = []
        for _ in 0..<repeats {
            let start = Clock.now()
            body()
            times.append(Clock.now() - start)
        }
        return times.sorted()[times.count / 2]
    }
}
