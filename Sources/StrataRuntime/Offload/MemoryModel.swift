import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// What the offloading engine holds on each tier, from tensor metadata alone: the one
/// description of memory that both the engine's admission check (`plan`, exact bytes for one
/// policy) and the policy search (`bound`, linear in the placement fractions) are computed
/// from, so a policy the search returns is one the engine accepts.
///
/// Every term is built from the same quantities: layer images (tensor slots, 4 KiB aligned,
/// compressed or not), KV cache rows, activation rows, staging buffers, and the working set of
/// one gpu batch's layer forward.
public struct MemoryModel: Sendable {
    public let config: ModelConfig
    public let threads: Int
    /// Layer images as the engine lays them out: with the given precision map (or none), and
    /// with `compress_weight` (the map when one is given, else 4-bit everywhere).
    let layout: LayerLayout
    let compressedLayout: LayerLayout
    /// Embeddings, final norm and LM head, always on the device.
    public let nonLayerBytes: Int
    /// What a pipeline's first stage holds besides layers: token and position embeddings, OPT's
    /// project_in and project_out, the final norm and an untied LM head (a tied one is the
    /// embedding table it already holds).
    public let firstStageBytes: Int

    /// From a checkpoint or offload store's metadata (nothing is read but headers).
    public init(directory: String, weightFormat: CPUBackend.WeightFormat = .asStored, precision: PrecisionMap? = nil,
                threads: Int) throws {
        let config = try ModelConfig(directory: directory)
        let source = try TensorSources.open(directory: directory)
        defer { source.releaseMappings() }
        var tensors: [String: (shape: [Int], dtype: DType)] = [:]
        for name in source.tensorNames { if let v = source.shapeAndType(name) { tensors[name] = v } }
        try self.init(config: config, tensors: tensors, path: directory, weightFormat: weightFormat, precision: precision, threads: threads)
    }

    /// For a known architecture (`opt-30b`, `llama-2-70b`, ...) with f16 weights, as
    /// `strata convert --random` would write it: plans for models that are not on this machine.
    public init(architecture: String, weightFormat: CPUBackend.WeightFormat = .asStored, precision: PrecisionMap? = nil,
                threads: Int) throws {
        let config = try ModelConfig(json: KnownArchitectures.config(architecture), path: architecture)
        var tensors: [String: (shape: [Int], dtype: DType)] = [:]
        for spec in KnownArchitectures.tensorSpecs(config) { tensors[spec.name] = (spec.shape, .f16) }
        try self.init(config: config, tensors: tensors, path: architecture, weightFormat: weightFormat, precision: precision,
                      threads: threads)
    }

