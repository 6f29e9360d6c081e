import StrataCore

/// ggml tensor types as GGUF numbers them. Block size and bytes per block are what the file
/// layout needs; which types Strata decodes is `isSupported`.
public enum GGMLType: UInt32, Sendable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35

    public var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .bf16: "BF16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q8_1: "Q8_1"
        case .q2_K: "Q2_K"
        case .q3_K: "Q3_K"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        case .q8_K: "Q8_K"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        case .f64: "F64"
        default: "IQ/TQ type \(rawValue)"
        }
    }

    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl: 32
        default: 256
        }
    }

    public var blockBytes: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16, .i16: 2
        case .i8: 1
        case .i64, .f64: 8
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 36
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq2_xxs: 66
        case .iq2_xs: 74
        case .iq3_xxs: 98
        case .iq1_s: 50
        case .iq4_nl: 18
        case .iq3_s: 110
        case .iq2_s: 82
        case .iq4_xs: 136
        case .iq1_m: 56
        case .tq1_0: 54
        case .tq2_0: 66
        }
    }

    /// Types Strata reads (to f32 or, for `exactScheme` types, straight into its group format).
    public static let supported: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]
    public var isSupported: Bool { Self.supported.contains(self) }

    /// Types that are exactly Strata's asymmetric group quantization (groups of 32 along a row,
    /// f16 step and minimum): the codes are copied, never requantized.
    public var exactBits: Int? {
        switch self {
        case .q4_0, .q4_1: 4
        case .q8_0: 8
        default: nil
        }
    }
}

