import StrataCore

/// A GGUF file's LM head (`output.weight`) in Strata's group form, kept beside its decoded f32
/// copy: a backend that holds weights in bf16 takes it as it is (`WeightLoader.head`), at a
/// fraction of the bytes a decode step reads (the head is a quarter of a small model's).
/// Q4_0 / Q4_1 / Q8_0 heads are exact groups of 32 (`GGUFExact`). Q6_K, what llama.cpp's
/// quantizer gives the head of a Q4_0 file, becomes 8-bit groups of 16 (`q6K`).
public enum GGUFHead {
    /// The group form of a head stored as `type`, nil for types that have none (those are
    /// decoded like any other tensor).
    public static func scheme(for type: GGMLType) -> QuantizationScheme? {
        if type == .q6_K { return try! QuantizationScheme(bits: 8, groupSize: 16) }
        return type.exactBits.map { try! QuantizationScheme(bits: $0, groupSize: 32) }
    }

    /// Whether every block has a group form: the exact types' limits (`GGUFExact.isExact`), and
    /// for Q6_K steps whose minimum -32 * step f16 holds (|d * scale| below 2047).
    public static func isRepresentable(_ bytes: UnsafeRawBufferPointer, type: GGMLType) -> Bool {
        guard type == .q6_K else { return type.exactBits != nil && GGUFExact.isExact(bytes, type: type) }
        for b in 0..<(bytes.count / type.blockBytes) {
            let block = bytes.baseAddress! + b * type.blockBytes
            let d = Float(Float16(bitPattern: block.loadUnaligned(fromByteOffset: 208, as: UInt16.self)))
            for j in 0..<16 where !(abs(d * Float(block.load(fromByteOffset: 192 + j, as: Int8.self))) < 2047) { return false }
        }
        return true
    }

    /// The head as a Strata quantized tensor.
    public static func quantized(_ bytes: UnsafeRawBufferPointer, type: GGMLType, shape: [Int]) -> QuantizedTensor {
        type == .q6_K ? q6K(bytes, shape: shape) : GGUFExact.quantized(bytes, type: type, shape: shape)
    }

    /// Q6_K blocks (256 values: 6-bit q, sixteen int8 scales, one f16 d; x = d * scale_j *
    /// (q - 32)) as 8-bit groups of 16: code q, step d * scale_j rounded to f16, minimum
    /// -32 * step (exact: a power-of-two multiple). The 6-bit codes are copied; only the step
    /// is rounded, to 2^-12 of itself (f16's precision; coarser for steps under 6e-5), where
    /// decoding to bf16 rounded each value to 2^-9.
    static func q6K(_ bytes: UnsafeRawBufferPointer, shape: [Int]) -> QuantizedTensor {
        let scheme = try! QuantizationScheme(bits: 8, groupSize: 16)
        let blocks = bytes.count / GGMLType.q6_K.blockBytes
        var data = [UInt8](repeating: 0, count: blocks * 256)
        var steps = [Float16](repeating: 0, count: blocks * 16), mins = [Float16](repeating: 0, count: blocks * 16)
        data.withUnsafeMutableBufferPointer { out in
            for b in 0..<blocks {
                let p = bytes.baseAddress! + b * GGMLType.q6_K.blockBytes
                let d = Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 208, as: UInt16.self)))
                // Each half of the block: 64 bytes of low nibbles, 32 of high bit pairs, 8 scales.
                for half in 0..<2 {
                    let ql = (p + 64 * half).assumingMemoryBound(to: UInt8.self)
                    let qh = (p + 128 + 32 * half).assumingMemoryBound(to: UInt8.self)
                    let y = out.baseAddress! + b * 256 + 128 * half
                    for l in 0..<32 {
                        y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4)
                        y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)
                        y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)
                        y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)
                    }
                }
                // Value i of the block has scale i / 16: group j's step is d * scale_j.
                for j in 0..<16 {
                    let step = Float16(d * Float(p.load(fromByteOffset: 192 + j, as: Int8.self)))
                    steps[b * 16 + j] = step
                    mins[b * 16 + j] = -32 * step
                }
            }
        }
        return QuantizedTensor(shape: shape, scheme: scheme, data: data, steps: steps, mins: mins)
    }
}
