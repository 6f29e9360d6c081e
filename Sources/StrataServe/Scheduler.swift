import Foundation
import StrataCore
import StrataFormats
import StrataRuntime
import Synchronization

/// What a sequence reports as it runs, in order: its prompt's logprobs (when asked), each
/// generated token, then exactly one `finished` or `failed`.
public enum SequenceEvent: Sendable {
    case prompt([TokenLogprob?])
    case token(Int, TokenLogprob?)
    /// `stoppedText`: the generated text up to the stop string that ended it.
    case finished(FinishReason, stoppedText: String?)
    case failed(String)
}

/// A sequence handed to the scheduler.
public final class SequenceTicket: Sendable {
    public let promptIds: [Int]
    public let parameters: SequenceParameters
    let sink: @Sendable (SequenceEvent) -> Void
    let submitted = Clock.now()
    private let cancelled = Atomic<Bool>(false)

    public init(promptIds: [Int], parameters: SequenceParameters, sink: @escaping @Sendable (SequenceEvent) -> Void) {
        self.promptIds = promptIds
        self.parameters = parameters
        self.sink = sink
    }

    /// The client went away: the sequence leaves the batch at the next step boundary.
    public func cancel() { cancelled.store(true, ordering: .relaxed) }
    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }
}

/// Continuous batching: sequences from any number of clients are merged into one engine batch.
/// Waiting sequences join at decode-step boundaries while slots are free; each boundary admits
/// at most `maxPrefillTokens` prompt tokens (at least one sequence), so a burst of newcomers
/// delays the running rows by one bounded prefill per step, not by the whole queue; a finished
/// sequence leaves at once. The engine runs on one thread of its own; `submit` may be called
/// from anywhere.
public final class Scheduler: @unchecked Sendable {
    public let engine: any BatchEngine
    public let bundle: ModelBundle
    public let maxPrefillTokens: Int
    /// Sequences allowed to wait; beyond, requests are refused (503) instead of queueing without bound.
    public let maxWaiting: Int
    public let metrics: ServerMetrics
    private let queue = Mutex<(waiting: [SequenceTicket], stopping: Bool)>(([], false))
    private let wake = DispatchSemaphore(value: 0)
    private var thread: Thread?
    private let stopped = DispatchSemaphore(value: 0)

    /// Per slot: the ticket and its state (engine thread only).
    private var rows: [(ticket: SequenceTicket, state: SequenceState)?] = []

    public init(engine: any BatchEngine, bundle: ModelBundle, maxPrefillTokens: Int, maxWaiting: Int = 4096, metrics: ServerMetrics) {
        self.engine = engine
        self.bundle = bundle
        self.maxPrefillTokens = maxPrefillTokens
        self.maxWaiting = maxWaiting
        self.metrics = metrics
    }

    public func start() {
        let thread = Thread { [self] in
            run()
            stopped.signal()
        }
        thread.name = "strata-engine"
        thread.stackSize = 16 << 20
        self.thread = thread
        thread.start()
    }

    /// Lets the running and waiting sequences finish, then stops the engine thread.
    public func shutdown() {
        guard thread != nil else { return }
        queue.withLock { $0.stopping = true }
        wake.signal()
        stopped.wait()
        thread = nil
    }

    /// Queues all of `tickets` (one request's sequences), or none when that would pass
    /// `maxWaiting` or the scheduler is stopping; returns whether they were queued.
    public func submit(_ tickets: [SequenceTicket]) -> Bool {
        let depth: Int? = queue.withLock { q in
            guard !q.stopping, q.waiting.count + tickets.count <= maxWaiting else { return nil }
            q.waiting += tickets
            return q.waiting.count
        }
        guard let depth else { return false }
        metrics.queueGauge.set(Double(depth))
        wake.signal()
        return true
    }

    /// A long prompt being prefilled a chunk per boundary, and whose it is.
    private var partial: (ticket: SequenceTicket, prefill: ChunkedPrefill)?

