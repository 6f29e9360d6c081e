import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// A resident model's KV cache as `slots` sequence slots on one shared timeline, so sequences
/// can join and leave a running batch between decode steps (continuous batching).
///
/// Every occupied slot ends at the timeline's current `length`; slot s holds its sequence at
/// positions `padding[s] ..< length` and the positions before are masked as left padding. A
/// decode step is then one left-padded `ForwardStep` over slots `0 ..< occupied`: newcomers are
/// prefilled straight into the next free slots at positions ending at `length`, a leaving slot
/// is filled by the last occupied one (so occupied slots stay a prefix and decode GEMMs have
/// only live rows), and when the timeline reaches the cache's end every sequence shifts left by
/// the smallest padding. `capacity` leaves `context / 4` positions of slack beyond the longest
/// sequence, so those shifts happen at most once per `context / 4` steps. A prompt longer
/// than a step boundary's prefill budget is prefilled a chunk per boundary into a cache of its
/// own (`beginChunked`) and copied into its reserved slot when done.
public final class SlotBatch: @unchecked Sendable {
    public let model: any CausalLM
    public let slots: Int
    /// Most positions one sequence may occupy (prompt + generated tokens).
    public let context: Int
    public let capacity: Int
    private let keys: [Tensor]
    private let values: [Tensor]
    public private(set) var length = 0
    public private(set) var padding: [Int]
    public private(set) var occupied = 0
    /// Slots held for chunked prefills in progress.
    public private(set) var reserved = 0

    public init(model: any CausalLM, slots: Int, context: Int) {
        precondition(slots > 0 && context > 1)
        self.model = model
        self.slots = slots
        self.context = context
        capacity = context + max(1, context / 4)
        let c = model.config
        let shape = [slots, c.numKVHeads, capacity, c.headDim]
        keys = (0..<c.numLayers).map { _ in model.backend.cacheTensor(shape: shape, compression: model.compression.cache) }
        values = (0..<c.numLayers).map { _ in model.backend.cacheTensor(shape: shape, compression: model.compression.cache) }
        padding = [Int](repeating: 0, count: slots)
    }

    /// Bytes of KV cache a batch of `slots` sequences of `context` positions holds.
    public static func cacheBytes(config: ModelConfig, compression: QuantizationScheme?, slots: Int, context: Int) -> Int {
        MemoryModel.cacheBytes(rows: slots, kvHeads: config.numKVHeads, capacity: context + max(1, context / 4),
                               headDim: config.headDim, scheme: compression) * 2 * config.numLayers
    }

    public var freeSlots: Int { slots - occupied - reserved }

    /// Prefills `prompts` into the next free slots (returned in order) and returns their logits:
    /// for prompt i, its last position's, or every position's when `allPositions[i]`
    /// ([positions, vocab] each).
    public func admit(_ prompts: [[Int]], allPositions: [Bool], padToken: Int32) -> (slots: [Int], logits: [[Float]]) {
        precondition(!prompts.isEmpty && prompts.count <= freeSlots && prompts.allSatisfy { !$0.isEmpty && $0.count < context })
        let (tokens, promptLength, _) = ForwardStep.leftPadded(prompts, padToken: padToken)
        if length + 1 > capacity { compact() }
        if length < promptLength { shiftAll(by: promptLength - length) }
        let first = occupied, k = prompts.count
        for (i, p) in prompts.enumerated() { padding[first + i] = length - p.count }
        let step = ForwardStep(tokens: tokens, batch: k, length: promptLength, pastLength: length - promptLength,
                               padding: Array(padding[first..<(first + k)]))
        var rows: [Int] = []
        var spans: [Range<Int>] = []
        for (i, p) in prompts.enumerated() {
            let end = (i + 1) * promptLength
            let span = allPositions[i] ? (end - p.count)..<end : (end - 1)..<end
            spans.append(rows.count..<(rows.count + span.count))
            rows += span
        }
        let logits = run(step, cache: { self.slotCache($0, first..<(first + k)) }, logitRows: rows)
        occupied += k
        let vocab = logits.count / rows.count
        return (Array(first..<(first + k)), spans.map { Array(logits[($0.lowerBound * vocab)..<($0.upperBound * vocab)]) })
    }

    /// One decode step: `tokens[s]` is occupied slot s's next input. Returns [occupied, vocab] logits.
    public func decode(_ tokens: [Int32]) -> [Float] {
        precondition(tokens.count == occupied && occupied > 0)
        if length + 1 > capacity { compact() }
        let step = ForwardStep(tokens: tokens, batch: occupied, length: 1, pastLength: length, padding: Array(padding[0..<occupied]))
        let logits = run(step, cache: { self.slotCache($0, 0..<self.occupied) }, logitRows: step.lastRows)
        length += 1
        return logits
    }

