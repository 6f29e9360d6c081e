import StrataBackend
import StrataCore
import StrataModels

/// What a continuous-batching scheduler drives: slots that sequences join (a prefill) and leave
/// between decode steps. Slots `0 ..< activeSlots` are decoded together each step.
public protocol BatchEngine: AnyObject, Sendable {
    var model: any CausalLM { get }
    /// Most positions (prompt + generated) one sequence may take.
    var context: Int { get }
    /// How many sequences may join now.
    var freeSlots: Int { get }
    /// Slots a decode step covers (some may be idle in a block engine).
    var activeSlots: Int { get }
    /// Prefills `prompts` into free slots (returned in order) with their logits: the last
    /// position's, or every position's when `allPositions[i]` ([positions, vocab] each).
    func admit(_ prompts: [[Int]], maxNewTokens: [Int], allPositions: [Bool], padToken: Int32) throws -> (slots: [Int], logits: [[Float]])
    /// One decode step; `tokens[s]` feeds slot s (idle slots get the pad token). [activeSlots, vocab].
    func decode(_ tokens: [Int32]) throws -> [Float]
    /// Frees slot s; returns the slot whose sequence moved into s (callers renumber), or nil.
    func release(_ s: Int) -> Int?
}

/// An engine that can prefill a prompt over several step boundaries (chunked prefill), so a
/// long prompt never holds the running sequences up for more than one budget's worth.
public protocol ChunkingEngine: BatchEngine {
    func beginChunked(_ prompt: [Int], allPositions: Bool) -> ChunkedPrefill
    func continueChunked(_ prefill: ChunkedPrefill, budget: Int) -> (slot: Int, logits: [Float])?
    func abandon(_ prefill: ChunkedPrefill)
}

extension SlotBatch: ChunkingEngine {}

extension SlotBatch: BatchEngine {
    public var activeSlots: Int { occupied }
    public func admit(_ prompts: [[Int]], maxNewTokens: [Int], allPositions: [Bool], padToken: Int32) throws -> (slots: [Int], logits: [[Float]]) {
        admit(prompts, allPositions: allPositions, padToken: padToken)
    }
}

/// An offloading engine under a policy as a batch engine. The policy's zig-zag schedule runs a
/// whole block of `policy.blockSize` rows over tiered weights and cache, so sequences join
/// only when the block is empty: a block fills with whatever is waiting (idle rows repeat the
/// first prompt and their output is dropped), and finished rows ride along until the last one
/// ends. Block-granular admission is FlexGen's own execution model; per-step admission would
/// need slot moves inside the tiered (host and disk) cache.
public final class BlockEngine: BatchEngine, @unchecked Sendable {
    public let engine: OffloadEngine
    public var model: any CausalLM { engine.model }
    public let context: Int
    private var live: [Bool] = []
    private var length = 0
    private var padding: [Int] = []

    public init(engine: OffloadEngine, context: Int) {
        self.engine = engine
        self.context = min(context, engine.plannedCapacity)
    }

    public var freeSlots: Int { live.isEmpty ? engine.policy.blockSize : 0 }
    public var activeSlots: Int { live.count }

    public func admit(_ prompts: [[Int]], maxNewTokens: [Int], allPositions: [Bool], padToken: Int32) throws -> (slots: [Int], logits: [[Float]]) {
        precondition(live.isEmpty && !prompts.isEmpty && prompts.count <= engine.policy.blockSize)
        let block = engine.policy.blockSize
        var rows = prompts
        while rows.count < block { rows.append(prompts[0]) }
        let (tokens, promptLength, leads) = ForwardStep.leftPadded(rows, padToken: padToken)
        let capacity = promptLength + max(1, zip(prompts, maxNewTokens).map { min($1, context - $0.count) }.max()!)
        try engine.beginBlock(capacity: capacity)
        padding = leads
        let step = ForwardStep(tokens: tokens, batch: block, length: promptLength, pastLength: 0, padding: padding)
        let echo = allPositions.contains(true)
        let logits: [Float]
        do { logits = try engine.forward(step, allRows: echo) } catch { engine.endBlock(); throw error }
        length = promptLength
        live = [Bool](repeating: true, count: block)
        for b in prompts.count..<block { live[b] = false }
        let vocab = model.config.vocabSize
        let perRow = echo ? promptLength : 1
        let out: [[Float]] = prompts.enumerated().map { i, p in
            let base = i * perRow
            let span = !echo ? base..<(base + 1) : allPositions[i] ? (base + promptLength - p.count)..<(base + promptLength)
                : (base + promptLength - 1)..<(base + promptLength)
            return Array(logits[(span.lowerBound * vocab)..<(span.upperBound * vocab)])
        }
        return (Array(0..<prompts.count), out)
    }

    public func decode(_ tokens: [Int32]) throws -> [Float] {
        let step = ForwardStep(tokens: tokens, batch: live.count, length: 1, pastLength: length, padding: padding)
        let logits = try engine.forward(step)
        length += 1
        return logits
    }

    public func release(_ s: Int) -> Int? {
        live[s] = false
        if !live.contains(true) { live = []; length = 0; engine.endBlock() }
        return nil
    }
}