    init(config: ModelConfig, tensors: [String: (shape: [Int], dtype: DType)], path: String, weightFormat: CPUBackend.WeightFormat,
         precision: PrecisionMap?, threads: Int) throws {
        self.config = config
        self.threads = threads
        let description = ModelLoader.describe(config: config, contains: { tensors[$0] != nil })
        // A checkpoint stored quantized (strata convert --precision, a GGUF file) is held as
        // stored; compressing its weights again does nothing.
        let stored = config.storedPrecision
        if stored != nil, precision != nil {
            throw StrataError.invalidRequest("\(path) is stored quantized (strata_precision or GGUF); load it without a weight precision")
        }
        let precision = stored ?? precision
        let compressedMap = precision ?? PrecisionMap.uniform(layers: config.numLayers, bits: 4)
        func layout(_ layer: Int, _ map: PrecisionMap?) throws -> [TensorImage] {
            var slot = 0
            return try description.layerSpecs(layer).map { spec in
                if spec.isMatrix, let scheme = try stored?.scheme(forLayer: layer) {
                    let parts = QuantizedCheckpoint.names(spec.name)
                    guard tensors[parts.data] != nil, tensors[parts.steps] != nil, tensors[parts.mins] != nil else {
                        throw StrataError.invalidFile(path: path, detail: "checkpoint has no quantized tensor '\(parts.data)', which strata_precision implies")
                    }
                    let image = ImageFormat.image(spec: spec, sourceDtype: .u8, scheme: scheme, weightFormat: weightFormat, slot: slot)
                    slot += image.slotBytes
                    return image
                }
                guard let t = tensors[spec.name] else {
                    throw StrataError.invalidFile(path: path, detail: "checkpoint has no tensor '\(spec.name)', which the architecture needs")
                }
                guard t.shape == spec.shape else {
                    throw StrataError.invalidFile(path: path, detail: "tensor '\(spec.name)' has shape \(t.shape), expected \(spec.shape) from config.json")
                }
                let image = ImageFormat.image(spec: spec, sourceDtype: t.dtype, scheme: try map?.scheme(forLayer: layer),
                                              weightFormat: weightFormat, slot: slot)
                slot += image.slotBytes
                return image
            }
        }
        self.layout = LayerLayout(try (0..<config.numLayers).map { try layout($0, precision) })
        compressedLayout = precision == nil ? LayerLayout(try (0..<config.numLayers).map { try layout($0, compressedMap) }) : self.layout
        let layerNames = Set((0..<config.numLayers).flatMap { description.layerSpecs($0).flatMap { spec in
            let q = QuantizedCheckpoint.names(spec.name)
            return [spec.name, q.data, q.steps, q.mins]
        } })
        func held(_ t: (shape: [Int], dtype: DType)) -> Int {
            t.shape.reduce(1, *) * weightFormat.heldType(stored: t.dtype, shape: t.shape).byteSize
        }
        // A head stored both ways (a GGUF file's) is counted at its plain size, the most it holds.
        let headCopy = QuantizedCheckpoint.names("lm_head.weight")
        nonLayerBytes = tensors.filter { !layerNames.contains($0.key) && ![headCopy.data, headCopy.steps, headCopy.mins].contains($0.key) }
            .reduce(0) { $0 + held($1.value) }
        func sum(_ names: [String]) -> Int { names.compactMap { tensors[$0] }.reduce(0) { $0 + held($1) } }
        let p = description.prefix
        firstStageBytes = sum([p + "embed_tokens.weight", p + "embed_positions.weight", p + "project_in.weight", p + "project_out.weight",
                               p + "final_layer_norm.weight", p + "final_layer_norm.bias", p + "norm.weight", "lm_head.weight"])
    }

    /// Where each layer's bytes go under `policy`; with `stage`, layers outside it hold nothing
    /// (a pipeline stage places only its own).
    func placements(_ policy: Policy, stage: Range<Int>? = nil) -> [LayerPlacement] {
        layers(compressed: policy.compressWeight).images.enumerated().map { j, images in
            LayerPlacement(tensors: stage?.contains(j) == false ? [] : images, split: policy.weights)
        }
    }

    /// Decoder-layer weight bytes as held (compressed or not).
    public func layerBytes(compressed: Bool) -> Int { layers(compressed: compressed).totals.reduce(0, +) }

    /// Bytes of decoder layers `range` as held at the model's precision (a pipeline stage's share).
    public func layerBytes(_ range: Range<Int>) -> Int { layout.totals[range].reduce(0, +) }

    /// An f32 KV cache of `rows` sequences of `capacity` positions over `layers` layers.
    public func cacheBytes(rows: Int, capacity: Int, layers: Int) -> Int {
        2 * layers * Self.cacheBytes(rows: rows, kvHeads: config.numKVHeads, capacity: capacity, headDim: config.headDim, scheme: nil)
    }

    func layers(compressed: Bool) -> LayerLayout { compressed ? compressedLayout : layout }

    // MARK: The shared quantities

    /// Staging buffers per kind of transfer: double-buffered when transfers overlap compute.
    static func buffers(overlap: Bool) -> Int { overlap ? 2 : 1 }

    /// Bytes of one sequence's K and V for one layer, planned for `capacity` positions.
    func cacheRowBytes(compressed: Bool, capacity: Int) -> Int {
        2 * Self.cacheBytes(rows: 1, kvHeads: config.numKVHeads, capacity: capacity, headDim: config.headDim,
                            scheme: compressed ? QuantizationScheme.int4 : nil)
    }

    static func cacheBytes(rows: Int, kvHeads: Int, capacity: Int, headDim: Int, scheme: QuantizationScheme?) -> Int {
        let shape = [rows, kvHeads, capacity, headDim]
        if let scheme { return QuantizedLayout(scheme: scheme, shape: shape).byteCount }
        return shape.reduce(1, *) * 4
    }

