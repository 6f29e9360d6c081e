import CStrataKernels
import StrataCore
/// xoshiro256** seeded through SplitMix64: fast, and reproducible across platforms (the
/// standard library's generator is not seedable).
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitMix(), splitMix(), splitMix(), splitMix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// How the next token is chosen. Temperature 0 is greedy.
public struct SamplingParameters: Sendable, Equatable {
    public var temperature: Float
    public var topK: Int
    public var topP: Float
    public var seed: UInt64

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    public var isGreedy: Bool { temperature <= 0 }

    public func validate() throws {
        guard temperature >= 0, temperature.isFinite else { throw StrataError.invalidRequest("--temperature must be >= 0, got \(temperature)") }
        guard topK >= 0 else { throw StrataError.invalidRequest("--top-k must be >= 0 (0 disables it), got \(topK)") }
        guard topP > 0 && topP <= 1 else { throw StrataError.invalidRequest("--top-p must be in (0, 1], got \(topP)") }
    }
}

public enum Sampler {
    /// Index of the largest logit; the first one on ties, as torch.argmax (`strata_argmax`,
    /// AVX2: a batch of 32 rows over a 50K vocabulary was 3% of a decode step as a scalar loop).
    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        guard let base = logits.baseAddress, logits.count > 0 else { return 0 }
        return strata_argmax(base, logits.count)
    }

    /// Temperature, then top-k, then top-p (nucleus) filtering, then a draw.
    public static func sample(_ logits: UnsafeBufferPointer<Float>, _ p: SamplingParameters, rng: inout SeededGenerator) -> Int {
        if p.isGreedy { return argmax(logits) }
        var candidates = logits.enumerated().map { (index: $0.offset, logit: $0.element / p.temperature) }
        candidates.sort { $0.logit > $1.logit }
        if p.topK > 0 && p.topK < candidates.count { candidates.removeSubrange(p.topK...) }
        let maxLogit = candidates[0].logit
        var probabilities = candidates.map { Double(expf($0.logit - maxLogit)) }
        let total = probabilities.reduce(0, +)
        probabilities = probabilities.map { $0 / total }
        if p.topP < 1 {
            var cumulative = 0.0
            var keep = probabilities.count
            for (i, q) in probabilities.enumerated() {
                cumulative += q
                if cumulative >= Double(p.topP) { keep = i + 1; break }
            }
            probabilities.removeSubrange(keep...)
            candidates.removeSubrange(keep...)
        }
        let mass = probabilities.reduce(0, +)
        var r = rng.nextUnit() * mass
        for (i, q) in probabilities.enumerated() {
            r -= q
            if r < 0 { return candidates[i].index }
        }
        return candidates[candidates.count - 1].index
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
