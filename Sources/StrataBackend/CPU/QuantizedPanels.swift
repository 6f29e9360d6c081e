import CStrataKernels
import StrataCore

/// Group-quantized weights (a GGUF Q4_0 / Q8_0 file, or Strata's own 4/8-bit groups along rows)
/// on the bf16 matrix units under `--weight-format bf16`: the codes stay packed in memory and
/// are decoded to bf16 straight into oneDNN's panel layout (`strata_decode_panels_bf16`,
/// AVX-512) right before oneDNN multiplies them. A decode step decodes an L2-sized run of panels
/// per oneDNN call on each worker, so a 4-bit weight is read from memory once per step at a
/// quarter of bf16's bytes; a prefill decodes the whole weight once and makes one call on
/// oneDNN's team; the panels hold exactly what decoding to f32 and rounding to bf16 gives.
/// Decode steps of up to `dotMaxRows` rows skip the panels and the decoding: the codes
/// themselves, as exact bf16 numbers, enter AVX512-BF16 dot products and each group's step and
/// minimum are applied to the sums (`strata_quantized_dot_bf16`), so there the weights are exact
/// (not rounded to bf16); the inputs are rounded to bf16 on both paths.
enum QuantizedPanels {
    /// The decoder needs AVX-512 with BF16, which every CPU with AMX or AVX512-BF16 has; the
    /// check keeps `STRATA_CPU_ISA` overrides and odd virtual CPUs on the other paths.
    static let available = strata_panels_supported() != 0

    /// Whether this weight's layout decodes to panels: groups along rows, 4 or 8 bits, groups
    /// made of whole 32-value blocks (a panel block is 32 k values deep), or 8-bit groups of 16
    /// two to a block (a GGUF Q6_K head).
    static func supports(_ layout: QuantizedLayout, k: Int) -> Bool {
        let s = layout.scheme
        guard available, layout.geometry.inner == 1, k % 32 == 0 else { return false }
        if s.bits == 8 && s.groupSize == 16 { return true }
        return (s.bits == 4 || s.bits == 8) && s.groupSize % 32 == 0 && k % s.groupSize == 0
            && (s.bits == 8 || s.groupSize == 32 || s.groupSize % 64 == 0)
    }

    /// Decoded bf16 bytes per oneDNN call on a decode step: a run of panels that stays in L2
    /// (2 MiB per core on the AMX Xeons) next to oneDNN's own working set.
    static let runBytes = 1 << 19

    /// Up to this many rows (decode steps of small batches) the weight is not put into panels:
    /// `strata_quantized_dot_bf16` multiplies the codes with AVX512-BF16 dot products. Llama-250M
    /// Q4_0, 2 threads, decode tokens/s, dot (when it still decoded each block) vs panels: 29-31
    /// vs 14-16 at batch 1, 82-104 vs 49-56 at 4, 112-125 vs 90-100 at 8; at 16 the panels won
    /// (148 vs 114-143). Without the decoding, batch 1 runs at 49-59.
    static let dotMaxRows = 8

    /// The kernel `multiply` runs for `rows` rows against an n x k weight, by name.
    static func kernel(rows: Int, n: Int, k: Int) -> String {
        rows <= dotMaxRows ? "avx512-bf16-dot" : "panels+" + BF16GEMM.kernel(rows: rows, n: n, k: k)
    }

    /// Panels start on a cache line: each store of the decoder then fills one line (at malloc's
    /// 16-byte alignment every store straddled two; 6% of a decode step's samples sat on them).
    static let alignmentSlack = 16
    static func aligned(_ p: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        let address = UInt(bitPattern: p)
        return UnsafeMutablePointer(bitPattern: (address + 63) & ~63)!
    }

    /// Weight rows `rows` (the first a multiple of 64) decoded into consecutive panels.
    static func decode(_ weight: Tensor, rows: Range<Int>, into panels: UnsafeMutablePointer<UInt16>) {
        guard let q = weight.quantization, !rows.isEmpty else { return }
        let base = weight.buffer.pointer
        strata_decode_panels_bf16(base.assumingMemoryBound(to: UInt8.self),
                                  (base + q.stepsOffset).assumingMemoryBound(to: UInt16.self),
                                  (base + q.minsOffset).assumingMemoryBound(to: UInt16.self),
                                  Int32(q.scheme.bits), Int32(q.scheme.groupSize), Int32(weight.columns),
                                  rows.lowerBound, rows.upperBound, panels)
    }