    private func run() {
        let chunking = engine as? any ChunkingEngine
        while true {
            var budget = maxPrefillTokens
            var worked = false
            if let chunking, let (ticket, prefill) = partial {
                worked = true
                if ticket.isCancelled {
                    chunking.abandon(prefill)
                    ticket.sink(.finished(.stop, stoppedText: nil))
                    partial = nil
                } else {
                    budget -= continueChunk(chunking, ticket, prefill, budget: budget)
                }
            }
            let (newcomers, long, stop) = takeNewcomers(budget: budget, chunking: chunking != nil)
            if !newcomers.isEmpty {
                admit(newcomers)
                worked = true
                budget -= newcomers.reduce(0) { $0 + $1.promptIds.count }
            }
            if let chunking, let long {
                let prefill = chunking.beginChunked(long.promptIds, allPositions: long.parameters.promptLogprobs)
                partial = (long, prefill)
                if budget > 0 { _ = continueChunk(chunking, long, prefill, budget: budget) }
                worked = true
            }
            if rows.contains(where: { $0 != nil }) {
                step()
                worked = true
            }
            metrics.runningGauge.set(Double(rows.reduce(0) { $0 + ($1 == nil ? 0 : 1) }))
            if !worked {
                if stop && partial == nil && queue.withLock({ $0.waiting.isEmpty }) { return }
                wake.wait()
            }
        }
    }

    /// One chunk of the partial prefill; when it completes, the sequence joins the batch.
    /// Returns the prompt tokens it consumed.
    private func continueChunk(_ chunking: any ChunkingEngine, _ ticket: SequenceTicket, _ prefill: ChunkedPrefill, budget: Int) -> Int {
        let before = prefill.done
        let started = Clock.now()
        if let placed = chunking.continueChunked(prefill, budget: budget) {
            partial = nil
            growRows()
            if begin(ticket, slot: placed.slot, logits: placed.logits) { leave([placed.slot]) }
        }
        metrics.promptCounter.increment(by: Int64(prefill.done - before))
        metrics.recordStep(seconds: Clock.now() - started, tokens: 0)
        return prefill.done - before
    }

    /// Waiting sequences that fit the free slots and what is left of this boundary's prefill
    /// budget (an engine without chunking, a policy's block, takes whatever fits its block), and
    /// a prompt longer than the whole budget to prefill in chunks when none is in progress.
    private func takeNewcomers(budget: Int, chunking: Bool) -> (short: [SequenceTicket], long: SequenceTicket?, stopping: Bool) {
        let free = engine.freeSlots
        let canStartLong = chunking && partial == nil
        return queue.withLock { q in
            var taken: [SequenceTicket] = []
            var long: SequenceTicket?
            var tokens = 0
            while let next = q.waiting.first, taken.count < free {
                if next.isCancelled { q.waiting.removeFirst(); next.sink(.finished(.stop, stoppedText: nil)); continue }
                let count = next.promptIds.count
                if chunking && count > maxPrefillTokens {
                    // First come, first served: a long prompt at the head waits for the chunk lane.
                    if canStartLong && taken.count < free { long = q.waiting.removeFirst() }
                    break
                }
                guard !chunking || tokens + count <= budget else { break }
                q.waiting.removeFirst()
                taken.append(next)
                tokens += count
            }
            if long != nil && taken.count + 1 > free { q.waiting.insert(long!, at: 0); long = nil }
            metrics.queueGauge.set(Double(q.waiting.count))
            return (taken, long, q.stopping)
        }
    }

    private func admit(_ tickets: [SequenceTicket]) {
        let started = Clock.now()
        let admitted: (slots: [Int], logits: [[Float]])
        do {
            admitted = try engine.admit(tickets.map(\.promptIds), maxNewTokens: tickets.map(\.parameters.maxTokens),
                                        allPositions: tickets.map(\.parameters.promptLogprobs), padToken: Int32(bundle.padTokenId))
        } catch {
            for t in tickets { t.sink(.failed("the engine failed: \(error)")) }
            return
        }
        metrics.promptCounter.increment(by: Int64(tickets.reduce(0) { $0 + $1.promptIds.count }))
        growRows()
        var leaving: [Int] = []
        for (i, ticket) in tickets.enumerated() where begin(ticket, slot: admitted.slots[i], logits: admitted.logits[i]) {
            leaving.append(admitted.slots[i])
        }
        metrics.recordStep(seconds: Clock.now() - started, tokens: tickets.count)
        leave(leaving)
    }

