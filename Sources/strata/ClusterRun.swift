import ArgumentParser
import StrataCore
import StrataDistributed
import StrataFormats
import StrataModels
import StrataPlanning
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `mpirun -np N strata cluster run ...`: rank r runs stage r of a plan over the input file.
struct ClusterRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run a cluster plan as a pipeline over MPI ranks (launch with mpirun, one rank per stage).",
        discussion: """
        Rank r loads only stage r's decoder layers at the plan's bits (rank 0 also the embeddings and
        the LM head). Prefill runs in micro-batches of the plan's eta rows, decode in micro-batches of
        xi rows; hidden states travel rank to rank, and the last rank's final states return to rank 0,
        which samples the next tokens. Rank 0 reads the input and writes the output
        (the lines `strata generate --input` writes, appended batch by batch; rerunning resumes).
        Without mpirun it runs as a one-rank pipeline.
        """)

    @OptionGroup var backend: BackendOptions
    @Option(help: "Plan JSON from `strata cluster plan --json`.") var plan: String?
    @Option(help: "With --plan: which method's plan to run (llm-pq, pipeedge, uniform, adabits).") var method = "llm-pq"
    @Option(help: "Instead of --plan: decoder layers per rank in rank order, e.g. 2,1 (full precision unless --precision).")
    var stages: String?
    @Option(help: "Prefill micro-batch rows (default: the plan's eta, else the batch size).") var eta: Int?
    @Option(help: "Decode micro-batch rows (default: the plan's xi, else the batch size).") var xi: Int?
    @Option(help: "Memory budget per rank, e.g. 2GiB,1GiB (default: the plan's device capacities).") var stageMem: String?
    @Option(name: .customLong("stage-policy"), help: ArgumentHelp(
        "RANK=POLICY.json: rank RANK runs its layers under that offloading policy (repeatable; the others stay resident).",
        discussion: "The batch must be the policy's block (gpu_batch_size x num_gpu_batches) and eta and xi whole gpu batches."))
    var stagePolicies: [String] = []
    @Option(help: "Directory for the disk tier of --stage-policy ranks (each rank uses DIR/rank-R).") var offloadDir: String?
    @Option(help: "Positions per sequence the memory check plans the KV cache for (default: the plan's prompt + gen length, else the model's maximum).")
    var context: Int?

    @Option(help: "JSONL input, one {\"prompt\": ...} or {\"messages\": [...]} object per line (read by rank 0).") var input: String
    @Option(help: "JSONL output (written by rank 0).") var output: String
    @Option(help: "Tokens to generate per prompt (default: the plan's gen length, else 32).") var maxNewTokens: Int?
    @Option(help: "Prompts per batch (default: the plan's global batch, else 8).") var batchSize: Int?
    @OptionGroup var samplingOptions: SamplingOptions
    @Flag(help: "Start a fresh output file instead of resuming.") var overwrite = false
    @Flag(help: "Generate --max-new-tokens for every prompt, past EOS (benchmarks).") var ignoreEos = false
    @Option(help: "Write the measured per-stage timeline as SVG (rank 0).") var timeline: String?
    @Flag(help: "Print one JSON object with the measured throughput and per-stage busy time (rank 0).") var json = false

    func run() throws {
        let transport: any PipelineTransport
        var world: MPIWorld?
        do {
            if MPIWorld.launchedByMPIRun {
                world = try MPIWorld()
                transport = world!
            } else {
                transport = LocalTransport.world(size: 1)[0]
            }
        } catch let error as StrataError {
            Console.error("error: \(error)")
            throw ExitCode(1)
        }
        let rank = transport.rank
        // Rank 0 speaks for the job (progress, notes); the others print only their errors.
        if rank > 0 { Console.quietFlag.store(true, ordering: .relaxed) }
        // Checks every rank makes alike (plan, world size, memory): each refuses on its own, rank
        // 0 says why, and no rank is left waiting.
        let prepared: Prepared
        do {
            prepared = try prepare(worldSize: transport.size)
        } catch let error as StrataError {
            if rank == 0 { Console.error("error: \(error)") }
            world?.finalize()
            throw ExitCode(1)
        }
        do {
            try execute(transport, prepared)
            world?.finalize()
        } catch {
            // Anything else stops the whole job: the other ranks would wait for this one forever.
            Console.error("error: rank \(rank): \(error)")
            if let world, world.size > 1 { world.abort(code: 1) }
            throw ExitCode(1)
        }
    }

    /// What every rank settles before loading: the plan as it will run, the sampling, the batch
    /// shape, and each `--stage-policy` loaded once.
    struct Prepared {
        var plan: StagePlan
        var sampling: SamplingParameters
        var batchSize: Int
        var maxNewTokens: Int
        var policies: [Int: Policy]
    }

    private func prepare(worldSize: Int) throws -> Prepared {
        guard (plan == nil) != (stages == nil) else { throw StrataError.invalidRequest("give exactly one of --plan or --stages") }
        if backend.compressCache {
            throw StrataError.invalidRequest("cluster run keeps each stage's KV cache in f32; --compress-cache is not supported")
        }
        let config = try ModelConfig(directory: backend.model)
        var stagePlan: StagePlan
        if let plan {
            if backend.precision != nil || backend.compressWeight {
                throw StrataError.invalidRequest("--plan sets each layer's bits; --precision and --compress-weight go with --stages")
            }
            stagePlan = try StagePlan.load(path: plan, method: method)
        } else {
            let ranges = try StagePlan.stages(stages!)
            let precision = try backend.compression().weights
            stagePlan = StagePlan(method: "stages", layout: PipelineLayout(stages: ranges, prefillMicroBatch: 1, decodeMicroBatch: 1),
                                  precision: precision, budgets: [])
        }
        let batchSize = self.batchSize ?? stagePlan.globalBatch ?? 8
        guard batchSize > 0 else { throw StrataError.invalidRequest("--batch-size must be positive") }
        let maxNewTokens = self.maxNewTokens ?? stagePlan.genLength ?? 32
        guard maxNewTokens > 0 else { throw StrataError.invalidRequest("--max-new-tokens must be positive") }
        if plan == nil {
            stagePlan.layout.prefillMicroBatch = batchSize
            stagePlan.layout.decodeMicroBatch = batchSize
        }
        if let eta { stagePlan.layout.prefillMicroBatch = eta }
        if let xi { stagePlan.layout.decodeMicroBatch = xi }
        let origin = plan.map { "plan \($0) (\(method))" } ?? "--stages \(stages!)"
        try stagePlan.layout.validate(layers: config.numLayers, worldSize: worldSize, origin: origin)
        if let map = stagePlan.precision { try map.validate(layers: config.numLayers, path: origin) }
        if let stageMem {
            let parts = stageMem.split(separator: ",").map(String.init)
            guard parts.count == worldSize else {
                throw StrataError.invalidRequest("--stage-mem gives \(parts.count) budget(s) for \(worldSize) rank(s)")
            }
            stagePlan.budgets = try parts.map { try ByteSize.parse($0, option: "--stage-mem") }
        }
        let policies = try policies(worldSize: worldSize)
        if stagePlan.budgets.contains(where: { $0 != nil }) {
            let memory = try MemoryModel(directory: backend.model, weightFormat: try backend.weightFormatOption(),
                                         precision: stagePlan.precision, threads: backend.threads)
            let planned = stagePlan.promptLength.map { $0 + maxNewTokens }
            try stagePlan.checkMemory(memory, batch: batchSize, capacity: min(context ?? planned ?? config.maxPositions, config.maxPositions),
                                      offloading: Set(policies.keys))
        }
        let sampling = try samplingOptions.parameters()
        for (rank, policy) in policies {
            let gbs = policy.gpuBatchSize
            guard policy.blockSize == batchSize else {
                throw StrataError.invalidRequest("--stage-policy \(rank)=...: its block is \(policy.blockSize) rows (gpu_batch_size \(gbs) x num_gpu_batches \(policy.numGPUBatches)); the batch size is \(batchSize): make them equal")
            }
            guard stagePlan.layout.prefillMicroBatch % gbs == 0, stagePlan.layout.decodeMicroBatch % gbs == 0 else {
                throw StrataError.invalidRequest("--stage-policy \(rank)=...: eta \(stagePlan.layout.prefillMicroBatch) and xi \(stagePlan.layout.decodeMicroBatch) must be whole gpu batches of \(gbs) rows")
            }
            stagePlan.layout.blockRows = batchSize
        }
        return Prepared(plan: stagePlan, sampling: sampling, batchSize: batchSize, maxNewTokens: maxNewTokens, policies: policies)
    }

    /// `--stage-policy RANK=FILE` options, each policy loaded and checked.
    private func policies(worldSize: Int) throws -> [Int: Policy] {
        var result: [Int: Policy] = [:]
        for option in stagePolicies {
            let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let rank = Int(parts[0]), (0..<worldSize).contains(rank) else {
                throw StrataError.invalidRequest("--stage-policy '\(option)': give RANK=POLICY.json with RANK in 0..<\(worldSize)")
            }
            guard result[rank] == nil else { throw StrataError.invalidRequest("--stage-policy names rank \(rank) twice") }
            let policy = try Policy.load(path: parts[1])
            try policy.validate()
            if policy.compressCache { throw StrataError.invalidRequest("\(parts[1]): compress_cache is not supported by cluster run") }
            result[rank] = policy
        }
        return result
    }

    private func execute(_ transport: any PipelineTransport, _ prepared: Prepared) throws {
        let rank = transport.rank, plan = prepared.plan
        let job = BatchJob(inputPath: input, outputPath: output, batchSize: prepared.batchSize, maxNewTokens: prepared.maxNewTokens,
                           stopStrings: samplingOptions.stops, sampling: prepared.sampling, overwrite: overwrite)
        // Rank 0 fails on an unwritable output before any rank loads the model.
        let out = rank == 0 ? try job.prepareOutput() : nil
        if let out, out.discardedBytes > 0 {
            Console.error("\(output): cut a torn last line (\(out.discardedBytes) bytes, from an interrupted run); its prompt is generated again")
        }
        var compression = try backend.compression()
        compression.weights = plan.precision
        let bundle: ModelBundle
        var engine: OffloadEngine?
        if let policy = prepared.policies[rank] {
            let config = try ModelConfig(directory: backend.model)
            let positions = min(context ?? config.maxPositions, config.maxPositions)
            var policy = policy
            if policy.compressWeight && plan.precision != nil { policy.compressWeight = false }   // the plan's bits rule
            // The rank's budget (plan or --stage-mem) bounds its device tier; the engine refuses
            // a policy that cannot fit it before loading, naming the tier and the shortfall.
            let budget = rank < plan.budgets.count ? plan.budgets[rank] : nil
            engine = try OffloadEngine(directory: backend.model, policy: policy, budgets: TierBudgets(device: budget),
                                       offloadDirectory: offloadDir.map { FileSystem.join($0, "rank-\(rank)") }, threads: backend.threads,
                                       weightFormat: try backend.weightFormatOption(), precision: plan.precision,
                                       promptLength: positions, capacity: positions, share: plan.share(rank: rank))
            bundle = try ModelBundle(directory: backend.model, model: engine!.model)
        } else {
            bundle = try ModelBundle(directory: backend.model, backend: try backend.makeBackend(), compression: compression,
                                     share: plan.share(rank: rank))
        }
        let stage = try PipelineStage(transport: transport, bundle: bundle, layout: plan.layout, sampling: prepared.sampling,
                                      ignoreEOS: ignoreEos, engine: engine)
        try transport.barrier()
        stage.origin = Clock.now()
        guard rank == 0, let out else {
            try stage.serve()
            return
        }
        let line = ProgressLine()
        let summary = try job.run(encoder: bundle, output: out, progress: { p in
            let rate = p.seconds > 0 ? Double(p.newTokens) / p.seconds : 0
            line.update(done: p.done, total: p.total, "\(p.done)/\(p.total) prompts, \(rate.formatted(1)) tokens/s")
        }, generate: { requests, timing in try stage.generate(requests, timing: &timing) })
        line.finish()
        let spans = try stage.shutdown()
        for s in summary.skipped { Console.error("skipped \(s)") }
        let t = summary.timing
        let rate = summary.wallSeconds > 0 ? Double(t.newTokens) / summary.wallSeconds : 0
        Console.error("""
            done: \(summary.completed) generated, \(summary.alreadyDone) already in \(output), \(summary.skipped.count) skipped; \
            \(t.newTokens) new tokens in \(summary.wallSeconds.formatted(2)) s = \(rate.formatted(1)) tokens/s over \(transport.size) rank(s)
            """)
        let end = spans.map(\.end).max() ?? 0
        if let timeline {
            let labels = plan.layout.stages.enumerated().map { "rank \($0.offset) L\($0.element.lowerBound)-\($0.element.upperBound)" }
            let svg = TimelineDrawing.svg(labels: labels, spans: spans.map { ($0.rank, $0.start, $0.end, $0.prefill) }, end: end,
                                          caption: "\(plan.method), measured")
            do { try Data(svg.utf8).write(to: URL(fileURLWithPath: timeline)) } catch {
                throw StrataError.ioFailure(path: timeline, detail: "\(error)")
            }
        }
        if json {
            let busy = (0..<transport.size).map { r in spans.filter { $0.rank == r }.reduce(0.0) { $0 + $1.end - $1.start } }
            print(JSONValue.object([
                "method": .string(plan.method), "ranks": .number(Double(transport.size)),
                "eta": .number(Double(plan.layout.prefillMicroBatch)), "xi": .number(Double(plan.layout.decodeMicroBatch)),
                "prompts": .number(Double(summary.completed)), "new_tokens": .number(Double(t.newTokens)),
                "prompt_tokens": .number(Double(t.promptTokens)),
                "wall_seconds": .number(summary.wallSeconds), "tokens_per_s": .number(rate),
                "prefill_seconds": .number(t.prefillSeconds), "decode_seconds": .number(t.decodeSeconds),
                "stage_busy_seconds": .array(busy.map { .number($0) }),
            ]).serialized())
        }
    }
}

