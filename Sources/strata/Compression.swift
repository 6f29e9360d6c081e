import ArgumentParser
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `strata convert`: writes a copy of a model directory whose decoder-layer matrices are stored
/// group-quantized as a precision map says; loading it needs no further flags.
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a model: to Strata's offload store (--out), or to a safetensors copy with quantized layers (--output).",
        discussion: """
        strata convert --model HF_DIR --out STORE_DIR          offload store (per-tensor files for direct I/O, checksummed manifest; resumable)
        strata convert --random opt-13b --out STORE_DIR        random f16 weights for a known architecture, written chunk by chunk
        strata convert --model DIR --output DIR --precision P  safetensors copy whose decoder layers are stored quantized
        strata convert --model M.gguf --output DIR             GGUF as a model directory (Q4_0/Q4_1/Q8_0 kept; --dequantize for f32)
        strata convert --model M.gguf --out STORE_DIR          GGUF as an offload store
        """)

    @Option(help: "Source model directory or GGUF file.") var model: String?
    @Option(help: "Known architecture for a random-weight store (\(KnownArchitectures.names.joined(separator: ", "))).") var random: String?
    @Option(help: "Offload store directory to write.") var out: String?
    @Option(help: "Safetensors output directory for a quantized copy (created; must not be the source).") var output: String?
    @Option(help: "Precision map JSON (layer -> 2/3/4/8/16 bits) for --output.") var precision: String?
    @Flag(help: "Every layer at 4 bits for --output (instead of --precision).") var compressWeight = false
    @Option(help: "Group size with --compress-weight.") var groupSize = 64
    @Option(help: "Seed for --random.") var seed: UInt64 = 0
    @Flag(help: "With a GGUF --model and --output: decode every tensor to f32 (a checkpoint transformers loads) instead of keeping Q4_0/Q4_1/Q8_0 layers quantized.")
    var dequantize = false
    @Flag(help: "No progress output.") var quiet = false

    func run() throws {
        try reportingErrors {
            if let out {
                guard output == nil, precision == nil, !compressWeight, !dequantize else {
                    throw StrataError.invalidRequest("--out writes an offload store as stored; quantize with --output, or at load time")
                }
                Console.quietFlag.store(quiet, ordering: .relaxed)
                let line = ProgressLine()
                let progress: (Int, Int) -> Void = { done, total in line.update(done: done, total: total, "tensor \(done)/\(total)") }
                let summary: StoreConverter.Summary
                switch (model, random) {
                case (let m?, nil): summary = try StoreConverter.convert(model: m, out: out, progress: progress)
                case (nil, let arch?): summary = try StoreConverter.random(architecture: arch, out: out, seed: seed, progress: progress)
                default: throw StrataError.invalidRequest("give exactly one of --model DIR or --random ARCH with --out")
                }
                line.finish()
                Console.error("wrote \(out): \(summary.tensors) tensors written, \(summary.skipped) already complete, \(ByteSize.format(summary.bytes))")
                return
            }
            guard let model, let output else { throw StrataError.invalidRequest("give --out STORE, or --model DIR with --output DIR") }
            if GGUFFile.isGGUF(model) {
                guard precision == nil, !compressWeight else {
                    throw StrataError.invalidRequest("\(model) is a GGUF file: its layers are written as stored (or decoded with --dequantize), not requantized")
                }
                let summary = try ModelConverter.convert(gguf: model, output: output, dequantize: dequantize)
                Console.error("wrote \(output): \(ByteSize.format(summary.originalBytes)) GGUF -> \(ByteSize.format(summary.convertedBytes)) of tensors\(dequantize ? " (decoded to f32)" : "")")
                return
            }
            guard !dequantize else { throw StrataError.invalidRequest("--dequantize applies to a GGUF --model") }
            let layers = try ModelConfig(directory: model).numLayers
            let map: PrecisionMap
            switch (precision, compressWeight) {
            case (let path?, false): map = try PrecisionMap.load(path: path)
            case (nil, true): map = PrecisionMap.uniform(layers: layers, bits: 4, groupSize: groupSize)
            default: throw StrataError.invalidRequest("give exactly one of --precision FILE or --compress-weight")
            }
            let summary = try ModelConverter.convert(model: model, output: output, precision: map, mapPath: precision ?? "--compress-weight")
            Console.error("wrote \(output): \(summary.originalBytes) -> \(summary.convertedBytes) bytes, mean \(map.averageBits(layers: layers).formatted(2)) bits per layer")
        }
    }
}

