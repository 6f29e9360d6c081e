import StrataBackend
import StrataCore
import StrataFormats
import StrataRuntime
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Every bad input gives a StrataError naming the file, field or request, never a crash.
@Suite struct BadInputTests {
    func write(_ bytes: [UInt8], to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    /// A copy of a fixture model directory, so a test can break one file of it.
    func copyModel(_ name: String) throws -> String {
        let dir = Fixtures.scratch(name)
        for file in try FileManager.default.contentsOfDirectory(atPath: Fixtures.model(name)) {
            try FileManager.default.copyItem(atPath: Fixtures.model(name) + "/" + file, toPath: dir + "/" + file)
        }
        return dir
    }

    func header(_ json: String) -> [UInt8] {
        let h = Array(json.utf8)
        return (0..<8).map { UInt8(truncatingIfNeeded: UInt64(h.count) >> (8 * UInt64($0))) } + h
    }

    @Test func missingModelDirectory() {
        expectError(["/nonexistent/model"]) { _ = try ModelBundle(directory: "/nonexistent/model", backend: CPUBackend()) }
    }

    @Test func missingWeightsFile() throws {
        let dir = try copyModel("opt-tiny")
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors")
        expectError(["model.safetensors"]) { _ = try ModelBundle(directory: dir, backend: CPUBackend()) }
    }

    @Test func truncatedSafetensors() throws {
        let dir = try copyModel("opt-tiny")
        let path = dir + "/model.safetensors"
        let data = try #require(FileManager.default.contents(atPath: path))
        write(Array(data.prefix(data.count / 2)), to: path)
        expectError([path, "run past the end"]) { _ = try SafeTensorsFile(path: path) }
        write(Array(data.prefix(5)), to: path)
        expectError([path, "truncated"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func corruptHeader() {
        let path = Fixtures.scratch("corrupt") + "/x.safetensors"
        write(header("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]") + [0, 0, 0, 0], to: path)
        expectError([path, "JSON"]) { _ = try SafeTensorsFile(path: path) }
        write([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 1, 2], to: path)
        expectError([path, "header length"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func unknownDtypeShapeMismatchAndOverlap() {
        let path = Fixtures.scratch("dtype") + "/x.safetensors"
        write(header(#"{"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#) + Array(repeating: 0, count: 8), to: path)
        expectError(["'w'", "unsupported dtype 'I64'"]) { _ = try SafeTensorsFile(path: path) }
        write(header(#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#) + Array(repeating: 0, count: 8), to: path)
        expectError(["'w'", "needs 12 bytes"]) { _ = try SafeTensorsFile(path: path) }
        write(header(#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#)
              + Array(repeating: 0, count: 12), to: path)
        expectError(["overlaps"]) { _ = try SafeTensorsFile(path: path) }
    }

    @Test func tensorWithWrongShapeForConfig() throws {
        let dir = try copyModel("opt-tiny")
        let path = dir + "/config.json"
        var text = String(decoding: try #require(FileManager.default.contents(atPath: path)), as: UTF8.self)
        text = text.replacing("\"ffn_dim\": 128", with: "\"ffn_dim\": 96")
        write(Array(text.utf8), to: path)
        expectError(["fc1.weight", "expected [96, 64]"]) { _ = try ModelBundle(directory: dir, backend: CPUBackend()) }
    }

    @Test func missingTensorIsNamed() throws {
        let dir = Fixtures.scratch("missing-tensor")
        try FileManager.default.copyItem(atPath: Fixtures.model("opt-tiny") + "/config.json", toPath: dir + "/config.json")
        try SafeTensorsWriter.write([.init(name: "model.decoder.embed_tokens.weight", shape: [1000, 64], floats: Array(repeating: 0, count: 64_000))],
                                    to: dir + "/model.safetensors")
        expectError(["embed_positions.weight"]) { _ = try ModelBundle(directory: dir, backend: CPUBackend()) }
    }

    @Test func unknownArchitectureListsSupported() throws {
        let dir = try copyModel("opt-tiny")
        write(Array(#"{"model_type": "bert", "vocab_size": 10}"#.utf8), to: dir + "/config.json")
        expectError(["bert", "opt", "llama"]) { _ = try ModelBundle(directory: dir, backend: CPUBackend()) }
    }

    @Test func promptLongerThanPositionsAndEmptyPrompt() throws {
        let bundle = try ModelBundle(directory: Fixtures.model("opt-tiny"), backend: CPUBackend())
        let long = String(repeating: "license ", count: 400)
        expectError(["max_position_embeddings", "128"]) { _ = try bundle.encodePrompt(long) }
        expectError(["prompt is empty"]) { _ = try bundle.encodePrompt("") }
    }

    @Test func invalidJSONLLinesAreSkippedWithLineNumbers() throws {
        let dir = Fixtures.scratch("jsonl")
        let input = dir + "/in.jsonl", output = dir + "/out.jsonl"
        write(Array("{\"prompt\": \"You may\", \"id\": 7}\n{oops\n{\"text\": \"no prompt\"}\n\n{\"prompt\": \"Copyright\"}\n".utf8), to: input)
        let generator = Generator(bundle: try ModelBundle(directory: Fixtures.model("opt-tiny"), backend: CPUBackend()))
        let job = BatchJob(inputPath: input, outputPath: output, batchSize: 4, maxNewTokens: 3)
        let summary = try job.run(generator: generator, output: try job.prepareOutput())
        #expect(summary.completed == 2)
        #expect(summary.skipped.count == 2)
        #expect(summary.skipped[0].hasPrefix(input + ":2:"))
        #expect(summary.skipped[1].hasPrefix(input + ":3:") && summary.skipped[1].contains("prompt"))
        let lines = String(decoding: try #require(FileManager.default.contents(atPath: output)), as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 2)
        let first = try JSONValue.parse(Data(lines[0].utf8), path: output)
        #expect(first["id"]?.int == 7)
        #expect(first["token_ids"]?.array?.count == 3)
        #expect(first["finish_reason"]?.string == "length")
        // A rerun resumes: nothing is generated twice.
        let again = try job.run(generator: generator, output: try job.prepareOutput())
        #expect(again.completed == 0 && again.alreadyDone == 2)
    }

    @Test func unwritableOutputPath() {
        let job = BatchJob(inputPath: "/dev/null", outputPath: "/nonexistent-dir/out.jsonl", batchSize: 1, maxNewTokens: 1)
        expectError(["/nonexistent-dir/out.jsonl", "cannot open"]) { _ = try job.prepareOutput() }
    }
}