    /// The most rows of any (layer, gpu batch) unit staged to the device from the host (none
    /// with host attention, which attends them in place) and from disk.
    static func stagedRows(_ apportion: RowApportion, policy: Policy) -> (host: Int, disk: Int) {
        let g = policy.gpuBatchSize
        let host = policy.cpuAttention ? 0 : apportion.host.max() ?? 0
        let disk = zip(apportion.device, apportion.host).map { g - $0 - $1 }.max() ?? 0
        return (host, disk)
    }

    /// Device bytes of the cache staging buffers: per unit in flight (buffers + 1: loading the
    /// next, computing, storing the previous), a key and a value tensor per staged kind, each
    /// sized for that kind's most rows and page-aligned.
    func cacheStagingBytes(_ rows: (host: Int, disk: Int), compressed: Bool, capacity: Int, buffers: Int) -> Int {
        let scheme = compressed ? QuantizationScheme.int4 : nil
        func tensor(_ n: Int) -> Int {
            n == 0 ? 0 : DiskFile.alignUp(Self.cacheBytes(rows: n, kvHeads: config.numKVHeads, capacity: capacity, headDim: config.headDim,
                                                          scheme: scheme))
        }
        return (buffers + 1) * 2 * (tensor(rows.host) + tensor(rows.disk))
    }

    /// Hidden states of one gpu batch between layers (f32, the prompt's length at prefill).
    func activationBytes(gpuBatchSize: Int, promptLength: Int) -> Int { gpuBatchSize * promptLength * config.hiddenSize * 4 }

    /// One gpu batch's layer forward on the device: q, k, v, attention output, residuals, the
    /// FFN's intermediate (x2 for gated), attention scores per worker, GEMM slabs (a weight is
    /// widened at most 4 MiB at a time per worker, never more than its largest matrix), logits.
    func deviceWorkingSet(gpuBatchSize: Int, promptLength: Int, capacity: Int) -> Int {
        let h = config.hiddenSize, f = config.intermediateSize
        let largestMatrix = max(h * f, config.vocabSize * config.wordEmbedProjDim)
        let slab = min(1 << 20, largestMatrix) * 4
        return gpuBatchSize * promptLength * (8 * h + 3 * f) * 4 + threads * (promptLength * capacity * 4 + slab)
            + 2 * gpuBatchSize * config.vocabSize * 4
    }

    // MARK: Exact need of one policy (the engine's admission check)

    /// Peak bytes `policy` needs on each tier, to the byte as the engine will allocate them.
    /// With `share` (a pipeline stage): its layers only, and the embeddings and head only when
    /// the share holds them.
    public func plan(_ policy: Policy, promptLength: Int, capacity: Int, share: ModelShare = .whole) -> MemoryPlan {
        MemoryPlan(model: self, policy: policy, placements: placements(policy, stage: share.layers), share: share,
                   promptLength: promptLength, capacity: capacity)
    }

    // MARK: Linear bounds for the search

