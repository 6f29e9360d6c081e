import Dispatch
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// One (layer, gpu batch) unit of KV cache: its device rows stay on the device, host rows in
/// host memory, disk rows in a file (the cache tensors' byte image, padded to 4096).
final class CacheUnit: @unchecked Sendable {
    let rows: (device: Range<Int>, host: Range<Int>, disk: Range<Int>)
    let device: (key: Tensor, value: Tensor)?
    let host: (key: Tensor, value: Tensor)?
    let disk: DiskFile?
    let diskTensorBytes: Int

    init(rows: (device: Range<Int>, host: Range<Int>, disk: Range<Int>), device: (key: Tensor, value: Tensor)?,
         host: (key: Tensor, value: Tensor)?, disk: DiskFile?, diskTensorBytes: Int) {
        self.rows = rows; self.device = device; self.host = host; self.disk = disk; self.diskTensorBytes = diskTensorBytes
    }
}

/// A unit's cache made ready for one layer forward, and the copies to write back after it.
struct StagedCache: @unchecked Sendable {
    var layerCache: LayerCache
    var hostCopy: (key: Tensor, value: Tensor)?
    var diskCopy: (key: Tensor, value: Tensor)?
}

/// A gpu batch's hidden states between layers, split by rows over the tiers.
struct StoredActivation: @unchecked Sendable {
    var rows: Int
    var device: Tensor?
    var host: DeviceBuffer?
    var diskRows: Int
}

extension OffloadEngine {
    // MARK: KV cache

    /// Places the KV cache for a block of `policy.blockSize` sequences of up to `capacity`
    /// positions: per (layer, gpu batch), rows apportioned over the tiers.
    public func beginBlock(capacity: Int) throws {
        guard capacity <= plannedCapacity else {
            throw StrataError.invalidRequest(
                "a block needs \(capacity) positions per sequence but the memory plan was made for \(plannedCapacity) (raise --context)")
        }
        let c = model.config, gbs = policy.gpuBatchSize
        let scheme = model.compression.cache
        // A pipeline stage keeps cache for its own layers only (units counted from its first).
        let layers = stageLayers
        let apportion = RowApportion(units: layers.count * policy.numGPUBatches, rowsPerUnit: gbs, split: policy.cache)
        caches = []
        self.capacity = capacity
        stagedCacheRows = MemoryModel.stagedRows(apportion, policy: policy)
        var placedCache: [Tier: Int] = [:]
        let cacheDirectory = policy.cache.disk > 0 ? try Self.directory(offloadDirectory!, "cache") : ""
        activationFiles = policy.activations.disk > 0
            ? try (0..<policy.numGPUBatches).map {
                try DiskFile(path: FileSystem.join(try Self.directory(offloadDirectory!, "activations"), "B\($0).bin"), create: true)
            }
            : []
        for j in 0..<c.numLayers {
            var units: [CacheUnit] = []
            for k in 0..<policy.numGPUBatches where layers.contains(j) {
                let rows = apportion.parts((j - layers.lowerBound) * policy.numGPUBatches + k, rows: gbs)
                func shape(_ r: Range<Int>) -> [Int] { [r.count, c.numKVHeads, capacity, c.headDim] }
                let device: (key: Tensor, value: Tensor)? = rows.device.isEmpty ? nil
                    : (compute.cacheTensor(shape: shape(rows.device), compression: scheme), compute.cacheTensor(shape: shape(rows.device), compression: scheme))
                let host: (key: Tensor, value: Tensor)? = rows.host.isEmpty ? nil
                    : (hostCacheTensor(shape: shape(rows.host), scheme: scheme), hostCacheTensor(shape: shape(rows.host), scheme: scheme))
                var disk: DiskFile?
                var diskBytes = 0
                if !rows.disk.isEmpty {
                    diskBytes = MemoryModel.cacheBytes(rows: rows.disk.count, kvHeads: c.numKVHeads, capacity: capacity, headDim: c.headDim, scheme: scheme)
                    let path = FileSystem.join(cacheDirectory, "L\(j)-B\(k).bin")
                    let file = try DiskFile(path: path, create: true)
                    try file.truncate(to: 0)   // a fresh, all-zero cache
                    try file.truncate(to: 2 * DiskFile.alignUp(diskBytes))
                    disk = file
                }
                let unit = CacheUnit(rows: rows, device: device, host: host, disk: disk, diskTensorBytes: diskBytes)
                placedCache[.device, default: 0] += (device.map { $0.key.byteCount * 2 } ?? 0)
                placedCache[.host, default: 0] += (host.map { $0.key.byteCount * 2 } ?? 0)
                placedCache[.disk, default: 0] += 2 * DiskFile.alignUp(diskBytes)
                units.append(unit)
            }
            caches.append(units)
        }
        accounts.disk.charge(placedCache[.disk] ?? 0)
        placement.withLock { $0.cache = placedCache }
    }