/// Decoding of ggml blocks, following ggml's reference dequantization.
public enum GGMLDequantize {
    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    /// Decodes `count` values (whole blocks) of `type` from `src` into `out`.
    public static func toFloat(_ src: UnsafeRawPointer, type: GGMLType, count: Int, into out: UnsafeMutablePointer<Float>) {
        let blocks = count / type.blockSize
        switch type {
        case .f32: out.update(from: src.assumingMemoryBound(to: Float.self), count: count)
        case .f16: Precision.convertToFloat(src, dtype: .f16, count: count, into: out)
        case .bf16: Precision.convertToFloat(src, dtype: .bf16, count: count, into: out)
        case .q4_0, .q4_1, .q8_0:
            let bits = type.exactBits!, n = 32
            let scheme = try! QuantizationScheme(bits: bits, groupSize: n)
            var codes = [UInt8](repeating: 0, count: n)
            codes.withUnsafeMutableBufferPointer { codes in
                for b in 0..<blocks {
                    let (step, minimum) = GGUFExact.group(src + b * type.blockBytes, type: type, codes: codes.baseAddress!)
                    GroupQuantizer.dequantizeGroup(codes.baseAddress!, step: step, minimum: minimum, scheme: scheme, into: out + b * n)
                }
            }
        case .q5_0, .q5_1:
            for b in 0..<blocks {
                let p = src + b * type.blockBytes, y = out + b * 32
                let d = half(p, 0)
                let m = type == .q5_1 ? half(p, 2) : 0
                let qhOffset = type == .q5_1 ? 4 : 2
                let qh = p.loadUnaligned(fromByteOffset: qhOffset, as: UInt32.self).littleEndian
                let qs = (p + qhOffset + 4).assumingMemoryBound(to: UInt8.self)
                let bias: Int32 = type == .q5_0 ? 16 : 0
                for j in 0..<16 {
                    let h0 = Int32(((qh >> UInt32(j)) << 4) & 0x10)
                    let h1 = Int32((qh >> UInt32(j + 12)) & 0x10)
                    y[j] = Float((Int32(qs[j] & 0xF) | h0) - bias) * d + m
                    y[j + 16] = Float((Int32(qs[j] >> 4) | h1) - bias) * d + m
                }
            }
        case .q4_K, .q5_K:
            for b in 0..<blocks {
                let p = src + b * type.blockBytes, y = out + b * 256
                let d = half(p, 0), dmin = half(p, 2)
                let scales = (p + 4).assumingMemoryBound(to: UInt8.self)
                let isQ5 = type == .q5_K
                let qh = (p + 16).assumingMemoryBound(to: UInt8.self)
                var ql = (p + (isQ5 ? 48 : 16)).assumingMemoryBound(to: UInt8.self)
                var u1: UInt8 = 1, u2: UInt8 = 2
                for j in 0..<4 {
                    let (s1, m1) = scaleMin(2 * j, scales), (s2, m2) = scaleMin(2 * j + 1, scales)
                    let d1 = d * Float(s1), mm1 = dmin * Float(m1), d2 = d * Float(s2), mm2 = dmin * Float(m2)
                    for l in 0..<32 {
                        let hi1: UInt8 = isQ5 && qh[l] & u1 != 0 ? 16 : 0
                        let hi2: UInt8 = isQ5 && qh[l] & u2 != 0 ? 16 : 0
                        y[64 * j + l] = d1 * Float((ql[l] & 0xF) + hi1) - mm1
                        y[64 * j + 32 + l] = d2 * Float((ql[l] >> 4) + hi2) - mm2
                    }
                    ql += 32
                    u1 <<= 2
                    u2 <<= 2
                }
            }
        case .q6_K:
            for b in 0..<blocks {
                let p = src + b * type.blockBytes
                let d = half(p, 208)
                var ql = p.assumingMemoryBound(to: UInt8.self)
                var qh = (p + 128).assumingMemoryBound(to: UInt8.self)
                var sc = (p + 192).assumingMemoryBound(to: Int8.self)
                var y = out + b * 256
                for _ in 0..<2 {
                    for l in 0..<32 {
                        let i = l / 16
                        let q1 = Int32((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32
                        let q2 = Int32((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
                        let q3 = Int32((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                        let q4 = Int32((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                        y[l] = d * Float(sc[i]) * Float(q1)
                        y[l + 32] = d * Float(sc[i + 2]) * Float(q2)
                        y[l + 64] = d * Float(sc[i + 4]) * Float(q3)
                        y[l + 96] = d * Float(sc[i + 6]) * Float(q4)
                    }
                    y += 128
                    ql += 64
                    qh += 32
                    sc += 8
                }
            }
        case .q2_K:
            for b in 0..<blocks {
                let p = src + b * type.blockBytes
                let scales = p.assumingMemoryBound(to: UInt8.self)
                var q = (p + 16).assumingMemoryBound(to: UInt8.self)
                let d = half(p, 80), dmin = half(p, 82)
                var y = out + b * 256, k = 0
                for _ in 0..<2 {
                    for j in 0..<4 {
                        let shift = UInt8(2 * j)
                        for half16 in 0..<2 {
                            let sc = scales[k]
                            k += 1
                            let dl = d * Float(sc & 0xF), ml = dmin * Float(sc >> 4)
                            for l in 0..<16 { y[l] = dl * Float((q[l + 16 * half16] >> shift) & 3) - ml }
                            y += 16
                        }
                    }
                    q += 32
                }
            }
        case .q3_K:
            for b in 0..<blocks {
                let p = src + b * type.blockBytes
                let hm = p.assumingMemoryBound(to: UInt8.self)
                var q = (p + 32).assumingMemoryBound(to: UInt8.self)
                let scales = Q3KScales.unpack(p + 96)
                let d = half(p, 108)
                var y = out + b * 256, k = 0
                var m: UInt8 = 1
                for _ in 0..<2 {
                    for j in 0..<4 {
                        let shift = UInt8(2 * j)
                        for half16 in 0..<2 {
                            let dl = d * Float(Int32(scales[k]) - 32)
                            k += 1
                            for l in 0..<16 {
                                let i = l + 16 * half16
                                let low = Int32((q[i] >> shift) & 3), high: Int32 = hm[i] & m != 0 ? 0 : 4
                                y[l] = dl * Float(low - high)
                            }
                            y += 16
                        }
                        m <<= 1
                    }
                    q += 32
                }
            }
        default:
            preconditionFailure("\(type) is not decodable; callers check isSupported")
        }
    }

    /// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block.
    @inline(__always) static func scaleMin(_ j: Int, _ q: UnsafePointer<UInt8>) -> (UInt8, UInt8) {
        if j < 4 { return (q[j] & 63, q[j + 4] & 63) }
        return ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_0, Q4_1 and Q8_0 blocks as Strata groups. A block of 32 values is x = d * q + m with f16
/// d and m (Q4_1), x = d * (q - 8) (Q4_0) or x = d * q with signed 8-bit q (Q8_0). Strata's
/// group is x = step * code + min with f16 step and min: step = d, and min = m, -8d or -128d,
/// which f16 holds exactly (a power-of-two multiple). The 4-bit packing is the same in both
/// (value j in the low nibble of byte j, value j + 16 in its high nibble); 8-bit codes are
/// q + 128. So every value decodes to the same f32 as ggml's dequantization.
public enum GGUFExact {
    /// Writes the group codes of one block into `codes` (the group's packed bytes) and returns
    /// its (step, min).
    @inline(__always)
    public static func group(_ block: UnsafeRawPointer, type: GGMLType, codes: UnsafeMutablePointer<UInt8>) -> (Float16, Float16) {
        let d = Float16(bitPattern: block.loadUnaligned(as: UInt16.self))
        switch type {
        case .q4_1:
            let m = Float16(bitPattern: block.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            codes.initialize(from: (block + 4).assumingMemoryBound(to: UInt8.self), count: 16)
            return (d, m)
        case .q4_0:
            codes.initialize(from: (block + 2).assumingMemoryBound(to: UInt8.self), count: 16)
            return (d, -8 * d)
        case .q8_0:
            let q = (block + 2).assumingMemoryBound(to: UInt8.self)
            for j in 0..<32 { codes[j] = q[j] ^ 0x80 }
            return (d, -128 * d)
        default:
            preconditionFailure("\(type) has no exact group form")
        }
    }

    /// Whether every block's minimum is representable: -8d and -128d overflow f16 for |d| above
    /// 8188 and 511 (never in trained weights; a file with such a block is decoded to f32).
    public static func isExact(_ bytes: UnsafeRawBufferPointer, type: GGMLType) -> Bool {
        guard type != .q4_1 else { return true }
        let limit: Float = type == .q4_0 ? 8188 : 511
        for b in 0..<(bytes.count / type.blockBytes) {
            let d = Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: b * type.blockBytes, as: UInt16.self)))
            if !(abs(d) <= limit) { return false }
        }
        return true
    }

    /// The tensor as a Strata quantized tensor (groups of 32 along each row).
    public static func quantized(_ bytes: UnsafeRawBufferPointer, type: GGMLType, shape: [Int]) -> QuantizedTensor {
        let scheme = try! QuantizationScheme(bits: type.exactBits!, groupSize: 32)
        let blocks = bytes.count / type.blockBytes, per = scheme.bytesPerGroup
        var data = [UInt8](repeating: 0, count: blocks * per)
        var steps = [Float16](repeating: 0, count: blocks), mins = [Float16](repeating: 0, count: blocks)
        let base = bytes.baseAddress!
        data.withUnsafeMutableBufferPointer { out in
            for b in 0..<blocks {
                (steps[b], mins[b]) = group(base + b * type.blockBytes, type: type, codes: out.baseAddress! + b * per)
            }
        }
        return QuantizedTensor(shape: shape, scheme: scheme, data: data, steps: steps, mins: mins)
    }
}

/// Q3_K's sixteen 6-bit scales, packed in 12 bytes: low 4 bits in bytes 0-7 (two per byte),
/// high 2 bits in bytes 8-11 (four per byte).
enum Q3KScales {
    static func unpack(_ p: UnsafeRawPointer) -> [UInt8] {
        var aux = (0..<3).map { UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
        let kmask1: UInt32 = 0x0303_0303, kmask2: UInt32 = 0x0f0f_0f0f
        let tmp = aux[2]
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
        aux.append(((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4))
        aux[0] = (aux[0] & kmask2) | ((tmp & kmask1) << 4)
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
        return aux.flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> (8 * UInt32($0))) } }
    }
}
