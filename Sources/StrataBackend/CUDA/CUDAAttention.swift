import StrataCore

/// The KV cache on the device: appending, attention, and the slot moves of continuous batching.
extension CUDABackend {
    public func storeKV(key: Tensor, value: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) {
        device.makeCurrent()
        let rows = layout.batch * layout.length, capacity = keyCache.shape[2]
        precondition(layout.pastLength + layout.length <= capacity, "storeKV: positions up to \(layout.pastLength + layout.length) in a cache of \(capacity)")
        var a = KernelArguments()
        if let kq = keyCache.quantization, let vq = valueCache.quantization {
            let k = keyCache.buffer.deviceAddress, v = valueCache.buffer.deviceAddress
            a.pointer(key.buffer.deviceAddress); a.pointer(value.buffer.deviceAddress)
            a.pointer(k); a.pointer(k + UInt64(kq.stepsOffset)); a.pointer(k + UInt64(kq.minsOffset))
            a.pointer(v); a.pointer(v + UInt64(vq.stepsOffset)); a.pointer(v + UInt64(vq.minsOffset))
            a.int(rows); a.int(layout.length); a.int(layout.pastLength); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
            a.int(kq.scheme.groupSize); a.int(kq.scheme.bits)
            let threads = rows * layout.kvHeads * kq.geometry.groupsAlongAxis
            device.launch("store_kv_q", blocks: (threads + 127) / 128, threads: 128, a)
            return
        }
        a.pointer(key.buffer.deviceAddress); a.pointer(value.buffer.deviceAddress)
        a.pointer(keyCache.buffer.deviceAddress); a.pointer(valueCache.buffer.deviceAddress)
        a.int(layout.length); a.int(layout.pastLength); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
        device.launch("store_kv", blocks: rows, threads: 128, a)
    }

    public func attention(query: Tensor, keyCache: Tensor, valueCache: Tensor, layout: AttentionLayout) -> Tensor {
        device.makeCurrent()
        let rows = layout.batch * layout.length
        let out = allocate([rows, layout.heads * layout.headDim])
        let end = layout.pastLength + layout.length
        let sharedBytes = end * 4
        precondition(sharedBytes <= device.maxDynamicShared - 1024,
                     "attention over \(end) positions needs \(sharedBytes) bytes of shared memory; this GPU allows \(device.maxDynamicShared - 1024)")
        // A 4-bit cache is expanded up to the filled positions, then attended like an f32 one.
        var keys = keyCache.buffer, values = valueCache.buffer, capacity = keyCache.shape[2]
        if let kq = keyCache.quantization, let vq = valueCache.quantization {
            let count = keyCache.shape[0] * layout.kvHeads * end * layout.headDim
            keys = device.allocator.allocate(count * 4)
            values = device.allocator.allocate(count * 4)
            for (cache, q, into) in [(keyCache, kq, keys), (valueCache, vq, values)] {
                expand(cache, q, firstGroup: 0, outer: cache.shape[0] * cache.shape[1], extent: cache.shape[2], inner: cache.shape[3], keep: end,
                       groupsAlongExtent: false, into: into, kind: 0)
            }
            capacity = end
        }
        let padding = ints(layout.padding.map { Int32($0) })
        var a = KernelArguments()
        a.pointer(query.buffer.deviceAddress); a.pointer(keys.deviceAddress); a.pointer(values.deviceAddress)
        a.pointer(out.buffer.deviceAddress); a.pointer(padding.deviceAddress)
        if layout.length == 1 {
            a.int(layout.heads); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity); a.int(layout.pastLength); a.float(layout.scale)
            device.launch("attention_decode", blocks: layout.batch * layout.heads, threads: 128, sharedBytes: sharedBytes, a)
        } else {
            a.int(layout.length); a.int(layout.heads); a.int(layout.kvHeads); a.int(layout.headDim); a.int(capacity)
            a.int(layout.pastLength); a.float(layout.scale)
            device.launch("attention_prefill", blocks: rows * layout.heads, threads: 128, sharedBytes: sharedBytes, a)
        }
        return out
    }

    public func cacheRows(_ cache: Tensor, _ rows: Range<Int>) -> Tensor {
        TensorViews.cacheRows(cache, rows, backendName: name)
    }

    public func copyCachePositions(_ source: Tensor, row: Int, positions: Range<Int>, to destination: Tensor, toRow: Int, at to: Int) {
        let segments = TensorViews.cacheCopySegments(source, row: row, positions: positions, to: destination, toRow: toRow, at: to)
        guard !segments.isEmpty else { return }
        device.makeCurrent()
        let from = source.buffer.deviceAddress, into = destination.buffer.deviceAddress
        // A shift within one sequence overlaps itself (also through a view of the same rows);
        // device copies must not overlap, so such a move goes through a scratch buffer.
        let overlapping = segments.contains { r in
            segments.contains { w in from + UInt64(r.from) < into + UInt64(w.to + w.count) && into + UInt64(w.to) < from + UInt64(r.from + r.count) }
        }
        guard overlapping else {
            for s in segments { copyOnDevice(from: from + UInt64(s.from), to: into + UInt64(s.to), count: s.count) }
            return
        }
        let scratch = device.allocator.allocate(segments.reduce(0) { $0 + $1.count })
        var offset = 0
        for s in segments {
            copyOnDevice(from: from + UInt64(s.from), to: scratch.deviceAddress + UInt64(offset), count: s.count)
            offset += s.count
        }
        offset = 0
        for s in segments {
            copyOnDevice(from: scratch.deviceAddress + UInt64(offset), to: into + UInt64(s.to), count: s.count)
            offset += s.count
        }
    }
}