    public func endBlock() {
        accounts.disk.refund(placed.cache[.disk] ?? 0)
        caches = []
        activationFiles = []
    }

    /// A zeroed host-tier cache tensor in memory the device copies from at full speed (the host
    /// backend's own allocation on the CPU; page-locked on a GPU).
    func hostCacheTensor(shape: [Int], scheme: QuantizationScheme?) -> Tensor {
        guard !compute.deviceMemoryIsHost else { return hostBackend.cacheTensor(shape: shape, compression: scheme) }
        let layout = scheme.map { QuantizedLayout(scheme: $0, shape: shape) }
        let bytes = layout?.byteCount ?? shape.reduce(1, *) * 4
        let buffer = compute.hostMemory(bytes, account: accounts.host)
        buffer.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        return Tensor(shape: shape, dtype: layout == nil ? .f32 : .u8, buffer: buffer, quantization: layout)
    }

    /// A staging cache tensor on the device over a 4096-aligned, padded buffer (direct I/O),
    /// taken at the size of the most rows of its kind (`maxRows`) so pooled buffers are reused;
    /// with the fence after which the computation no longer reads the buffer's last contents.
    func stagingCacheTensor(rows: Int, maxRows: Int) -> (tensor: Tensor, reusable: ComputeFence?) {
        let c = model.config, scheme = model.compression.cache
        let shape = [rows, c.numKVHeads, capacity, c.headDim]
        let bytes = MemoryModel.cacheBytes(rows: max(rows, maxRows), kvHeads: c.numKVHeads, capacity: capacity, headDim: c.headDim,
                                           scheme: scheme)
        let (buffer, reusable) = cachePool.takeFenced(DiskFile.alignUp(bytes))
        if let scheme {
            return (Tensor(shape: shape, dtype: .u8, buffer: buffer, quantization: QuantizedLayout(scheme: scheme, shape: shape)), reusable)
        }
        return (Tensor(shape: shape, dtype: .f32, buffer: buffer), reusable)
    }

    func loadCache(_ j: Int, _ k: Int) throws -> StagedCache {
        let unit = caches[j][k]
        var parts: [LayerCache.Part] = []
        var staged = StagedCache(layerCache: LayerCache(parts: []), hostCopy: nil, diskCopy: nil)
        if let d = unit.device { parts.append(.init(rows: unit.rows.device, key: d.key, value: d.value)) }
        if let h = unit.host {
            if policy.cpuAttention {
                // Host attention: the rows are attended where they live, by the host backend when
                // the computation runs elsewhere (a GPU); only this step's q/k/v rows move.
                parts.append(.init(rows: unit.rows.host, key: h.key, value: h.value, backend: compute.deviceMemoryIsHost ? nil : hostBackend))
            } else {
                let rows = unit.rows.host.count, most = stagedCacheRows.host
                let key = stagingCacheTensor(rows: rows, maxRows: most), value = stagingCacheTensor(rows: rows, maxRows: most)
                move([TransferCopy(.hostToDevice, from: h.key.buffer.pointer, to: key.tensor.buffer.pointer, count: h.key.byteCount),
                      TransferCopy(.hostToDevice, from: h.value.buffer.pointer, to: value.tensor.buffer.pointer, count: h.value.byteCount)],
                     lane: .cacheLoads, after: [key.reusable, value.reusable].compactMap { $0 }, purpose: "cache load L\(j) B\(k) host")
                parts.append(.init(rows: unit.rows.host, key: key.tensor, value: value.tensor))
                staged.hostCopy = (key.tensor, value.tensor)
            }
        }
        if let file = unit.disk {
            let rows = unit.rows.disk.count, most = stagedCacheRows.disk
            let key = stagingCacheTensor(rows: rows, maxRows: most), value = stagingCacheTensor(rows: rows, maxRows: most)
            let padded = DiskFile.alignUp(unit.diskTensorBytes)
            let jobs = DiskReader.chunks(of: file, at: 0, into: key.tensor.buffer.pointer, count: padded)
                + DiskReader.chunks(of: file, at: padded, into: value.tensor.buffer.pointer, count: padded)
            try readFromDisk(jobs, lane: .cacheLoads, after: [key.reusable, value.reusable].compactMap { $0 }, purpose: "cache load L\(j) B\(k) disk")
            parts.append(.init(rows: unit.rows.disk, key: key.tensor, value: value.tensor))
            staged.diskCopy = (key.tensor, value.tensor)
        }
        staged.layerCache = LayerCache(parts: parts)
        return staged
    }