/// `strata cluster calibrate`: this machine's layer and head latencies, for a spec's `calibration:`.
struct ClusterCalibrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "calibrate",
        abstract: "Measure one decoder layer's prefill and decode latency (per bit width and micro-batch size) and the LM head's, as a cluster spec's calibration file.",
        discussion: """
        LLM-PQ plans with profiled layer latencies. Run this on each kind of device (with the thread
        count its rank will use), merge the files' samples if there are several kinds, and name the
        file in the spec (`calibration: FILE`) with device `type` equal to --device.
        """)

    @OptionGroup var backend: BackendOptions
    @Option(help: "The device type these samples are for (the spec's devices[].type).") var device: String
    @Option(help: "Bit widths to measure, e.g. 16,8,4.") var bits = "16,8,4"
    @Option(help: "Micro-batch sizes to measure, e.g. 1,2,4,8.") var batchSizes = "1,2,4,8"
    @Option(help: "Prompt tokens per sequence (the spec's workload prompt_len).") var promptLen = 64
    @Option(help: "New tokens per sequence (the spec's workload gen_len).") var genLen = 16
    @Option(help: "Timed runs per point; the median is kept.") var repeats = 5
    @Option(help: "Write the calibration JSON here (else stdout).") var output: String?

    func run() throws {
        try reportingErrors {
            if backend.precision != nil || backend.compressWeight || backend.compressCache {
                throw StrataError.invalidRequest("cluster calibrate measures every width in --bits; drop --precision/--compress-*")
            }
            func list(_ text: String, _ option: String) throws -> [Int] {
                let values = text.split(separator: ",").compactMap { Int($0.filter { $0 != " " }) }
                guard !values.isEmpty, values.count == text.split(separator: ",").count, values.allSatisfy({ $0 > 0 }) else {
                    throw StrataError.invalidRequest("\(option): '\(text)' is not a comma-separated list of positive integers")
                }
                return values
            }
            let widths = try list(bits, "--bits")
            if let bad = widths.first(where: { !PrecisionMap.allowedBits.contains($0) }) {
                throw StrataError.invalidRequest("--bits: \(bad) is not one of \(PrecisionMap.allowedBits.map(String.init).joined(separator: ", "))")
            }
            guard promptLen > 0, genLen > 0, repeats > 0 else { throw StrataError.invalidRequest("--prompt-len, --gen-len and --repeats must be positive") }
            var probe = LayerLatencyProbe(directory: backend.model, device: device.lowercased(), bits: widths,
                                          batchSizes: try list(batchSizes, "--batch-sizes"), promptLength: promptLen, genLength: genLen)
            probe.repeats = repeats
            let line = ProgressLine()
            let result = try probe.run(backend: try backend.makeBackend()) { Console.note("calibrating \($0)") }
            line.finish()
            let text = result.serialized() + "\n"
            guard let output else { print(text, terminator: ""); return }
            do { try Data(text.utf8).write(to: URL(fileURLWithPath: output)) } catch {
                throw StrataError.ioFailure(path: output, detail: "\(error)")
            }
        }
    }
}
