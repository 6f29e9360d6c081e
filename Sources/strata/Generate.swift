import ArgumentParser
import StrataCore
import StrataFormats
import StrataRuntime

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate continuations for one prompt or a JSONL file of prompts.",
        discussion: """
        With --prompt, prints one JSON object (--chat: through the model's chat template). With
        --input/--output, reads lines like {"prompt": "...", "id": 7} or {"messages": [{"role":
        "user", "content": "..."}]} (rendered by the chat template) and appends one JSON object per line to the output as each batch
        finishes; rerunning the same command resumes where it stopped (--overwrite starts afresh).
        """)

    @OptionGroup var backend: BackendOptions
    @OptionGroup var offload: PolicyOptions
    @Option(help: "Under a policy: positions per sequence the KV cache is planned for (default: the model's maximum).")
    var context: Int?

    @Option(help: "A single prompt.") var prompt: String?
    @Flag(help: "With --prompt: send it as a user message through the model's chat template.") var chat = false
    @Option(help: "With --chat: a system message before the user's.") var system: String?
    @Option(help: "JSONL input, one {\"prompt\": ...} object per line.") var input: String?
    @Option(help: "JSONL output (required with --input).") var output: String?
    @Option(help: "Tokens to generate per prompt.") var maxNewTokens: Int = 32
    @Option(help: "Prompts per batch.") var batchSize: Int = 8
    @OptionGroup var samplingOptions: SamplingOptions
    @Flag(help: "Start a fresh output file instead of resuming.") var overwrite = false

    func validate() throws {
        guard (prompt == nil) != (input == nil) else { throw ValidationError("give exactly one of --prompt or --input") }
        if input != nil && output == nil { throw ValidationError("--input needs --output") }
        guard maxNewTokens > 0 else { throw ValidationError("--max-new-tokens must be positive") }
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive") }
        if chat && prompt == nil { throw ValidationError("--chat applies to --prompt; in --input files give {\"messages\": [...]} lines") }
        if system != nil && !chat { throw ValidationError("--system needs --chat") }
    }

    private func makeGenerator() throws -> Generator {
        let positions = try context ?? ModelConfig(directory: backend.model).maxPositions
        return try offload.makeGenerator(backend, promptLength: positions, capacity: positions, batchSize: batchSize).generator
    }

    func run() throws {
        try reportingErrors {
            let sampling = try samplingOptions.parameters()
            let stops = samplingOptions.stops
            if let prompt {
                let generator = try makeGenerator()
                let ids: [Int]
                if chat {
                    var messages: [JSONValue] = []
                    if let system { messages.append(.object(["role": .string("system"), "content": .string(system)])) }
                    messages.append(.object(["role": .string("user"), "content": .string(prompt)]))
                    ids = try generator.bundle.encodeChat(messages).ids
                } else {
                    ids = try generator.bundle.encodePrompt(prompt)
                }
                var timing = GenerationTiming()
                let r = try generator.generate([GenerationRequest(promptIds: ids, maxNewTokens: maxNewTokens, stopStrings: stops)],
                                           sampling: sampling, timing: &timing)[0]
                let object = JSONValue.object([
                    "prompt": .string(prompt), "text": .string(r.text),
                    "token_ids": .array(r.tokenIds.map { .number(Double($0)) }),
                    "finish_reason": .string(r.finishReason.rawValue),
                ])
                print(object.serialized())
                return
            }
            let job = BatchJob(inputPath: input!, outputPath: output!, batchSize: batchSize, maxNewTokens: maxNewTokens,
                               stopStrings: stops, sampling: sampling, overwrite: overwrite)
            let out = try job.prepareOutput()   // fail on an unwritable path before loading the model
            if out.discardedBytes > 0 {
                Console.error("\(output!): cut a torn last line (\(out.discardedBytes) bytes, from an interrupted run); its prompt is generated again")
            }
            let generator = try makeGenerator()
            let line = ProgressLine()
            let summary = try job.run(generator: generator, output: out) { p in
                let rate = p.seconds > 0 ? Double(p.newTokens) / p.seconds : 0
                line.update(done: p.done, total: p.total, "\(p.done)/\(p.total) prompts, \(rate.formatted(1)) tokens/s")
            }
            line.finish()
            for s in summary.skipped { Console.error("skipped \(s)") }
            let t = summary.timing
            let total = summary.wallSeconds > 0 ? Double(t.newTokens) / summary.wallSeconds : 0
            Console.error("""
                done: \(summary.completed) generated, \(summary.alreadyDone) already in \(output!), \(summary.skipped.count) skipped; \
                \(t.newTokens) new tokens in \(summary.wallSeconds.formatted(2)) s = \(total.formatted(1)) tokens/s \
                (prefill \(t.prefillSeconds > 0 ? (Double(t.promptTokens) / t.prefillSeconds).formatted(1) : "-") tokens/s)
                """)
        }
    }
}

