import StrataBackend
import StrataCore
import StrataModels
import StrataRuntime

/// What a pipeline runs: each rank's decoder layers (contiguous, in rank order) and LLM-PQ's
/// micro-batch sizes, eta rows per prefill pass and xi rows per decode pass.
public struct PipelineLayout: Sendable, Equatable {
    public var stages: [Range<Int>]
    public var prefillMicroBatch: Int
    public var decodeMicroBatch: Int
    /// Rows every batch is filled to (with copies of its first request, whose results are
    /// dropped) when a stage runs under an offloading policy: its engine's block.
    public var blockRows: Int?

    public init(stages: [Range<Int>], prefillMicroBatch: Int, decodeMicroBatch: Int, blockRows: Int? = nil) {
        self.stages = stages
        self.prefillMicroBatch = prefillMicroBatch
        self.decodeMicroBatch = decodeMicroBatch
        self.blockRows = blockRows
    }

    /// Checks the layout against the model and the world; errors name the field at fault.
    public func validate(layers: Int, worldSize: Int, origin: String) throws {
        guard stages.count == worldSize else {
            throw StrataError.invalidRequest("\(origin) has \(stages.count) stage(s) but mpirun started \(worldSize) rank(s); launch with -np \(stages.count)")
        }
        var next = 0
        for (rank, s) in stages.enumerated() {
            guard !s.isEmpty else { throw StrataError.invalidRequest("\(origin): stage \(rank) (rank \(rank)) has no layers") }
            guard s.lowerBound == next else {
                throw StrataError.invalidRequest("\(origin): stage \(rank) starts at layer \(s.lowerBound), expected \(next) (stages must cover the layers in order)")
            }
            next = s.upperBound
        }
        guard next == layers else {
            throw StrataError.invalidRequest("\(origin): the stages cover \(next) layers, the model has \(layers)")
        }
        guard prefillMicroBatch > 0, decodeMicroBatch > 0 else {
            throw StrataError.invalidRequest("\(origin): micro-batch sizes (eta \(prefillMicroBatch), xi \(decodeMicroBatch)) must be positive")
        }
    }
}

/// One rank of a pipeline: its share of the decoder layers and their KV cache. Rank 0 also
/// holds the embeddings and the LM head and drives each batch (`generate`): it embeds, runs its
/// layers and hands hidden states down the chain; the last rank sends each micro-batch's final
/// hidden states (last positions only) back to rank 0, which computes the logits, samples and
/// feeds the tokens to that micro-batch's next decode pass: LLM-PQ's ring, with the head on
/// the first stage as its planner (and `ClusterCostModel`) assumes, so a tied embedding table
/// is held once. Micro-batches are row ranges of the batch, so each stage's KV cache is one
/// tensor per layer whose row views the passes attend to, whatever eta and xi are.
public final class PipelineStage {
    public let transport: any PipelineTransport
    public let bundle: ModelBundle
    public let layout: PipelineLayout
    public let sampling: SamplingParameters
    public let ignoreEOS: Bool
    /// Runs this stage's layers under an offloading policy (FlexGen's block schedule over the
    /// stage's layers; its KV cache placed by the policy); nil keeps them resident.
    public let engine: OffloadEngine?
    public var layers: Range<Int> { layout.stages[rank] }
    public var rank: Int { transport.rank }
    var isFirst: Bool { rank == 0 }
    var isLast: Bool { rank == layout.stages.count - 1 }

    /// The current batch: its header and this stage's cache.
    private var header: BatchHeader?
    private var keys: [Tensor] = [], values: [Tensor] = []
    /// Busy intervals for the timeline; `origin` is the job's common start.
    public private(set) var spans: [StageSpan] = []
    public var origin = Clock.now()
    /// Test hook (rank 0): logits of each pass (batch rows, then vocab), in the order sampled.
    public var logitsObserver: ((_ rows: Range<Int>, _ prefill: Bool, _ logits: [Float]) -> Void)?

