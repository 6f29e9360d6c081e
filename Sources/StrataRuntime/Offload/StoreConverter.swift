import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Writes offload stores (`strata convert --out`): from a Hugging Face checkpoint, or with
/// random weights for a known architecture without ever holding a tensor whole in memory.
/// Both resume an interrupted run.
public enum StoreConverter {
    public struct Summary: Sendable { public var tensors = 0, skipped = 0, bytes = 0 }

    public static func convert(model: String, out: String, progress: ((Int, Int) -> Void)? = nil) throws -> Summary {
        guard FileSystem.join(out, "") != FileSystem.join(model, "") else {
            throw StrataError.invalidRequest("--out must differ from --model")
        }
        _ = try ModelConfig(directory: model)
        let source = try TensorSources.open(directory: model)
        let writer = try OffloadStoreWriter(directory: out)
        try copyCompanions(from: model, to: out)
        var summary = Summary()
        let names = source.tensorNames
        for (i, name) in names.enumerated() {
            let view = try source.require(name)
            summary.bytes += view.bytes.count
            if writer.has(name, dtype: view.dtype, shape: view.shape) {
                summary.skipped += 1
            } else {
                try writer.write(name: name, dtype: view.dtype, shape: view.shape, bytes: view.bytes.count) { buffer, offset, count in
                    buffer.copyMemory(from: view.bytes.baseAddress! + offset, byteCount: count)
                }
                summary.tensors += 1
            }
            progress?(i + 1, names.count)
        }
        return summary
    }

    /// A random-weight f16 store for a known architecture: matrices uniform in +-1/sqrt(fan-in),
    /// norm weights 1, biases 0. Deterministic for a seed.
    public static func random(architecture: String, out: String, seed: UInt64 = 0,
                              progress: ((Int, Int) -> Void)? = nil) throws -> Summary {
        let configJSON = try KnownArchitectures.config(architecture)
        let config = try ModelConfig(json: configJSON, path: architecture)
        let writer = try OffloadStoreWriter(directory: out)
        try write(Data(configJSON.serialized().utf8), to: FileSystem.join(out, "config.json"))
        try write(Data(KnownArchitectures.byteLevelTokenizerJSON().serialized().utf8), to: FileSystem.join(out, "tokenizer.json"))
        let tokenizerConfig = JSONValue.object(["bos_token": .string("</s>"), "eos_token": .string("</s>"), "pad_token": .string("<pad>"),
                                                "add_bos_token": .bool(false), "model_max_length": .number(Double(config.maxPositions))])
        try write(Data(tokenizerConfig.serialized().utf8), to: FileSystem.join(out, "tokenizer_config.json"))
        let specs = KnownArchitectures.tensorSpecs(config)
        var summary = Summary()
        for (i, spec) in specs.enumerated() {
            let count = spec.shape.reduce(1, *)
            summary.bytes += count * 2
            if writer.has(spec.name, dtype: .f16, shape: spec.shape) {
                summary.skipped += 1
                progress?(i + 1, specs.count)
                continue
            }
            let isNorm = spec.shape.count == 1 && spec.name.contains("norm") && spec.name.hasSuffix(".weight")
            let isBias = spec.shape.count == 1 && !isNorm
            let bound = spec.shape.count == 2 ? Float(1 / Double(spec.shape[1]).squareRoot()) : 0
            try writer.write(name: spec.name, dtype: .f16, shape: spec.shape, bytes: count * 2) { buffer, offset, bytes in
                let values = buffer.assumingMemoryBound(to: Float16.self)
                let first = offset / 2
                // Counter-based generator: element e's value depends only on (seed, tensor, e),
                // so chunks can be produced in any order and a resumed run writes the same bytes.
                let stream = seed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15
                // Spread over the cores: an OPT-30B store is 30G values, minutes on one core.
                parallelFor(bytes / 2, threads: CPUSetup.cores, minimumPerThread: 1 << 16) { range in
                    for j in range {
                        if isNorm { values[j] = 1; continue }
                        if isBias { values[j] = 0; continue }
                        var z = stream &+ UInt64(first + j) &* 0xBF58_476D_1CE4_E5B9
                        z = (z ^ (z >> 31)) &* 0x94D0_49BB_1331_11EB
                        z ^= z >> 29
                        let unit = Float(z >> 40) * (1.0 / Float(1 << 24)) * 2 - 1
                        values[j] = Float16(unit * bound)
                    }
                }
            }
            summary.tensors += 1
            progress?(i + 1, specs.count)
        }
        return summary
    }

    static let companions = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                             "merges.txt", "special_tokens_map.json"]

    /// Writes the config and tokenizer files a GGUF file's metadata implies (config.json
    /// replaced by `config` when given).
    static func writeCompanions(from gguf: String, to out: String, config: JSONValue? = nil) throws {
        for (file, json) in try GGUFModel.open(gguf).companions {
            let value = file == "config.json" ? config ?? json : json
            try write(Data(value.serialized().utf8), to: FileSystem.join(out, file))
        }
    }

    /// Copies a model directory's config and tokenizer files (those present) to `out`.
    static func copyCompanions(from model: String, to out: String, except skipped: Set<String> = []) throws {
        if GGUFFile.isGGUF(model) { return try writeCompanions(from: model, to: out) }
        for file in companions where !skipped.contains(file) && FileSystem.exists(FileSystem.join(model, file)) {
            guard let data = FileManager.default.contents(atPath: FileSystem.join(model, file)) else {
                throw StrataError.ioFailure(path: FileSystem.join(model, file), detail: "cannot read")
            }
            try write(data, to: FileSystem.join(out, file))
        }
    }

    static func write(_ data: Data, to path: String) throws {
        do { try data.write(to: URL(fileURLWithPath: path)) } catch {
            throw StrataError.ioFailure(path: path, detail: "\(error)")
        }
    }
}
