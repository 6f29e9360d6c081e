/// Asymmetric min/max group-wise quantization (FlexGen's scheme, at 2, 3, 4 or 8 bits).
///
/// A tensor is viewed as [outer, extent, inner] around its group axis; each run of `groupSize`
/// consecutive values along that axis (padded at the end of the axis) is one group with its own
/// f16 step and minimum: x ~ q * step + min, q in 0 ... 2^bits - 1. Weights [out, in] grouped
/// along axis 1 keep each output row's groups contiguous, which is what a fused
/// dequantize-GEMM wants; FlexGen's axis 0 is available too. The KV cache groups along head_dim.
public struct QuantizationScheme: Sendable, Hashable, CustomStringConvertible {
    public static let supportedBits = [2, 3, 4, 8]

    public let bits: Int
    public let groupSize: Int
    /// Axis the groups run along; negative counts from the end (-1 = last).
    public let groupAxis: Int

    public init(bits: Int, groupSize: Int = 64, groupAxis: Int = -1) throws {
        guard Self.supportedBits.contains(bits) else {
            throw StrataError.invalidRequest("quantization bits must be one of \(Self.supportedBits.map(String.init).joined(separator: ", ")), not \(bits)")
        }
        guard groupSize >= 8, groupSize % 8 == 0 else {
            throw StrataError.invalidRequest("quantization group size must be a positive multiple of 8, not \(groupSize)")
        }
        self.bits = bits
        self.groupSize = groupSize
        self.groupAxis = groupAxis
    }

    /// FlexGen's default: 4 bits, groups of 64.
    public static let int4 = try! QuantizationScheme(bits: 4)

    public var levels: Int { (1 << bits) - 1 }
    public var bytesPerGroup: Int { groupSize * bits / 8 }
    public var description: String { "\(bits)-bit g\(groupSize) axis \(groupAxis)" }

    /// The [outer, extent, inner] view of `shape` around the group axis.
    public func geometry(_ shape: [Int]) -> GroupGeometry {
        let axis = groupAxis < 0 ? shape.count + groupAxis : groupAxis
        precondition(axis >= 0 && axis < shape.count, "group axis \(groupAxis) is outside shape \(shape)")
        let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *)
        return GroupGeometry(outer: outer, extent: shape[axis], inner: inner,
                             groupsAlongAxis: (shape[axis] + groupSize - 1) / groupSize)
    }
}

public struct GroupGeometry: Sendable, Equatable {
    public let outer: Int, extent: Int, inner: Int, groupsAlongAxis: Int
    public var groupCount: Int { outer * groupsAlongAxis * inner }
}

/// A quantized tensor in host memory: packed codes, then per-group f16 step and minimum, in
/// group order (outer, group along axis, inner).
public struct QuantizedTensor: Sendable {
    public let shape: [Int]
    public let scheme: QuantizationScheme
    public var data: [UInt8]
    public var steps: [Float16]
    public var mins: [Float16]

    public init(shape: [Int], scheme: QuantizationScheme, data: [UInt8], steps: [Float16], mins: [Float16]) {
        self.shape = shape; self.scheme = scheme; self.data = data; self.steps = steps; self.mins = mins
    }

    public var byteCount: Int { data.count + 2 * steps.count + 2 * mins.count }

    /// The code z with minimum = -z * step in every group, when there is one: symmetric groups,
    /// as GGUF's Q4_0 (z = 8), Q8_0 (128) and Q6_K (32, see `GGUFHead`) make them. A kernel that
    /// knows z never reads the minimums (1/9 of a Q4_0 weight's bytes).
    public var zeroCode: Int? {
        guard let first = steps.firstIndex(where: { $0 != 0 && Float($0).isFinite }) else { return nil }
        let z = -Float(mins[first]) / Float(steps[first])
        guard z >= 0, z <= Float(scheme.levels), z == z.rounded() else { return nil }
        for i in steps.indices where Float(mins[i]) != -z * Float(steps[i]) { return nil }
        return Int(z)
    }
}

public enum GroupQuantizer {
    /// Quantizes `values` (row-major, `shape`).
    public static func quantize(_ values: UnsafePointer<Float>, shape: [Int], scheme: QuantizationScheme) -> QuantizedTensor {
        let g = scheme.geometry(shape)
        var data = [UInt8](repeating: 0, count: g.groupCount * scheme.bytesPerGroup)
        var steps = [Float16](repeating: 0, count: g.groupCount), mins = [Float16](repeating: 0, count: g.groupCount)
        var group = [Float](repeating: 0, count: scheme.groupSize)
        data.withUnsafeMutableBufferPointer { out in
            for o in 0..<g.outer {
                for a in 0..<g.groupsAlongAxis {
                    let first = a * scheme.groupSize, count = min(scheme.groupSize, g.extent - first)
                    for i in 0..<g.inner {
                        let index = (o * g.groupsAlongAxis + a) * g.inner + i
                        let base = values + (o * g.extent + first) * g.inner + i
                        for j in 0..<count { group[j] = base[j * g.inner] }
                        let (step, minimum) = group.withUnsafeBufferPointer {
                            quantizeGroup($0.baseAddress!, count: count, scheme: scheme,
                                          into: out.baseAddress! + index * scheme.bytesPerGroup)
                        }
                        steps[index] = step
                        mins[index] = minimum
                    }
                }
            }
        }
        return QuantizedTensor(shape: shape, scheme: scheme, data: data, steps: steps, mins: mins)
    }

    public static func quantize(_ values: [Float], shape: [Int], scheme: QuantizationScheme) -> QuantizedTensor {
        precondition(values.count == shape.reduce(1, *), "shape \(shape) does not match \(values.count) values")
        return values.withUnsafeBufferPointer { quantize($0.baseAddress!, shape: shape, scheme: scheme) }
    }

