import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
#if canImport(Glibc)
import Glibc
#endif

public enum FinishReason: String, Sendable { case stop, length }

/// One sequence to continue.
public struct GenerationRequest: Sendable {
    public var promptIds: [Int]
    public var maxNewTokens: Int
    public var stopStrings: [String]
    /// Seeds this request's sampler together with SamplingParameters.seed, so results do not
    /// depend on which batch the request lands in.
    public var sampleIndex: UInt64

    public init(promptIds: [Int], maxNewTokens: Int, stopStrings: [String] = [], sampleIndex: UInt64 = 0) {
        self.promptIds = promptIds
        self.maxNewTokens = maxNewTokens
        self.stopStrings = stopStrings
        self.sampleIndex = sampleIndex
    }
}

public struct GenerationResult: Sendable, Equatable {
    public var tokenIds: [Int]
    public var text: String
    public var finishReason: FinishReason

    public init(tokenIds: [Int], text: String, finishReason: FinishReason) {
        self.tokenIds = tokenIds
        self.text = text
        self.finishReason = finishReason
    }
}

/// Wall-clock split of a batch: prefill (prompt pass) and decode (one token per step).
public struct GenerationTiming: Sendable {
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    public var promptTokens = 0
    public var newTokens = 0
    public var decodeSteps = 0
    public init() {}
}

/// Batched generation over a left-padded batch with a KV cache, per-row stopping (EOS, stop
/// strings, token budget) and greedy or seeded sampling.
public final class Generator: Sendable {
    public let bundle: ModelBundle
    /// Runs the layers under an offloading policy; nil runs them resident on the bundle's backend.
    public let engine: OffloadEngine?

    public init(bundle: ModelBundle, engine: OffloadEngine? = nil) {
        self.bundle = bundle
        self.engine = engine
    }

    /// Generates for every request in one batch. `ignoreEOS` keeps going to `maxNewTokens`
    /// (benchmarks). `onToken` is not used for batch jobs; results come back together.
    public func generate(_ requests: [GenerationRequest], sampling: SamplingParameters, ignoreEOS: Bool = false,
                         timing: inout GenerationTiming) throws -> [GenerationResult] {
        guard !requests.isEmpty else { return [] }
        if let engine {
            // A policy runs whole blocks: split into blocks, fill the last with copies of its
            // first request (their results are dropped; rows never influence each other).
            let block = engine.policy.blockSize
            var results: [GenerationResult] = []
            for start in stride(from: 0, to: requests.count, by: block) {
                var chunk = Array(requests[start..<min(requests.count, start + block)])
                let real = chunk.count
                while chunk.count < block { chunk.append(chunk[0]) }
                let all = try run(chunk, sampling: sampling, ignoreEOS: ignoreEOS, timing: &timing)
                results += all.prefix(real)
                // The fill rows' work is not the caller's output: keep it out of the counts.
                timing.newTokens -= all.dropFirst(real).reduce(0) { $0 + $1.tokenIds.count }
                timing.promptTokens -= (block - real) * chunk[0].promptIds.count
            }
            return results
        }
        return try run(requests, sampling: sampling, ignoreEOS: ignoreEOS, timing: &timing)
    }

    private func run(_ requests: [GenerationRequest], sampling: SamplingParameters, ignoreEOS: Bool,
                     timing: inout GenerationTiming) throws -> [GenerationResult] {
        let model = bundle.model
        let batch = requests.count
        // The rows' budgets never reach past the model's positions.
        var rows = BatchRows(requests: requests, bundle: bundle, sampling: sampling, ignoreEOS: ignoreEOS)
        let (tokens, promptLength, padding) = ForwardStep.leftPadded(requests.map(\.promptIds), padToken: Int32(bundle.padTokenId))
        let capacity = promptLength + max(rows.budgets.max()!, 1)
        let cache = engine == nil ? model.makeCache(batch: batch, capacity: capacity) : model.makeCache(batch: 0, capacity: 0)
        try engine?.beginBlock(capacity: capacity)
        defer { engine?.endBlock() }

        var step = ForwardStep(tokens: tokens, batch: batch, length: promptLength, pastLength: 0, padding: padding)
        var clock = Clock()
        timing.promptTokens += requests.reduce(0) { $0 + $1.promptIds.count }
        var isPrefill = true
        while !rows.allFinished {
            let logits = try engine?.forward(step) ?? model.backend.download(model.forward(step, cache: cache))
            let vocab = logits.count / batch
            var next = [Int32](repeating: Int32(bundle.padTokenId), count: batch)
            logits.withUnsafeBufferPointer { all in
                for b in 0..<batch where !rows.finished[b] {
                    next[b] = Int32(rows.accept(UnsafeBufferPointer(rebasing: all[(b * vocab)..<((b + 1) * vocab)]), row: b))
                    timing.newTokens += 1
                }
            }
            let elapsed = clock.lap()
            if isPrefill { timing.prefillSeconds += elapsed } else { timing.decodeSeconds += elapsed; timing.decodeSteps += 1 }
            isPrefill = false
            if rows.allFinished { break }
            step = ForwardStep(tokens: next, batch: batch, length: 1, pastLength: step.pastLength + step.length, padding: padding)
        }
        return rows.results
    }
}

/// Monotonic wall clock.
public struct Clock: Sendable {
    private var last: Double
    public init() { last = Clock.now() }
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
    /// Seconds since the previous lap (or creation).
    public mutating func lap() -> Double {
        let t = Clock.now()
        defer { last = t }
        return t - last
    }
}
