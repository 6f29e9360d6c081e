import StrataCore
import StrataRuntime

/// LLM-PQ's planner: a mixed-integer program over layer x device x bits, contiguous stages in
/// a device order, per-device memory, phase-aware stage times (prefill micro-batch eta, decode
/// micro-batch xi) and a quality penalty theta * omega; an outer loop over device orders (by
/// device type) and eta. Solved with CBC. The PipeEdge, Uniform and AdaBits baselines use the
/// same tables.
///
/// When every layer has the same omega row (the default indicator), layers are interchangeable
/// and the program is solved in its exact aggregated form: integer counts of layers per (stage,
/// bits), expanded to contiguous ranges afterwards. With a per-layer indicator the full binary
/// program is solved (and, past `binaryLimit` variables, the aggregated form with the mean
/// omega, bits then given to the layers with the smallest omega: the fast heuristic).
public struct ClusterPlanner: Sendable {
    public let cost: ClusterCostModel
    public var binaryLimit = 4000

    public init(cost: ClusterCostModel) { self.cost = cost }

    var spec: ClusterSpec { cost.spec }

    public enum Method: String, Sendable, CaseIterable {
        case llmpq = "llm-pq", pipeedge, uniform, adabits
    }

    /// Device orders: every order of the device types (devices of one type stay together, in
    /// spec order).
    public var orders: [[Int]] {
        var groups: [[Int]] = []
        var index = 0
        for g in spec.groups {
            groups.append(Array(index..<(index + g.count)))
            index += g.count
        }
        func permutations(_ items: [[Int]]) -> [[[Int]]] {
            guard items.count > 1 else { return [items] }
            return items.indices.flatMap { i -> [[[Int]]] in
                var rest = items
                let head = rest.remove(at: i)
                return permutations(rest).map { [head] + $0 }
            }
        }
        return permutations(groups).map { $0.flatMap { $0 } }
    }

    /// xi = the even split of the global batch over the devices; eta runs over its divisors.
    public var decodeMicroBatch: Int { (spec.globalBatch + cost.devices.count - 1) / cost.devices.count }
    public var prefillMicroBatches: [Int] { (1...decodeMicroBatch).filter { decodeMicroBatch % $0 == 0 } }

    public func plan(_ method: Method) throws -> ClusterPlan? {
        let start = Clock.now()
        var best: ClusterPlan?
        let xi = decodeMicroBatch
        switch method {
        case .llmpq:
            // The baselines' plans are feasible points of this program too: they seed the search
            // (and guard against a solver stopped at its time limit short of the optimum).
            for baseline in [Method.pipeedge, .adabits] {
                if var p = try plan(baseline), best.map({ objective(p) < objective($0) }) ?? true {
                    p.method = method.rawValue
                    best = p
                }
            }
            // Then each (order, eta) program, cut off at the best objective so far: the program's
            // objective never exceeds the plan's (it leaves out the prefill hops, a constant), so
            // a program that cannot beat the cutoff holds no better plan. CBC runs one model at a
            // time anyway (its global state), so sequential order costs nothing.
            for eta in prefillMicroBatches {
                for order in orders {
                    let cutoff = best.map { objective($0) * (1 + 1e-9) }
                    if let p = try solve(order: order, eta: eta, xi: xi, bits: spec.bits, theta: spec.theta,
                                         timeWeight: Self.millisecondsPerSecond, method: method, cutoff: cutoff),
                       best.map({ objective(p) < objective($0) }) ?? true { best = p }
                }
            }
        case .pipeedge:
            // Uniform bits (the highest that fits), the partition that minimises time.
            for b in spec.bits.sorted(by: >) {
                for order in orders {
                    if let p = try solve(order: order, eta: xi, xi: xi, bits: [b], theta: 0, timeWeight: 1, method: method),
                       best.map({ p.modelSeconds < $0.modelSeconds }) ?? true { best = p }
                }
                if best != nil { break }
            }
        case .uniform:
            for b in spec.bits.sorted(by: >) {
                if let p = evenSplit(bits: b, xi: xi) { best = p; break }
            }
        case .adabits:
            // Quality first within memory; time only breaks ties.
            best = try solve(order: Array(cost.devices.indices), eta: xi, xi: xi, bits: spec.bits, theta: 1, timeWeight: 1e-9, method: method)
        }
        guard var plan = best else { return nil }
        plan.solveSeconds = Clock.now() - start
        let simulation = PipelineSimulator(cost: cost, plan: plan).run()
        plan.simulatedSeconds = simulation.end
        plan.simulatedPrefillSeconds = simulation.prefillEnd
        return plan
    }

