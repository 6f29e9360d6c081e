#if canImport(Glibc)
import Glibc
#endif
import CStrataKernels
import StrataCore

/// Small-batch products with 4-bit and 8-bit weights as integer dot products, as llama.cpp
/// multiplies its Q4_0 and Q8_0 blocks: AVX512-VNNI `vpdpbusd` (unsigned weight codes times
/// int8 activations) where the CPU has it, else AVX2 `vpmaddubsw` + `vpmaddwd` for 4-bit codes
/// (bit for bit the same results; 8-bit codes could saturate its 16-bit pairs and stay on the
/// f32 path). The activations are quantized to int8 per block of 32 values (scale = max
/// |x| / 127; per block, not per weight group, because OPT-style activations carry outlier
/// features that would coarsen a whole 64-value group), so results move slightly: opt-in
/// (`--int8-activations`), never the default path the fixtures hold to 1e-4. The kernels are C
/// with their own target attributes (the rest of the binary targets Haswell);
/// `STRATA_CPU_ISA=baseline` forces the AVX2 form.
enum Int8GEMM {
    /// Up to this many rows (small decode batches: one 4-row tile, so each weight block is decoded
    /// once per call); from 8 rows on the f32 fused kernel was as fast or faster (Llama-250M Q4_0
    /// decode, 2 threads: 1 row 15 -> 38-47 tokens/s, 2 rows 27 -> 55, 4 rows 56 -> 72, 8 rows
    /// 78 vs 76, 16 rows 111 vs 80).
    static let maxRows = 4

    /// Whether the AVX512-VNNI form runs (else the AVX2 one).
    static let vnni: Bool = {
        if let isa = getenv(MatrixUnits.environmentKey), String(cString: isa) == "baseline" { return false }
        return strata_int8_supported() != 0
    }()

    /// Whether `rows` rows against weights of `bits` have an integer kernel on this CPU: up to
    /// `maxRows` rows, except one row without VNNI, where the f32 row kernel
    /// (`strata_quantized_dot_row`) was faster than the AVX2 form (Zen 3, Q4_0 Llama-250M
    /// batch-1 decode: 44 against 37 tokens/s; at 4 rows the AVX2 form won, 68 against 58).
    static func takes(bits: Int, rows: Int) -> Bool {
        guard bits == 4 || bits == 8, rows <= maxRows else { return false }
        return vnni || (rows > 1 && strata_int8_avx2_supports(Int32(bits)) != 0)
    }

    /// Whether `--int8-activations` takes this product (groups along k of whole 32-value blocks).
    static func runs(_ layout: QuantizedLayout, k: Int, rows: Int) -> Bool {
        takes(bits: layout.scheme.bits, rows: rows) && layout.geometry.inner == 1 && layout.scheme.groupSize % 32 == 0
            && k % layout.scheme.groupSize == 0
    }

    /// The kernel's name, for `strata bench-gemm`.
    static var kernel: String { vnni ? "int8-vnni" : "int8-avx2" }

    /// out = beta * out + x * weight^T over `threads` workers split by output columns.
    static func run(m: Int, k: Int, x: UnsafePointer<Float>, weight: Tensor, out: UnsafeMutablePointer<Float>, ldc: Int, beta: Float,
                    threads: Int) {
        let q = weight.quantization!
        let groupSize = q.scheme.groupSize, groups = k / groupSize
        let codes = UnsafeMutablePointer<Int8>.allocate(capacity: m * k)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: m * k / 32)
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: m * groups)
        defer { codes.deallocate(); scales.deallocate(); sums.deallocate() }
        let rows = strata_int8_rows(codes: codes, scales: scales, sums: sums)
        strata_int8_quantize_rows(x, Int32(m), Int32(k), Int32(k), Int32(groupSize), Int32(q.scheme.bits), rows)
        let base = weight.buffer.pointer
        let data = base.assumingMemoryBound(to: UInt8.self)
        let steps = (base + q.stepsOffset).assumingMemoryBound(to: UInt16.self)
        let mins = (base + q.minsOffset).assumingMemoryBound(to: UInt16.self)
        let n = weight.shape[0]
        parallelFor(n, threads: threads, minimumPerThread: 64) { columns in
            withUnsafePointer(to: rows) { r in
                strata_int8_gemm(r, Int32(m), Int32(k), Int32(groupSize), Int32(q.scheme.bits), data, steps, mins,
                                 Int32(columns.lowerBound), Int32(columns.upperBound), out, Int32(ldc), beta, vnni ? 1 : 0)
            }
        }
    }
}

extension CPUBackend {
    /// Whether `int8Activations` runs integer dot products for `rows` rows against weights of
    /// `bits` on this CPU (else the flag is a no-op for them).
    public static func int8DotProducts(bits: Int, rows: Int) -> Bool { Int8GEMM.takes(bits: bits, rows: rows) }
}
