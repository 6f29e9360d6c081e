import StrataCore

/// How `strata convert` stores a group-quantized matrix in safetensors: three tensors beside
/// where the matrix would be, `<name>.qdata` (U8, packed codes), `<name>.qsteps` and
/// `<name>.qmins` (F16, one per group). The scheme comes from config.json's `strata_precision`.
public enum QuantizedCheckpoint {
    public static func names(_ name: String) -> (data: String, steps: String, mins: String) {
        (name + ".qdata", name + ".qsteps", name + ".qmins")
    }

    public static func read(_ checkpoint: any TensorSource, name: String, shape: [Int], scheme: QuantizationScheme) throws -> QuantizedTensor {
        let n = names(name)
        let groups = scheme.geometry(shape).groupCount
        let data = try checkpoint.require(n.data, shape: [groups * scheme.bytesPerGroup])
        let steps = try checkpoint.require(n.steps, shape: [groups])
        let mins = try checkpoint.require(n.mins, shape: [groups])
        for (view, dtype) in [(data, DType.u8), (steps, .f16), (mins, .f16)] where view.dtype != dtype {
            throw StrataError.invalidFile(path: checkpoint.directory,
                                          detail: "tensor '\(view.name)' has dtype \(view.dtype.rawValue), expected \(dtype.rawValue)")
        }
        return QuantizedTensor(shape: shape, scheme: scheme, data: Array(data.bytes.bindMemory(to: UInt8.self)),
                               steps: Array(steps.bytes.bindMemory(to: Float16.self)),
                               mins: Array(mins.bytes.bindMemory(to: Float16.self)))
    }

    public static func entries(name: String, _ q: QuantizedTensor) -> [SafeTensorsWriter.Entry] {
        let n = names(name)
        return [
            .init(name: n.data, dtype: .u8, shape: [q.data.count], data: q.data),
            .init(name: n.steps, dtype: .f16, shape: [q.steps.count], data: q.steps.withUnsafeBytes { Array($0) }),
            .init(name: n.mins, dtype: .f16, shape: [q.mins.count], data: q.mins.withUnsafeBytes { Array($0) }),
        ]
    }
}
