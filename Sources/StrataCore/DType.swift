/// Element types of stored tensors. Compute is f32; f16 and bf16 are storage formats.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    /// Raw bytes: packed quantization codes (see `QuantizationScheme`).
    case u8 = "U8"

    public var byteSize: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .u8: return 1
        }
    }
}

extension DType {
    /// Bytes of a tensor of `shape` in this dtype; nil when a dimension is negative or the
    /// product overflows (a corrupt header must not become a trap or a huge allocation).
    public func byteCount(_ shape: [Int]) -> Int? {
        var bytes = byteSize
        for d in shape {
            guard d >= 0 else { return nil }
            let (p, overflow) = bytes.multipliedReportingOverflow(by: d)
            guard !overflow else { return nil }
            bytes = p
        }
        return bytes
    }
}

/// Conversions between the storage formats and f32. With F16C enabled (see Package.swift)
/// `Float(Float16)` compiles to a single vcvtph2ps instruction.
public enum Precision {
    @inline(__always)
    public static func bf16ToFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// Round-to-nearest-even, as torch does when casting to bfloat16.
    @inline(__always)
    public static func floatToBF16(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return 0x7FC0 }
        let rounding = ((bits >> 16) & 1) &+ 0x7FFF
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    /// Converts `count` elements of `dtype` at `source` into f32 at `destination`.
    public static func convertToFloat(
        _ source: UnsafeRawPointer, dtype: DType, count: Int, into destination: UnsafeMutablePointer<Float>
    ) {
        switch dtype {
        case .f32:
            destination.update(from: source.assumingMemoryBound(to: Float.self), count: count)
        case .f16:
            let src = source.assumingMemoryBound(to: Float16.self)
            for i in 0..<count { destination[i] = Float(src[i]) }
        case .bf16:
            let src = source.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { destination[i] = bf16ToFloat(src[i]) }
        case .u8:
            let src = source.assumingMemoryBound(to: UInt8.self)
            for i in 0..<count { destination[i] = Float(src[i]) }
        }
    }
}