    /// One entry per slot the engine now decodes.
    private func growRows() {
        while rows.count < engine.activeSlots { rows.append(nil) }
    }

    /// A prefilled sequence takes its slot: its prompt logprobs (when asked) and its first
    /// token from the prompt's last logits. Returns true when it is already done.
    private func begin(_ ticket: SequenceTicket, slot: Int, logits: [Float]) -> Bool {
        let vocab = engine.model.config.vocabSize
        var state = SequenceState(parameters: ticket.parameters, promptLength: ticket.promptIds.count, context: engine.context,
                                  eosTokenIds: bundle.eosTokenIds)
        if ticket.parameters.promptLogprobs {
            // Position t's logits score prompt token t + 1; the first token has no logprob.
            let top = ticket.parameters.logprobs ?? 0
            var entries: [TokenLogprob?] = [nil]
            logits.withUnsafeBufferPointer { all in
                for t in 1..<ticket.promptIds.count {
                    entries.append(TokenLogprob.from(UnsafeBufferPointer(rebasing: all[((t - 1) * vocab)..<(t * vocab)]),
                                                     token: ticket.promptIds[t], top: top))
                }
            }
            ticket.sink(.prompt(entries))
        }
        if state.finish == nil && !ticket.isCancelled {
            let last = logits.count / vocab - 1
            let (token, logprob) = logits.withUnsafeBufferPointer {
                state.accept(UnsafeBufferPointer(rebasing: $0[(last * vocab)..<((last + 1) * vocab)]), tokenizer: bundle.tokenizer)
            }
            ticket.sink(.token(token, logprob))
            metrics.generatedCounter.increment(by: Int64(1))
            metrics.ttft.record(Clock.now() - ticket.submitted)
        }
        rows[slot] = (ticket, state)
        return state.finish != nil || ticket.isCancelled
    }

    private func step() {
        let started = Clock.now()
        let pad = Int32(bundle.padTokenId)
        let tokens = (0..<engine.activeSlots).map { s in rows[s].map { Int32($0.state.generated.last!) } ?? pad }
        let logits: [Float]
        do {
            logits = try engine.decode(tokens)
        } catch {
            let live = (0..<rows.count).filter { rows[$0] != nil }
            for s in live { rows[s]!.ticket.sink(.failed("the engine failed: \(error)")) }
            leave(live, failed: true)
            return
        }
        let vocab = logits.count / tokens.count
        var leaving: [Int] = []
        var produced = 0
        logits.withUnsafeBufferPointer { all in
            for s in 0..<tokens.count {
                guard var row = rows[s] else { continue }
                if row.ticket.isCancelled { leaving.append(s); continue }
                let (token, logprob) = row.state.accept(UnsafeBufferPointer(rebasing: all[(s * vocab)..<((s + 1) * vocab)]),
                                                        tokenizer: bundle.tokenizer)
                rows[s] = row
                row.ticket.sink(.token(token, logprob))
                produced += 1
                if row.state.finish != nil { leaving.append(s) }
            }
        }
        metrics.generatedCounter.increment(by: Int64(produced))
        metrics.recordStep(seconds: Clock.now() - started, tokens: produced)
        leave(leaving)
    }

    /// Ends the sequences in `slots` and frees their slots, highest first, so a slot the engine
    /// refills from the last one is never one still to be freed.
    private func leave(_ slots: [Int], failed: Bool = false) {
        for s in slots.sorted(by: >) {
            guard let row = rows[s] else { continue }
            if !failed {
                if row.ticket.isCancelled {
                    row.ticket.sink(.finished(.stop, stoppedText: nil))
                } else {
                    row.ticket.sink(.finished(row.state.finish ?? .length, stoppedText: row.state.stoppedText))
                }
                metrics.latency.record(Clock.now() - row.ticket.submitted)
            }
            rows[s] = nil
            if let moved = engine.release(s) {
                rows[s] = rows[moved]
                rows[moved] = nil
            }
        }
        if rows.count > engine.activeSlots { rows.removeLast(rows.count - engine.activeSlots) }
    }
}
