import CStrataKernels
import Dispatch
import StrataCore
import Synchronization

/// Group-quantized tensors on the CPU backend: packing at load, row decoding for the
/// dequantize-then-sgemm path, and the quantized KV cache.
extension CPUBackend {
    public func quantize(_ weight: Tensor, scheme: QuantizationScheme) -> Tensor {
        precondition(weight.quantization == nil, "tensor is already quantized")
        let count = weight.elementCount
        let values = scratch(count)
        defer { release(values, count) }
        if weight.panels != nil || weight.int8 != nil {
            download(weight).withUnsafeBufferPointer { values.update(from: $0.baseAddress!, count: count) }
        } else if count > 0 {
            Precision.convertToFloat(weight.buffer.pointer, dtype: weight.dtype, count: count, into: values)
        }
        return upload(quantized: Self.quantizeRows(values, shape: weight.shape, scheme: scheme, threads: threads))
    }

    /// `GroupQuantizer.quantize`, slabs of rows on `threads` cores when groups run along rows
    /// (each row's groups are then contiguous and independent): an OPT-30B's 30G values take
    /// minutes on one core.
    static func quantizeRows(_ values: UnsafeMutablePointer<Float>, shape: [Int], scheme: QuantizationScheme, threads: Int) -> QuantizedTensor {
        let g = scheme.geometry(shape)
        let rows = g.outer, columns = g.extent
        guard g.inner == 1, threads > 1, rows >= 2 * threads, rows * columns >= 1 << 16 else {
            return GroupQuantizer.quantize(values, shape: shape, scheme: scheme)
        }
        let slabs = threads, perSlab = (rows + slabs - 1) / slabs
        let parts = Mutex([Int: QuantizedTensor]())
        let base = UncheckedSendable(value: values)
        DispatchQueue.concurrentPerform(iterations: slabs) { i in
            let first = i * perSlab, count = min(perSlab, rows - first)
            guard count > 0 else { return }
            let part = GroupQuantizer.quantize(base.value + first * columns, shape: [count, columns], scheme: scheme)
            parts.withLock { $0[i] = part }
        }
        let ordered = parts.withLock { p in (0..<slabs).compactMap { p[$0] } }
        return QuantizedTensor(shape: shape, scheme: scheme, data: ordered.flatMap(\.data), steps: ordered.flatMap(\.steps),
                               mins: ordered.flatMap(\.mins))
    }

