import ArgumentParser
import StrataCore
import StrataPlanning
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct Cluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plan LLM inference on a heterogeneous GPU cluster (LLM-PQ) and run plans over MPI.",
        subcommands: [ClusterPlanCommand.self, ClusterRunCommand.self, ClusterCalibrateCommand.self])
}

/// `strata cluster plan SPEC.yaml`: LLM-PQ's plan and the PipeEdge, Uniform and AdaBits
/// baselines, each simulated.
struct ClusterPlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Per-layer bits, pipeline partition and micro-batch sizes for a cluster spec (YAML), with baselines.")

    @Argument(help: "Cluster spec (YAML): model, workload, devices, theta, bits.") var spec: String
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Write LLM-PQ's per-stage timeline (simulated) as SVG.") var timeline: String?
    @Option(help: "Quantized-kernel speeds to plan for, overriding the spec's 'kernels': \(KernelSet.builtIn.keys.sorted().joined(separator: ", ")).")
    var kernels: String?

    func run() throws {
        try reportingErrors {
            var spec = try ClusterSpec.load(path: self.spec)
            if let kernels {
                guard let k = KernelSet.builtIn[kernels.lowercased()] else {
                    throw ValidationError("--kernels: unknown kernel set '\(kernels)'; known: \(KernelSet.builtIn.keys.sorted().joined(separator: ", "))")
                }
                spec.kernels = k
            }
            let cost = try ClusterCostModel(spec: spec)
            let planner = ClusterPlanner(cost: cost)
            var plans: [(ClusterPlanner.Method, ClusterPlan?)] = []
            for method in ClusterPlanner.Method.allCases { plans.append((method, try planner.plan(method))) }
            guard plans.contains(where: { $0.1 != nil }) else { throw planner.infeasibility() }
            if let timeline, let p = plans.first(where: { $0.0 == .llmpq })?.1 {
                let svg = PipelineSimulator(cost: cost, plan: p).svg()
                do { try Data(svg.utf8).write(to: URL(fileURLWithPath: timeline)) } catch {
                    throw StrataError.ioFailure(path: timeline, detail: "\(error)")
                }
            }
            let pipeedge = plans.first { $0.0 == .pipeedge }?.1
            if json {
                var methods: [String: JSONValue] = [:]
                for (m, p) in plans { methods[m.rawValue] = p?.json ?? .object(["infeasible": .bool(true)]) }
                print(JSONValue.object([
                    "spec": .string(self.spec), "model": .string(spec.model.name), "omega": .string(cost.omegaSource), "kernels": .string(spec.kernels.name),
                    "methods": .object(methods),
                ]).serialized())
                return
            }
            print("\(spec.model.name) on \(spec.groups.map { "\($0.count)x \($0.type)" }.joined(separator: " + ")); global batch \(spec.globalBatch), prompt \(spec.promptLength), gen \(spec.genLength), theta \(Int(spec.theta)); \(spec.kernels.name) kernels")
            for (m, p) in plans {
                guard let p else { print("\n\(m.rawValue): infeasible (no partition fits at its bit widths)"); continue }
                let speedup = pipeedge.map { " (\((p.throughput / $0.throughput).formatted(2))x PipeEdge)" } ?? ""
                print("\n\(m.rawValue): \(p.throughput.formatted(2)) tokens/s\(speedup), end-to-end \(p.simulatedSeconds.formatted(1)) s simulated (prefill \(p.simulatedPrefillSeconds.formatted(1)) s), \(p.modelSeconds.formatted(1)) s by the program; eta \(p.eta), xi \(p.xi); solved in \(p.solveSeconds.formatted(2)) s")
                print("  stage  device      layers    bits                 memory used / available      prefill/mb  decode/mb")
                for (i, s) in p.stages.enumerated() {
                    let histogram = Dictionary(grouping: s.bits, by: { $0 }).sorted { $0.key > $1.key }.map { "\($0.value.count)x\($0.key)" }.joined(separator: " ")
                    print("  \(String(i).padding(6)) \(s.type.padding(11)) \("\(s.layers.lowerBound)-\(s.layers.upperBound)".padding(9)) \(histogram.padding(20)) \((s.memoryBytes / 1073741824).formatted(2).padding(7, left: true)) / \((s.capacityBytes / 1073741824).formatted(2)) GiB        \((s.prefillSeconds * 1000).formatted(1).padding(8, left: true)) ms \((s.decodeSeconds * 1000).formatted(2).padding(8, left: true)) ms")
                }
            }
        }
    }
}