    /// Writes a unit's staged cache back once `computed` (the layer that appended to it) has run.
    func storeCache(_ j: Int, _ k: Int, _ staged: StagedCache, after computed: ComputeFence) throws {
        let unit = caches[j][k]
        if let copy = staged.hostCopy, let h = unit.host {
            move([TransferCopy(.deviceToHost, from: copy.key.buffer.pointer, to: h.key.buffer.pointer, count: h.key.byteCount),
                  TransferCopy(.deviceToHost, from: copy.value.buffer.pointer, to: h.value.buffer.pointer, count: h.value.byteCount)],
                 lane: .cacheStores, after: [computed], purpose: "cache store L\(j) B\(k) host")
        }
        if let copy = staged.diskCopy, let file = unit.disk {
            let padded = DiskFile.alignUp(unit.diskTensorBytes)
            try writeToDisk(file, from: copy.key.buffer.pointer, count: padded, at: 0, lane: .cacheStores, after: [computed],
                            purpose: "cache store L\(j) B\(k) disk")
            try writeToDisk(file, from: copy.value.buffer.pointer, count: padded, at: padded, lane: .cacheStores, after: [computed],
                            purpose: "cache store L\(j) B\(k) disk")
        }
    }

    // MARK: Activations

    /// Moves a gpu batch's hidden states to their tiers once `computed` (the layer that produced
    /// them) has run.
    func storeActivation(_ k: Int, _ hidden: Tensor, after computed: ComputeFence) throws -> StoredActivation {
        let rows = hidden.rows, width = hidden.columns * 4
        let split = ActivationSplit(rows: rows, policy.activations)
        let d = split.device, h = split.host
        var stored = StoredActivation(rows: rows, device: nil, host: nil, diskRows: rows - d - h)
        if d == rows { stored.device = hidden; return stored }
        if d > 0 { stored.device = compute.concatRows([compute.rowView(hidden, 0..<d)]) }
        if h > 0 {
            let buffer = compute.hostMemory(h * width, account: accounts.host)
            move([TransferCopy(.deviceToHost, from: hidden.buffer.pointer + d * width, to: buffer.pointer, count: h * width)],
                 lane: .activations, after: [computed], purpose: "activation store B\(k) host")
            stored.host = buffer
        }
        if stored.diskRows > 0 {
            let bytes = stored.diskRows * width
            let bounce = hostPool.take(DiskFile.alignUp(bytes))
            move([TransferCopy(.deviceToHost, from: hidden.buffer.pointer + (d + h) * width, to: bounce.pointer, count: bytes)],
                 lane: .activations, after: [computed], purpose: "activation store B\(k) disk")
            try activationFiles[k].write(from: bounce.pointer, count: DiskFile.alignUp(bytes), at: 0)
            accounts.disk.charge(DiskFile.alignUp(bytes))   // refunded when the rows are loaded back
        }
        placement.withLock { p in
            p.activations[.device] = max(p.activations[.device] ?? 0, d * width)
            p.activations[.host] = max(p.activations[.host] ?? 0, h * width)
            p.activations[.disk] = max(p.activations[.disk] ?? 0, (rows - d - h) * width)
        }
        return stored
    }

    func loadActivation(_ k: Int, _ stored: StoredActivation) throws -> Tensor {
        let width = model.config.hiddenSize * 4
        if let device = stored.device, device.rows == stored.rows { return device }
        let out = compute.zeros(shape: [stored.rows, model.config.hiddenSize])
        // The copies must land after the zeroing (and after the computation that made the
        // device rows), both enqueued on the compute stream.
        let ready = compute.computeFence("activation B\(k) buffer ready")
        var copies: [TransferCopy] = []
        var row = 0
        if let device = stored.device {
            copies.append(TransferCopy(.deviceToDevice, from: device.buffer.pointer, to: out.buffer.pointer, count: device.rows * width))
            row = device.rows
        }
        if let host = stored.host {
            copies.append(TransferCopy(.hostToDevice, from: host.pointer, to: out.buffer.pointer + row * width, count: host.byteCount))
            row += host.byteCount / width
        }
        var bounce: DeviceBuffer?
        if stored.diskRows > 0 {
            let bytes = stored.diskRows * width
            let buffer = hostPool.take(DiskFile.alignUp(bytes))
            try activationFiles[k].read(into: buffer.pointer, count: DiskFile.alignUp(bytes), at: 0)
            accounts.disk.refund(DiskFile.alignUp(bytes))
            copies.append(TransferCopy(.hostToDevice, from: buffer.pointer, to: out.buffer.pointer + row * width, count: bytes))
            bounce = buffer
        }
        move(copies, lane: .activations, after: [ready], purpose: "activation load B\(k)")
        withExtendedLifetime(bounce) {}
        return out
    }


    // MARK: The zig-zag block schedule