/// `strata perplexity`: the GPTQ protocol (non-overlapping windows) at any precision.
struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity", abstract: "Perplexity of a text file over non-overlapping windows (GPTQ protocol).")

    @OptionGroup var backend: BackendOptions
    @OptionGroup var offload: PolicyOptions
    @Option(help: "UTF-8 text file to score.") var text: String
    @Option(help: "Tokens per window.") var window = 2048
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors {
            let maxPositions = try ModelConfig(directory: backend.model).maxPositions
            let window = min(self.window, maxPositions)
            let (generator, engine, _) = try offload.makeGenerator(backend, promptLength: window, capacity: window, batchSize: nil)
            let bundle = generator.bundle
            let content = try readText(text)
            let line = ProgressLine()
            let result = try Perplexity.evaluate(bundle: bundle, text: content, window: window, engine: engine) { done, total in
                line.update(done: done, total: total, "window \(done)/\(total)")
            }
            line.finish()
            if json {
                print(result.json.serialized())
            } else {
                print("perplexity \(result.perplexity.formatted(4)) over \(result.tokensScored) tokens (\(result.windows) windows of \(window))")
            }
        }
    }
}

/// `strata indicator`: LLM-PQ's per-layer quality indicator from a calibration text, and the
/// precision maps it implies.
struct Indicator: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the quality indicator omega[layer][bits] on a calibration text (JSON), optionally emit precision maps.")

    @OptionGroup var backend: BackendOptions
    @Option(help: "Calibration text (UTF-8).") var text: String
    @Option(help: "Tokens per calibration sample.") var window = 512
    @Option(help: "Calibration samples (windows) at most.") var samples = 16
    @Option(help: "Write the indicator JSON here (default: stdout).") var output: String?
    @Option(help: "Also write the least-omega precision map with at most this mean bits per layer.") var averageBits: Double?
    @Option(help: "Candidate bits for the precision map.") var bits = "3,4,8,16"
    @Option(help: "Where to write that precision map.") var precisionOut: String?
    @Option(help: "Also write a map with the same bits shuffled across layers (a random baseline).") var randomOut: String?
    @Option(help: "Seed for --random-out.") var seed: UInt64 = 1

    func run() throws {
        try reportingErrors {
            let indicator = try QualityIndicator.measure(directory: backend.model, backend: backend.makeBackend(),
                                                         text: readText(text), window: window, samples: samples)
            let serialized = indicator.json.serialized()
            if let output { try Data(serialized.utf8).write(to: URL(fileURLWithPath: output)) } else { print(serialized) }
            guard let averageBits else { return }
            let choices = try bits.split(separator: ",").map {
                guard let b = Int($0), PrecisionMap.allowedBits.contains(b) else { throw StrataError.invalidRequest("--bits: '\($0)' is not one of 2, 3, 4, 8, 16") }
                return b
            }
            let best = try indicator.bestPrecision(averageBits: averageBits, choices: choices, groupSize: backend.groupSize)
            let layers = indicator.omega.count
            Console.error("indicator map: \((0..<layers).map { String(best.bits(forLayer: $0)) }.joined(separator: " ")) (mean \(best.averageBits(layers: layers).formatted(2)) bits)")
            if let precisionOut { try Data(best.json.serialized().utf8).write(to: URL(fileURLWithPath: precisionOut)) }
            if let randomOut {
                // Same multiset of bits in another order: equal size, placement left to chance.
                var rng = SeededGenerator(seed: seed)
                let original = (0..<layers).map { best.bits(forLayer: $0) }
                var shuffled = original
                for _ in 0..<100 where shuffled == original && Set(original).count > 1 { shuffled.shuffle(using: &rng) }
                let random = PrecisionMap(bits: Dictionary(uniqueKeysWithValues: shuffled.enumerated().map { ($0.offset, $0.element) }),
                                          groupSize: backend.groupSize)
                Console.error("random map:    \(shuffled.map(String.init).joined(separator: " "))")
                try Data(random.json.serialized().utf8).write(to: URL(fileURLWithPath: randomOut))
            }
        }
    }
}

func readText(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else { throw StrataError.fileNotFound(path: path) }
    return String(decoding: data, as: UTF8.self)
}
