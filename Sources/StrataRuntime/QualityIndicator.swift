import StrataBackend
import StrataCore
import StrataModels
import Synchronization

/// LLM-PQ's variance indicator omega[layer][bits]: for each quantizable linear layer,
/// s_w(b)^2 * (sum over input features of the input's variance), where
/// s_w(b) = max over output rows of (row max - row min) / (2^(b-1) - 1); feed-forward linears
/// weigh x4; a decoder layer's omega is the sum over its linears. Input variance is computed
/// over every calibration token of every sample at once (sums and sums of squares in double
/// precision), not averaged per sample as LLM-PQ's public code does.
public struct QualityIndicator: Sendable {
    public static let candidateBits = [2, 3, 4, 8, 16]
    public static let feedForwardWeight = 4.0

    public var bits: [Int]
    /// omega[layer][i] for bits[i].
    public var omega: [[Double]]
    public var calibrationTokens: Int

    public func omega(layer: Int, bits b: Int) -> Double? {
        bits.firstIndex(of: b).map { omega[layer][$0] }
    }

    public var json: JSONValue {
        .object([
            "format": .string("strata-indicator"),
            "method": .string("variance: s_w(b)^2 * sum of input feature variances, FFN x4"),
            "bits": .array(bits.map { .number(Double($0)) }),
            "calibration_tokens": .number(Double(calibrationTokens)),
            "omega": .array(omega.map { .array($0.map { .number($0) }) }),
        ])
    }

    public static func load(path: String) throws -> QualityIndicator {
        let fields = try JSONFields(JSONValue.load(path: path), path: path)
        let bits = try fields.intList("bits")
        guard let rows = fields.object["omega"]?.array else { throw fields.missing("omega") }
        let omega = try rows.enumerated().map { layer, row -> [Double] in
            guard let values = row.array?.compactMap(\.double), values.count == bits.count else {
                throw fields.wrong("omega[\(layer)]", "an array of \(bits.count) numbers")
            }
            return values
        }
        return QualityIndicator(bits: bits, omega: omega, calibrationTokens: try fields.int("calibration_tokens", default: 0))
    }

    /// Measures the indicator on `text`, cut into windows of `window` tokens (at most `samples`).
    public static func measure(directory: String, backend: any Backend, text: String, window: Int, samples: Int) throws -> QualityIndicator {
        let recorder = RecordingBackend(inner: backend)
        let bundle = try ModelBundle(directory: directory, backend: recorder)
        let model = bundle.model
        let layers = model.config.numLayers
        let watched = (0..<layers).flatMap { model.linearWeights(layer: $0).map(\.weight) }
        recorder.watch(watched)
        let pieces = Perplexity.windows(of: bundle.tokenizer.encode(text), window: min(window, model.config.maxPositions))
        guard !pieces.isEmpty else { throw StrataError.invalidRequest("calibration text encodes to fewer than 2 tokens") }
        var tokens = 0
        for piece in pieces.prefix(max(1, samples)) {
            let ids = piece.map(Int32.init)
            let step = ForwardStep(tokens: ids, batch: 1, length: ids.count, pastLength: 0, padding: [0])
            let cache = model.makeCache(batch: 1, capacity: ids.count)
            var hidden = model.embed(step)
            for j in 0..<layers { hidden = model.layer(j, hidden, cache: cache, step: step) }
            tokens += ids.count
        }
        var omega = [[Double]](repeating: [Double](repeating: 0, count: candidateBits.count), count: layers)
        for layer in 0..<layers {
            for (_, weight, feedForward) in model.linearWeights(layer: layer) {
                let variance = recorder.inputVarianceSum(of: weight)
                let values = backend.download(weight)
                let columns = weight.columns
                var range: Float = 0
                for r in 0..<weight.rows {
                    var lo = Float.infinity, hi = -Float.infinity
                    for c in 0..<columns { let v = values[r * columns + c]; lo = min(lo, v); hi = max(hi, v) }
                    range = max(range, hi - lo)
                }
                for (i, b) in candidateBits.enumerated() {
                    let scale = Double(range) / Double((1 << (b - 1)) - 1)
                    omega[layer][i] += (feedForward ? feedForwardWeight : 1) * scale * scale * variance
                }
            }
        }
        return QualityIndicator(bits: candidateBits, omega: omega, calibrationTokens: tokens)
    }

    /// The precision map with the least total omega whose mean bits do not exceed
    /// `averageBits` (a knapsack over layers, solved exactly by dynamic programming on the
    /// integer bit total).
    public func bestPrecision(averageBits: Double, choices: [Int], groupSize: Int) throws -> PrecisionMap {
        let layers = omega.count
        let budget = Int((averageBits * Double(layers)).rounded(.down))
        let usable = choices.filter { bits.contains($0) }
        guard let smallest = usable.min(), smallest * layers <= budget else {
            throw StrataError.invalidRequest("average of \(averageBits) bits is below what the candidate bits \(choices) allow")
        }
        // best[total] = (cost, assignment) over the layers seen so far.
        var best: [Int: (Double, [Int])] = [0: (0, [])]
        for layer in 0..<layers {
            var next: [Int: (Double, [Int])] = [:]
            for (total, (cost, assignment)) in best {
                for b in usable where total + b <= budget {
                    let c = cost + omega(layer: layer, bits: b)!
                    if next[total + b].map({ c < $0.0 }) ?? true { next[total + b] = (c, assignment + [b]) }
                }
            }
            best = next
        }
        let winner = best.values.min { $0.0 < $1.0 }!.1
        return PrecisionMap(bits: Dictionary(uniqueKeysWithValues: winner.enumerated().map { ($0.offset, $0.element) }), groupSize: groupSize)
    }
}

/// A backend that forwards every op and, for watched weights, accumulates per-feature sums
/// and sums of squares of the inputs `linear` sees.
final class RecordingBackend: DelegatingBackend, @unchecked Sendable {
    struct Moments { var count = 0; var sum: [Double] = []; var squares: [Double] = [] }

    private let state = Mutex<(watched: Set<ObjectIdentifier>, moments: [ObjectIdentifier: Moments])>(([], [:]))

    func watch(_ weights: [Tensor]) {
        state.withLock { $0.watched = Set(weights.map { ObjectIdentifier($0.buffer) }) }
    }

    /// Sum over input features of the population variance over all recorded rows.
    func inputVarianceSum(of weight: Tensor) -> Double {
        state.withLock { s in
            guard let m = s.moments[ObjectIdentifier(weight.buffer)], m.count > 0 else { return 0 }
            let n = Double(m.count)
            return zip(m.sum, m.squares).reduce(0) { $0 + max(0, $1.1 / n - ($1.0 / n) * ($1.0 / n)) }
        }
    }

    override func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let key = ObjectIdentifier(weight.buffer)
        if state.withLock({ $0.watched.contains(key) }) {
            let values = inner.download(x)
            let columns = x.columns
            state.withLock { s in
                var m = s.moments[key] ?? Moments(count: 0, sum: .init(repeating: 0, count: columns), squares: .init(repeating: 0, count: columns))
                for r in 0..<x.rows {
                    for c in 0..<columns {
                        let v = Double(values[r * columns + c])
                        m.sum[c] += v
                        m.squares[c] += v * v
                    }
                }
                m.count += x.rows
                s.moments[key] = m
            }
        }
        return inner.linear(x, weight: weight, bias: bias)
    }
}
