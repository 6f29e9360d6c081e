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
    public let metrics: ServerMetrics
    private let queue = Mutex<(waiting: [SequenceTicket], stopping: Bool)>(([], false))
    private let wake = DispatchSemaphore(value: 0)
    private var thread: Thread?
    private let stopped = DispatchSemaphore(value: 0)

    /// Per slot: the ticket and its state (engine thread only).
    private var rows: [(ticket: SequenceTicket, state: SequenceState)?] = []

    public init(engine: any BatchEngine, bundle: ModelBundle, maxPrefillTokens: Int, metrics: ServerMetrics) {
        self.engine = engine
        self.bundle = bundle
        self.maxPrefillTokens = maxPrefillTokens
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

    public func submit(_ ticket: SequenceTicket) {
        let depth = queue.withLock { q in
            q.waiting.append(ticket)
            return q.waiting.count
        }
        metrics.queueDepth.set(depth)
        wake.signal()
    }

    private func run() {
        while true {
            let (newcomers, stop) = takeNewcomers()
            if !newcomers.isEmpty { admit(newcomers) }
            if engine.activeSlots > 0 && rows.contains(where: { $0 != nil }) { step() }
            metrics.runningBatch.set(rows.reduce(0) { $0 + ($1 == nil ? 0 : 1) })
            if engine.activeSlots == 0 && newcomers.isEmpty {
                if stop && queue.withLock({ $0.waiting.isEmpty }) { return }
                wake.wait()
            }
        }
    }

    /// Waiting sequences that fit the free slots and this boundary's prefill budget.
    private func takeNewcomers() -> ([SequenceTicket], Bool) {
        let free = engine.freeSlots
        return queue.withLock { q in
            var taken: [SequenceTicket] = []
            var tokens = 0
            while let next = q.waiting.first, taken.count < free,
                  taken.isEmpty || tokens + next.promptIds.count <= maxPrefillTokens {
                q.waiting.removeFirst()
                if next.isCancelled { continue }
                taken.append(next)
                tokens += next.promptIds.count
            }
            metrics.queueDepth.set(q.waiting.count)
            return (taken, q.stopping)
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
        metrics.promptTokens.increment(by: tickets.reduce(0) { $0 + $1.promptIds.count })
        let vocab = engine.model.config.vocabSize
        while rows.count < engine.activeSlots { rows.append(nil) }
        var leaving: [Int] = []
        for (i, ticket) in tickets.enumerated() {
            let slot = admitted.slots[i]
            var state = SequenceState(parameters: ticket.parameters, promptLength: ticket.promptIds.count, context: engine.context,
                                      eosTokenIds: bundle.eosTokenIds)
            let logits = admitted.logits[i]
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
            rows[slot] = (ticket, state)
            if state.finish == nil && !ticket.isCancelled {
                let last = logits.count / vocab - 1
                let (token, logprob) = logits.withUnsafeBufferPointer {
                    state.accept(UnsafeBufferPointer(rebasing: $0[(last * vocab)..<((last + 1) * vocab)]), tokenizer: bundle.tokenizer)
                }
                rows[slot]!.state = state
                ticket.sink(.token(token, logprob))
                metrics.generatedTokens.increment(by: 1)
                metrics.firstToken.record(Clock.now() - ticket.submitted)
            }
            if state.finish != nil || ticket.isCancelled { leaving.append(slot) }
        }
        metrics.recordStep(seconds: Clock.now() - started, tokens: tickets.count)
        leave(leaving)
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
        metrics.generatedTokens.increment(by: produced)
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
                metrics.requestLatency.record(Clock.now() - row.ticket.submitted)
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