    public init(transport: any PipelineTransport, bundle: ModelBundle, layout: PipelineLayout, sampling: SamplingParameters,
                ignoreEOS: Bool = false, engine: OffloadEngine? = nil) throws {
        try layout.validate(layers: bundle.model.config.numLayers, worldSize: transport.size, origin: "pipeline layout")
        if let engine {
            let gbs = engine.policy.gpuBatchSize
            guard engine.share.layers == layout.stages[transport.rank], layout.blockRows == engine.policy.blockSize,
                  layout.prefillMicroBatch % gbs == 0, layout.decodeMicroBatch % gbs == 0 else {
                throw StrataError.invalidRequest(
                    "rank \(transport.rank)'s policy (block \(engine.policy.blockSize), gpu batch \(gbs)) does not fit the pipeline: the batch must be its block and eta (\(layout.prefillMicroBatch)) and xi (\(layout.decodeMicroBatch)) whole gpu batches")
            }
        }
        self.engine = engine
        guard bundle.model.compression.cache == nil else {
            throw StrataError.invalidRequest("a pipeline keeps each stage's KV cache in f32 (--compress-cache is not supported by cluster run)")
        }
        self.transport = transport
        self.bundle = bundle
        self.layout = layout
        self.sampling = sampling
        self.ignoreEOS = ignoreEOS
    }

    private var model: any CausalLM { bundle.model }

    // MARK: Rank 0: driving a batch

    /// Generates for one batch through the whole pipeline (rank 0 only): as `Generator.generate`
    /// with the same requests, row for row.
    public func generate(_ requests: [GenerationRequest], timing: inout GenerationTiming) throws -> [GenerationResult] {
        precondition(isFirst, "only rank 0 drives batches")
        guard !requests.isEmpty else { return [] }
        let real = requests.count
        var requests = requests
        if let block = layout.blockRows {
            guard real <= block else { throw StrataError.invalidRequest("a batch of \(real) rows exceeds the policy's block of \(block)") }
            // Fill rows (copies of the first request) complete the block; rows never influence
            // each other, and their results are dropped.
            while requests.count < block { requests.append(requests[0]) }
        }
        let batch = requests.count
        let promptLength = requests.map(\.promptIds.count).max()!
        var rows = BatchRows(requests: requests, bundle: bundle, sampling: sampling, ignoreEOS: ignoreEOS)
        let header = BatchHeader(promptLength: promptLength, capacity: promptLength + max(rows.budgets.max()!, 1),
                                 padding: requests.map { promptLength - $0.promptIds.count })
        try pass(.batchStart(header))
        try begin(header)
        defer { end() }
        var clock = Clock()
        timing.promptTokens += requests.prefix(real).reduce(0) { $0 + $1.promptIds.count }

        let pad = Int32(bundle.padTokenId)
        var prefillLeft = 0
        for start in stride(from: 0, to: batch, by: layout.prefillMicroBatch) {
            let range = start..<min(batch, start + layout.prefillMicroBatch)
            var tokens = [Int32](repeating: pad, count: range.count * promptLength)
            for (i, b) in range.enumerated() {
                for (t, id) in requests[b].promptIds.enumerated() { tokens[i * promptLength + header.padding[b] + t] = Int32(id) }
            }
            // Sampled at once when rank 0 is also the last stage; else the ring brings it back.
            if let last = try compute(Work(micro: start / layout.prefillMicroBatch, prefill: true, rowStart: start, rowCount: range.count,
                                           length: promptLength, pastLength: 0, columns: 0, hidden: []), tokens: tokens) {
                sample(last, into: &rows)
            } else {
                prefillLeft += 1
            }
        }
        if prefillLeft == 0 { timing.prefillSeconds += clock.lap() }
        // Decode micro-batches: each goes again once the tokens of its previous pass are back.
        let decodeRows = stride(from: 0, to: batch, by: layout.decodeMicroBatch).map { $0..<min(batch, $0 + layout.decodeMicroBatch) }
        var nextStep = [Int](repeating: 1, count: decodeRows.count)
        var inFlight = [Bool](repeating: false, count: decodeRows.count)
        while !rows.allFinished {
            for (m, range) in decodeRows.enumerated() where !inFlight[m] {
                let open = range.filter { !rows.finished[$0] }
                guard !open.isEmpty, open.allSatisfy({ rows.generated[$0].count >= nextStep[m] }) else { continue }
                let s = nextStep[m]
                // Finished rows ride along on the pad token, as in `Generator`.
                let tokens = range.map { rows.finished[$0] ? pad : Int32(rows.generated[$0][s - 1]) }
                nextStep[m] += 1
                if let last = try compute(Work(micro: m, prefill: false, rowStart: range.lowerBound, rowCount: range.count, length: 1,
                                               pastLength: promptLength + s - 1, columns: 0, hidden: []), tokens: tokens) {
                    sample(last, into: &rows)
                } else {
                    inFlight[m] = true
                }
            }
            // A one-stage pipeline sampled every pass above: go round again.
            if rows.allFinished || isLast { continue }
            let last = layout.stages.count - 1
            guard case .work(let answer) = try PipelineMessage.decode(try transport.receive(from: last, tag: PipelineMessage.ringTag),
                                                                      from: last) else {
                throw StrataError.ioFailure(path: "rank \(last)", detail: "sent something other than hidden states back to rank 0")
            }
            sample(answer, into: &rows)
            if answer.prefill {
                prefillLeft -= 1
                if prefillLeft == 0 { timing.prefillSeconds += clock.lap() }
            } else {
                inFlight[answer.micro] = false
            }
        }
        // No pass is in flight now: a decode micro-batch goes only with unfinished rows, which
        // only its own answer can finish, so the next batch's ring starts clean.
        timing.decodeSeconds += clock.lap()
        let results = Array(rows.results.prefix(real))
        timing.newTokens += results.reduce(0) { $0 + $1.tokenIds.count }
        try pass(.batchEnd)
        return results
    }