    public func upload(quantized q: QuantizedTensor) -> Tensor {
        var layout = QuantizedLayout(of: q)
        layout.zero = q.zeroCode
        let buffer = DeviceBuffer.host(byteCount: layout.byteCount, backendName: name, account: account)
        q.data.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        q.steps.withUnsafeBytes { (buffer.pointer + layout.stepsOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        q.mins.withUnsafeBytes { (buffer.pointer + layout.minsOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return Tensor(shape: q.shape, dtype: .u8, buffer: buffer, quantization: layout)
    }

    public func cacheTensor(shape: [Int], compression: QuantizationScheme?) -> Tensor {
        guard let compression else {
            guard cacheFormat != .f32 else { return zeros(shape: shape) }
            let buffer = DeviceBuffer.host(byteCount: shape.reduce(1, *) * 2, backendName: name, account: account)
            buffer.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: buffer.byteCount)
            return Tensor(shape: shape, dtype: cacheFormat == .f16 ? .f16 : .bf16, buffer: buffer)
        }
        let layout = QuantizedLayout(scheme: compression, shape: shape)
        let buffer = DeviceBuffer.host(byteCount: layout.byteCount, backendName: name, account: account)
        buffer.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: layout.byteCount)
        return Tensor(shape: shape, dtype: .u8, buffer: buffer, quantization: layout)
    }

    /// Decodes rows `rows` of a quantized tensor viewed as [rows, columns] into `out`
    /// (row-major, `rows.count * columns` floats).
    static func dequantizeRows(_ t: Tensor, rows: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        guard let q = t.quantization, !rows.isEmpty else { return }
        let s = q.scheme, g = q.geometry, gs = s.groupSize
        let data = t.buffer.pointer.assumingMemoryBound(to: UInt8.self)
        let steps = (t.buffer.pointer + q.stepsOffset).assumingMemoryBound(to: Float16.self)
        let mins = (t.buffer.pointer + q.minsOffset).assumingMemoryBound(to: Float16.self)
        let columns = t.columns
        if q.hasWholeRowGroups {
            // Whole groups of 4 or 8 bits (Q4_0, Q8_0 and Strata's own defaults): one C call.
            strata_dequantize_rows(data, UnsafeRawPointer(steps).assumingMemoryBound(to: UInt16.self),
                                   UnsafeRawPointer(mins).assumingMemoryBound(to: UInt16.self), Int32(s.bits), Int32(gs),
                                   Int32(columns), rows.lowerBound, Int32(rows.count), out)
            return
        }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: gs) { group in
            let tmp = group.baseAddress!
            if g.inner == 1 {
                // Groups run along each row: decode them in place, the last one clipped.
                for r in rows {
                    let o = out + (r - rows.lowerBound) * columns
                    for a in 0..<g.groupsAlongAxis {
                        let index = r * g.groupsAlongAxis + a
                        let first = a * gs, count = min(gs, columns - first)
                        if count == gs {
                            GroupQuantizer.dequantizeGroup(data + index * s.bytesPerGroup, step: steps[index], minimum: mins[index],
                                                           scheme: s, into: o + first)
                        } else {
                            GroupQuantizer.dequantizeGroup(data + index * s.bytesPerGroup, step: steps[index], minimum: mins[index],
                                                           scheme: s, into: tmp)
                            (o + first).update(from: tmp, count: count)
                        }
                    }
                }
            } else {
                // Groups run down the columns (FlexGen's weight axis 0): decode each group that
                // overlaps the requested rows and scatter the rows that fall inside.
                precondition(g.outer == 1 && g.inner == columns, "dequantizeRows needs a 2-D tensor")
                for a in (rows.lowerBound / gs)...((rows.upperBound - 1) / gs) {
                    for c in 0..<columns {
                        let index = a * columns + c
                        GroupQuantizer.dequantizeGroup(data + index * s.bytesPerGroup, step: steps[index], minimum: mins[index],
                                                       scheme: s, into: tmp)
                        for j in 0..<gs {
                            let r = a * gs + j
                            if rows.contains(r) { out[(r - rows.lowerBound) * columns + c] = tmp[j] }
                        }
                    }
                }
            }
        }
    }

    /// Quantizes one head vector of `d` floats into cache row `row` (groups along head_dim).
    static func storeQuantizedRow(_ cache: Tensor, row: Int, from values: UnsafePointer<Float>) {
        let q = cache.quantization!, s = q.scheme, g = q.geometry
        let d = cache.columns
        let steps = (cache.buffer.pointer + q.stepsOffset).assumingMemoryBound(to: Float16.self)
        let mins = (cache.buffer.pointer + q.minsOffset).assumingMemoryBound(to: Float16.self)
        let data = cache.buffer.pointer.assumingMemoryBound(to: UInt8.self)
        for a in 0..<g.groupsAlongAxis {
            let index = row * g.groupsAlongAxis + a
            let first = a * s.groupSize
            let (step, minimum) = GroupQuantizer.quantizeGroup(values + first, count: min(s.groupSize, d - first), scheme: s,
                                                                into: data + index * s.bytesPerGroup)
            steps[index] = step
            mins[index] = minimum
        }
    }
}

extension CPUBackend {
    /// Decodes a whole quantized tensor into `out` (f32, row-major); for measurements.
    public static func decode(_ t: Tensor, into out: UnsafeMutablePointer<Float>) {
        dequantizeRows(t, rows: 0..<t.rows, into: out)
    }
}
