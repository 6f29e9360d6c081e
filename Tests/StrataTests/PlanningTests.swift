import StrataCore
import StrataPlanning
import StrataRuntime
import Testing

@Suite struct PlanningTests {
    /// FlexGen's published T4 results (prompt 512, gen 32) with the policies behind them.
    static let published: [(model: String, percent: [Double], gbs: Int, nb: Int, cpuAttention: Bool, compress: Bool, measured: Double)] = [
        ("opt-6.7b", [100, 0, 100, 0, 100, 0], 2, 1, false, false, 25.26),
        ("opt-30b", [20, 80, 0, 100, 0, 100], 48, 3, true, false, 7.32),
        ("opt-175b", [0, 50, 0, 0, 0, 100], 32, 8, true, false, 0.69),
        ("opt-175b", [0, 100, 0, 100, 0, 100], 48, 3, false, true, 1.12),
    ]

    /// Each published policy's prediction is within 25% of FlexGen's measurement, or at least
    /// as close as FlexGen's own formulas; the search finds a policy predicted at least as fast.
    @Test(arguments: 0..<4)
    func predictionsMatchThePaper(index: Int) throws {
        let c = Self.published[index]
        var policy = try Policy(percent: c.percent, gpuBatchSize: c.gbs, numGPUBatches: c.nb)
        policy.cpuAttention = c.cpuAttention
        policy.compressWeight = c.compress
        policy.compressCache = c.compress
        let workload = Workload(promptLength: 512, genLength: 32)
        var cost = CostModel(model: try ModelShape.named(c.model), profile: .t4, workload: workload)
        let ours = cost.predict(policy).tokensPerSecond
        cost.extensions = false
        let theirs = cost.predict(policy).tokensPerSecond
        cost.extensions = true
        let error = abs(ours - c.measured) / c.measured
        #expect(error <= 0.25 || abs(ours - c.measured) <= abs(theirs - c.measured) + 1e-12,
                "\(c.model): predicted \(ours), FlexGen's formulas \(theirs), measured \(c.measured)")
        var search = PolicySearch(cost: cost)
        search.allowCompression = c.compress
        let best = try search.search()
        #expect(best.prediction.tokensPerSecond >= ours * (1 - 1e-9), "\(c.model): search \(best.prediction.tokensPerSecond) < \(ours)")
        // The searched policy respects the tier capacities it was given.
        for tier in Tier.allCases { #expect(best.prediction.memory[tier]! <= search.budgets[tier]! * (1 + 1e-6)) }
    }

    @Test func infeasibleRequestsExplainTheShortfall() throws {
        let cost = CostModel(model: try ModelShape.named("opt-175b"), profile: .t4, workload: Workload(promptLength: 512, genLength: 32))
        let search = PolicySearch(cost: cost, budgets: TierBudgets(device: 8 << 30, host: 16 << 30, disk: 32 << 30))
        do {
            _ = try search.search()
            Issue.record("OPT-175B fit in 56 GiB")
        } catch let error as StrataError {
            let text = "\(error)"
            #expect(text.contains("no policy fits") && text.contains("disk tier needs"), "\(text)")
        }
        // The stated shortfall is what is missing: with that much more disk, a policy fits.
        let short = try search.shortfall()
        let more = try #require(short[.disk])
        #expect(short.count == 1 && more > 0)
        let enough = PolicySearch(cost: cost, budgets: TierBudgets(device: 8 << 30, host: 16 << 30, disk: (32 << 30) + more))
        #expect(throws: Never.self) { _ = try enough.search() }
    }

    @Test func linearProgramSolvesAKnownProblem() throws {
        // min -x - 2y  s.t. x + y <= 4, x <= 3, y <= 2.5  ->  x = 1.5, y = 2.5
        let lp = LinearProgram()
        let x = lp.variable("x", upper: 3, objective: -1), y = lp.variable("y", upper: 2.5, objective: -2)
        lp.constrain([(x, 1), (y, 1)], .lessOrEqual, 4)
        let s = try #require(try lp.minimize())
        #expect(abs(s[x] - 1.5) < 1e-9 && abs(s[y] - 2.5) < 1e-9 && abs(s.objective + 6.5) < 1e-9)
        lp.constrain([(x, 1)], .greaterOrEqual, 5)
        #expect(try lp.minimize() == nil)
    }

    /// A MILP with a cutoff: nothing below it gives nil, a cutoff above the optimum still finds it.
    @Test func integerProgramHonoursACutoff() throws {
        // min -3x - 2y  s.t. 2x + 2y <= 9, x <= 3 (integers)  ->  x = 3, y = 1, objective -11
        let lp = LinearProgram()
        let x = lp.variable("x", upper: 3, objective: -3, integer: true), y = lp.variable("y", objective: -2, integer: true)
        lp.constrain([(x, 2), (y, 2)], .lessOrEqual, 9)
        let s = try #require(try lp.minimize())
        #expect(s[x] == 3 && s[y] == 1 && abs(s.objective + 11) < 1e-9)
        #expect(try lp.minimize(cutoff: -11.5) == nil)
        #expect(try lp.minimize(cutoff: -10.5).map { abs($0.objective + 11) < 1e-9 } == true)
    }

    @Test func profilesRoundTripAndBuiltInsAreLabelled() throws {
        for (name, p) in HardwareProfile.builtIn {
            #expect(!p.source.isEmpty && p.name == name)
            #expect(try HardwareProfile(json: p.json, path: name) == p)
        }
        #expect(HardwareProfile.t4.ctog == 12.89 * 1024 * 1024 * 1024 && HardwareProfile.t4.mmPrefill == 21.24e12)
        #expect(throws: StrataError.self) { try HardwareProfile.named("tpu-v9") }
    }
}
