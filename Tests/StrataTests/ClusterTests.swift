import StrataCore
import StrataPlanning
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct ClusterTests {
    static func spec(_ n: Int) throws -> ClusterSpec {
        try ClusterSpec.load(path: Fixtures.root + "/../examples/clusters/cluster\(n).yaml")
    }

    /// The worked example of the reference: V100 first holding more layers than any T4, and a
    /// mix of 16 and 8 bits under theta 50000.
    @Test func clusterThreeHasThePapersShape() throws {
        let cost = try ClusterCostModel(spec: try Self.spec(3))
        let plan = try #require(try ClusterPlanner(cost: cost).plan(.llmpq))
        #expect(plan.stages.first?.type == "v100-32g")
        let v100 = plan.stages[0].layers.count
        #expect(plan.stages.dropFirst().allSatisfy { $0.type == "t4" && $0.layers.count < v100 })
        let bits = Set(plan.stages.flatMap(\.bits))
        #expect(bits == [8, 16], "bits used: \(bits)")
        // Contiguous, complete, within memory.
        #expect(plan.stages.map(\.layers.count).reduce(0, +) == 48)
        for (a, b) in zip(plan.stages, plan.stages.dropFirst()) { #expect(a.layers.upperBound == b.layers.lowerBound) }
        #expect(plan.stages.allSatisfy { $0.memoryBytes <= $0.capacityBytes })
        #expect(plan.precisionMap.bits.count == 48)
    }

    /// Every example plans; the program's end-to-end time and the discrete-event simulation
    /// agree within 5%; LLM-PQ's objective (time in ms + theta * omega) is never worse than a
    /// baseline's; each case solves in under 10 s.
    @Test(arguments: 1...11)
    func examplesPlanAndSimulate(n: Int) throws {
        let cost = try ClusterCostModel(spec: try Self.spec(n))
        let planner = ClusterPlanner(cost: cost)
        let llmpq = try #require(try planner.plan(.llmpq))
        #expect(llmpq.solveSeconds < 10)
        for method in ClusterPlanner.Method.allCases {
            guard let p = try planner.plan(method) else { continue }
            #expect(abs(p.simulatedSeconds - p.modelSeconds) / p.simulatedSeconds < 0.05,
                    "cluster \(n) \(method): program \(p.modelSeconds) s, simulation \(p.simulatedSeconds) s")
            #expect(llmpq.modelSeconds * 1000 + llmpq.qualityPenalty <= p.modelSeconds * 1000 + p.qualityPenalty + 1e-6 * abs(p.qualityPenalty) + 1,
                    "cluster \(n): LLM-PQ's objective is worse than \(method)'s")
        }
    }

    /// With a per-layer indicator the full binary program runs; its plan is contiguous and its
    /// objective no worse than the aggregated heuristic's.
    @Test func perLayerIndicatorUsesTheBinaryProgram() throws {
        let dir = Fixtures.scratch("cluster")
        var omega: [JSONValue] = []
        for l in 0..<24 {
            let scale = 1 + Double(l % 5)
            omega.append(.array([2, 3, 4, 8, 16].map { .number(scale * ClusterCostModel.defaultOmega($0)) }))
        }
        let indicator = JSONValue.object(["bits": .array([2, 3, 4, 8, 16].map { .number(Double($0)) }), "omega": .array(omega)])
        try Data(indicator.serialized().utf8).write(to: URL(fileURLWithPath: dir + "/omega.json"))
        let yaml = """
            model: opt-1.3b
            workload: {global_batch: 8, prompt_len: 256, gen_len: 32}
            devices:
              - {type: t4, count: 1, memory: 2.5GiB}
              - {type: v100-32g, count: 1, memory: 2GiB}
            theta: 500000
            omega: \(dir)/omega.json
            """
        let cost = try ClusterCostModel(spec: try ClusterSpec(yaml: yaml, path: "inline.yaml"))
        var planner = ClusterPlanner(cost: cost)
        let exact = try #require(try planner.plan(.llmpq))
        planner.binaryLimit = 0
        let heuristic = try #require(try planner.plan(.llmpq))
        #expect(exact.stages.map(\.layers.count).reduce(0, +) == 24)
        #expect(exact.modelSeconds * 1000 + exact.qualityPenalty <= heuristic.modelSeconds * 1000 + heuristic.qualityPenalty + 1e-6)
        #expect(Set(exact.stages.flatMap(\.bits)).count > 1, "memory should force mixed bits")
    }

    @Test func badSpecsAreExplained() throws {
        #expect(throws: StrataError.self) {
            _ = try ClusterSpec(yaml: "model: opt-30b\nworkload: {global_batch: 8, prompt_len: 64, gen_len: 8}\ndevices:\n  - {type: k80, count: 2}\n", path: "s.yaml")
        }
        let tiny = try ClusterSpec(yaml: "model: opt-175b\nworkload: {global_batch: 8, prompt_len: 64, gen_len: 8}\ndevices:\n  - {type: t4, count: 1}\n", path: "s.yaml")
        let planner = ClusterPlanner(cost: try ClusterCostModel(spec: tiny))
        #expect(try planner.plan(.llmpq) == nil)
        let message = "\(planner.infeasibility())"
        #expect(message.contains("short by") && message.contains("t4"), "\(message)")
    }
}
