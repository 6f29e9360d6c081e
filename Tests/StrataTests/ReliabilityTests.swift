import StrataCore
@testable import StrataFormats
import StrataPlanning
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The limits on what a file can make Strata do (README, "Limits"): each hostile input is
/// refused with an error naming the file and field, before anything its size asks for is
/// allocated. Also the regression tests for what the fuzzers found (RELIABILITY.md).
@Suite struct ReliabilityTests {
    func write(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }
    func write(_ text: String, _ path: String) throws { try text.write(toFile: path, atomically: false, encoding: .utf8) }
    func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    @Test func headerClaimingTwoToTheSixtyBytes() throws {
        let path = Fixtures.scratch("limits") + "/model.safetensors"
        try write(le64(1 << 60) + Array("{}".utf8), path)
        expectError([path, "exceeds the 100000000-byte limit"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func shapesWhoseProductOverflows() throws {
        let dir = Fixtures.scratch("limits")
        let header = #"{"w": {"dtype": "F32", "shape": [4000000000000000, 4000000000000000], "data_offsets": [0, 16]}}"#
        try write(le64(UInt64(header.utf8.count)) + Array(header.utf8) + [UInt8](repeating: 0, count: 16), dir + "/model.safetensors")
        expectError([dir + "/model.safetensors", "tensor 'w'", "too many"]) { _ = try SafeTensorsFile(path: dir + "/model.safetensors") }
        // An offload store manifest (the reader used to trap on this multiplication).
        try write(#"{"format": "strata-offload-store", "version": 1, "tensors": [{"name": "w", "dtype": "F32", "shape": [4000000000000000, 4000000000000000], "file": "tensors/0.bin", "bytes": 16, "checksum": "0"}]}"#,
                  dir + "/" + OffloadStore.manifestName)
        expectError([OffloadStore.manifestName, "tensor 'w'"]) { _ = try OffloadStore(directory: dir) }
        // A config whose sizes would overflow every byte count computed from them.
        var config = try JSONValue.load(path: Fixtures.model("opt-tiny") + "/config.json").object!
        config["hidden_size"] = .number(Double(1 << 40))
        try write(JSONValue.object(config).serialized(), dir + "/config.json")
        expectError([dir + "/config.json", "hidden_size", "above the limit"]) { _ = try ModelConfig(directory: dir) }
    }

    @Test func tenMillionTokenVocabularies() throws {
        let dir = Fixtures.scratch("limits")
        // tokenizer.json: a file that size (sparse here) is refused before a byte is read.
        let fd = open(dir + "/tokenizer.json", O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(fd, 150 << 20) == 0)
        close(fd)
        expectError([dir + "/tokenizer.json", "exceeds the 67108864-byte limit"]) { _ = try Tokenizer.load(directory: dir) }
        // GGUF: an array that claims ten million tokens in a few bytes.
        var gguf = Array("GGUF".utf8) + le32(3) + le64(0) + le64(1)
        gguf += le64(21) + Array("tokenizer.ggml.tokens".utf8) + le32(9) + le32(8) + le64(10_000_000)
        try write(gguf, dir + "/model.gguf")
        expectError([dir + "/model.gguf", "10000000"]) { _ = try GGUFFile(path: dir + "/model.gguf") }
        // An id that would size the id -> token table.
        try write(#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 999999999999}, "merges": []}}"#, dir + "/tokenizer.json")
        expectError([dir + "/tokenizer.json", "model.vocab['b']", "2097151"]) { _ = try Tokenizer.load(directory: dir) }
    }

    @Test func gigabyteJSONLLineIsSkippedAsItStreamsPast() throws {
        let path = Fixtures.scratch("limits") + "/in.jsonl"
        try write("{\"prompt\": \"first\"}\n", path)
        // 1 GiB of a line with no newline (sparse: no disk), then a good line.
        let fd = open(path, O_WRONLY)
        let gigabyte = 1 << 30
        #expect(ftruncate(fd, off_t(20 + gigabyte)) == 0)
        let tail = Array("\n{\"prompt\": \"last\"}\n".utf8)
        #expect(tail.withUnsafeBytes { pwrite(fd, $0.baseAddress!, tail.count, off_t(20 + gigabyte)) } == tail.count)
        close(fd)
        let reader = try LineReader(path: path)
        var lines: [LineReader.Line] = []
        while let (_, line) = try reader.next() { lines.append(line) }
        #expect(lines == [.text(Array("{\"prompt\": \"first\"}".utf8)), .tooLong(bytes: gigabyte), .text(Array("{\"prompt\": \"last\"}".utf8))])
    }

    @Test func mergeListWithCyclesTerminates() throws {
        let dir = Fixtures.scratch("limits")
        // Merges that lead round in circles (ab + a, a + ba, ba + b, b + ab, ...).
        try write(#"""
            {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "ba": 3, "aba": 4, "bab": 5, "abab": 6, "baba": 7},
             "merges": ["a b", "b a", "ab a", "a ba", "ba b", "b ab", "ab ab", "ba ba", "a b"]}}
            """#, dir + "/tokenizer.json")
        let tokenizer = try Tokenizer.load(directory: dir)
        let text = String(repeating: "abba", count: 5000)
        let ids = tokenizer.encode(text, addSpecialTokens: false)
        #expect(ids.allSatisfy { (0..<8).contains($0) })
        #expect(tokenizer.decode(ids) == text)
    }

    @Test func backtrackingSplitPatternsAreRefused() throws {
        let dir = Fixtures.scratch("limits")
        for pattern in [#"(a+)+$"#, #"(a|a)*b"#, #"(\s*\w){2,}x"#, #"((ab)*c)+"#] {
            let json = JSONValue.object(["model": .object(["type": .string("BPE"), "vocab": .object(["a": .number(0)]), "merges": .array([])]),
                                         "pre_tokenizer": .object(["type": .string("Split"), "pattern": .object(["Regex": .string(pattern)]),
                                                                   "behavior": .string("Isolated")])])
            try write(json.serialized(), dir + "/tokenizer.json")
            expectError([dir + "/tokenizer.json", "pre_tokenizer Split regex is refused", "exponential"]) { _ = try Tokenizer.load(directory: dir) }
        }
        // The patterns real tokenizers ship pass (o200k, Tekken, DeepSeek-style, a ?-quantified group).
        for pattern in [#"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
                        ##"[一-龥぀-ゟ゠-ヿ]+|[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|\s+(?!\S)|\s+"##, #"(ab)?c{2}(d|e)"#] {
            try RegexSafety.check(pattern)
        }
    }

    @Test func specialFilesAreNotRead() throws {
        let dir = Fixtures.scratch("limits")
        try FileManager.default.createSymbolicLink(atPath: dir + "/config.json", withDestinationPath: "/dev/zero")
        expectError([dir + "/config.json", "not a regular file"]) { _ = try ModelConfig(directory: dir) }
    }

    /// Found by fuzzing (FuzzClusterSpec): a huge workload number trapped converting to Int, and
    /// a mapping used as a key trapped inside Yams' constructor.
    @Test func clusterSpecFuzzFindings() throws {
        let dir = Fixtures.scratch("limits")
        let spec = "model: opt-66b\nworkload: {global_batch: 3666666666666666666666662, prompt_len: 512, gen_len: 100}\ndevices:\n  - {type: t4, count: 2}\n"
        try write(spec, dir + "/a.yaml")
        expectError([dir + "/a.yaml", "workload.global_batch", "whole number from 1 to"]) { _ = try ClusterSpec.load(path: dir + "/a.yaml") }
        try write("model: opt-66b\ndevices:\n  - {type: t4, count: }:\n4 - {32g, count: 2}\n", dir + "/b.yaml")
        expectError([dir + "/b.yaml", "mapping key", "plain value"]) { _ = try ClusterSpec.load(path: dir + "/b.yaml") }
        try write("model: opt-66b\nworkload: {global_batch: 8, prompt_len: 512, gen_len: 100}\ndevices:\n  - {type: t4, count: 100000000}\n", dir + "/c.yaml")
        expectError([dir + "/c.yaml", "devices[0].count"]) { _ = try ClusterSpec.load(path: dir + "/c.yaml") }
        // An alias bomb: each level doubles the last.
        var bomb = "a0: &a0 [x, x]\n"
        for i in 1..<30 { bomb += "a\(i): &a\(i) [*a\(i - 1), *a\(i - 1)]\n" }
        try write(bomb, dir + "/d.yaml")
        expectError([dir + "/d.yaml", "more than 100000 YAML nodes"]) { _ = try ClusterSpec.load(path: dir + "/d.yaml") }
    }
}

/// The inputs the fuzzers found (fuzz/regressions), through the same readers, outside libFuzzer.
@Suite struct FuzzRegressionTests {
    static let regressions = Fixtures.root + "/../fuzz/regressions"

    @Test(arguments: ["layer-past-block-count.gguf", "billion-blocks.gguf"])
    func ggufBlockCount(name: String) throws {
        let path = Self.regressions + "/FuzzGGUF/" + name
        do {
            _ = try GGUFModel(file: GGUFFile(path: path))
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains(path) && "\(error)".contains("block_count"), "\(error)")
        }
    }

    @Test func chatTemplateRenderErrorsNameTheTemplate() throws {
        let source = try String(contentsOfFile: Self.regressions + "/FuzzChatTemplate/render-error-origin.jinja", encoding: .utf8)
        let template = try ChatTemplate(source, origin: "/models/x/tokenizer_config.json")
        let messages: [JSONValue] = [.object(["role": .string("system"), "content": .string("Be brief.")]),
                                     .object(["role": .string("user"), "content": .string("Hi")])]
        #expect(throws: StrataError.invalidRequest("chat template (/models/x/tokenizer_config.json): cannot apply '+' to a string and a undefined")) {
            _ = try template.render(messages: messages, bosToken: "<s>", eosToken: "</s>")
        }
    }

    @Test func clusterSpecs() throws {
        for (name, fragment) in [("huge-global-batch.yaml", "whole number"), ("mapping-as-key.yaml", "a mapping key must be a plain value"),
                                 ("deep-flow-nesting.yaml", "nested deeper than 64 levels")] {
            let path = Self.regressions + "/FuzzClusterSpec/" + name
            do {
                _ = try ClusterSpec.load(path: path)
                Issue.record("expected an error for \(name)")
            } catch {
                #expect("\(error)".contains(path) && "\(error)".contains(fragment), "\(error)")
            }
        }
    }
}

extension FuzzRegressionTests {
    /// Found by FuzzChatTemplate and FuzzConfigs: `break`/`continue` outside a loop escaped as
    /// an internal control-flow error instead of a StrataError.
    @Test func breakOutsideALoopIsAnError() throws {
        let messages: [JSONValue] = [.object(["role": .string("user"), "content": .string("Hi")])]
        let file = String(decoding: try #require(FileManager.default.contents(atPath: Self.regressions + "/FuzzChatTemplate/break-outside-loop.jinja")),
                          as: UTF8.self)
        for source in [file, "a{% continue %}b", "{% macro m() %}{% break %}{% endmacro %}{% for x in [1] %}{{ m() }}{% endfor %}"] {
            let template = try ChatTemplate(source, origin: "t.json")
            #expect(throws: StrataError.invalidRequest("chat template (t.json): 'break' or 'continue' outside a loop")) {
                _ = try template.render(messages: messages)
            }
        }
    }

    /// Found by FuzzConfigs: 3,000 nested parentheses overflowed the stack of the recursive
    /// expression parser. Expressions, blocks and unary chains are now bounded as they parse.
    @Test func deeplyNestedTemplatesAreRefusedAsTheyParse() throws {
        let config = try JSONValue.load(path: Self.regressions + "/FuzzConfigs/deep-parentheses.json")
        let sources = [try #require(config["chat_template"]?.string),
                       "{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}",
                       String(repeating: "{% if true %}", count: 5000) + "x" + String(repeating: "{% endif %}", count: 5000),
                       "{{ " + String(repeating: "not ", count: 5000) + "true }}",
                       "{{ " + Array(repeating: "1", count: 5000).joined(separator: " + ") + " }}"]
        for source in sources {
            #expect(throws: StrataError.self) { _ = try ChatTemplate(source, origin: "t.json") }
        }
    }

    /// Found by FuzzChatTemplate: `range()` with no argument indexed past its list; reading
    /// the renderer for the same kind of trap found integer overflow in + - * // % and unary
    /// minus, `int()` of a huge float, negative `indent` widths and huge string repeats.
    @Test func builtinsAndArithmeticDoNotTrap() throws {
        let messages: [JSONValue] = [.object(["role": .string("user"), "content": .string("Hi")])]
        let file = String(decoding: try #require(FileManager.default.contents(atPath: Self.regressions + "/FuzzChatTemplate/range-without-arguments.jinja")),
                          as: UTF8.self)
        for source in [file, "{{ range() }}", "{{ range(-9223372036854775807, 9223372036854775807) }}",
                       "{{ 9223372036854775807 + 1 }}", "{{ -9223372036854775807 - 2 }}", "{{ 4611686018427387904 * 4 }}",
                       "{{ (-9223372036854775807 - 1) // -1 }}", "{{ -(-9223372036854775807 - 1) }}", "{{ (9999999999.0 * 9999999999.0 * 9999999999.0 * 9999999999.0)|int }}",
                       "{{ 'x'|indent(-5) }}", "{{ ('x' * 1048576) * 1048576 }}", "{{ messages|tojson(indent=-1) }}"] {
            let template = try ChatTemplate(source, origin: "t.json")
            #expect(throws: StrataError.self, "\(source)") { _ = try template.render(messages: messages) }
        }
        // Python's floor semantics are kept.
        #expect(try ChatTemplate("{{ -7 // 2 }} {{ -7 % 2 }} {{ 7 // -2 }} {{ 7 % -2 }}").render(messages: messages) == "-4 1 -4 -1")
    }

    /// Found by FuzzChatTemplate: a macro that calls itself from a loop ran for seconds under
    /// the old budget (steps counted nodes, not expressions; no call-depth limit).
    @Test func chatTemplatesThatNeverFinishStopQuickly() throws {
        let messages: [JSONValue] = [.object(["role": .string("user"), "content": .string("Hi")])]
        let sources = [
            String(decoding: try #require(FileManager.default.contents(atPath: Self.regressions + "/FuzzChatTemplate/recursive-macro.jinja")),
                   as: UTF8.self),
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
            "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}",
        ]
        for source in sources {
            let template = try ChatTemplate(source)
            let started = Date()
            #expect(throws: StrataError.self) { _ = try template.render(messages: messages) }
            #expect(Date().timeIntervalSince(started) < 5, "took \(Date().timeIntervalSince(started)) s")
        }
    }
}
