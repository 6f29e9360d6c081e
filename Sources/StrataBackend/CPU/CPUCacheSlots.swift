import StrataCore
#if canImport(Glibc)
import Glibc
#endif

extension CPUBackend {
    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        TensorViews.cacheRows(cache, rows, backendName: name)
    }

    public func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        // memmove: a shift within one sequence overlaps itself.
        let from = source.buffer.pointer, into = destination.buffer.pointer
        for s in TensorViews.cacheCopySegments(source, row: row, positions: positions, to: destination, toRow: toRow, at: to) {
            memmove(into + s.to, from + s.from, s.count)
        }
    }
}
