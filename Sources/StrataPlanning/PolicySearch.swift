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
        guard let best = all.max(by: { $0.1.tokensPerSecond < $1.1.tokensPerSecond }) else { throw try infeasibility() }
        return Result(policy: best.0, prediction: best.1, linearPrograms: solvedCounts.withLock { $0 }, seconds: Clock.now() - start)
    }

    /// Bytes kept free below each budget in the LP's memory rows: the solver meets its rows to
    /// a relative tolerance (~1e-9 of bytes in the GiB), not to the byte. A numerical guard, not a
    /// reserve: the bounds themselves are exact upper bounds of the engine's plan.
    static let guardBytes = 64.0 * 1024
    static let gib = 1024.0 * 1024 * 1024

    /// Whether the disk tier is off (no budget for it): its fractions are then fixed at zero.
    var diskOff: Bool { budgets[.disk]! <= 0 }

    /// The best placement for one batch choice, or nil when nothing fits. With the engine's
    /// memory model, activation rows on disk cost host bounce buffers: placements with and
    /// without them are solved apart and the faster kept.
    public func solve(_ choice: BatchChoice) throws -> (Policy, CostModel.Prediction)? {
        let variants = cost.memory == nil ? [true] : diskOff ? [false] : [false, true]
        var best: (Policy, CostModel.Prediction)?
        for activationsOnDisk in variants {
            guard let found = try solve(choice, activationsOnDisk: activationsOnDisk) else { continue }
            if best.map({ found.1.tokensPerSecond > $0.1.tokensPerSecond }) ?? true { best = found }
        }
        return best
    }

    /// The placement variables with the disk fractions fixed at zero where the disk is off (and
    /// hd where activations may not go to disk), and the one-tier-per-group sums.
    private func placementVariables(_ lp: LinearProgram, activationsOnDisk: Bool, objective: (Fraction) -> Double = { _ in 0 })
        -> [LinearProgram.Variable] {
        let x = Fraction.allCases.map { f -> LinearProgram.Variable in
            let fixed = (diskOff && [.wd, .cd, .hd].contains(f)) || (!activationsOnDisk && f == .hd)
            return lp.variable("\(f)", lower: 0, upper: fixed ? 0 : 1, objective: objective(f))
        }
        for group in [[Fraction.wg, .wc, .wd], [.cg, .cc, .cd], [.hg, .hc, .hd]] {
            lp.constrain(group.map { (x[$0.rawValue], 1.0) }, .equal, 1)
        }
        return x
    }

    /// Memory rows in GiB (byte coefficients next to second-scale times hurt the solver):
    /// bound(x) - slack <= budget - guard, for every tier that is on.
    private func constrainMemory(_ lp: LinearProgram, _ x: [LinearProgram.Variable], _ memory: [Tier: Linear],
                                 slack: [Tier: LinearProgram.Variable] = [:]) {
        for tier in Tier.allCases where !(tier == .disk && diskOff) {
            let e = memory[tier]!
            var terms = x.indices.map { (x[$0], e.coefficients[$0] / Self.gib) }
            if let s = slack[tier] { terms.append((s, -1)) }
            lp.constrain(terms, .lessOrEqual, (budgets[tier]! - e.constant - Self.guardBytes) / Self.gib)
        }
    }

    /// Whether the policy's fractions satisfy the memory bounds it was solved under.
    func fits(_ policy: Policy, _ memory: [Tier: Linear]) -> Bool {
        let x = Fraction.of(policy)
        if diskOff && (x[2] > 0 || x[5] > 0 || x[8] > 0) { return false }
        return Tier.allCases.allSatisfy { tier in (tier == .disk && diskOff) || memory[tier]!.value(x) <= budgets[tier]! }
    }

    func solve(_ choice: BatchChoice, activationsOnDisk: Bool) throws -> (Policy, CostModel.Prediction)? {
        let terms = cost.terms(choice)
        let memory = cost.memory(choice, activationsOnDisk: activationsOnDisk)
        let lp = LinearProgram()
        // A tiny cost on slower tiers breaks ties (a fraction that does not change the time goes
        // to the faster tier) without moving the optimum.
        let tieBreak: [Fraction: Double] = [.wc: 1, .wd: 2, .cc: 1, .cd: 2, .hc: 1, .hd: 2]
        let x = placementVariables(lp, activationsOnDisk: activationsOnDisk) { 1e-6 * (tieBreak[$0] ?? 0) }
        let l = Double(cost.model.layers), n = Double(cost.workload.genLength)
        let tPrefill = lp.variable("T_pre", objective: l), tDecode = lp.variable("T_gen", objective: l * (n - 1))
        func bound(_ e: Linear, by t: LinearProgram.Variable) {
            lp.constrain(x.indices.map { (x[$0], e.coefficients[$0]) } + [(t, -1)], .lessOrEqual, -e.constant)
        }
        for (_, e) in terms.prefill { bound(e, by: tPrefill) }
        for (_, e) in terms.decode { bound(e, by: tDecode) }
        constrainMemory(lp, x, memory)
        guard let solution = try lp.minimize() else { return nil }
        let raw = x.map { max(0, min(1, solution[$0])) }
        // Percentages to 0.1 (what a user can type): device and host rounded down, the rest on
        // the slowest tier in use. If that moves a tier over its bound, the LP's own fractions.
        func rounded(_ group: Int) -> TierSplit {
            let d = Int(raw[group] * 1000 + 1e-6)
            let h = raw[group + 2] < 1e-9 ? 1000 - d : min(Int(raw[group + 1] * 1000 + 1e-6), 1000 - d)
            return TierSplit(device: Double(d) / 10, host: Double(h) / 10)
        }
        func exact(_ group: Int) -> TierSplit {
            let d = raw[group], h = raw[group + 2] < 1e-9 ? 1 - d : min(raw[group + 1], 1 - d)
            return TierSplit(device: 100 * d, host: 100 * h)
        }
        var policy = Policy(choice, fractions: raw)
        (policy.weights, policy.cache, policy.activations) = (rounded(0), rounded(3), rounded(6))
        if !fits(policy, memory) { (policy.weights, policy.cache, policy.activations) = (exact(0), exact(3), exact(6)) }
        guard fits(policy, memory) else { return nil }
        return (policy, cost.predict(policy))
    }

    /// The least extra memory per tier that lets the smallest block (one sequence, compressed
    /// where allowed) fit: an LP whose memory rows may overrun their budgets by a slack, extra
    /// disk preferred over host over device (cheapest first). Empty when it already fits.
    public func shortfall() throws -> [Tier: Int] {
        let choice = BatchChoice(gpuBatchSize: 1, numGPUBatches: 1, compressWeight: allowCompression, compressCache: allowCompression,
                                 cpuAttention: allowCPUAttention)
        let memory = cost.memory(choice, activationsOnDisk: !diskOff)
        let lp = LinearProgram()
        let x = placementVariables(lp, activationsOnDisk: !diskOff)
        let price: [Tier: Double] = [.device: 4, .host: 2, .disk: 1]
        var slack: [Tier: LinearProgram.Variable] = [:]
        for tier in Tier.allCases where !(tier == .disk && diskOff) { slack[tier] = lp.variable("more_\(tier)", objective: price[tier]!) }
        constrainMemory(lp, x, memory, slack: slack)
        guard let solution = try lp.minimize() else { return [:] }
        var result: [Tier: Int] = [:]
        for (tier, s) in slack where solution[s] * Self.gib > 1 {
            // The guard is part of what the rows keep free, so it is part of what is missing.
            result[tier] = Int((solution[s] * Self.gib + Self.guardBytes).rounded(.up))
        }
        return result
    }

    /// Why no policy fits, naming each short tier and how much more it needs.
    func infeasibility() throws -> StrataError {
        let budgetText = Tier.allCases.map { "\($0.rawValue) \(Int(budgets[$0]!))" }.joined(separator: ", ")
        var detail = "no policy fits \(cost.model.name) within the budgets (bytes: \(budgetText))"
        let short = try shortfall()
        if !short.isEmpty {
            let parts = Tier.allCases.compactMap { t in
                short[t].map { "the \(t.rawValue) tier needs \($0) bytes (\(ByteSize.format($0))) more" }
            }
            let smallest = "even one sequence per block" + (allowCompression ? " with 4-bit weights and cache" : "")
            detail += ": \(smallest) does not fit; \(parts.joined(separator: " and "))"
        }
        if diskOff { detail += " (the disk tier is off: a disk budget, e.g. --offload-dir, may do instead)" }
        return StrataError.invalidRequest(detail)
    }
}
