import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Writes a copy of a model directory whose decoder-layer matrices are stored group-quantized
/// as a precision map says (`strata convert`). config.json gains `strata_precision`, so the
/// copy loads with no flags and quantization happens once, not at every load.
public enum ModelConverter {
    public struct Summary: Sendable {
        public var originalBytes: Int
        public var convertedBytes: Int
    }


    /// A GGUF model as a model directory: safetensors (Q4_0/Q4_1/Q8_0 layers kept as Strata
    /// groups, or with `dequantize` every tensor decoded to f32, a checkpoint transformers loads
    /// as it is), config.json, tokenizer.json, tokenizer_config.json (chat template included)
    /// and generation_config.json derived from the file's metadata.
    public static func convert(gguf path: String, output: String, dequantize: Bool) throws -> Summary {
        let model = try GGUFModel.open(path)
        let source = GGUFCheckpoint(model: model)
        var entries: [SafeTensorsWriter.Entry] = []
        var summary = Summary(originalBytes: model.file.file.size, convertedBytes: 0)
        var config = try model.companion("config.json")
        for name in source.tensorNames {
            let view = try source.require(name)
            // The head's quantized copy is an alternative to its plain one, which a decoded
            // checkpoint keeps.
            if dequantize, name.hasPrefix("lm_head.weight.") { continue }
            if dequantize, name.hasSuffix(".qdata") {
                let base = String(name.dropLast(".qdata".count))
                guard let layer = GGUFModel.layerIndex(base), let shape = model.shape(of: base) else {
                    throw StrataError.invalidFile(path: path, detail: "quantized tensor '\(base)' is not a decoder-layer matrix")
                }
                let scheme = try QuantizationScheme(bits: model.layerBits[layer], groupSize: 32)
                let values = GroupQuantizer.dequantize(try QuantizedCheckpoint.read(source, name: base, shape: shape, scheme: scheme))
                entries.append(.init(name: base, shape: shape, floats: values))
                summary.convertedBytes += values.count * 4
                continue
            }
            if dequantize, name.hasSuffix(".qsteps") || name.hasSuffix(".qmins") { continue }
            summary.convertedBytes += view.bytes.count
            entries.append(.init(name: name, dtype: view.dtype, shape: view.shape, data: Array(view.bytes.bindMemory(to: UInt8.self))))
        }
        if dequantize, case .object(var fields) = config {
            fields["strata_precision"] = nil
            config = .object(fields)
        }
        try createDirectory(output)
        try SafeTensorsWriter.write(entries, metadata: ["format": "pt"], to: FileSystem.join(output, "model.safetensors"))
        try StoreConverter.writeCompanions(from: path, to: output, config: config)
        return summary
    }

    static func createDirectory(_ output: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch {
            throw StrataError.ioFailure(path: output, detail: "cannot create the output directory: \(error)")
        }
    }

    public static func convert(model: String, output: String, precision map: PrecisionMap, mapPath: String) throws -> Summary {
        let config = try ModelConfig(directory: model)
        guard config.storedPrecision == nil else {
            throw StrataError.invalidRequest("\(model) is already quantized (config.json strata_precision, or a GGUF file)")
        }
        try map.validate(layers: config.numLayers, path: mapPath)
        guard FileSystem.join(output, "") != FileSystem.join(model, "") else {
            throw StrataError.invalidRequest("the output directory must differ from the model directory")
        }
        // Loading once validates the checkpoint and records which tensors are layer matrices.
        let log = MatrixLog()
        _ = try ModelLoader.load(directory: model, backend: CPUBackend(threads: 1), matrixLog: log)
        let layers = log.layers
        let checkpoint = try TensorSources.open(directory: model)
        var entries: [SafeTensorsWriter.Entry] = []
        var summary = Summary(originalBytes: 0, convertedBytes: 0)
        for name in checkpoint.tensorNames {
            let view = try checkpoint.require(name)
            summary.originalBytes += view.bytes.count
            if let layer = layers[name], let scheme = try map.scheme(forLayer: layer) {
                let q = GroupQuantizer.quantize(view.floats(), shape: view.shape, scheme: scheme)
                summary.convertedBytes += q.byteCount
                entries += QuantizedCheckpoint.entries(name: name, q)
            } else {
                summary.convertedBytes += view.bytes.count
                entries.append(.init(name: name, dtype: view.dtype, shape: view.shape, data: Array(view.bytes.bindMemory(to: UInt8.self))))
            }
        }
        try createDirectory(output)
        try SafeTensorsWriter.write(entries, metadata: ["format": "pt", "strata": "quantized"], to: FileSystem.join(output, "model.safetensors"))
        let configPath = FileSystem.join(model, "config.json")
        guard case .object(var fields) = try JSONValue.load(path: configPath) else {
            throw StrataError.invalidFile(path: configPath, detail: "expected a JSON object at the top level")
        }
        fields["strata_precision"] = map.json
        try StoreConverter.write(Data(JSONValue.object(fields).serialized().utf8), to: FileSystem.join(output, "config.json"))
        try StoreConverter.copyCompanions(from: model, to: output, except: ["config.json"])
        return summary
    }
}