    /// LLM-PQ's latency tables, and so its objective and theta, are in milliseconds.
    static let millisecondsPerSecond = 1000.0
    static let gib = 1024.0 * 1024 * 1024

    func objective(_ p: ClusterPlan) -> Double { p.modelSeconds * Self.millisecondsPerSecond + p.qualityPenalty }

    /// Stage times for a given assignment (seconds per micro-batch); the first stage also runs
    /// the LM head.
    func stageTimes(device: Int, bits: [Int], eta: Int, xi: Int, first: Bool) -> (prefill: Double, decode: Double) {
        (bits.reduce(0) { $0 + cost.latency(device: device, bits: $1, prefill: true, batch: eta) }
            + (first ? cost.headLatency(device: device, prefill: true, batch: eta) : 0),
         bits.reduce(0) { $0 + cost.latency(device: device, bits: $1, prefill: false, batch: xi) }
            + (first ? cost.headLatency(device: device, prefill: false, batch: xi) : 0))
    }

    /// End-to-end seconds the program's objective assigns: prefill pipeline plus decode rounds.
    func modelSeconds(stages: [(device: Int, bits: [Int])], eta: Int, xi: Int) -> Double {
        let times = stages.enumerated().map { stageTimes(device: $1.device, bits: $1.bits, eta: eta, xi: xi, first: $0 == 0) }
        let order = stages.map(\.device)
        let commPre = cost.boundaries(order, prefill: true, batch: eta), commDec = cost.boundaries(order, prefill: false, batch: xi)
        let kp = Double((spec.globalBatch + eta - 1) / eta), kd = Double((spec.globalBatch + xi - 1) / xi)
        let n = Double(spec.genLength), hops = commPre.dropLast()
        let slowestPrefill = zip(times, commPre).map { max($0.prefill, $1) }.max()!
        let prefill = times.reduce(0) { $0 + $1.prefill } + hops.reduce(0, +) + (kp - 1) * slowestPrefill
        let slowestDecode = zip(times, commDec).map { max($0.decode, $1) }.max()!
        let round = max(kd * slowestDecode, times.reduce(0) { $0 + $1.decode } + commDec.reduce(0, +))
        return prefill + (n - 1) * round
    }

    /// One (device order, micro-batch pair) program and what reading its solution needs.
    struct Program {
        let lp: LinearProgram
        /// Per (stage, bits): a count variable (aggregated form) or L binaries (full form).
        let counts: [[LinearProgram.Variable]]
        let binaries: [[[LinearProgram.Variable]]]
        let useBinary: Bool
        let uniformOmega: Bool
    }

