import Prometheus
import StrataRuntime
import Synchronization

/// The server's Prometheus metrics (`GET /metrics`): queue depth, running batch size, token
/// counters and throughput, time to first token and request latency.
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let queueGauge: Gauge
    let runningGauge: Gauge
    let throughput: Gauge
    let promptCounter: Counter
    let generatedCounter: Counter
    public let requests: Counter
    let ttft: ValueHistogram
    let latency: ValueHistogram
    /// Tokens and seconds of the recent steps, for the tokens/s gauge.
    private let window = Mutex<(tokens: Double, seconds: Double)>((0, 0))

    public init() {
        let buckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
        queueGauge = registry.makeGauge(descriptor: .init(namespace: "strata", metricName: "queue_depth", unitName: "", helpText: "Sequences waiting to join the batch"))
        runningGauge = registry.makeGauge(descriptor: .init(namespace: "strata", metricName: "running_batch_size", unitName: "", helpText: "Sequences in the running batch"))
        throughput = registry.makeGauge(descriptor: .init(namespace: "strata", metricName: "generation_tokens_per_second", unitName: "", helpText: "Generated tokens per second of engine time, recent steps"))
        promptCounter = registry.makeCounter(descriptor: .init(namespace: "strata", metricName: "prompt_tokens", unitName: "total", helpText: "Prompt tokens prefilled"))
        generatedCounter = registry.makeCounter(descriptor: .init(namespace: "strata", metricName: "generation_tokens", unitName: "total", helpText: "Tokens generated"))
        requests = registry.makeCounter(descriptor: .init(namespace: "strata", metricName: "requests", unitName: "total", helpText: "HTTP requests to the generation endpoints"))
        ttft = registry.makeValueHistogram(descriptor: .init(namespace: "strata", metricName: "time_to_first_token", unitName: "seconds", helpText: "Submission to first token"), buckets: buckets)
        latency = registry.makeValueHistogram(descriptor: .init(namespace: "strata", metricName: "request_latency", unitName: "seconds", helpText: "Submission to last token"), buckets: buckets)
    }

    /// Folds one engine step into the throughput gauge (an average over about the last 32 steps).
    func recordStep(seconds: Double, tokens: Int) {
        let rate = window.withLock { w -> Double in
            w.tokens = w.tokens * 31 / 32 + Double(tokens)
            w.seconds = w.seconds * 31 / 32 + seconds
            return w.seconds > 0 ? w.tokens / w.seconds : 0
        }
        throughput.set(rate)
    }

    /// The Prometheus text exposition.
    public func exposition() -> String {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}

