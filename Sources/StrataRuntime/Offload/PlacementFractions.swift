/// The placement fractions a policy chooses (FlexGen's nine LP variables): weights, KV cache
/// and activations on GPU (device), CPU (host) and disk, each as a share in 0...1.
public enum Fraction: Int, CaseIterable, Sendable {
    case wg, wc, wd, cg, cc, cd, hg, hc, hd

    /// The fractions of a policy, in `Fraction` order.
    public static func of(_ p: Policy) -> [Double] {
        [p.weights.device, p.weights.host, p.weights.disk, p.cache.device, p.cache.host, p.cache.disk,
         p.activations.device, p.activations.host, p.activations.disk].map { $0 / 100 }
    }
}

/// A linear expression over the placement fractions. For a fixed batch shape the cost model's
/// times and the memory model's bounds are all of this form, which is what lets a linear
/// program choose the fractions.
public struct Linear: Sendable {
    public var constant: Double = 0
    public var coefficients = [Double](repeating: 0, count: Fraction.allCases.count)

    public init(_ constant: Double = 0) { self.constant = constant }
    public init(_ f: Fraction, _ c: Double) { coefficients[f.rawValue] = c }

    public static func + (a: Linear, b: Linear) -> Linear {
        var r = a
        r.constant += b.constant
        for i in r.coefficients.indices { r.coefficients[i] += b.coefficients[i] }
        return r
    }
    public static func * (a: Linear, s: Double) -> Linear {
        var r = a
        r.constant *= s
        for i in r.coefficients.indices { r.coefficients[i] *= s }
        return r
    }
    public static func / (a: Linear, s: Double) -> Linear { a * (1 / s) }

    public func value(_ x: [Double]) -> Double { constant + zip(coefficients, x).reduce(0) { $0 + $1.0 * $1.1 } }

    public static func sum(_ fractions: [Fraction], _ c: Double) -> Linear {
        fractions.reduce(Linear()) { $0 + Linear($1, c) }
    }
}

/// A batch shape and the non-placement choices: a policy without its fractions, which fixes
/// everything the LP does not choose.
public struct BatchChoice: Sendable, Equatable {
    public var gpuBatchSize: Int
    public var numGPUBatches: Int
    public var compressWeight: Bool
    public var compressCache: Bool
    public var cpuAttention: Bool
    public var overlap: Bool = true
    public var blockSize: Int { gpuBatchSize * numGPUBatches }

    public init(gpuBatchSize: Int, numGPUBatches: Int, compressWeight: Bool, compressCache: Bool, cpuAttention: Bool,
                overlap: Bool = true) {
        self.gpuBatchSize = gpuBatchSize; self.numGPUBatches = numGPUBatches; self.compressWeight = compressWeight
        self.compressCache = compressCache; self.cpuAttention = cpuAttention; self.overlap = overlap
    }

    public init(_ p: Policy) {
        self.init(gpuBatchSize: p.gpuBatchSize, numGPUBatches: p.numGPUBatches, compressWeight: p.compressWeight,
                  compressCache: p.compressCache, cpuAttention: p.cpuAttention, overlap: p.overlap)
    }
}

extension Policy {
    /// The policy of a batch choice with placement fractions `x` (Fraction order, shares in 0...1).
    public init(_ c: BatchChoice, fractions x: [Double]) {
        self.init(gpuBatchSize: c.gpuBatchSize, numGPUBatches: c.numGPUBatches,
                  weights: TierSplit(device: 100 * x[0], host: min(100 * x[1], 100 - 100 * x[0])),
                  cache: TierSplit(device: 100 * x[3], host: min(100 * x[4], 100 - 100 * x[3])),
                  activations: TierSplit(device: 100 * x[6], host: min(100 * x[7], 100 - 100 * x[6])),
                  overlap: c.overlap, cpuAttention: c.cpuAttention, compressWeight: c.compressWeight, compressCache: c.compressCache)
    }
}