    func program(order: [Int], eta: Int, xi: Int, bits: [Int], theta: Double, timeWeight: Double) -> Program {
        let L = spec.model.layers, N = order.count
        let uniformOmega = Set(cost.omega.map { $0 }).count == 1
        let bitIndex = bits.map { spec.bits.firstIndex(of: $0)! }
        let lp = LinearProgram()
        let kp = Double((spec.globalBatch + eta - 1) / eta), kd = Double((spec.globalBatch + xi - 1) / xi)
        let n = Double(spec.genLength)
        let commPre = cost.boundaries(order, prefill: true, batch: eta), commDec = cost.boundaries(order, prefill: false, batch: xi)
        let tPre = (0..<N).map { lp.variable("Tpre\($0)", objective: timeWeight) }
        let tDec = (0..<N).map { lp.variable("Tdec\($0)") }
        let tPreMax = lp.variable("Tpre", objective: timeWeight * (kp - 1))
        let tDecMax = lp.variable("Tdec")
        let round = lp.variable("R", objective: timeWeight * (n - 1))
        lp.constrain([(round, 1), (tDecMax, -kd)], .greaterOrEqual, 0)
        lp.constrain([(round, 1)] + tDec.map { ($0, -1.0) }, .greaterOrEqual, commDec.reduce(0, +))
        // A stage is as slow as its outgoing link (LLM-PQ: Tpre_j >= comm_j).
        for j in 0..<N {
            lp.constrain([(tPre[j], 1)], .greaterOrEqual, j + 1 < N ? commPre[j] : 0)
            lp.constrain([(tDec[j], 1)], .greaterOrEqual, commDec[j])
        }
        let useBinary = !uniformOmega && L * N * bits.count <= binaryLimit
        // Per (stage, bits): a count variable (aggregated) or L binaries (full form).
        var counts: [[LinearProgram.Variable]] = []
        var binaries: [[[LinearProgram.Variable]]] = []
        let meanOmega = bitIndex.map { bi in cost.omega.reduce(0) { $0 + $1[bi] } / Double(L) }
        for j in 0..<N {
            let device = order[j]
            var stageTerms: [(LinearProgram.Variable, Double)] = []
            var memory: [(LinearProgram.Variable, Double)] = []
            var decode: [(LinearProgram.Variable, Double)] = []
            var row: [LinearProgram.Variable] = []
            var stageBinaries: [[LinearProgram.Variable]] = []
            for (k, b) in bits.enumerated() {
                let pre = cost.latency(device: device, bits: b, prefill: true, batch: eta)
                let dec = cost.latency(device: device, bits: b, prefill: false, batch: xi)
                // In GiB: byte-sized coefficients (1e9..1e10) next to millisecond times made
                // CBC return points up to 1.5% off the optimum it could reach when scaled.
                let bytes = cost.layerBytes(bits: b) / Self.gib
                if useBinary {
                    let zs = (0..<L).map { i in lp.variable("z\(i)_\(j)_\(b)", upper: 1, objective: theta * cost.omega[i][bitIndex[k]], integer: true) }
                    stageBinaries.append(zs)
                    for z in zs { stageTerms.append((z, pre)); decode.append((z, dec)); memory.append((z, bytes)) }
                } else {
                    let c = lp.variable("n\(j)_\(b)", upper: Double(L), objective: theta * meanOmega[k], integer: true)
                    row.append(c)
                    stageTerms.append((c, pre)); decode.append((c, dec)); memory.append((c, bytes))
                }
            }
            counts.append(row)
            binaries.append(stageBinaries)
            let headPrefill = j == 0 ? cost.headLatency(device: device, prefill: true, batch: eta) : 0
            let headDecode = j == 0 ? cost.headLatency(device: device, prefill: false, batch: xi) : 0
            lp.constrain(stageTerms + [(tPre[j], -1)], .lessOrEqual, -headPrefill)
            lp.constrain(decode + [(tDec[j], -1)], .lessOrEqual, -headDecode)
            lp.constrain([(tPreMax, 1), (tPre[j], -1)], .greaterOrEqual, 0)
            lp.constrain([(tDecMax, 1), (tDec[j], -1)], .greaterOrEqual, 0)
            let extra = j == 0 ? cost.firstStageExtra(microBatch: eta) : 0
            lp.constrain(memory, .lessOrEqual, (cost.capacity(device) - extra) / Self.gib)
        }
        if useBinary {
            for i in 0..<L {
                lp.constrain((0..<N).flatMap { j in binaries[j].map { ($0[i], 1.0) } }, .equal, 1)
                // Contiguous stages in order: "layer i+1 is on a stage <= j" implies the same for layer i.
                if i + 1 < L {
                    for j in 0..<(N - 1) {
                        let upTo = (0...j).flatMap { s in binaries[s].map { ($0[i + 1], 1.0) } } + (0...j).flatMap { s in binaries[s].map { ($0[i], -1.0) } }
                        lp.constrain(upTo, .lessOrEqual, 0)
                    }
                }
            }
            lp.constrain(binaries[0].map { ($0[0], 1.0) }, .equal, 1)
            lp.constrain(binaries[N - 1].map { ($0[L - 1], 1.0) }, .equal, 1)
        } else {
            lp.constrain(counts.flatMap { $0.map { ($0, 1.0) } }, .equal, Double(L))
            lp.constrain(counts[0].map { ($0, 1.0) }, .greaterOrEqual, 1)
            lp.constrain(counts[N - 1].map { ($0, 1.0) }, .greaterOrEqual, 1)
            // Symmetry: two adjacent stages on devices of one type can trade their layers
            // without changing any time, memory or link; keeping the earlier one at least as
            // long removes the mirror images branch-and-bound would otherwise explore twice.
            // Not the first stage (it also runs the head). Before the last stage, whose count
            // must stay >= 1, the mirror of "earlier stage empty" is infeasible, so there the
            // cut is switched off by a binary that may be 1 only when the earlier stage is empty.
            for j in 1..<max(1, N - 1) where cost.devices[order[j]].type == cost.devices[order[j + 1]].type {
                let earlier = counts[j].map { ($0, 1.0) }, later = counts[j + 1].map { ($0, -1.0) }
                if j + 1 < N - 1 {
                    lp.constrain(earlier + later, .greaterOrEqual, 0)
                } else {
                    let empty = lp.variable("empty\(j)", upper: 1, integer: true)
                    lp.constrain(earlier + [(empty, Double(L))], .lessOrEqual, Double(L))
                    lp.constrain(earlier + later + [(empty, Double(L))], .greaterOrEqual, 0)
                }
            }
        }
        return Program(lp: lp, counts: counts, binaries: binaries, useBinary: useBinary, uniformOmega: uniformOmega)
    }