    /// Peak bytes per tier for `choice` as linear expressions in the placement fractions, each
    /// at least the exact `plan` of every policy with that choice. Rounding to whole rows,
    /// 4 KiB slots and tensor-aligned staging are the only non-linear parts; each is bounded
    /// above by its largest possible excess (noted per term). `activationsOnDisk: false` is
    /// valid only for policies with no activation rows on disk (hd = 0): the host then needs no
    /// bounce buffer for them.
    public func bound(_ c: BatchChoice, promptLength: Int, capacity: Int, activationsOnDisk: Bool) -> [Tier: Linear] {
        let layers = self.layers(compressed: c.compressWeight)
        let w = Double(layers.totals.reduce(0, +)), tMax = Double(layers.totals.max() ?? 0)
        let largestSlot = Double(layers.largestSlot)
        let l = Double(config.numLayers), page = Double(DiskFile.alignment)
        let b = Double(Self.buffers(overlap: c.overlap))

        // Weights. A layer's device prefix is T*wg rounded down to 4 KiB (<= T*wg); its host and
        // disk parts exceed T*wc and T*wd by less than 4 KiB each. The staging buffer starts at
        // the slot holding the device boundary, so it exceeds T*(1-wg) by less than one slot
        // plus 4 KiB; written as T*(wc + wd) (the LP holds wg + wc + wd = 1).
        var device = Linear(.wg, w) + Linear(Double(nonLayerBytes)) + Linear.sum([.wc, .wd], b * tMax) + Linear(b * (largestSlot + page))
        var host = Linear(.wc, w) + Linear(page * l)
        var disk = Linear(.wd, w) + Linear(page * l)

        // KV cache. Rows per tier are apportioned cumulatively over all (layer, gpu batch) units
        // with nearest rounding: device rows exceed R*cg by at most 1/2, host rows R*cc by at most
        // 2 (a clipped unit), disk rows R*cd by at most 1/2. Host rows (unless attended in place)
        // and disk rows are staged per unit: at most gbs*cc + 2 and gbs*cd + 2 rows of each kind,
        // as a key and a value tensor each padded to 4 KiB, in (buffers + 1) copies.
        let g = Double(c.gpuBatchSize)
        let rows = l * Double(c.numGPUBatches) * g
        let row = Double(cacheRowBytes(compressed: c.compressCache, capacity: capacity))
        let alignedRow = Double(DiskFile.alignUp(Int(row)))
        let stagedDisk = Linear(.cd, g * row) + Linear(2 * row + 2 * page)
        let stagedHost = c.cpuAttention ? Linear() : Linear(.cc, g * row) + Linear(2 * row + 2 * page)
        device = device + Linear(.cg, rows * row) + Linear(row / 2) + (stagedDisk + stagedHost) * (b + 1)
        host = host + Linear(.cc, rows * row) + Linear(2 * row)
        disk = disk + Linear(.cd, rows * alignedRow) + Linear(alignedRow / 2)

        // Activations: each gpu batch's rows split with nearest rounding (device and disk rows
        // exceed their share by at most 1/2 row, host rows by at most 1), disk parts padded to
        // 4 KiB; (buffers + 1) whole copies in flight on the device; disk rows pass through two
        // page-aligned host bounce buffers.
        let nb = Double(c.numGPUBatches)
        let act = activationBytes(gpuBatchSize: c.gpuBatchSize, promptLength: promptLength)
        let a = Double(act), width = Double(config.hiddenSize * 4)
        device = device + Linear(.hg, nb * a) + Linear(nb * width / 2 + (b + 1) * a)
        host = host + Linear(.hc, nb * a) + Linear(nb * width + (activationsOnDisk ? 2 * Double(DiskFile.alignUp(act)) : 0))
        disk = disk + Linear(.hd, nb * a) + Linear(nb * (width / 2 + page))

        device = device + Linear(Double(deviceWorkingSet(gpuBatchSize: c.gpuBatchSize, promptLength: promptLength, capacity: capacity)))
        host = host + Linear(Double(layers.hostWorkingSet))
        return [.device: device, .host: host, .disk: disk]
    }
}

/// The tensor images of every decoder layer in one weight format, with the sizes the plan and
/// the bounds read (derived once: the search reads them for every linear program it solves).
struct LayerLayout: Sendable {
    let images: [[TensorImage]]
    /// Each layer image's bytes (its tensors' 4 KiB slots).
    let totals: [Int]
    let largestSlot: Int
    /// Building a layer's images at placement time holds one layer's tensors on the host, and
    /// images bound for disk pass through a bounce buffer.
    let hostWorkingSet: Int

    init(_ images: [[TensorImage]]) {
        self.images = images
        totals = images.map(LayerPlacement.imageBytes)
        largestSlot = images.flatMap { $0.map(\.slotBytes) }.max() ?? 0
        let largestImage = images.flatMap { $0.map(\.byteCount) }.max() ?? 0
        hostWorkingSet = (totals.max() ?? 0) + min(DiskFile.chunk, DiskFile.alignUp(largestImage))
    }
}

/// Peak bytes a policy needs on each tier, computed from tensor metadata before anything
/// loads, so a policy that cannot fit is refused with the tier and the shortfall. The
/// measured peaks (MemoryAccount) are reported after the run; this is the promise they keep.
public struct MemoryPlan: Sendable {
    public struct Need: Sendable {
        public var weights = 0, cache = 0, activations = 0, workingSet = 0
        public var total: Int { weights + cache + activations + workingSet }
    }
    public var device = Need(), host = Need(), disk = Need()

