import StrataCore
#if canImport(Glibc)
import Glibc
#endif

extension CPUBackend {
    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        precondition(cache.shape.count == 4 && rows.upperBound <= cache.shape[0], "cacheRows: rows \(rows) of \(cache.shape)")
        let shape = [rows.count] + cache.shape.dropFirst()
        let perRow = cache.shape[1] * cache.shape[2]
        if let q = cache.quantization {
            // Groups run along head_dim, so a sequence's groups are contiguous in group order.
            let groupsPerRow = perRow * q.geometry.groupsAlongAxis
            let groups = (rows.lowerBound * groupsPerRow)..<(rows.upperBound * groupsPerRow)
            let layout = q.slice(groups: groups, shape: shape)
            let buffer = DeviceBuffer(pointer: cache.buffer.pointer + groups.lowerBound * q.scheme.bytesPerGroup, byteCount: layout.byteCount,
                                      backendName: name, owner: cache.buffer, deallocate: nil)
            return Tensor(shape: shape, dtype: .u8, buffer: buffer, quantization: layout)
        }
        let bytes = perRow * cache.shape[3] * cache.dtype.byteSize
        let buffer = DeviceBuffer(pointer: cache.buffer.pointer + rows.lowerBound * bytes, byteCount: rows.count * bytes,
                                  backendName: name, owner: cache.buffer, deallocate: nil)
        return Tensor(shape: shape, dtype: cache.dtype, buffer: buffer)
    }

    public func moveCachePositions(_ cache: Tensor, row: Int, positions: Range<Int>, toRow: Int, to: Int) {
        let kvHeads = cache.shape[1], capacity = cache.shape[2], d = cache.shape[3]
        precondition(row < cache.shape[0] && toRow < cache.shape[0] && positions.upperBound <= capacity && to + positions.count <= capacity,
                     "moveCachePositions: \(positions) of row \(row) to \(to) of row \(toRow) in \(cache.shape)")
        guard !positions.isEmpty, row != toRow || positions.lowerBound != to else { return }
        let base = cache.buffer.pointer
        // memmove per head: a shift within one sequence overlaps itself.
        func move(_ region: UnsafeMutableRawPointer, unitBytes: Int) {
            for h in 0..<kvHeads {
                let from = ((row * kvHeads + h) * capacity + positions.lowerBound) * unitBytes
                let dest = ((toRow * kvHeads + h) * capacity + to) * unitBytes
                memmove(region + dest, region + from, positions.count * unitBytes)
            }
        }
        if let q = cache.quantization {
            let groups = q.geometry.groupsAlongAxis
            move(base, unitBytes: groups * q.scheme.bytesPerGroup)
            move(base + q.stepsOffset, unitBytes: groups * 2)
            move(base + q.minsOffset, unitBytes: groups * 2)
        } else {
            move(base, unitBytes: d * cache.dtype.byteSize)
        }
    }
}