    /// The program for one device order and micro-batch pair, solved. Returns nil when nothing
    /// fits (or nothing beats `cutoff`).
    func solve(order: [Int], eta: Int, xi: Int, bits: [Int], theta: Double, timeWeight: Double, method: Method,
               cutoff: Double? = nil) throws -> ClusterPlan? {
        let program = program(order: order, eta: eta, xi: xi, bits: bits, theta: theta, timeWeight: timeWeight)
        let (lp, counts, binaries, useBinary, uniformOmega) = (program.lp, program.counts, program.binaries, program.useBinary,
                                                               program.uniformOmega)
        let L = spec.model.layers, N = order.count
        // The heuristic form prices quality at the mean omega, which can exceed the plan's own
        // penalty after bits go to the layers that need them: no cutoff there.
        let safeCutoff = uniformOmega || useBinary ? cutoff : nil
        guard let solution = try lp.minimize(timeLimit: spec.timeLimit, cutoff: safeCutoff) else { return nil }

        // Expand to stages: per stage, the bits of its layers in layer order.
        var stageBits: [[Int]] = []
        if useBinary {
            for j in 0..<N {
                var layerBits: [(Int, Int)] = []
                for (k, b) in bits.enumerated() {
                    for i in 0..<L where solution[binaries[j][k][i]] > 0.5 { layerBits.append((i, b)) }
                }
                stageBits.append(layerBits.sorted { $0.0 < $1.0 }.map(\.1))
            }
        } else {
            for j in 0..<N {
                var list: [Int] = []
                for (k, b) in bits.enumerated() { list += Array(repeating: b, count: Int(solution[counts[j][k]].rounded())) }
                stageBits.append(list)
            }
            if !uniformOmega { stageBits = assignByOmega(stageBits, bits: bits) }
        }
        return makePlan(method: method, order: order, stageBits: stageBits, eta: eta, xi: xi, theta: theta)
    }

