import StrataCore

/// Views of activations and of KV-cache tensors [batch, kvHeads, capacity, headDim], and cache
/// copy checks, shared by the backends: a view is address arithmetic, whatever kind of memory
/// the address is in.
enum TensorViews {
    /// Rows `range` of a 2-D activation, sharing its memory.
    static func rows(of x: Tensor, _ range: Range<Int>, backendName: String) -> Tensor {
        precondition(x.quantization == nil && range.upperBound <= x.rows, "rowView: rows \(range) of \(x.shape)")
        let width = x.columns * x.dtype.byteSize
        let buffer = DeviceBuffer(pointer: x.buffer.pointer + range.lowerBound * width, byteCount: range.count * width,
                                  backendName: backendName, owner: x.buffer, deallocate: nil)
        return Tensor(shape: [range.count, x.columns], dtype: x.dtype, buffer: buffer)
    }

    static func cacheRows(_ cache: Tensor, _ rows: Range<Int>, backendName: String) -> Tensor {
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

    private static func validateCopy(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        precondition(destination.shape[1] == source.shape[1] && destination.shape[3] == source.shape[3]
                     && (source.quantization == nil) == (destination.quantization == nil)
                     && source.quantization?.scheme == destination.quantization?.scheme,
                     "copyCachePositions: \(source.shape) into \(destination.shape) of another kind")
        precondition(row < source.shape[0] && toRow < destination.shape[0] && positions.upperBound <= source.shape[2]
                     && to + positions.count <= destination.shape[2],
                     "copyCachePositions: \(positions) of row \(row) of \(source.shape) to \(to) of row \(toRow) of \(destination.shape)")
    }

    /// What `copyCachePositions` moves, as byte ranges from the source's and the destination's
    /// buffer addresses: per head, and for a quantized cache per part (codes, steps, minimums).
    /// Empty when there is nothing to move.
    static func cacheCopySegments(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int)
        -> [(from: Int, to: Int, count: Int)] {
        validateCopy(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
        guard !positions.isEmpty, source.buffer !== destination.buffer || row != toRow || positions.lowerBound != to else { return [] }
        let kvHeads = source.shape[1], sourceCapacity = source.shape[2], destinationCapacity = destination.shape[2]
        let parts: [(from: Int, to: Int, unit: Int)]
        if let q = source.quantization, let r = destination.quantization {
            let groups = q.geometry.groupsAlongAxis
            parts = [(0, 0, groups * q.scheme.bytesPerGroup), (q.stepsOffset, r.stepsOffset, groups * 2), (q.minsOffset, r.minsOffset, groups * 2)]
        } else {
            parts = [(0, 0, source.shape[3] * source.dtype.byteSize)]
        }
        return parts.flatMap { p in
            (0..<kvHeads).map { h in
                (p.from + ((row * kvHeads + h) * sourceCapacity + positions.lowerBound) * p.unit,
                 p.to + ((toRow * kvHeads + h) * destinationCapacity + to) * p.unit, positions.count * p.unit)
            }
        }
    }
}
