import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// Peak bytes a policy needs on each tier, computed from tensor metadata before anything
/// loads, so a policy that cannot fit is refused with the tier and the shortfall. The
/// measured peaks (MemoryAccount) are reported after the run; this is the promise they keep.
struct MemoryPlan {
    struct Need { var weights = 0, cache = 0, activations = 0, workingSet = 0
        var total: Int { weights + cache + activations + workingSet }
    }
    var device = Need(), host = Need(), disk = Need()

    init(config c: ModelConfig, policy: Policy, placements: [LayerPlacement], cacheScheme: QuantizationScheme?,
         promptLength: Int, capacity: Int, threads: Int, nonLayerBytes: Int) {
        let buffers = policy.overlap ? 2 : 1
        device.weights = placements.reduce(0) { $0 + $1.device } + nonLayerBytes
            + buffers * (placements.map(\.stagingBytes).max() ?? 0)
        host.weights = placements.reduce(0) { $0 + $1.host }
        disk.weights = placements.reduce(0) { $0 + $1.disk }

        // KV cache: rows of every (layer, gpu batch) unit, plus the staged copies in flight.
        let rowBytes = 2 * Self.cacheBytes(rows: 1, kvHeads: c.numKVHeads, capacity: capacity, headDim: c.headDim, scheme: cacheScheme)
        let apportion = RowApportion(units: c.numLayers * policy.numGPUBatches, rowsPerUnit: policy.gpuBatchSize, split: policy.cache)
        let deviceRows = apportion.device.reduce(0, +), hostRows = apportion.host.reduce(0, +)
        let diskRows = c.numLayers * policy.blockSize - deviceRows - hostRows
        let stagedRows = zip(apportion.device, apportion.host).map { policy.gpuBatchSize - $0 - (policy.cpuAttention ? $1 : 0) }.max() ?? 0
        device.cache = deviceRows * rowBytes + (buffers + 1) * stagedRows * DiskFile.alignUp(rowBytes)
        host.cache = hostRows * rowBytes
        disk.cache = diskRows * DiskFile.alignUp(rowBytes)

        // Hidden states between layers for every gpu batch of the block, split by rows.
        let actRows = policy.gpuBatchSize * promptLength
        let actBytes = actRows * c.hiddenSize * 4
        let actDevice = Int((Double(actBytes) * policy.activations.device / 100).rounded(.up))
        let actHost = Int((Double(actBytes) * policy.activations.host / 100).rounded(.up))
        device.activations = policy.numGPUBatches * actDevice + (buffers + 1) * actBytes
        // Disk rows pass through a 4096-aligned bounce buffer (a store and a load may overlap).
        host.activations = policy.numGPUBatches * actHost + (actBytes > actDevice + actHost ? 2 * DiskFile.alignUp(actBytes) : 0)
        disk.activations = policy.numGPUBatches * DiskFile.alignUp(actBytes - min(actBytes, actDevice + actHost))

        // One gpu batch's layer forward: q, k, v, attention output, residuals, the FFN's
        // intermediate (x2 for gated), attention scores per worker, GEMM slabs, and logits.
        let h = c.hiddenSize, f = c.intermediateSize
        // GEMM slabs widen at most 4 MiB of a weight per worker, and never more than its largest matrix.
        let largestMatrix = max(h * f, c.vocabSize * c.wordEmbedProjDim)
        let slab = min(1 << 20, largestMatrix) * 4
        device.workingSet = actRows * (8 * h + 3 * f) * 4 + threads * (promptLength * capacity * 4 + slab)
            + 2 * policy.gpuBatchSize * c.vocabSize * 4
        // Building a layer's images at placement time holds one layer's tensors on the host,
        // and images bound for disk pass through a bounce buffer.
        let largestImage = placements.flatMap(\.tensors).map(\.byteCount).max() ?? 0
        host.workingSet = (placements.map(\.total).max() ?? 0) + min(DiskFile.chunk, DiskFile.alignUp(largestImage))
    }

    static func cacheBytes(rows: Int, kvHeads: Int, capacity: Int, headDim: Int, scheme: QuantizationScheme?) -> Int {
        let shape = [rows, kvHeads, capacity, headDim]
        if let scheme { return QuantizedLayout(scheme: scheme, shape: shape).byteCount }
        return shape.reduce(1, *) * 4
    }

    func check(_ budgets: TierBudgets) throws {
        for (tier, need, budget) in [("device", device, budgets.device), ("host", host, budgets.host), ("disk", disk, budgets.disk)] {
            guard let budget, need.total > budget else { continue }
            throw StrataError.invalidRequest(
                "the policy does not fit the \(tier) tier: it needs \(need.total) bytes (\(ByteSize.format(need.total)): weights \(need.weights), "
                + "cache \(need.cache), activations \(need.activations), working set \(need.workingSet)) but the budget is \(budget) "
                + "(\(ByteSize.format(budget))), short by \(need.total - budget) bytes")
        }
    }
}

extension ModelDescription {
    /// Bytes of the tensors outside the decoder layers (embeddings, final norm, LM head) as
    /// the CPU backend holds them.
    func nonLayerBytes(source: any TensorSource, weightFormat: CPUBackend.WeightFormat) -> Int {
        let layerNames = Set((0..<config.numLayers).flatMap { layerSpecs($0).map(\.name) })
        return source.tensorNames.filter { !layerNames.contains($0) }.reduce(0) { total, name in
            guard let v = source.tensor(name) else { return total }
            let dtype: DType = (v.shape.count < 2 || weightFormat == .f32) ? .f32 : v.dtype
            return total + v.elementCount * dtype.byteSize
        }
    }
}