    public subscript(tier: Tier) -> Need {
        switch tier {
        case .device: device
        case .host: host
        case .disk: disk
        }
    }

    init(model m: MemoryModel, policy: Policy, placements: [LayerPlacement], share: ModelShare = .whole, promptLength: Int,
         capacity: Int) {
        let c = m.config
        let buffers = MemoryModel.buffers(overlap: policy.overlap)
        let layerCount = share.layers?.count ?? c.numLayers
        let nonLayer = share == .whole ? m.nonLayerBytes : share.embedding || share.head ? m.firstStageBytes : 0
        device.weights = placements.reduce(0) { $0 + $1.device } + nonLayer
            + buffers * (placements.map(\.stagingBytes).max() ?? 0)
        host.weights = placements.reduce(0) { $0 + $1.host }
        disk.weights = placements.reduce(0) { $0 + $1.disk }

        // KV cache: rows of every (layer, gpu batch) unit, plus the staged copies in flight.
        let rowBytes = m.cacheRowBytes(compressed: policy.compressCache, capacity: capacity)
        let apportion = RowApportion(units: layerCount * policy.numGPUBatches, rowsPerUnit: policy.gpuBatchSize, split: policy.cache)
        let deviceRows = apportion.device.reduce(0, +), hostRows = apportion.host.reduce(0, +)
        let diskRows = layerCount * policy.blockSize - deviceRows - hostRows
        device.cache = deviceRows * rowBytes
            + m.cacheStagingBytes(MemoryModel.stagedRows(apportion, policy: policy), compressed: policy.compressCache, capacity: capacity,
                                  buffers: buffers)
        host.cache = hostRows * rowBytes
        disk.cache = diskRows * DiskFile.alignUp(rowBytes)

        // Hidden states between layers for every gpu batch of the block, split by rows.
        let width = c.hiddenSize * 4
        let actRows = policy.gpuBatchSize * promptLength
        let actBytes = actRows * width
        let split = ActivationSplit(rows: actRows, policy.activations)
        device.activations = policy.numGPUBatches * split.device * width + (buffers + 1) * actBytes
        // Disk rows pass through a 4096-aligned bounce buffer (a store and a load may overlap).
        host.activations = policy.numGPUBatches * split.host * width + (split.disk > 0 ? 2 * DiskFile.alignUp(actBytes) : 0)
        disk.activations = policy.numGPUBatches * DiskFile.alignUp(split.disk * width)

        device.workingSet = m.deviceWorkingSet(gpuBatchSize: policy.gpuBatchSize, promptLength: promptLength, capacity: capacity)
        host.workingSet = m.layers(compressed: policy.compressWeight).hostWorkingSet
    }

    /// The tiers whose budget is short, with the shortfall in bytes.
    public func shortfalls(_ budgets: TierBudgets) -> [(tier: Tier, need: Int, budget: Int)] {
        [(Tier.device, budgets.device), (.host, budgets.host), (.disk, budgets.disk)].compactMap { tier, budget in
            guard let budget, self[tier].total > budget else { return nil }
            return (tier, self[tier].total, budget)
        }
    }

    public func check(_ budgets: TierBudgets) throws {
        guard let (tier, total, budget) = shortfalls(budgets).first else { return }
        let need = self[tier]
        throw StrataError.invalidRequest(
            "the policy does not fit the \(tier) tier: it needs \(total) bytes (\(ByteSize.format(total)): weights \(need.weights), "
            + "cache \(need.cache), activations \(need.activations), working set \(need.workingSet)) but the budget is \(budget) "
            + "(\(ByteSize.format(budget))), short by \(total - budget) bytes")
    }
}

/// How a gpu batch's hidden-state rows split over the tiers: device and host shares rounded to
/// the nearest row, the rest on disk. The engine stores activations by it, and the plan counts them by it.
struct ActivationSplit {
    var device: Int, host: Int, disk: Int

    init(rows: Int, _ split: TierSplit) {
        device = min(rows, Int((Double(rows) * split.device / 100).rounded()))
        host = max(0, min(rows - device, Int((Double(rows) * (split.device + split.host) / 100).rounded()) - device))
        disk = rows - device - host
    }
}
