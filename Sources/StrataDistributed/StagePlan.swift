import StrataCore
import StrataModels
import StrataRuntime

/// What `strata cluster run` executes: the pipeline layout, the per-layer bits, and each
/// stage's memory budget, read from a plan `strata cluster plan --json` wrote (one method of
/// it) or from `--stages 2,1`.
public struct StagePlan: Sendable {
    public var method: String
    public var layout: PipelineLayout
    /// Per-layer bits; nil runs every layer as stored.
    public var precision: PrecisionMap?
    /// Bytes each stage may use, when known (the plan's device capacities, or --stage-mem).
    public var budgets: [Int?]
    /// The workload the plan was made for, used as defaults.
    public var globalBatch: Int?
    public var promptLength: Int?
    public var genLength: Int?

    public init(method: String, layout: PipelineLayout, precision: PrecisionMap?, budgets: [Int?], globalBatch: Int? = nil,
                promptLength: Int? = nil, genLength: Int? = nil) {
        self.method = method; self.layout = layout; self.precision = precision; self.budgets = budgets
        self.globalBatch = globalBatch; self.promptLength = promptLength; self.genLength = genLength
    }

    /// The part of the model rank `rank` loads: its layers; rank 0 also the embeddings and head.
    public func share(rank: Int) -> ModelShare {
        ModelShare(layers: layout.stages[rank], embedding: rank == 0, head: rank == 0)
    }

    /// `--stages 2,1`: decoder layers per rank, in rank order.
    public static func stages(_ text: String) throws -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var next = 0
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let n = Int(part.filter { $0 != " " }), n > 0 else {
                throw StrataError.invalidRequest("--stages: '\(part)' is not a positive layer count (give e.g. 2,1: layers per rank)")
            }
            ranges.append(next..<(next + n))
            next += n
        }
        return ranges
    }

    /// One method's plan from `strata cluster plan --json` output (or that method's object alone).
    public static func load(path: String, method: String) throws -> StagePlan {
        let root = try JSONValue.load(path: path)
        var plan = root
        var prefix = ""
        if let methods = root["methods"] {
            guard let object = methods.object else { throw StrataError.invalidFile(path: path, detail: "field 'methods' is not an object") }
            guard let chosen = object[method] else {
                throw StrataError.invalidFile(path: path, detail: "field 'methods' has no '\(method)'; it has \(object.keys.sorted().joined(separator: ", "))")
            }
            plan = chosen
            prefix = "methods.\(method)."
        }
        func field(_ name: String) -> String { prefix + name }
        func fail(_ name: String, _ detail: String) -> StrataError { .invalidFile(path: path, detail: "field '\(field(name))' \(detail)") }
        guard let object = plan.object else { throw fail("", "is not an object") }
        if object["infeasible"]?.bool == true { throw fail("infeasible", "is true: the planner found no plan for '\(method)'") }
        guard let eta = object["eta"]?.int else { throw fail("eta", object["eta"] == nil ? "is missing" : "is not an integer") }
        guard let xi = object["xi"]?.int else { throw fail("xi", object["xi"] == nil ? "is missing" : "is not an integer") }
        guard eta > 0 else { throw fail("eta", "must be positive, not \(eta)") }
        guard xi > 0 else { throw fail("xi", "must be positive, not \(xi)") }
        guard let stageList = object["stages"]?.array, !stageList.isEmpty else { throw fail("stages", "is missing or not a non-empty list") }
        var ranges: [Range<Int>] = []
        var bits: [Int: Int] = [:]
        var budgets: [Int?] = []
        for (i, stage) in stageList.enumerated() {
            let name = "stages[\(i)]"
            guard let layers = stage["layers"]?.array, layers.count == 2, let lo = layers[0].int, let hi = layers[1].int else {
                throw fail("\(name).layers", "must be [first, end) as two integers")
            }
            guard lo >= 0, hi >= lo else { throw fail("\(name).layers", "is [\(lo), \(hi)), a negative range") }
            // A device the planner leaves without layers gets no rank.
            if hi == lo { continue }
            ranges.append(lo..<hi)
            if let list = stage["bits"] {
                guard let values = list.array, values.count == hi - lo else {
                    throw fail("\(name).bits", "must list one bit width per layer (\(hi - lo))")
                }
                for (j, v) in values.enumerated() {
                    guard let b = v.int, PrecisionMap.allowedBits.contains(b) else {
                        throw fail("\(name).bits[\(j)]", "must be one of \(PrecisionMap.allowedBits.map(String.init).joined(separator: ", "))")
                    }
                    bits[lo + j] = b
                }
            }
            if let capacity = stage["memory_capacity_bytes"] {
                guard let c = capacity.double, c > 0 else { throw fail("\(name).memory_capacity_bytes", "must be a positive number") }
                budgets.append(Int(c))
            } else {
                budgets.append(nil)
            }
        }
        let precision = bits.values.contains { $0 < 16 } ? PrecisionMap(bits: bits) : nil
        return StagePlan(method: object["method"]?.string ?? method,
                         layout: PipelineLayout(stages: ranges, prefillMicroBatch: eta, decodeMicroBatch: xi),
                         precision: precision, budgets: budgets, globalBatch: object["global_batch"]?.int,
                         promptLength: object["prompt_length"]?.int, genLength: object["gen_length"]?.int)
    }

    /// Refuses a plan a stage cannot hold, before anything is loaded: each stage's decoder
    /// layers at their bits, its KV cache for `batch` rows of `capacity` positions, and the
    /// embeddings and head on rank 0, against its budget.
    /// Ranks in `offloading` run under a policy: their engine checks its own tiers instead.
    public func checkMemory(_ memory: MemoryModel, batch: Int, capacity: Int, offloading: Set<Int> = []) throws {
        for (rank, layers) in layout.stages.enumerated() where !offloading.contains(rank) {
            guard rank < budgets.count, let budget = budgets[rank] else { continue }
            let share = share(rank: rank)
            let need = memory.layerBytes(layers) + memory.cacheBytes(rows: batch, capacity: capacity, layers: layers.count)
                + (share.embedding ? memory.firstStageBytes : 0)
            let parts = share.embedding ? ", embeddings and head" : ""
            guard need <= budget else {
                throw StrataError.invalidRequest(
                    "rank \(rank) (stage \(rank), layers \(layers.lowerBound)-\(layers.upperBound - 1)) needs \(ByteSize.format(need)) "
                        + "(weights, KV cache for \(batch) rows x \(capacity) positions\(parts)) but its budget is \(ByteSize.format(budget)): "
                        + "short by \(ByteSize.format(need - budget))")
            }
        }
    }
}
