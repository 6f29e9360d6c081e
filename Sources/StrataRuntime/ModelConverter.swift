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


    public static func convert(model: String, output: String, precision map: PrecisionMap, mapPath: String) throws -> Summary {
        let config = try ModelConfig(directory: model)
        guard config.storedPrecision == nil else {
            throw StrataError.invalidRequest("\(model) is already quantized (config.json strata_precision)")
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
        do {
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        } catch {
            throw StrataError.ioFailure(path: output, detail: "cannot create the output directory: \(error)")
        }
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
