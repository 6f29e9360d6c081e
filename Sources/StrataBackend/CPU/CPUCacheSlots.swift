import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// Views and copy checks of KV-cache tensors [batch, kvHeads, capacity, headDim] shared by the
/// backends: a view is address arithmetic, whatever kind of memory the address is in.
enum CacheViews {
    static func rows(_ cache: Tensor, _ rows: Range<Int>, backendName: String) -> Tensor {
        precondition(cache.shape.count == 4 && rows.upperBound <= cache.shape[0], "cacheRows: rows \(rows) of \(cache.shape)")
        let shape = [rows.count] + cache.shape.dropFirst()
        let perRow = cache.shape[1] * cache.shape[2]
        if let q = cache.quantization {
            // Groups run along head_dim, so a sequence's groups are contiguous in group order.
            let groupsPerRow = perRow * q.geometry.groupsAlongAxis
            let groups = (rows.lowerBound * groupsPerRow)..<(rows.upperBound * groupsPerRow)
            let layout = q.slice(groups: groups, shape: shape)
            let buffer = DeviceBuffer(pointer: cache.buffer.pointer + groups.lowerBound * q.scheme.bytesPerGroup, byteCount: layout.byteCount,
                                      backendName: backendName, owner: cache.buffer, deallocate: nil)
            return Tensor(shape: shape, dtype: .u8, buffer: buffer, quantization: layout)
        }
        let bytes = perRow * cache.shape[3] * cache.dtype.byteSize
        let buffer = DeviceBuffer(pointer: cache.buffer.pointer + rows.lowerBound * bytes, byteCount: rows.count * bytes,
                                  backendName: backendName, owner: cache.buffer, deallocate: nil)
        return Tensor(shape: shape, dtype: cache.dtype, buffer: buffer)
    }

    static func validateCopy(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        precondition(destination.shape[1] == source.shape[1] && destination.shape[3] == source.shape[3]
                     && (source.quantization == nil) == (destination.quantization == nil)
                     && source.quantization?.scheme == destination.quantization?.scheme,
                     "copyCachePositions: \(source.shape) into \(destination.shape) of another kind")
        precondition(row < source.shape[0] && toRow < destination.shape[0] && positions.upperBound <= source.shape[2]
                     && to + positions.count <= destination.shape[2],
                     "copyCachePositions: \(positions) of row \(row) of \(source.shape) to \(to) of row \(toRow) of \(destination.shape)")
    }
}

extension CPUBackend {
    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        CacheViews.rows(cache, rows, backendName: name)
    }

    public func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        CacheViews.validateCopy(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
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