    /// LM head and sampling for one pass's last positions (rank 0).
    private func sample(_ work: Work, into rows: inout BatchRows) {
        let started = Clock.now()
        let hidden = model.backend.upload(floats: work.hidden, shape: [work.rowCount, work.columns])
        let logits = model.backend.download(model.head(hidden, rows: Array(0..<work.rowCount)))
        logitsObserver?(work.rows, work.prefill, logits)
        let vocab = logits.count / work.rowCount
        logits.withUnsafeBufferPointer { all in
            for (i, b) in work.rows.enumerated() where !rows.finished[b] {
                _ = rows.accept(UnsafeBufferPointer(rebasing: all[(i * vocab)..<((i + 1) * vocab)]), row: b)
            }
        }
        spans.append(StageSpan(rank: rank, start: started - origin, end: Clock.now() - origin, prefill: work.prefill))
    }

    /// Ends the job on every rank (rank 0 only), collecting the other ranks' timelines.
    public func shutdown() throws -> [StageSpan] {
        try pass(.shutdown)
        var all = spans
        for r in 1..<max(layout.stages.count, 1) {
            guard case .timeline(let s) = try PipelineMessage.decode(try transport.receive(from: r, tag: PipelineMessage.timelineTag), from: r)
            else { throw StrataError.ioFailure(path: "rank \(r)", detail: "expected its timeline") }
            all += s
        }
        try transport.flush()
        return all
    }

    // MARK: Ranks after the first

    /// Serves the chain until rank 0 ends the job (every rank but 0).
    public func serve() throws {
        precondition(!isFirst)
        while true {
            let message = try PipelineMessage.decode(try transport.receive(from: rank - 1, tag: PipelineMessage.chainTag), from: rank - 1)
            switch message {
            case .batchStart(let h):
                try pass(message)
                try begin(h)
                try prefetchChain()
            case .work(let w):
                // The next message (another pass, or the batch's end) may arrive during this one.
                try prefetchChain()
                try compute(w, tokens: nil)
            case .batchEnd:
                try pass(message)
                end()
            case .shutdown:
                try pass(message)
                try transport.send(PipelineMessage.timeline(spans).encoded(), to: 0, tag: PipelineMessage.timelineTag)
                try transport.flush()
                return
            default:
                throw StrataError.ioFailure(path: "rank \(rank - 1)", detail: "sent an unexpected message down the pipeline")
            }
        }
    }

    // MARK: The work of one pass