/// Sampling and stopping options `generate` and `cluster run` share.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(help: "Nucleus sampling mass (1 disables).") var topP: Float = 1
    @Option(help: "Keep only the k most likely tokens (0 disables).") var topK: Int = 0
    @Option(help: "Seed for sampling; the same seed gives the same output.") var seed: UInt64 = 0
    @Option(name: .customLong("stop"), help: "Stop string (repeatable).") var stops: [String] = []

    /// The sampler's parameters, checked.
    func parameters() throws -> SamplingParameters {
        let sampling = SamplingParameters(temperature: temperature, topK: topK, topP: topP, seed: seed)
        try sampling.validate()
        return sampling
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as a JSON array.")

    @Option(help: "Model or tokenizer directory.") var model: String
    @Option(help: "Text to tokenize.") var text: String
    @Flag(help: "Leave out the special tokens the tokenizer would add (BOS/EOS).") var noSpecialTokens = false

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer.load(directory: model)
            let ids = tokenizer.encode(text, addSpecialTokens: !noSpecialTokens)
            print("[" + ids.map(String.init).joined(separator: ", ") + "]")
        }
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill, decode and total generation throughput on random prompts (FlexGen's workload).")

    @OptionGroup var backend: BackendOptions
    @OptionGroup var offload: PolicyOptions
    @Option(help: "Sequences per batch.") var batchSize: Int = 16
    @Option(help: "Prompt tokens per sequence.") var promptLen: Int = 128
    @Option(help: "New tokens per sequence (EOS ignored).") var genLen: Int = 32
    @Option(help: "Measured runs; the median is reported.") var `repeat`: Int = 1
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Under a policy with weights on disk: also measure the disk's direct-read bandwidth on the weight files and report the decode step against the disk-read bound.")
    var measureDisk = false
    @Option(help: "Bytes of weight files read to measure disk bandwidth.") var measureDiskBytes = "4GiB"
    @Flag(help: "Under a policy with weights on the host: also measure host-to-device copy bandwidth and report the decode step against the weight-transfer bound (host weight bytes per step / bandwidth).")
    var measureTransfer = false

    func run() throws {
        try reportingErrors {
            let (generator, engine, prediction) = try offload.makeGenerator(backend, promptLength: promptLen, capacity: promptLen + genLen,
                                                               batchSize: batchSize)
            // Disk bandwidth is measured before and after the run (this VM's disk varies by 2x
            // from minute to minute); the faster measurement sets the bound, the strictest one.
            let measuring = measureDisk && (engine?.placed.weights[.disk] ?? 0) > 0
            let limit = try ByteSize.parse(measureDiskBytes, option: "--measure-disk-bytes")
            var bandwidths: [Double] = []
            if measuring, let engine {
                let (bytes, seconds) = try DiskReader.measureBandwidth(files: engine.diskWeightFiles, limit: limit)
                bandwidths.append(Double(bytes) / seconds)
            }
            let r = try Benchmark(batchSize: batchSize, promptLength: promptLen, genLength: genLen, repeats: `repeat`).run(generator)
            var transferBound: JSONValue?
            if measureTransfer, let engine, engine.hostWeightBytesPerStep > 0 {
                let bandwidth = engine.measureTransferBandwidth()
                let stepBytes = Double(engine.hostWeightBytesPerStep)
                let bound = stepBytes / bandwidth.hostToDevice
                let step = Double(batchSize) / r.decodeTokensPerSecond
                transferBound = .object(["host_to_device_bytes_per_s": .number(bandwidth.hostToDevice),
                                         "device_to_host_bytes_per_s": .number(bandwidth.deviceToHost),
                                         "weight_bytes_per_step": .number(stepBytes), "bound_seconds_per_step": .number(bound),
                                         "decode_seconds_per_step": .number(step), "fraction_of_bound": .number(bound / step)])
            }
            var diskBound: JSONValue?
            if measuring, let engine {
                let (bytes, seconds) = try DiskReader.measureBandwidth(files: engine.diskWeightFiles.reversed(), limit: limit)
                bandwidths.append(Double(bytes) / seconds)
                let bandwidth = bandwidths.max()!
                let stepBytes = Double(engine.placed.weights[.disk] ?? 0)
                let bound = stepBytes / bandwidth
                let step = Double(batchSize) / r.decodeTokensPerSecond
                diskBound = .object(["read_bandwidth_bytes_per_s": .number(bandwidth),
                                     "read_bandwidth_before_after": .array(bandwidths.map { .number($0) }),
                                     "weight_bytes_per_step": .number(stepBytes),
                                     "bound_seconds_per_step": .number(bound), "decode_seconds_per_step": .number(step),
                                     "fraction_of_bound": .number(bound / step)])
            }
            if json {
                var object = r.json.object!
                if let engine { object["tiers"] = engine.tierReport }
                if let diskBound { object["disk_bound"] = diskBound }
                if let transferBound { object["transfer_bound"] = transferBound }
                object["backend"] = .string(engine.map { $0.computeName } ?? generator.bundle.model.backend.name)
                if let prediction {
                    object["predicted_tokens_per_s"] = .number(prediction.tokensPerSecond)
                    object["prediction_error"] = .number(prediction.tokensPerSecond / r.totalTokensPerSecond - 1)
                    object["predicted_bottleneck"] = .object(["prefill": .string(prediction.prefillBottleneck),
                                                              "decode": .string(prediction.decodeBottleneck)])
                    if let engine {
                        let layers = Double(engine.model.config.numLayers), block = Double(engine.policy.blockSize)
                        object["predicted_prefill_tokens_per_s"] = .number(block * Double(promptLen) / (prediction.prefillSecondsPerLayer * layers))
                        object["predicted_decode_tokens_per_s"] = .number(block / (prediction.decodeSecondsPerLayer * layers))
                    }
                }
                print(JSONValue.object(object).serialized())
            } else {
                print("""
                    model \(backend.model), batch \(batchSize), prompt \(promptLen), gen \(genLen), threads \(backend.threads)
                    prefill   \(r.prefillTokensPerSecond.formatted(1)) tokens/s
                    decode    \(r.decodeTokensPerSecond.formatted(1)) tokens/s
                    total     \(r.totalTokensPerSecond.formatted(2)) tokens/s (new tokens / wall time, \(r.wallSeconds.formatted(2)) s)
                    peak RSS  \((Double(r.peakRSSBytes) / 1_048_576).formatted(1)) MiB
                    """)
                if let engine {
                    print("policy    \(engine.policy.flags)")
                    if let prediction {
                        let error = 100 * (prediction.tokensPerSecond / r.totalTokensPerSecond - 1)
                        print("predicted \(prediction.tokensPerSecond.formatted(2)) tokens/s by the cost model; measured \(r.totalTokensPerSecond.formatted(2)): "
                              + "error \(error >= 0 ? "+" : "")\(error.formatted(1))%")
                    }
                    for (name, account) in [("device", engine.accounts.device), ("host", engine.accounts.host), ("disk", engine.accounts.disk)] {
                        let budget = account.budget.map { " of \(ByteSize.format($0))" } ?? ""
                        print("\(name.padding(9)) peak \(ByteSize.format(account.peak))\(budget)")
                    }
                    if let t = transferBound?.object, let bw = t["host_to_device_bytes_per_s"]?.double, let bound = t["bound_seconds_per_step"]?.double,
                       let step = t["decode_seconds_per_step"]?.double {
                        print("transfer  \((bw / 1e9).formatted(2)) GB/s host to device; decode step \(step.formatted(3)) s vs weight-transfer bound \(bound.formatted(3)) s (\((100 * bound / step).formatted(1))%)")
                    }
                    if let d = diskBound?.object, let bw = d["read_bandwidth_bytes_per_s"]?.double, let bound = d["bound_seconds_per_step"]?.double,
                       let step = d["decode_seconds_per_step"]?.double {
                        print("disk      \((bw / 1e9).formatted(2)) GB/s direct reads; decode step \(step.formatted(2)) s vs disk-read bound \(bound.formatted(2)) s (\((100 * bound / step).formatted(1))%)")
                    }
                }
            }
            if let violation = engine?.budgetViolation {
                Console.error("error: \(violation)")
                throw ExitCode(1)
            }
        }
    }
}
