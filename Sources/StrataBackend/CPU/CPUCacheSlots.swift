import StrataCore
#if canImport(Glibc)
import Glibc
#endif

extension CPUBackend {
    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        TensorViews.cacheRows(cache, rows, backendName: name)
    }

    public func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        TensorViews.validateCopy(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
        guard !positions.isEmpty, source.buffer !== destination.buffer || row != toRow || positions.lowerBound != to else { return }
        let kvHeads = source.shape[1], d = source.shape[3]
        let sourceCapacity = source.shape[2], destinationCapacity = destination.shape[2]
        // memmove per head: a shift within one sequence overlaps itself.
        func copy(_ from: UnsafeMutableRawPointer, _ into: UnsafeMutableRawPointer, unitBytes: Int) {
            for h in 0..<kvHeads {
                let a = ((row * kvHeads + h) * sourceCapacity + positions.lowerBound) * unitBytes
                let b = ((toRow * kvHeads + h) * destinationCapacity + to) * unitBytes
                memmove(into + b, from + a, positions.count * unitBytes)
            }
        }
        let from = source.buffer.pointer, into = destination.buffer.pointer
        if let q = source.quantization, let r = destination.quantization {
            let groups = q.geometry.groupsAlongAxis
            copy(from, into, unitBytes: groups * q.scheme.bytesPerGroup)
            copy(from + q.stepsOffset, into + r.stepsOffset, unitBytes: groups * 2)
            copy(from + q.minsOffset, into + r.minsOffset, unitBytes: groups * 2)
        } else {
            copy(from, into, unitBytes: d * source.dtype.byteSize)
        }
    }
}