    /// Within each stage's layer range, the highest bits go to the layers with the largest omega.
    func assignByOmega(_ stageBits: [[Int]], bits: [Int]) -> [[Int]] {
        var start = 0
        return stageBits.map { list in
            let layers = Array(start..<(start + list.count))
            start += list.count
            let byOmega = layers.sorted { cost.omega[$0].reduce(0, +) > cost.omega[$1].reduce(0, +) }
            var result = [Int](repeating: 0, count: list.count)
            for (rank, b) in list.sorted(by: >).enumerated() { result[byOmega[rank] - layers.first!] = b }
            return result
        }
    }

    func evenSplit(bits: Int, xi: Int) -> ClusterPlan? {
        let L = spec.model.layers, N = cost.devices.count
        var stageBits: [[Int]] = []
        for j in 0..<N { stageBits.append(Array(repeating: bits, count: L / N + (j < L % N ? 1 : 0))) }
        let plan = makePlan(method: .uniform, order: Array(0..<N), stageBits: stageBits, eta: xi, xi: xi, theta: 0)
        return plan.stages.allSatisfy({ $0.memoryBytes <= $0.capacityBytes }) ? plan : nil
    }

    func makePlan(method: Method, order: [Int], stageBits: [[Int]], eta: Int, xi: Int, theta: Double) -> ClusterPlan {
        var stages: [ClusterPlan.Stage] = []
        var layer = 0
        var quality = 0.0
        for (j, list) in stageBits.enumerated() {
            let device = order[j]
            let times = stageTimes(device: device, bits: list, eta: eta, xi: xi, first: j == 0)
            let memory = list.reduce(0) { $0 + cost.layerBytes(bits: $1) } + (j == 0 ? cost.firstStageExtra(microBatch: eta) : 0)
            for (k, b) in list.enumerated() { quality += spec.theta * cost.omega[layer + k][spec.bits.firstIndex(of: b)!] }
            stages.append(ClusterPlan.Stage(device: device, type: cost.devices[device].type, layers: layer..<(layer + list.count), bits: list,
                                            memoryBytes: memory, capacityBytes: cost.capacity(device), prefillSeconds: times.prefill,
                                            decodeSeconds: times.decode))
            layer += list.count
        }
        let seconds = modelSeconds(stages: stages.map { ($0.device, $0.bits) }, eta: eta, xi: xi)
        return ClusterPlan(method: method.rawValue, stages: stages, eta: eta, xi: xi, modelSeconds: seconds, simulatedSeconds: seconds, simulatedPrefillSeconds: 0,
                           qualityPenalty: quality, solveSeconds: 0, globalBatch: spec.globalBatch, promptLength: spec.promptLength,
                           genLength: spec.genLength)
    }

    /// Why no method can place the model: total memory against the smallest need.
    public func infeasibility() -> StrataError {
        let minBits = spec.bits.min()!
        let need = Double(spec.model.layers) * cost.layerBytes(bits: minBits) + cost.firstStageExtra(microBatch: 1)
        let have = cost.devices.indices.reduce(0) { $0 + cost.capacity($1) }
        let perDevice = cost.devices.indices.map { "\(cost.devices[$0].type)#\($0): \(Int(cost.capacity($0))) bytes usable" }.joined(separator: ", ")
        return StrataError.invalidRequest(
            "\(spec.model.name) cannot fit this cluster at any bit width: at \(minBits) bits its layers and KV cache need \(Int(need)) bytes, "
            + "the devices offer \(Int(have)) (\(perDevice)); short by \(Int(max(0, need - have))) bytes")
    }
}
