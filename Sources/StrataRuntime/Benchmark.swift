import StrataCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// FlexGen's throughput workload: `batch` random prompts of exactly `promptLength` tokens,
/// `genLength` new tokens each (EOS ignored). Total throughput is new tokens / wall time of
/// prefill plus decode, as FlexGen reports it.
public struct Benchmark: Sendable {
    public var batchSize: Int
    public var promptLength: Int
    public var genLength: Int
    public var repeats: Int

    public init(batchSize: Int, promptLength: Int, genLength: Int, repeats: Int = 1) {
        self.batchSize = batchSize; self.promptLength = promptLength; self.genLength = genLength; self.repeats = repeats
    }

    public struct Result: Sendable {
        public var prefillTokensPerSecond: Double
        public var decodeTokensPerSecond: Double
        public var totalTokensPerSecond: Double
        public var wallSeconds: Double
        public var peakRSSBytes: Int

        public var json: JSONValue {
            .object([
                "prefill_tokens_per_s": .number(prefillTokensPerSecond),
                "decode_tokens_per_s": .number(decodeTokensPerSecond),
                "total_tokens_per_s": .number(totalTokensPerSecond),
                "wall_seconds": .number(wallSeconds),
                "peak_rss_bytes": .number(Double(peakRSSBytes)),
            ])
        }
    }

    public func run(_ generator: Generator) throws -> Result {
        let config = generator.bundle.model.config
        guard batchSize > 0, promptLength > 0, genLength > 0, repeats > 0 else {
            throw StrataError.invalidRequest("--batch-size, --prompt-len, --gen-len and --repeat must be positive")
        }
        guard promptLength + genLength <= config.maxPositions else {
            throw StrataError.invalidRequest("--prompt-len + --gen-len = \(promptLength + genLength) exceeds the model's \(config.maxPositions) positions")
        }
        var rng = SeededGenerator(seed: 42)
        let requests = (0..<batchSize).map { i in
            GenerationRequest(promptIds: (0..<promptLength).map { _ in Int(rng.next() % UInt64(config.vocabSize)) },
                              maxNewTokens: genLength, sampleIndex: UInt64(i))
        }
        // Warm-up: touches every weight page and the allocator's pools.
        var warm = GenerationTiming()
        _ = try generator.generate(Array(requests.prefix(1)).map { var r = $0; r.maxNewTokens = 2; return r },
                               sampling: SamplingParameters(), ignoreEOS: true, timing: &warm)
        var runs: [Result] = []
        for _ in 0..<repeats {
            var timing = GenerationTiming()
            let start = Clock.now()
            _ = try generator.generate(requests, sampling: SamplingParameters(), ignoreEOS: true, timing: &timing)
            let wall = Clock.now() - start
            let decodeTokens = Double(batchSize * (genLength - 1))
            runs.append(Result(
                prefillTokensPerSecond: Double(batchSize * promptLength) / timing.prefillSeconds,
                decodeTokensPerSecond: timing.decodeSeconds > 0 ? decodeTokens / timing.decodeSeconds : 0,
                totalTokensPerSecond: Double(batchSize * genLength) / wall,
                wallSeconds: wall, peakRSSBytes: Self.peakRSSBytes()))
        }
        // The median run by total throughput.
        return runs.sorted { $0.totalTokensPerSecond < $1.totalTokensPerSecond }[runs.count / 2]
    }

    /// The process's resident-set high-water mark (VmHWM), measured, not computed.
    public static func peakRSSBytes() -> Int {
        guard let data = FileManager.default.contents(atPath: "/proc/self/status") else { return 0 }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
            return kb * 1024
        }
        return 0
    }
}
