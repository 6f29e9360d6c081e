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

    public init(stages: [Range<Int>], prefillMicroBatch: Int, decodeMicroBatch: Int) {
        self.stages = stages
        self.prefillMicroBatch = prefillMicroBatch
        self.decodeMicroBatch = decodeMicroBatch
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
/// embeds and drives each batch (`generate`); the last rank also runs the head and samples,
/// sending the tokens back to rank 0, which feeds them to the next decode pass (LLM-PQ's
/// ring). Micro-batches are row ranges of the batch, so each stage's KV cache is one tensor
/// per layer whose row views the passes attend to, whatever eta and xi are.
public final class PipelineStage {
    public let transport: any PipelineTransport
    public let bundle: ModelBundle
    public let layout: PipelineLayout
    public let sampling: SamplingParameters
    public let ignoreEOS: Bool
    public var layers: Range<Int> { layout.stages[rank] }
    public var rank: Int { transport.rank }
    var isFirst: Bool { rank == 0 }
    var isLast: Bool { rank == layout.stages.count - 1 }

    /// The current batch: its header, this stage's cache, and (last stage) its rows' state.
    private var header: BatchHeader?
    private var keys: [Tensor] = [], values: [Tensor] = []
    private var rowState: BatchRows?
    private var resultsSent = false
    /// Busy intervals for the timeline; `origin` is the job's common start.
    public private(set) var spans: [StageSpan] = []
    public var origin = Clock.now()
    /// Test hook: the last stage's logits per pass (rows of the batch, vocab), in pass order.
    public var logitsObserver: ((_ rows: Range<Int>, _ prefill: Bool, _ logits: [Float]) -> Void)?

    public init(transport: any PipelineTransport, bundle: ModelBundle, layout: PipelineLayout, sampling: SamplingParameters,
                ignoreEOS: Bool = false) throws {
        try layout.validate(layers: bundle.model.config.numLayers, worldSize: transport.size, origin: "pipeline layout")
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
        let batch = requests.count
        let maxPositions = model.config.maxPositions
        let promptLength = requests.map(\.promptIds.count).max()!
        let steps = requests.map { max(0, min($0.maxNewTokens, maxPositions - $0.promptIds.count)) }.max()!
        let header = BatchHeader(promptLength: promptLength, capacity: promptLength + max(steps, 1),
                                 padding: requests.map { promptLength - $0.promptIds.count },
                                 maxNewTokens: requests.map(\.maxNewTokens), sampleIndexes: requests.map(\.sampleIndex),
                                 stopStrings: requests.map(\.stopStrings))
        try pass(.batchStart(header))
        begin(header)
        var clock = Clock()
        timing.promptTokens += requests.reduce(0) { $0 + $1.promptIds.count }

        // The driver's view of the rows: tokens so far, and which have stopped.
        var generated = [[Int]](repeating: [], count: batch)
        var finished = [Bool](repeating: false, count: batch)
        let pad = Int32(bundle.padTokenId)
        var prefillLeft = 0
        for start in stride(from: 0, to: batch, by: layout.prefillMicroBatch) {
            let rows = start..<min(batch, start + layout.prefillMicroBatch)
            var tokens = [Int32](repeating: pad, count: rows.count * promptLength)
            for (i, b) in rows.enumerated() {
                for (t, id) in requests[b].promptIds.enumerated() { tokens[i * promptLength + header.padding[b] + t] = Int32(id) }
            }
            let work = try compute(rows: rows, length: promptLength, pastLength: 0, tokens: tokens, hidden: nil, prefill: true,
                                   micro: start / layout.prefillMicroBatch)
            // Answered at once when rank 0 is also the last stage; else the ring brings it.
            if try deliver(work, into: &generated, &finished) == nil { prefillLeft += 1 }
        }
        // Decode micro-batches: each goes again once the tokens of its previous pass are back.
        let decodeRows = stride(from: 0, to: batch, by: layout.decodeMicroBatch).map { $0..<min(batch, $0 + layout.decodeMicroBatch) }
        var nextStep = [Int](repeating: 1, count: decodeRows.count)
        var inFlight = [Bool](repeating: false, count: decodeRows.count)
        var prefillDone = false
        while finished.contains(false) {
            for (m, rows) in decodeRows.enumerated() where !inFlight[m] {
                let open = rows.filter { !finished[$0] }
                guard !open.isEmpty, open.allSatisfy({ generated[$0].count >= nextStep[m] }) else { continue }
                let s = nextStep[m]
                let tokens = rows.map { finished[$0] ? pad : Int32(generated[$0][s - 1]) }
                let work = try compute(rows: rows, length: 1, pastLength: promptLength + s - 1, tokens: tokens, hidden: nil,
                                       prefill: false, micro: m)
                nextStep[m] += 1
                inFlight[m] = true
                if let answer = try deliver(work, into: &generated, &finished), !answer.prefill { inFlight[answer.micro] = false }
            }
            guard finished.contains(false) else { break }
            // A one-stage pipeline answered every pass above: go round again.
            if isLast { continue }
            // Wait for the last stage's next answer.
            guard case .tokens(let answer) = try receiveRing() else {
                throw StrataError.ioFailure(path: "rank \(layout.stages.count - 1)", detail: "sent results before its rows finished")
            }
            apply(answer, to: &generated, &finished)
            if answer.prefill { prefillLeft -= 1 } else { inFlight[answer.micro] = false }
            if !prefillDone && prefillLeft == 0 {
                prefillDone = true
                timing.prefillSeconds += clock.lap()
            }
        }
        if !prefillDone { timing.prefillSeconds += clock.lap() }
        let results: [GenerationResult]
        if isLast {
            results = rowState!.results
        } else {
            guard case .results(let rows) = try receiveRing() else {
                throw StrataError.ioFailure(path: "rank \(layout.stages.count - 1)", detail: "answered with tokens after its rows finished")
            }
            results = rows.map { GenerationResult(tokenIds: $0.tokenIds, text: $0.text, finishReason: FinishReason(rawValue: $0.finishReason) ?? .length) }
        }
        timing.decodeSeconds += clock.lap()
        timing.newTokens += results.reduce(0) { $0 + $1.tokenIds.count }
        try pass(.batchEnd)
        end()
        return results
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
                begin(h)
            case .work(let w):
                let hidden = model.backend.upload(floats: w.hidden, shape: [w.rowCount * w.length, w.columns])
                let out = try compute(rows: w.rows, length: w.length, pastLength: w.pastLength, tokens: nil, hidden: hidden,
                                      prefill: w.prefill, micro: w.micro)
                if let out, case .tokens = out { try transport.send(out.encoded(), to: 0, tag: PipelineMessage.ringTag) }
                if isLast, let state = rowState, state.allFinished, !resultsSent {
                    resultsSent = true
                    let rows = state.results.map { RowResult(tokenIds: $0.tokenIds, text: $0.text, finishReason: $0.finishReason.rawValue) }
                    try transport.send(PipelineMessage.results(rows).encoded(), to: 0, tag: PipelineMessage.ringTag)
                }
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

    private func begin(_ h: BatchHeader) {
        header = h
        let c = model.config
        let shape = [h.rows, c.numKVHeads, h.capacity, c.headDim]
        keys = layers.map { _ in model.backend.cacheTensor(shape: shape, compression: nil) }
        values = layers.map { _ in model.backend.cacheTensor(shape: shape, compression: nil) }
        resultsSent = false
        rowState = isLast
            ? BatchRows(promptLengths: h.padding.map { h.promptLength - $0 }, maxNewTokens: h.maxNewTokens, stopStrings: h.stopStrings,
                        sampleIndexes: h.sampleIndexes, maxPositions: c.maxPositions, sampling: sampling, ignoreEOS: ignoreEOS,
                        eosTokenIds: bundle.eosTokenIds, tokenizer: bundle.tokenizer)
            : nil
    }

    private func end() {
        header = nil
        keys = []; values = []
        rowState = nil
    }

    /// Sends a chain message on to the next rank (the last rank has none).
    private func pass(_ message: PipelineMessage) throws {
        if !isLast { try transport.send(message.encoded(), to: rank + 1, tag: PipelineMessage.chainTag) }
    }

    private func receiveRing() throws -> PipelineMessage {
        let last = layout.stages.count - 1
        return try PipelineMessage.decode(try transport.receive(from: last, tag: PipelineMessage.ringTag), from: last)
    }

    /// Rows `rows` of cache tensor `t` ([batch, kvHeads, capacity, headDim]) as a tensor of their own.
    private func cacheView(_ t: Tensor, _ rows: Range<Int>) -> Tensor {
        let per = t.shape[1] * t.shape[2]
        let view = model.backend.rowView(t, (rows.lowerBound * per)..<(rows.upperBound * per))
        return Tensor(shape: [rows.count] + t.shape.dropFirst(), dtype: t.dtype, buffer: view.buffer)
    }

    /// Runs this stage's layers for one pass (embedding first on rank 0) and hands the result
    /// on: hidden states to the next rank, or, on the last rank, the sampled tokens. Returns the
    /// message produced when it stays on this rank (rank 0 being also the last).
    @discardableResult
    private func compute(rows: Range<Int>, length: Int, pastLength: Int, tokens: [Int32]?, hidden input: Tensor?, prefill: Bool,
                         micro: Int) throws -> PipelineMessage? {
        guard let header else { throw StrataError.ioFailure(path: "rank \(rank)", detail: "work arrived outside a batch") }
        let started = Clock.now()
        let step = ForwardStep(tokens: tokens ?? [Int32](repeating: 0, count: rows.count * length), batch: rows.count, length: length,
                               pastLength: pastLength, padding: Array(header.padding[rows]))
        var hidden = input ?? model.embed(step)
        for (i, j) in layers.enumerated() {
            let cache = LayerCache(key: cacheView(keys[i], rows), value: cacheView(values[i], rows))
            hidden = model.layer(j, hidden, weights: model.residentLayers[j], cache: cache, step: step)
        }
        let message: PipelineMessage
        if isLast {
            let logits = model.backend.download(model.head(hidden, rows: step.lastRows))
            logitsObserver?(rows, prefill, logits)
            let vocab = logits.count / rows.count
            var out = [Int](repeating: -1, count: rows.count)
            logits.withUnsafeBufferPointer { all in
                for (i, b) in rows.enumerated() where !rowState!.finished[b] {
                    out[i] = rowState!.accept(UnsafeBufferPointer(rebasing: all[(i * vocab)..<((i + 1) * vocab)]), row: b)
                }
            }
            message = .tokens(Tokens(micro: micro, prefill: prefill, rowStart: rows.lowerBound, tokens: out,
                                     finished: rows.map { rowState!.finished[$0] }))
        } else {
            message = .work(Work(micro: micro, prefill: prefill, rowStart: rows.lowerBound, rowCount: rows.count, length: length,
                                 pastLength: pastLength, columns: hidden.columns, hidden: model.backend.download(hidden)))
        }
        spans.append(StageSpan(rank: rank, start: started - origin, end: Clock.now() - origin, prefill: prefill))
        if case .work = message { try transport.send(message.encoded(), to: rank + 1, tag: PipelineMessage.chainTag); return nil }
        return message
    }

    /// On rank 0: applies a pass's result when rank 0 is also the last stage.
    @discardableResult
    private func deliver(_ message: PipelineMessage?, into generated: inout [[Int]], _ finished: inout [Bool]) throws -> Tokens? {
        guard let message, case .tokens(let t) = message else { return nil }
        apply(t, to: &generated, &finished)
        return t
    }

    private func apply(_ t: Tokens, to generated: inout [[Int]], _ finished: inout [Bool]) {
        for (i, token) in t.tokens.enumerated() {
            let b = t.rowStart + i
            if token >= 0 { generated[b].append(token) }
            finished[b] = t.finished[i]
        }
    }
}
