import StrataCore

/// Discrete-event simulation of a plan's micro-batch pipeline: prefill micro-batches flow
/// through the stages, then decode rounds, each micro-batch's next token entering the first
/// stage only after its previous token left the last one (the ring back to rank 0). Stages
/// process one micro-batch at a time in arrival order; links add their transfer time.
public struct PipelineSimulator: Sendable {
    public struct Event: Sendable {
        public var stage: Int
        public var start: Double
        public var end: Double
        public var prefill: Bool
    }

    public let cost: ClusterCostModel
    public let plan: ClusterPlan

    public init(cost: ClusterCostModel, plan: ClusterPlan) { self.cost = cost; self.plan = plan }

    public func run() -> (end: Double, prefillEnd: Double, events: [Event]) {
        let stages = plan.stages
        let N = stages.count, G = plan.globalBatch
        let kp = (G + plan.eta - 1) / plan.eta, kd = (G + plan.xi - 1) / plan.xi
        let order = stages.map(\.device)
        let commPre = cost.boundaries(order, prefill: true, batch: plan.eta), commDec = cost.boundaries(order, prefill: false, batch: plan.xi)
        var free = [Double](repeating: 0, count: N)
        var events: [Event] = []
        events.reserveCapacity((kp + kd * plan.genLength) * N)
        var prefillEnd = 0.0
        for _ in 0..<kp {
            var arrival = 0.0
            for j in 0..<N {
                let start = max(free[j], arrival)
                let end = start + stages[j].prefillSeconds
                events.append(Event(stage: j, start: start, end: end, prefill: true))
                free[j] = end
                arrival = end + commPre[j]
                if j == N - 1 { prefillEnd = max(prefillEnd, end) }
            }
        }
        // Decode: the first new token comes from the prefill pass; n - 1 rounds follow.
        var back = [Double](repeating: prefillEnd, count: kd)
        var last = prefillEnd
        for _ in 1..<max(plan.genLength, 1) {
            for m in 0..<kd {
                var arrival = back[m]
                for j in 0..<N {
                    let start = max(free[j], arrival)
                    let end = start + stages[j].decodeSeconds
                    events.append(Event(stage: j, start: start, end: end, prefill: false))
                    free[j] = end
                    arrival = end + commDec[j]
                }
                back[m] = arrival
                last = max(last, arrival - commDec[N - 1])
            }
        }
        return (last, prefillEnd, events)
    }

    /// The per-stage timeline as SVG: one row per stage, prefill blue, decode orange.
    public func svg(width: Double = 1200) -> String {
        let (end, _, events) = run()
        return TimelineDrawing.svg(labels: plan.stages.map { "\($0.type) L\($0.layers.lowerBound)-\($0.layers.upperBound)" },
                                   spans: events.map { ($0.stage, $0.start, $0.end, $0.prefill) }, end: end,
                                   caption: "\(plan.method), simulated", width: width)
    }
}

/// A pipeline's stage timeline as SVG, simulated (the planner) or measured (`cluster run`):
/// one row per stage, prefill spans blue, decode orange, so bubbles show as gaps.
public enum TimelineDrawing {
    public static func svg(labels: [String], spans: [(stage: Int, start: Double, end: Double, prefill: Bool)], end: Double,
                           caption: String, width: Double = 1200) -> String {
        let rowHeight = 28.0, left = 150.0
        let scale = (width - left - 10) / max(end, 1e-9)
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\(quote(Int(Double(labels.count) * rowHeight + 40)))>\n"
        out += "<style>text{font:12px sans-serif}</style>\n"
        for (j, label) in labels.enumerated() {
            let y = Double(j) * rowHeight + 10
            out += "<text x=\"4\" y=\"\(y + 17)\">\(label)</text>\n"
        }
        for e in spans {
            let x = left + e.start * scale, w = max(0.5, (e.end - e.start) * scale), y = Double(e.stage) * rowHeight + 12
            out += "<rect x=\"\(fmt(x))\" y=\"\(fmt(y))\" width=\"\(fmt(w))\" height=\"\(fmt(rowHeight - 6))\" fill=\"\(e.prefill ? "#4a7bd0" : "#e8913a")\"/>\n"
        }
        let axisY = Double(labels.count) * rowHeight + 30
        out += "<text x=\"\(left)\" y=\"\(axisY)\">0 s</text><text x=\"\(fmt(width - 220))\" y=\"\(axisY)\">\(fmt(end)) s (\(caption))</text>\n"
        return out + "</svg>\n"
    }

    private static func fmt(_ v: Double) -> String { String(Double(Int(v * 100)) / 100) }
    private static func quote(_ v: Int) -> String { "\"\(v)\"" }
}