    public static func dequantize(_ q: QuantizedTensor) -> [Float] {
        let g = q.scheme.geometry(q.shape)
        var out = [Float](repeating: 0, count: q.shape.reduce(1, *))
        var group = [Float](repeating: 0, count: q.scheme.groupSize)
        q.data.withUnsafeBufferPointer { data in
            group.withUnsafeMutableBufferPointer { buffer in
                for o in 0..<g.outer {
                    for a in 0..<g.groupsAlongAxis {
                        let first = a * q.scheme.groupSize, count = min(q.scheme.groupSize, g.extent - first)
                        for i in 0..<g.inner {
                            let index = (o * g.groupsAlongAxis + a) * g.inner + i
                            dequantizeGroup(data.baseAddress! + index * q.scheme.bytesPerGroup, step: q.steps[index],
                                            minimum: q.mins[index], scheme: q.scheme, into: buffer.baseAddress!)
                            for j in 0..<count { out[(o * g.extent + first + j) * g.inner + i] = buffer[j] }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Quantizes one group of `count` <= groupSize values (the rest of the group is padding and
    /// encodes as 0) into `scheme.bytesPerGroup` bytes. Returns (step, minimum) in f16.
    ///
    /// The minimum is rounded down and the step up to f16 before the codes are chosen, so every
    /// value lies in [min, min + levels * step] and decodes within half a step of itself.
    @inline(__always)
    public static func quantizeGroup(_ values: UnsafePointer<Float>, count: Int, scheme: QuantizationScheme,
                                     into out: UnsafeMutablePointer<UInt8>) -> (Float16, Float16) {
        var lo = Float.infinity, hi = -Float.infinity
        for j in 0..<count { lo = min(lo, values[j]); hi = max(hi, values[j]) }
        if count == 0 || !lo.isFinite || !hi.isFinite { lo = 0; hi = 0 }
        var minimum = Float16(lo)
        if Float(minimum) > lo { minimum = minimum.nextDown }
        let levels = Float(scheme.levels)
        var step = Float16((hi - Float(minimum)) / levels)
        while Float(minimum) + Float(step) * levels < hi { step = step.nextUp }
        let inverse = step > 0 ? 1 / Float(step) : 0
        let base = Float(minimum)
        let n = scheme.groupSize
        out.initialize(repeating: 0, count: scheme.bytesPerGroup)
        for j in 0..<count {
            let code = UInt8(min(levels, max(0, ((values[j] - base) * inverse).rounded())))
            switch scheme.bits {
            case 8: out[j] = code
            case 4: out[j % (n / 2)] |= code << (4 * UInt8(j / (n / 2)))
            case 2: out[j % (n / 4)] |= code << (2 * UInt8(j / (n / 4)))
            default:  // 3 bits: a little-endian bit stream
                let bit = 3 * j
                out[bit >> 3] |= code << UInt8(bit & 7)
                if bit & 7 > 5 { out[(bit >> 3) + 1] |= code >> UInt8(8 - bit & 7) }
            }
        }
        return (step, minimum)
    }

    /// Decodes one group (all `groupSize` values, padding included) into `out`.
    @inline(__always)
    public static func dequantizeGroup(_ bytes: UnsafePointer<UInt8>, step: Float16, minimum: Float16,
                                       scheme: QuantizationScheme, into out: UnsafeMutablePointer<Float>) {
        let s = Float(step), m = Float(minimum), n = scheme.groupSize
        switch scheme.bits {
        case 8:
            var j = 0
            let step = SIMD8<Float>(repeating: s), base = SIMD8<Float>(repeating: m)
            while j + 8 <= n {
                let codes = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: UnsafeRawPointer(bytes + j).loadUnaligned(as: SIMD8<UInt8>.self)))
                UnsafeMutableRawPointer(out + j).storeBytes(of: codes * step + base, as: SIMD8<Float>.self)
                j += 8
            }
            while j < n { out[j] = Float(bytes[j]) * s + m; j += 1 }
        case 4 where n % 16 == 0:
            // Eight bytes give eight low-half and eight high-half values of the group.
            let half = n / 2
            let step = SIMD8<Float>(repeating: s), base = SIMD8<Float>(repeating: m)
            for j in stride(from: 0, to: half, by: 8) {
                let b = UnsafeRawPointer(bytes + j).loadUnaligned(as: SIMD8<UInt8>.self)
                let low = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: b & 0xF))
                let high = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: b &>> 4))
                UnsafeMutableRawPointer(out + j).storeBytes(of: low * step + base, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(out + j + half).storeBytes(of: high * step + base, as: SIMD8<Float>.self)
            }
        case 4:
            let half = n / 2
            for j in 0..<half {
                let b = bytes[j]
                out[j] = Float(b & 0xF) * s + m
                out[j + half] = Float(b >> 4) * s + m
            }
        case 2:
            let quarter = n / 4
            for j in 0..<quarter {
                let b = bytes[j]
                out[j] = Float(b & 3) * s + m
                out[j + quarter] = Float((b >> 2) & 3) * s + m
                out[j + 2 * quarter] = Float((b >> 4) & 3) * s + m
                out[j + 3 * quarter] = Float(b >> 6) * s + m
            }
        default:
            for j in 0..<n {
                let bit = 3 * j
                var code = UInt16(bytes[bit >> 3]) >> UInt16(bit & 7)
                if bit & 7 > 5 { code |= UInt16(bytes[(bit >> 3) + 1]) << UInt16(8 - bit & 7) }
                out[j] = Float(code & 7) * s + m
            }
        }
    }
}