    /// The largest pass message of the current batch: a prefill micro-batch's hidden states
    /// (or a decode one's, if larger), and the encoding's fixed fields.
    private var largestWork: Int {
        guard let header else { return 0 }
        let rows = min(header.rows, max(layout.prefillMicroBatch, layout.decodeMicroBatch))
        return 128 + 4 * model.config.hiddenSize * max(min(header.rows, layout.prefillMicroBatch) * header.promptLength, rows)
    }

    /// Posts the receive of the next chain message, so its transfer overlaps this rank's compute.
    private func prefetchChain() throws {
        try transport.prefetch(from: rank - 1, tag: PipelineMessage.chainTag, capacity: largestWork)
    }

    private func begin(_ h: BatchHeader) throws {
        header = h
        if let engine {
            guard h.rows == engine.policy.blockSize else {
                throw StrataError.ioFailure(path: "rank \(rank)", detail: "a batch of \(h.rows) rows for a policy block of \(engine.policy.blockSize)")
            }
            try engine.beginBlock(capacity: h.capacity)
            return
        }
        let c = model.config
        let shape = [h.rows, c.numKVHeads, h.capacity, c.headDim]
        keys = layers.map { _ in model.backend.cacheTensor(shape: shape, compression: nil) }
        values = layers.map { _ in model.backend.cacheTensor(shape: shape, compression: nil) }
    }

    private func end() {
        if header != nil { engine?.endBlock() }
        header = nil
        keys = []; values = []
    }

    /// Sends a chain message on to the next rank (the last rank has none).
    private func pass(_ message: PipelineMessage) throws {
        if !isLast { try transport.send(message.encoded(), to: rank + 1, tag: PipelineMessage.chainTag) }
    }

    /// Rows `rows` of cache tensor `t` ([batch, kvHeads, capacity, headDim]) as a tensor of their own.
    private func cacheView(_ t: Tensor, _ rows: Range<Int>) -> Tensor { model.backend.cacheRows(t, rows) }

    /// Runs this stage's layers for one pass (rank 0 embeds `tokens` first) and hands the result
    /// on: the hidden states down the chain, or from the last stage the last positions' back to
    /// rank 0. Returns that last-position work when it stays here (rank 0 is also the last).
    @discardableResult
    private func compute(_ work: Work, tokens: [Int32]?) throws -> Work? {
        guard let header else { throw StrataError.ioFailure(path: "rank \(rank)", detail: "work arrived outside a batch") }
        let rows = work.rows
        guard rows.upperBound <= header.rows, work.length > 0 else {
            throw StrataError.ioFailure(path: "rank \(rank)", detail: "work for rows \(rows) of a \(header.rows)-row batch")
        }
        let started = Clock.now()
        let step = ForwardStep(tokens: tokens ?? [Int32](repeating: 0, count: rows.count * work.length), batch: rows.count,
                               length: work.length, pastLength: work.pastLength, padding: Array(header.padding[rows]))
        let input = tokens != nil ? nil : model.backend.upload(floats: work.hidden, shape: [rows.count * work.length, work.columns])
        var hidden: Tensor
        if let engine {
            let gbs = engine.policy.gpuBatchSize
            hidden = try engine.forwardStage(step, batches: (rows.lowerBound / gbs)..<(rows.upperBound / gbs), input: input)
        } else {
            hidden = input ?? model.embed(step)
            for (i, j) in layers.enumerated() {
                let cache = LayerCache(key: cacheView(keys[i], rows), value: cacheView(values[i], rows))
                hidden = model.layer(j, hidden, weights: model.residentLayers[j], cache: cache, step: step)
            }
        }
        var out = work
        out.columns = hidden.columns
        if isLast {
            // Only the last position of each row goes on to the head.
            out.hidden = model.backend.download(model.backend.gatherRows(hidden, step.lastRows))
            out.length = 1
        } else {
            out.hidden = model.backend.download(hidden)
        }
        spans.append(StageSpan(rank: rank, start: started - origin, end: Clock.now() - origin, prefill: work.prefill))
        if !isLast {
            try transport.send(PipelineMessage.work(out).encoded(), to: rank + 1, tag: PipelineMessage.chainTag)
            return nil
        }
        if isFirst { return out }
        try transport.send(PipelineMessage.work(out).encoded(), to: 0, tag: PipelineMessage.ringTag)
        return nil
    }
}