    /// Empties slot `s`. The last occupied slot moves into it; returns that slot's old index
    /// (callers renumber), or nil when `s` was the last.
    @discardableResult
    public func release(_ s: Int) -> Int? {
        precondition(s < occupied)
        occupied -= 1
        if occupied == 0 { length = 0 }
        guard s != occupied else { return nil }
        let last = occupied
        for t in keys + values { model.backend.copyCachePositions(t, row: last, positions: padding[last]..<length, to: t, toRow: s, at: padding[last]) }
        padding[s] = padding[last]
        return last
    }

    /// Starts prefilling a prompt too long for one step boundary: it goes through the layers a
    /// chunk per `continueChunked` call, into a cache of its own, and joins the batch in the
    /// slot reserved now when its last chunk is done.
    public func beginChunked(_ prompt: [Int], allPositions: Bool) -> ChunkedPrefill {
        precondition(freeSlots > 0 && !prompt.isEmpty && prompt.count < context)
        reserved += 1
        let c = model.config
        let shape = [1, c.numKVHeads, prompt.count, c.headDim]
        let make = { self.model.backend.cacheTensor(shape: shape, compression: self.model.compression.cache) }
        return ChunkedPrefill(prompt: prompt, allPositions: allPositions, keys: (0..<c.numLayers).map { _ in make() },
                              values: (0..<c.numLayers).map { _ in make() })
    }

    /// Prefills the next `budget` tokens of `prefill`. When that was the last chunk, places the
    /// sequence at the end of the timeline in its slot and returns the slot with its logits
    /// (the last position's, or every position's when it asked for all).
    public func continueChunked(_ prefill: ChunkedPrefill, budget: Int) -> (slot: Int, logits: [Float])? {
        let n = prefill.prompt.count
        let chunk = prefill.done..<min(n, prefill.done + max(1, budget))
        let last = chunk.upperBound == n
        let step = ForwardStep(tokens: prefill.prompt[chunk].map(Int32.init), batch: 1, length: chunk.count, pastLength: chunk.lowerBound,
                               padding: [0])
        let rows = prefill.allPositions ? Array(0..<chunk.count) : last ? [chunk.count - 1] : []
        prefill.logits += run(step, cache: { LayerCache(key: prefill.keys[$0], value: prefill.values[$0]) }, logitRows: rows)
        prefill.done = chunk.upperBound
        guard last else { return nil }
        if length + 1 > capacity { compact() }
        if length < n { shiftAll(by: n - length) }
        let slot = occupied
        for j in 0..<model.config.numLayers {
            model.backend.copyCachePositions(prefill.keys[j], row: 0, positions: 0..<n, to: keys[j], toRow: slot, at: length - n)
            model.backend.copyCachePositions(prefill.values[j], row: 0, positions: 0..<n, to: values[j], toRow: slot, at: length - n)
        }
        padding[slot] = length - n
        occupied += 1
        reserved -= 1
        return (slot, prefill.logits)
    }

    /// Gives up a chunked prefill's reserved slot (its client went away).
    public func abandon(_ prefill: ChunkedPrefill) { reserved -= 1 }

    private func slotCache(_ layer: Int, _ range: Range<Int>) -> LayerCache {
        LayerCache(key: model.backend.cacheRows(keys[layer], range), value: model.backend.cacheRows(values[layer], range))
    }

    /// Embedding, every layer over the cache `cache(layer)` gives, then the head for `logitRows`.
    private func run(_ step: ForwardStep, cache: (Int) -> LayerCache, logitRows: [Int]) -> [Float] {
        var hidden = model.embed(step)
        for j in 0..<model.config.numLayers {
            hidden = model.layer(j, hidden, weights: model.residentLayers[j], cache: cache(j), step: step)
        }
        return logitRows.isEmpty ? [] : model.backend.download(model.head(hidden, rows: logitRows))
    }

    /// Moves every sequence `shift` positions later (a newcomer's prompt is longer than the timeline).
    private func shiftAll(by shift: Int) {
        for s in 0..<occupied {
            for t in keys + values { model.backend.copyCachePositions(t, row: s, positions: padding[s]..<length, to: t, toRow: s, at: padding[s] + shift) }
            padding[s] += shift
        }
        length += shift
    }

    /// Moves every sequence earlier by the smallest padding; the longest sequence then starts at 0.
    private func compact() {
        let shift = occupied == 0 ? length : padding[0..<occupied].min()!
        guard shift > 0 else { return }
        for s in 0..<occupied {
            for t in keys + values { model.backend.copyCachePositions(t, row: s, positions: padding[s]..<length, to: t, toRow: s, at: padding[s] - shift) }
            padding[s] -= shift
        }
        length -= shift
    }
}

/// A prompt being prefilled a chunk at a time (`SlotBatch.beginChunked`).
public final class ChunkedPrefill: @unchecked Sendable {
    public let prompt: [Int]
    let allPositions: Bool
    let keys: [Tensor]
    let values: [Tensor]
    /// Prompt tokens prefilled so far.
    public internal(set) var done = 0
    var logits: [Float] = []

    init(prompt: [Int], allPositions: Bool, keys: [Tensor], values: [Tensor]) {
        self.prompt = prompt; self.allPositions = allPositions; self.keys = keys; self.values = values
    }
}
