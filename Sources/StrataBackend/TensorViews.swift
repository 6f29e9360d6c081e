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