    /// One forward step (prefill or one decode token) for the whole block: for each layer,
    /// for each gpu batch, compute while the next layer's weights and the next batch's cache
    /// and activations load and the previous batch's are stored. Returns logits [block, vocab]
    /// of each row's last position, or of every position with `allRows` (perplexity).
    public func forward(_ step: ForwardStep, allRows: Bool = false) throws -> [Float] {
        precondition(share == .whole, "a pipeline stage's engine runs forwardStage")
        precondition(step.batch == policy.blockSize, "step batch \(step.batch) is not the block size \(policy.blockSize)")
        var logits = [Float]()
        try zigZag(step, batches: 0..<policy.numGPUBatches, input: nil) { batchStep, output in
            logits += compute.download(model.head(output, rows: allRows ? Array(0..<output.rows) : batchStep.lastRows))
        }
        return logits
    }

    /// A pipeline stage's pass: gpu batches `batches` of the block (one micro-batch: `step`
    /// holds exactly their rows) through this engine's layers, in the same zig-zag order with
    /// the same prefetching as `forward`. The stage's first layer takes `input` (hidden states
    /// from the previous stage), or embeds `step`'s tokens when the stage starts the model.
    /// Returns the last layer's hidden states, [rows * length, hidden].
    public func forwardStage(_ step: ForwardStep, batches: Range<Int>, input: Tensor?) throws -> Tensor {
        precondition(step.batch == batches.count * policy.gpuBatchSize && batches.upperBound <= policy.numGPUBatches,
                     "micro-batch of \(step.batch) rows is not gpu batches \(batches) of \(policy.gpuBatchSize)")
        var outputs: [Tensor] = []
        try zigZag(step, batches: batches, input: input) { _, output in outputs.append(output) }
        return outputs.count == 1 ? outputs[0] : compute.concatRows(outputs)
    }

    /// FlexGen's zig-zag over this engine's layers and gpu batches `batches` (`step` holds
    /// exactly their rows): for each layer, for each gpu batch, compute while the next layer's
    /// weights and the next batch's cache and activations load and the previous batch's are
    /// stored. The first layer takes `input`, or embeds when it is the model's first; each gpu
    /// batch's last-layer output goes to `last`, in batch order, as soon as it is computed.
    private func zigZag(_ step: ForwardStep, batches: Range<Int>, input: Tensor?,
                        last: (_ batchStep: ForwardStep, _ output: Tensor) throws -> Void) throws {
        let gbs = policy.gpuBatchSize, layers = stageLayers
        let ks = Array(batches)
        let steps = ks.indices.map { i in
            ForwardStep(tokens: Array(step.tokens[(i * gbs * step.length)..<((i + 1) * gbs * step.length)]), batch: gbs,
                        length: step.length, pastLength: step.pastLength, padding: Array(step.padding[(i * gbs)..<((i + 1) * gbs)]))
        }
        var activations = [Pending<StoredActivation>?](repeating: nil, count: ks.count)
        var stores: [Pending<Void>] = []
        var nextWeights = Pending(on: weightQueue) { [self] in try loadLayer(layers.lowerBound) }
        for j in layers {
            let weights = try nextWeights.wait()
            if j + 1 < layers.upperBound { nextWeights = Pending(on: weightQueue) { [self] in try loadLayer(j + 1) } }
            var nextCache = Pending(on: cacheQueue) { [self] in try loadCache(j, ks[0]) }
            for (i, k) in ks.enumerated() {
                let cache = try nextCache.wait()
                if i + 1 < ks.count { nextCache = Pending(on: cacheQueue) { [self] in try loadCache(j, ks[i + 1]) } }
                let x: Tensor
                if j == layers.lowerBound, let input {
                    x = compute.rowView(input, (i * gbs * step.length)..<((i + 1) * gbs * step.length))
                } else if j == layers.lowerBound {
                    guard j == 0 else { throw StrataError.invalidRequest("stage starting at layer \(j) needs input hidden states") }
                    x = model.embed(steps[i])
                } else {
                    let stored = try activations[i]!.wait()
                    x = try Pending(on: activationQueue) { [self] in try loadActivation(k, stored) }.wait()
                }
                let output = model.layer(j, x, weights: weights, cache: cache.layerCache, step: steps[i])
                // What the stores below copy was written by the computation just enqueued.
                let computed = compute.computeFence("L\(j) B\(k) computed")
                stores.append(Pending(on: cacheQueue) { [self] in try storeCache(j, k, cache, after: computed) })
                if j + 1 < layers.upperBound {
                    activations[i] = Pending(on: activationQueue) { [self] in try storeActivation(k, output, after: computed) }
                } else {
                    try last(steps[i], output)
                }
            }
        }
        for s in stores { try s.wait() }
    }
}
