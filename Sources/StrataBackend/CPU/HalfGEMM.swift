import COpenBLAS
import CStrataKernels

/// A weight element the fused tile can widen to f32 in registers.
protocol WeightElement {
    static func load8(_ p: UnsafePointer<Self>) -> SIMD8<Float>
    static func widen(_ v: Self) -> Float
}

extension Float16: WeightElement {
    @inline(__always) static func load8(_ p: UnsafePointer<Float16>) -> SIMD8<Float> {
        SIMD8<Float>(UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float16>.self))
    }
    @inline(__always) static func widen(_ v: Float16) -> Float { Float(v) }
}

/// A bf16 weight element (its 16 bits): widening is a shift into the high half of an f32.
struct BF16: WeightElement {
    let bits: UInt16

    @inline(__always) static func load8(_ p: UnsafePointer<BF16>) -> SIMD8<Float> {
        let halves = UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt16>.self)
        return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: halves) &<< 16, to: SIMD8<Float>.self)
    }
    @inline(__always) static func widen(_ v: BF16) -> Float { Float(bitPattern: UInt32(v.bits) << 16) }
}

extension Float: WeightElement {
    @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func widen(_ v: Float) -> Float { v }
}

/// out[m, n] = beta * out[m, n] + sum_k x[m, k] * w[n, k] with w stored as f16 (or bf16) and
/// widened in registers (F16C; a shift for bf16), for decode-sized batches where OpenBLAS would
/// first need a full f32 copy of the weight.
///
/// Register tile: 4 rows of x by 2 weight rows, 8 lanes along k. That is 8 accumulators plus
/// 6 loads per 8 FMAs, which fits AVX2's 16 vector registers without spills and keeps both
/// FMA pipes busy. The column pair is the outer loop, so each weight row is read from memory
/// once per call and stays in L1 while every row group of x (in L2) passes over it.
enum HalfGEMM {
    /// How far ahead (in f16 elements) the weight stream is prefetched while the first row group
    /// runs: far enough to cover DRAM latency, so weight loads overlap the FMAs instead of
    /// adding to them (decode batches are half memory-bound on f16 weights).
    static let prefetchDistance = 16384

    /// Up to this many rows the fused kernel beats widen-then-sgemm (measured with
    /// `strata bench-gemm`); above it the weight is reused enough for OpenBLAS to win.
    static let maxRows = 64

    /// The kernel `run` uses on this machine, by name (for `strata bench-gemm`): `strata_half_gemm`
    /// (AVX-512, 4 x 4 tiles of 16 lanes) where `CPUSetup.avx512Kernels`, else the AVX2 tile below.
    static var kernel: String { CPUSetup.avx512Kernels ? "avx512" : "avx2" }

    static func run<W: WeightElement>(m: Int, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<W>, columns: Range<Int>,
                    out: UnsafeMutablePointer<Float>, ldc: Int, beta: Float) {
        if CPUSetup.avx512Kernels, W.self == Float16.self || W.self == BF16.self {
            strata_half_gemm(Int32(m), Int32(k), x, UnsafeRawPointer(w).assumingMemoryBound(to: UInt16.self), W.self == BF16.self ? 1 : 0,
                             columns.lowerBound, columns.upperBound, out, ldc, beta == 0 ? 0 : 1)
            return
        }
        var n = columns.lowerBound
        while n < columns.upperBound {
            let pair = min(2, columns.upperBound - n)
            let w0 = w + n * k
            let w1 = w + (n + pair - 1) * k
            var r = 0
            while r < m {
                let rows = min(4, m - r)
                tile(k: k, x: x + r * k, rows: rows, w0: w0, w1: w1, out: out + r * ldc + n, ldc: ldc,
                     columns: pair, beta: beta, prefetch: r == 0)
                r += 4
            }
            n += pair
        }
    }

    /// One 4x2 tile. Missing rows/columns repeat the last valid one (their results are dropped),
    /// which keeps the hot loop free of branches.
    @inline(__always)
    static func tile<W: WeightElement>(k: Int, x: UnsafePointer<Float>, rows: Int, w0: UnsafePointer<W>,
                                       w1: UnsafePointer<W>, out: UnsafeMutablePointer<Float>, ldc: Int,
                                       columns: Int, beta: Float, prefetch: Bool) {
        let x0 = x, x1 = x + min(1, rows - 1) * k, x2 = x + min(2, rows - 1) * k, x3 = x + min(3, rows - 1) * k
        var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
        var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a30 = SIMD8<Float>(), a31 = SIMD8<Float>()
        let kVector = k & ~7
        var i = 0
        while i < kVector {
            // One 64-byte line per weight row every 32 elements: the lines this pair will need
            // `prefetchDistance` elements from now.
            if prefetch && i & 31 == 0 {
                strata_prefetch(w0 + i + prefetchDistance)
                strata_prefetch(w1 + i + prefetchDistance)
            }
            let v0 = W.load8(w0 + i), v1 = W.load8(w1 + i)
            let u0 = UnsafeRawPointer(x0 + i).loadUnaligned(as: SIMD8<Float>.self)
            a00 = a00.addingProduct(u0, v0); a01 = a01.addingProduct(u0, v1)
            let u1 = UnsafeRawPointer(x1 + i).loadUnaligned(as: SIMD8<Float>.self)
            a10 = a10.addingProduct(u1, v0); a11 = a11.addingProduct(u1, v1)
            let u2 = UnsafeRawPointer(x2 + i).loadUnaligned(as: SIMD8<Float>.self)
            a20 = a20.addingProduct(u2, v0); a21 = a21.addingProduct(u2, v1)
            let u3 = UnsafeRawPointer(x3 + i).loadUnaligned(as: SIMD8<Float>.self)
            a30 = a30.addingProduct(u3, v0); a31 = a31.addingProduct(u3, v1)
            i += 8
        }
        var s = (reduce(a00), reduce(a01), reduce(a10), reduce(a11), reduce(a20), reduce(a21), reduce(a30), reduce(a31))
        while i < k {
            let v0 = W.widen(w0[i]), v1 = W.widen(w1[i])
            s.0 += x0[i] * v0; s.1 += x0[i] * v1
            s.2 += x1[i] * v0; s.3 += x1[i] * v1
            s.4 += x2[i] * v0; s.5 += x2[i] * v1
            s.6 += x3[i] * v0; s.7 += x3[i] * v1
            i += 1
        }
        store(s.0, s.1, to: out, columns: columns, beta: beta)
        if rows > 1 { store(s.2, s.3, to: out + ldc, columns: columns, beta: beta) }
        if rows > 2 { store(s.4, s.5, to: out + 2 * ldc, columns: columns, beta: beta) }
        if rows > 3 { store(s.6, s.7, to: out + 3 * ldc, columns: columns, beta: beta) }
    }

    /// Pairwise horizontal sum: three dependent vector adds instead of `sum()`'s serial chain.
    @inline(__always)
    static func reduce(_ v: SIMD8<Float>) -> Float {
        let four = v.lowHalf + v.highHalf
        let two = four.lowHalf + four.highHalf
        return two[0] + two[1]
    }

    @inline(__always)
    private static func store(_ first: Float, _ second: Float, to out: UnsafeMutablePointer<Float>, columns: Int,
                              beta: Float) {
        if beta == 0 { out[0] = first } else { out[0] += first }
        if columns > 1 { if beta == 0 { out[1] = second } else { out[1] += second } }
    }
}
