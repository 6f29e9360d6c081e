import CStrataKernels
import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// Prefill-sized matmuls against f16, bf16 or f32 weights on AMX tiles with f32-grade accuracy
/// (`--matmul-precision bf16x3`): x and w are each split into a bf16 high part and a bf16
/// remainder, and three tile products (hi*hi + hi*lo + lo*hi) are summed in f32
/// (`strata_amx_split_weights`, `strata_amx_split_product`). An f16 weight is exactly its two parts, so against f16 weights only
/// x is rounded, at about 16 significant bits instead of f32's 24 (a rounding to bf16, what
/// `--weight-format bf16` does, keeps 8). Three passes on the tiles still beat OpenBLAS's f32
/// sgemm: 1.4-2x on two Sapphire Rapids vCPUs (`strata bench-gemm`, BENCHMARKS.md).
public enum SplitBF16GEMM {
    /// Whether this machine runs the split kernel: AMX-BF16 tiles granted to this process, and
    /// `STRATA_CPU_ISA` not forcing a CPU without them (`baseline`, `avx512-bf16`).
    public static let available: Bool = {
        let requested = getenv(MatrixUnits.environmentKey).map { String(cString: $0) } ?? "auto"
        guard requested == "auto" || requested == MatrixUnits.Kind.amx.rawValue else { return false }
        return strata_amx_bf16_supported() != 0
    }()

    /// Below this many rows the fused kernels (`HalfGEMM`) stay: each weight element is split
    /// on every call, which the tiles repay only when many rows use it.
    static var minRows: Int { HalfGEMM.maxRows + 1 }

    /// x [m, k] split into the kernel's layout: a buffer of `SplitRows.floats` values that the
    /// caller releases, split in parallel by rows (one split serves every weight x meets).
    struct SplitRows {
        let pointer: UnsafeMutablePointer<Float>
        let floats: Int
        var bf16: UnsafePointer<UInt16> { UnsafePointer(aligned(pointer)) }
    }

    /// A scratch buffer's first 64-byte boundary as bf16 values (buffers are asked for 16
    /// floats more): a tile row that straddles two cache lines costs two loads.
    static func aligned(_ buffer: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<UInt16> {
        let address = (Int(bitPattern: buffer) + 63) & ~63
        return UnsafeMutableRawPointer(bitPattern: address)!.assumingMemoryBound(to: UInt16.self)
    }

    static func split(_ x: UnsafePointer<Float>, m: Int, k: Int, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>)
        -> SplitRows {
        let width = strata_amx_split_width(Int32(k))
        let rows = (m + Int(STRATA_AMX_ROWS) - 1) / Int(STRATA_AMX_ROWS) * Int(STRATA_AMX_ROWS)
        let floats = rows * width / 2 + 16
        let buffer = scratch(floats)
        let halves = aligned(buffer)
        // The kernel reads whole 32-row blocks: rows past m are zero.
        (halves + m * width).update(repeating: 0, count: (rows - m) * width)
        parallelFor(m, threads: threads, minimumPerThread: 16) { part in
            strata_amx_split_x(x + part.lowerBound * k, Int32(part.count), Int32(k), halves + part.lowerBound * width)
        }
        return SplitRows(pointer: buffer, floats: floats)
    }

    /// out[m, n] (row stride n) = beta * out + x * w^T for a weight of `dtype` with x split by
    /// `split`. The weight is split into tile panels once per call (a slab of up to 8 MiB of
    /// panels at a time, the workers taking panels in turn), then the workers take (column group,
    /// 256-row block) pieces in turn. Fine pieces matter here: the two vCPUs' tile rates
    /// differed by up to 2.4x at times, and with one half of the columns each a product waited
    /// for the slower one.
    static func multiply(m: Int, n: Int, k: Int, split: SplitRows, w: UnsafeRawPointer, dtype: DType,
                         out: UnsafeMutablePointer<Float>, beta: Float, threads: Int,
                         scratch: (Int) -> UnsafeMutablePointer<Float>, release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard m > 0, n > 0 else { return }
        let type = HalfGEMM.kernelType(dtype), accumulate: Int32 = beta == 0 ? 0 : 1
        let panelValues = strata_amx_panel_values(Int32(k)), group = strata_amx_group_columns(Int32(k))
        let rowBlock = 256, rowBlocks = (m + rowBlock - 1) / rowBlock
        let slab = max(group, (8 << 20) / max(panelValues / 8, 1) / group * group)
        let floats = (slab / 16) * panelValues / 2 + 16
        let buffer = scratch(floats)
        defer { release(buffer, floats) }
        let panels = aligned(buffer)
        for start in stride(from: 0, to: n, by: slab) {
            let columns = min(slab, n - start), count = (columns + 15) / 16
            parallelChunks(count, threads: threads, grain: 4) { range in
                strata_amx_split_weights(w, type, Int32(k), start + range.lowerBound * 16, min(start + range.upperBound * 16, n),
                                         panels + range.lowerBound * panelValues)
            }
            let groups = (columns + group - 1) / group
            parallelChunks(groups * rowBlocks, threads: threads, grain: 1) { pieces in
                for piece in pieces {
                    let g = piece / rowBlocks, rows = (piece % rowBlocks) * rowBlock
                    let first = g * group, width = min(group, columns - first)
                    strata_amx_split_product(Int32(rows), Int32(min(m, rows + rowBlock)), Int32(k), split.bf16,
                                             panels + (first / 16) * panelValues, width, out + start + first, n, accumulate)
                }
            }
        }
    }
}
