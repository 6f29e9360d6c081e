import StrataCore
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation

/// `strata cluster run` under a real `mpirun` (2 and 3 ranks on this machine): outputs equal
/// `strata generate`'s with the same precision map, plans from `strata cluster plan`, and the
/// errors and faults a user meets.
@Suite(.serialized) struct ClusterRunTests {
    static let mpirun: String? = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }

    static let prompts = ["Hello there", "The license grants", "a", "Permission is hereby granted, free of charge, to any person",
                          "THE SOFTWARE IS PROVIDED", "Copyright", "Redistribution and use in source and binary forms"]

    static func input(_ name: String, count: Int = prompts.count) throws -> String {
        let dir = Fixtures.scratch(name)
        let lines = (0..<count).map { i in JSONValue.object(["prompt": .string(prompts[i % prompts.count] + (i >= prompts.count ? " \(i)" : ""))]).serialized() }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        return dir
    }

    static func launch(ranks: Int, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let mpirun = try #require(mpirun, "mpirun not found: scripts/setup.sh installs openmpi-bin")
        return try CommandLineTests.run(["--allow-run-as-root", "--oversubscribe", "-np", "\(ranks)", CommandLineTests.binary] + arguments,
                                        executable: mpirun)
    }

    /// index -> (token ids, text, finish reason) of an output file.
    static func outputs(_ path: String) throws -> [Int: [String]] {
        var rows: [Int: [String]] = [:]
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") {
            let v = try JSONValue.parse(Data(line.utf8), path: path)
            let index = try #require(v["index"]?.int)
            #expect(rows[index] == nil, "index \(index) written twice")
            rows[index] = [v["token_ids"]!.serialized(), v["text"]!.serialized(), v["finish_reason"]!.serialized()]
        }
        return rows
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var model: String
        var stages: String
        var eta: Int
        var xi: Int
        var batch: Int
        var bits: String?
        var sampling: [String] = []
        var testDescription: String { "\(model) --stages \(stages) eta \(eta) xi \(xi) batch \(batch) \(bits ?? "f32") \(sampling)" }
    }

    static let cases: [Case] = [
        Case(model: "opt-tiny", stages: "1,1", eta: 2, xi: 3, batch: 5),
        Case(model: "llama-gqa", stages: "1,1", eta: 4, xi: 1, batch: 4),
        Case(model: "opt-licenses", stages: "2,1,1", eta: 2, xi: 3, batch: 7, bits: #"{"bits": {"0": 4, "1": 16, "2": 8, "3": 3}}"#),
        Case(model: "opt-licenses", stages: "1,2,1", eta: 3, xi: 2, batch: 3, bits: #"{"bits": [8, 4, 16, 16]}"#,
             sampling: ["--temperature", "0.8", "--top-k", "20", "--seed", "7"]),
    ]

    @Test(arguments: cases) func outputsEqualGenerate(_ c: Case) throws {
        let dir = try Self.input("cluster-eq")
        var common = ["--model", Fixtures.model(c.model), "--input", dir + "/in.jsonl", "--batch-size", "\(c.batch)",
                      "--max-new-tokens", "6", "--threads", "1", "--backend", "cpu", "--quiet"] + c.sampling
        if let bits = c.bits {
            try bits.write(toFile: dir + "/bits.json", atomically: true, encoding: .utf8)
            common += ["--precision", dir + "/bits.json"]
        }
        let single = try CommandLineTests.run(["generate", "--output", dir + "/generate.jsonl"] + common)
        #expect(single.status == 0, "\(single.stderr)")
        let ranks = c.stages.split(separator: ",").count
        let piped = try Self.launch(ranks: ranks, ["cluster", "run", "--stages", c.stages, "--eta", "\(c.eta)", "--xi", "\(c.xi)",
                                                   "--output", dir + "/cluster.jsonl", "--timeline", dir + "/run.svg"] + common)
        #expect(piped.status == 0, "\(piped.stderr)")
        let expected = try Self.outputs(dir + "/generate.jsonl")
        #expect(expected.count == Self.prompts.count)
        let got = try Self.outputs(dir + "/cluster.jsonl")
        #expect(got == expected)
        // The measured timeline has one row per rank and spans on it.
        let svg = try String(contentsOfFile: dir + "/run.svg", encoding: .utf8)
        #expect(svg.components(separatedBy: "<rect").count - 1 >= ranks * 2)
        #expect((0..<ranks).allSatisfy { svg.contains("rank \($0) L") })
    }

    /// Rank 1 under an offloading policy of its own (weights over device, host and disk; cache
    /// and activations partly off the device): the same outputs as `generate`.
    @Test func aRankUnderItsOwnOffloadingPolicy() throws {
        let dir = try Self.input("cluster-policy", count: 6)
        try #"{"gpu_batch_size": 2, "num_gpu_batches": 3, "percent": [30, 30, 50, 25, 50, 50], "overlap": true}"#
            .write(toFile: dir + "/policy.json", atomically: true, encoding: .utf8)
        let common = ["--model", Fixtures.model("opt-licenses"), "--input", dir + "/in.jsonl", "--batch-size", "6", "--max-new-tokens", "6",
                      "--threads", "1", "--backend", "cpu", "--quiet"]
        let single = try CommandLineTests.run(["generate", "--output", dir + "/generate.jsonl"] + common)
        #expect(single.status == 0, "\(single.stderr)")
        let run = try Self.launch(ranks: 2, ["cluster", "run", "--stages", "2,2", "--eta", "2", "--xi", "6",
                                             "--stage-policy", "1=\(dir)/policy.json", "--offload-dir", dir + "/offload",
                                             "--output", dir + "/cluster.jsonl"] + common)
        #expect(run.status == 0, "\(run.stderr)")
        let got = try Self.outputs(dir + "/cluster.jsonl"), want = try Self.outputs(dir + "/generate.jsonl")
        #expect(got.count == 6)
        #expect(got == want)
        // Its disk tier was used: weight images for its layers only (2 and 3), in its own directory.
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/offload/rank-1/weights")) ?? []
        #expect(!files.isEmpty && files.allSatisfy { $0.hasPrefix("L2-") || $0.hasPrefix("L3-") }, "\(files)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/offload/rank-0"))

        // A policy whose block is not the batch is refused before loading, naming the rank.
        let wrong = try Self.launch(ranks: 2, ["cluster", "run", "--stages", "2,2", "--stage-policy", "1=\(dir)/policy.json",
                                               "--offload-dir", dir + "/offload", "--output", dir + "/wrong.jsonl"]
                                    + common.map { $0 == "6" ? "4" : $0 })
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("--stage-policy 1=...: its block is 6 rows"), "\(wrong.stderr)")
    }

    /// A spec naming the model directory, planned by `strata cluster plan --json`, run as planned:
    /// the same outputs as `generate` with the plan's precision map, for LLM-PQ and a baseline.
    @Test func runsThePlannersPlan() throws {
        let dir = try Self.input("cluster-plan")
        let model = Fixtures.model("opt-licenses")
        try """
            model: \(model)
            workload: {global_batch: 4, prompt_len: 16, gen_len: 6}
            devices:
              - {type: t4, count: 1, memory: 1082MiB}
              - {type: v100-32g, count: 1, memory: 1082MiB}
            theta: 1
            bits: [4, 8, 16]
            """.write(toFile: dir + "/spec.yaml", atomically: true, encoding: .utf8)
        let planned = try CommandLineTests.run(["cluster", "plan", dir + "/spec.yaml", "--json"])
        #expect(planned.status == 0, "\(planned.stderr)")
        try planned.stdout.write(toFile: dir + "/plan.json", atomically: true, encoding: .utf8)
        let plan = try JSONValue.parse(Data(planned.stdout.utf8), path: "plan")
        for method in ["llm-pq", "uniform"] {
            let chosen = try #require(plan["methods"]?[method])
            guard chosen["infeasible"] == nil else { continue }
            let ranks = try #require(chosen["stages"]?.array).count
            try chosen["precision_map"]!.serialized().write(toFile: dir + "/\(method).bits.json", atomically: true, encoding: .utf8)
            let common = ["--model", model, "--input", dir + "/in.jsonl", "--batch-size", "4", "--max-new-tokens", "6", "--threads", "1",
                          "--backend", "cpu", "--quiet"]
            let single = try CommandLineTests.run(["generate", "--output", dir + "/\(method).generate.jsonl",
                                                   "--precision", dir + "/\(method).bits.json"] + common)
            #expect(single.status == 0, "\(single.stderr)")
            let run = try Self.launch(ranks: ranks, ["cluster", "run", "--plan", dir + "/plan.json", "--method", method,
                                                     "--output", dir + "/\(method).cluster.jsonl"] + common)
            #expect(run.status == 0, "\(method): \(run.stderr)")
            let got = try Self.outputs(dir + "/\(method).cluster.jsonl"), want = try Self.outputs(dir + "/\(method).generate.jsonl")
            #expect(got == want, "\(method)")
        }
    }

    @Test func wrongPlansAndWorldsAreRefusedNamingTheField() throws {
        let dir = try Self.input("cluster-bad")
        let common = ["--model", Fixtures.model("opt-licenses"), "--input", dir + "/in.jsonl", "--output", dir + "/out.jsonl",
                      "--threads", "1", "--backend", "cpu", "--quiet"]
        let plans: [(String, String)] = [
            (#"{"methods": {"llm-pq": {"eta": "two", "xi": 1, "stages": [{"layers": [0, 4]}]}}}"#, "methods.llm-pq.eta"),
            (#"{"methods": {"llm-pq": {"eta": 2, "xi": 1, "stages": [{"layers": [0, 2]}, {"layers": [2, 4], "bits": [4]}]}}}"#,
             "methods.llm-pq.stages[1].bits"),
            (#"{"methods": {"llm-pq": {"eta": 2, "xi": 1, "stages": [{"layers": [0, 3]}, {"layers": [3, 5]}]}}}"#, "model has 4"),
            (#"{"methods": {"pipeedge": {"eta": 2, "xi": 1, "stages": []}}}"#, "has no 'llm-pq'"),
        ]
        for (i, (text, fragment)) in plans.enumerated() {
            try text.write(toFile: dir + "/plan\(i).json", atomically: true, encoding: .utf8)
            let r = try Self.launch(ranks: 2, ["cluster", "run", "--plan", dir + "/plan\(i).json"] + common)
            #expect(r.status != 0)
            #expect(r.stderr.contains(fragment), "plan \(i): \(r.stderr)")
        }
        let mismatch = try Self.launch(ranks: 2, ["cluster", "run", "--stages", "1,1,2"] + common)
        #expect(mismatch.status != 0)
        #expect(mismatch.stderr.contains("3 stage(s) but mpirun started 2 rank(s)"), "\(mismatch.stderr)")
        let short = try Self.launch(ranks: 2, ["cluster", "run", "--stages", "3,1", "--stage-mem", "1GiB,64KiB", "--batch-size", "8"] + common)
        #expect(short.status != 0)
        #expect(short.stderr.contains("rank 1 (stage 1, layers 3-3) needs") && short.stderr.contains("short by"), "\(short.stderr)")
        let written = (try? String(contentsOfFile: dir + "/out.jsonl", encoding: .utf8)) ?? ""
        #expect(written.isEmpty, "refused jobs wrote output")
    }

    /// Killing a rank mid-job stops the others within seconds with an error naming the rank;
    /// the lines already written stay, and the same command then resumes to the full output.
    @Test func aKilledRankStopsTheJobAndARerunResumes() throws {
        let mpirun = try #require(Self.mpirun, "mpirun not found")
        let total = 40
        let dir = try Self.input("cluster-kill", count: total)
        let out = dir + "/out.jsonl"
        let arguments = ["--allow-run-as-root", "--oversubscribe", "-np", "2", CommandLineTests.binary, "cluster", "run",
                         "--model", Fixtures.model("opt-licenses"), "--stages", "2,2", "--input", dir + "/in.jsonl", "--output", out,
                         "--batch-size", "1", "--max-new-tokens", "48", "--threads", "1", "--backend", "cpu", "--quiet"]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: mpirun)
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Wait for the first lines, then kill rank 1 (found by its MPI rank and this job's output path).
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline, ((try? String(contentsOfFile: out, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 2 {
            usleep(20_000)
        }
        let victim = try #require(Self.rankProcess(rank: 1, marker: out), "rank 1's process not found")
        let killed = Date()
        kill(victim, SIGKILL)
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let stopSeconds = Date().timeIntervalSince(killed)
        let message = String(decoding: stderr, as: UTF8.self)
        #expect(process.terminationStatus != 0)
        #expect(stopSeconds < 10, "the job took \(stopSeconds) s to stop")
        #expect(message.contains("rank 1"), "\(message)")
        let partial = try Self.outputs(out)
        #expect(partial.count >= 2 && partial.count < total, "\(partial.count) lines after the kill")

        let rerun = try Self.launch(ranks: 2, Array(arguments.dropFirst(5)))
        #expect(rerun.status == 0, "\(rerun.stderr)")
        let full = try Self.outputs(out)
        #expect(full.count == total)
        #expect(partial.allSatisfy { full[$0.key] == $0.value })
    }

    /// Two "hosts" on this machine: network namespaces joined by veth pairs on a bridge, one
    /// rank in each, launched by mpirun through a remote agent as it launches over ssh; the
    /// activations must cross the namespaces' interfaces, and outputs equal `generate`'s.
    @Test func ranksOnTwoHostsTalkOverTheNetwork() throws {
        let mpirun = try #require(Self.mpirun, "mpirun not found")
        let dir = try Self.input("cluster-netns")
        let octet = Int.random(in: 20...250)
        let net = "10.213.\(octet)", bridge = "sbr\(octet)", ns = ["sn\(octet)a", "sn\(octet)b"], veth = ["sv\(octet)a", "sv\(octet)b"]
        var setup = "set -e; ip link add \(bridge) type bridge; ip addr add \(net).1/24 dev \(bridge); ip link set \(bridge) up\n"
        for (i, name) in ns.enumerated() {
            setup += "ip netns add \(name); ip link add \(veth[i]) type veth peer name eth0 netns \(name)\n"
            setup += "ip link set \(veth[i]) master \(bridge) up; ip -n \(name) link set lo up; ip -n \(name) link set eth0 up\n"
            setup += "ip -n \(name) addr add \(net).\(i + 2)/24 dev eth0\n"
        }
        let teardown = "ip netns del \(ns[0]); ip netns del \(ns[1]); ip link del \(bridge)"
        defer { _ = try? Self.shell(teardown) }
        let made = try Self.shell(setup)
        try #require(made.status == 0, "could not make network namespaces (root and iproute2 needed): \(made.output)")
        // mpirun starts its daemon on a remote host with "AGENT [options] HOST COMMAND"; this
        // agent runs COMMAND inside the namespace that owns HOST's address. Each "host" gets its
        // own TMPDIR, as separate machines have their own /tmp: the namespaces share this one's
        // file system and host name, so both daemons built their Open MPI session directories in
        // one tree, and one CI run failed with "mkdir .../jf.N/0/2: File exists".
        let agent = dir + "/agent.sh"
        try """
            #!/bin/sh
            while [ "${1#-}" != "$1" ]; do shift; done
            host=$1; shift
            case "$host" in
              \(net).2) ns=\(ns[0]) ;;
              \(net).3) ns=\(ns[1]) ;;
              *) echo "agent: unknown host $host" >&2; exit 1 ;;
            esac
            mkdir -p "\(dir)/tmp-$ns"
            exec ip netns exec "$ns" env TMPDIR="\(dir)/tmp-$ns" /bin/sh -c "$*"
            """.write(toFile: agent, atomically: true, encoding: .utf8)
        _ = try Self.shell("chmod +x \(agent)")
        try "\(net).2 slots=1\n\(net).3 slots=1\n".write(toFile: dir + "/hosts", atomically: true, encoding: .utf8)

        let common = ["--model", Fixtures.model("opt-licenses"), "--input", dir + "/in.jsonl", "--batch-size", "4", "--max-new-tokens", "6",
                      "--threads", "1", "--backend", "cpu", "--quiet"]
        let single = try CommandLineTests.run(["generate", "--output", dir + "/generate.jsonl"] + common)
        #expect(single.status == 0, "\(single.stderr)")
        let before = try Self.interfaceBytes(veth[0])
        let launched = try Self.shell(([mpirun, "--allow-run-as-root", "-np", "2", "--hostfile", dir + "/hosts", "--mca", "plm_rsh_agent", agent,
                                        "--mca", "oob_tcp_if_include", "\(net).0/24", "--mca", "btl", "tcp,self",
                                        "--mca", "btl_tcp_if_include", "\(net).0/24",
                                        // Open MPI 4.1's remote daemon now and then crashes writing its hwloc topology
                                        // to shared memory (hwloc_shmem_topology_write); the component is not needed.
                                        "--mca", "rtc", "^hwloc", CommandLineTests.binary, "cluster", "run",
                                        "--stages", "2,2", "--output", dir + "/cluster.jsonl"] + common).map { "'\($0)'" }.joined(separator: " "))
        #expect(launched.status == 0, "\(launched.output)")
        let crossed = try Self.interfaceBytes(veth[0]) - before
        // Rank 0's hidden states for every prompt token went to rank 1 over the veth: at least
        // rows x prompt tokens x hidden (256) x 4 bytes, the shortest prompt being 1 token.
        #expect(crossed >= 4 * 256 * 4, "only \(crossed) bytes crossed \(veth[0])")
        let got = try Self.outputs(dir + "/cluster.jsonl"), want = try Self.outputs(dir + "/generate.jsonl")
        #expect(got.count == Self.prompts.count)
        #expect(got == want)
    }

    static func shell(_ script: String) throws -> (status: Int32, output: String) {
        let r = try CommandLineTests.run(["-c", script + " 2>&1"], executable: "/bin/sh")
        return (r.status, r.stdout)
    }

    /// Bytes an interface has sent and received.
    static func interfaceBytes(_ name: String) throws -> Int {
        try ["tx_bytes", "rx_bytes"].reduce(0) { total, counter in
            let text = try String(contentsOfFile: "/sys/class/net/\(name)/statistics/\(counter)", encoding: .utf8)
            return total + (Int(text.filter(\.isNumber)) ?? 0)
        }
    }

    /// The pid of this job's rank `rank` (its environment names the rank, its arguments the output).
    static func rankProcess(rank: Int, marker: String) -> pid_t? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = pid_t(entry) else { continue }
            guard let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                  let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            let arguments = String(decoding: cmdline, as: UTF8.self)
            let variables = String(decoding: environ, as: UTF8.self).split(separator: "\0")
            if arguments.contains(marker), arguments.hasPrefix(CommandLineTests.binary),
               variables.contains("OMPI_COMM_WORLD_RANK=\(rank)") {
                return pid
            }
        }
        return nil
    }
}