    /// out = a * weight^T (+ bias) for activations already rounded by `BF16GEMM.round`.
    static func multiply(m: Int, n: Int, k: Int, a rounded: UnsafeMutablePointer<Float>, weight: Tensor, bias: UnsafePointer<Float>?,
                         out: UnsafeMutablePointer<Float>, threads: Int, scratch: (Int) -> UnsafeMutablePointer<Float>,
                         release: (UnsafeMutablePointer<Float>, Int) -> Void) {
        guard m > 0, n > 0 else { return }
        guard let dnnl = MatrixUnits.oneDNN else { preconditionFailure("QuantizedPanels runs only where oneDNN serves") }
        let width = PanelLayout.panelWidth, panelBytes = k * width * 2
        if m >= BF16GEMM.minTeamRows {
            let layout = PanelLayout(n: n, k: k)
            let floats = (layout.byteCount + 3) / 4 + alignmentSlack
            let storage = scratch(floats)
            defer { release(storage, floats) }
            let decoded = aligned(storage)
            let halves = UnsafeMutableRawPointer(decoded).assumingMemoryBound(to: UInt16.self)
            parallelFor(layout.panels, threads: threads) { panels in
                decode(weight, rows: (panels.lowerBound * width)..<min(n, panels.upperBound * width),
                       into: halves + panels.lowerBound * layout.panelElements)
            }
            BF16GEMM.multiply(m: m, n: n, k: k, a: rounded, w: UnsafeRawPointer(decoded), panels: layout, bias: bias, out: out,
                              threads: threads, scratch: scratch, release: release)
            return
        }
        if m <= dotMaxRows {
            let a = UnsafeRawPointer(rounded).assumingMemoryBound(to: UInt16.self)
            let q = weight.quantization!, base = weight.buffer.pointer
            // The inputs' group sums, once for every worker's columns.
            let sumCount = m * (k / q.scheme.groupSize)
            let sums = scratch(max(1, sumCount))
            defer { release(sums, max(1, sumCount)) }
            strata_bf16_group_sums(a, Int32(m), Int32(k), Int32(q.scheme.groupSize), sums)
            // Chunks of about an eighth of a worker's share, taken in turn (`parallelChunks`).
            let grain = max(16, (n / (threads * 8) + 15) / 16 * 16)
            parallelChunks(n, threads: threads, grain: grain) { columns in
                strata_quantized_dot_bf16(a, Int32(m), Int32(k), sums, base.assumingMemoryBound(to: UInt8.self),
                                          (base + q.stepsOffset).assumingMemoryBound(to: UInt16.self),
                                          (base + q.minsOffset).assumingMemoryBound(to: UInt16.self), Int32(q.zero ?? -1),
                                          Int32(q.scheme.bits), Int32(q.scheme.groupSize), columns.lowerBound, columns.upperBound,
                                          bias, out, n)
            }
            return
        }
        let a = UnsafeRawPointer(rounded)
        let runRows = max(1, runBytes / panelBytes) * width
        PanelLayout.forEachSlab(n: n, threads: threads) { first, slabWidth in
            let runFloats = min(runRows, slabWidth + width) * k / 2 + alignmentSlack
            let storage = scratch(runFloats), dense = scratch(m * min(runRows, slabWidth))
            defer { release(storage, runFloats); release(dense, m * min(runRows, slabWidth)) }
            let decoded = aligned(storage)
            let halves = UnsafeMutableRawPointer(decoded).assumingMemoryBound(to: UInt16.self)
            var row = first
            while row < first + slabWidth {
                let count = min(runRows, first + slabWidth - row)
                decode(weight, rows: row..<(row + count), into: halves)
                let whole = count == n
                dnnl.matmul(m: m, n: count, k: k, a: a, b: UnsafeRawPointer(decoded), panels: true, bias: bias.map { $0 + row },
                            c: whole ? out : dense, threads: 1)
                if !whole {
                    for r in 0..<m { (out + r * n + row).update(from: dense + r * count, count: count) }
                }
                row += count
            }
        }
    }
}
