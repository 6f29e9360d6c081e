import Dispatch
import StrataCore
import StrataRuntime
import Synchronization

/// Finds the fastest policy: for each gpu batch size, number of gpu batches, and the
/// compression and host-attention choices, a linear program picks the nine placement
/// fractions that minimise the cost model's time under the tier budgets; the best is kept.
public struct PolicySearch: Sendable {
    public let cost: CostModel
    /// Usable bytes per tier.
    public let budgets: [Tier: Double]
    public var gpuBatchSizes = [1, 2, 3, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    public var maxGPUBatches = 64
    public var allowCompression = true
    public var allowCPUAttention = true
    /// Only blocks (gpu batch size x gpu batches) that divide this batch size.
    public var requiredDivisor: Int?

    /// Share of a profile's capacity a policy may use when no budget is given. FlexGen's model
    /// keeps 20% free, but its own published T4 policies (e.g. OPT-30B with 20% of the weights
    /// on the 16 GB GPU) need more than 80% of the GPU; the built-in T4 capacity (15 GB) is
    /// already below the physical 16 GB, so the full capacity is usable.
    public static let usableFraction = 1.0

    public init(cost: CostModel, budgets: TierBudgets = TierBudgets()) {
        self.cost = cost
        let p = cost.profile
        self.budgets = [
            .device: budgets.device.map(Double.init) ?? p.deviceMemory * Self.usableFraction,
            .host: budgets.host.map(Double.init) ?? p.hostMemory * Self.usableFraction,
            .disk: budgets.disk.map(Double.init) ?? p.diskCapacity * Self.usableFraction,
        ]
    }

    public struct Result: Sendable {
        public var policy: Policy
        public var prediction: CostModel.Prediction
        public var linearPrograms: Int
        public var seconds: Double
    }

    /// Gpu batches per block tried for each gpu batch size: every count up to 8, then a
    /// geometric grid (the predicted throughput is flat there; this keeps the search under a
    /// second for OPT-175B).
    public var gpuBatchCounts: [Int] {
        Array(1...min(8, maxGPUBatches)) + [10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128].filter { $0 <= maxGPUBatches }
    }

    public func search() throws -> Result {
        let start = Clock.now()
        let flags = [false, true]
        var combos: [(Bool, Bool, Bool)] = []
        for w in allowCompression ? flags : [false] {
            for c in allowCompression ? flags : [false] {
                for a in allowCPUAttention ? flags : [false] { combos.append((w, c, a)) }
            }
        }
        let choices = combos
        // The combinations are independent: solve them on all cores.
        let results = Mutex<[(Policy, CostModel.Prediction)?]>(Array(repeating: nil, count: combos.count))
        let failure = Mutex<Error?>(nil)
        let solvedCounts = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: choices.count) { i in
            let (compressWeight, compressCache, cpuAttention) = choices[i]
            var best: (Policy, CostModel.Prediction)?
            var solved = 0
            do {
                for gbs in gpuBatchSizes {
                    for nb in gpuBatchCounts {
                        if let d = requiredDivisor, d % (gbs * nb) != 0 { if gbs * nb > d { break } else { continue } }
                        let choice = BatchChoice(gpuBatchSize: gbs, numGPUBatches: nb, compressWeight: compressWeight,
                                                 compressCache: compressCache, cpuAttention: cpuAttention)
                        solved += 1
                        // A bigger block only needs more memory: the first infeasible count ends the row.
                        guard let (policy, prediction) = try solve(choice) else { break }
                        if best.map({ prediction.tokensPerSecond > $0.1.tokensPerSecond }) ?? true { best = (policy, prediction) }
                    }
                }
            } catch {
                failure.withLock { $0 = error }
            }
            results.withLock { $0[i] = best }
            solvedCounts.withLock { $0 += solved }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        let all = results.withLock { $0 }.compactMap { $0 }
        guard let best = all.max(by: { $0.1.tokensPerSecond < $1.1.tokensPerSecond }) else { throw infeasibility() }
        return Result(policy: best.0, prediction: best.1, linearPrograms: solvedCounts.withLock { $0 }, seconds: Clock.now() - start)
    }

    /// The best placement for one batch choice, or nil when nothing fits.
    public func solve(_ choice: BatchChoice) throws -> (Policy, CostModel.Prediction)? {
        let terms = cost.terms(choice)
        let lp = LinearProgram()
        // A tiny cost on slower tiers breaks ties (a fraction that does not change the time goes
        // to the faster tier) without moving the optimum.
        let tieBreak: [Fraction: Double] = [.wc: 1, .wd: 2, .cc: 1, .cd: 2, .hc: 1, .hd: 2]
        let x = Fraction.allCases.map { lp.variable("\($0)", lower: 0, upper: 1, objective: 1e-6 * (tieBreak[$0] ?? 0)) }
        let l = Double(cost.model.layers), n = Double(cost.workload.genLength)
        let tPrefill = lp.variable("T_pre", objective: l), tDecode = lp.variable("T_gen", objective: l * (n - 1))
        for group in [[Fraction.wg, .wc, .wd], [.cg, .cc, .cd], [.hg, .hc, .hd]] {
            lp.constrain(group.map { (x[$0.rawValue], 1.0) }, .equal, 1)
        }
        func bound(_ e: Linear, by t: LinearProgram.Variable) {
            lp.constrain(x.indices.map { (x[$0], e.coefficients[$0]) } + [(t, -1)], .lessOrEqual, -e.constant)
        }
        for (_, e) in terms.prefill { bound(e, by: tPrefill) }
        for (_, e) in terms.decode { bound(e, by: tDecode) }
        for (tier, e) in terms.memory {
            lp.constrain(x.indices.map { (x[$0], e.coefficients[$0]) }, .lessOrEqual, budgets[tier]! - e.constant)
        }
        guard let solution = try lp.minimize() else { return nil }
        // Percentages to 0.1 (what a user can type), rounded down on the faster tiers so the
        // rounded policy never needs more device or host memory than the LP's solution.
        let values = x.map { (max(0, min(1, solution[$0])) * 1000 + 1e-6).rounded(.down) / 10 }
        let policy = Policy(gpuBatchSize: choice.gpuBatchSize, numGPUBatches: choice.numGPUBatches,
                            weights: TierSplit(device: values[0], host: min(values[1], 100 - values[0])),
                            cache: TierSplit(device: values[3], host: min(values[4], 100 - values[3])),
                            activations: TierSplit(device: values[6], host: min(values[7], 100 - values[6])),
                            overlap: choice.overlap, cpuAttention: choice.cpuAttention,
                            compressWeight: choice.compressWeight, compressCache: choice.compressCache)
        return (policy, cost.predict(policy))
    }

    /// Why no policy fits: the smallest possible need per tier (gpu batch 1, everything on
    /// the cheapest tier that has room) against the budgets.
    func infeasibility() -> StrataError {
        let t = cost.terms(BatchChoice(gpuBatchSize: 1, numGPUBatches: 1, compressWeight: allowCompression,
                                       compressCache: allowCompression, cpuAttention: false))
        let minimal = t.memory.mapValues { $0.constant }
        let weights = cost.model.layerWeightBytes * Double(cost.model.layers) * (allowCompression ? CostModel.compressionRatio : 1)
        let total = budgets.values.reduce(0, +) - minimal.values.reduce(0, +)
        var parts: [String] = []
        for tier in Tier.allCases {
            parts.append("\(tier.rawValue): budget \(Int(budgets[tier]!)) bytes, fixed need \(Int(minimal[tier] ?? 0)) bytes")
        }
        return StrataError.invalidRequest(
            "no policy fits \(cost.model.name): its layers alone need \(Int(weights)) bytes (compressed where allowed) but device+host+disk "
            + "leave \(Int(max(0, total))) bytes after fixed needs (short by \(Int(max(0, weights - total))) bytes); " + parts.joined(separator: "; "))
    }
}
