import CStrataKernels

/// Softmax for attention rows, 16 lanes in C where the CPU has AVX-512 (`elementwise.c`), else
/// 8 lanes here: libm's scalar `expf` was ~2% of a bf16 benchmark's time by itself (one call per
/// (query, key) pair at prefill).
enum Softmax {
    /// e^x for each lane, Cephes' single-precision method: x = n ln2 + r with |r| <= ln2/2,
    /// e^r by a degree-6 polynomial, 2^n put into the exponent bits. Relative error ~2e-7
    /// (1-2 ulp) over the clamped range; lanes below -87.3 flush to 0 as softmax wants.
    @inline(__always)
    static func exp(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let low = SIMD8<Float>(repeating: -87.33654), high = SIMD8<Float>(repeating: 88.37626)
        let clamped = x.replacing(with: low, where: x .< low).replacing(with: high, where: x .> high)
        let n = (clamped * 1.44269504088896341).rounded(.toNearestOrEven)
        var r = clamped.addingProduct(n, SIMD8(repeating: -0.693359375))
        r = r.addingProduct(n, SIMD8(repeating: 2.12194440e-4))
        let r2 = r * r
        var p = SIMD8<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let e = (p * r2 + r) + 1
        // n is a whole number in [-127, 128]: adding 1.5 * 2^23 puts it in the low mantissa bits
        // (the generic SIMD float-to-int conversion is an unspecialized library call).
        let magic = SIMD8<Float>(repeating: 12582912)
        let whole = unsafeBitCast(n + magic, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        let scale = unsafeBitCast((whole &+ 127) &<< 23, to: SIMD8<Float>.self)
        return (e * scale).replacing(with: 0, where: x .< low)
    }

    /// row[0..<count] = exp(row - max) / sum, in place.
    @inline(__always)
    static func normalize(_ row: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        if CPUSetup.avx512Kernels {
            strata_softmax_row(row, Int32(count))
            return
        }
        let vectorEnd = count & ~7
        var maxVector = SIMD8<Float>(repeating: -.infinity)
        var j = 0
        while j < vectorEnd {
            let v = UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self)
            maxVector = maxVector.replacing(with: v, where: v .> maxVector)
            j += 8
        }
        var maxScore = maxVector.max()
        while j < count { maxScore = max(maxScore, row[j]); j += 1 }
        var sumVector = SIMD8<Float>()
        j = 0
        while j < vectorEnd {
            let e = exp(UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self) - maxScore)
            UnsafeMutableRawPointer(row + j).storeBytes(of: e, as: SIMD8<Float>.self)
            sumVector += e
            j += 8
        }
        if j < count {
            var tail = SIMD8<Float>(repeating: -.infinity)
            for i in j..<count { tail[i - j] = row[i] }
            let e = exp(tail - maxScore)
            for i in j..<count { row[i] = e[i - j] }
            sumVector += e
        }
        let inv = 1 / sumVector.sum()
        j = 0
        while j < vectorEnd {
            let v = UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self) * inv
            UnsafeMutableRawPointer(row + j).storeBytes(of: v, as: SIMD8<Float>.self)
            j += 8
        }
        while j < count { row[j] *= inv; j += 1 }
    }
}
