import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import StrataRuntime
import Testing
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct OffloadStoreTests {
    @Test func storeRoundTripsResumesAndDetectsCorruption() throws {
        let source = Fixtures.model("opt-postln-proj")
        let store = Fixtures.scratch("store") + "/s"
        let first = try StoreConverter.convert(model: source, out: store)
        #expect(first.tensors > 20 && first.skipped == 0)
        // A second run finds everything complete.
        let again = try StoreConverter.convert(model: source, out: store)
        #expect(again.tensors == 0 && again.skipped == first.tensors)
        // Every tensor equals the checkpoint's, and the store loads as a model directory with the same logits.
        let opened = try OffloadStore(directory: store)
        try opened.verify()
        let checkpoint = try Checkpoint(directory: source)
        for name in checkpoint.tensorNames {
            #expect(Array(try opened.require(name).bytes) == Array(try checkpoint.require(name).bytes), "\(name)")
        }
        let step = ForwardStep(tokens: [2, 7, 9, 11], batch: 1, length: 4, pastLength: 0, padding: [0])
        func logits(_ dir: String) throws -> [Float] {
            let m = try ModelLoader.load(directory: dir, backend: CPUBackend(threads: 1))
            return m.backend.download(m.forward(step, cache: m.makeCache(batch: 1, capacity: 4)))
        }
        #expect(try logits(store) == logits(source))
        // An interrupted tensor (truncated file) is rewritten by the next run, and only it.
        let victim = opened.entries.values.max { $0.bytes < $1.bytes }!
        #expect(truncate(opened.path(of: victim), 4096) == 0)
        let resumed = try StoreConverter.convert(model: source, out: store)
        #expect(resumed.tensors == 1)
        try OffloadStore(directory: store).verify()
        // Flipped bytes are caught by the checksum.
        let file = try DiskFile(path: opened.path(of: victim), create: false)
        let page = DeviceBuffer.host(byteCount: 4096, backendName: "cpu", alignment: 4096)
        try file.read(into: page.pointer, count: 4096, at: 0)
        page.pointer.storeBytes(of: page.pointer.load(as: UInt8.self) ^ 0xFF, as: UInt8.self)
        try file.write(from: page.pointer, count: 4096, at: 0)
        #expect(throws: StrataError.self) { try OffloadStore(directory: store).verify() }
    }

    @Test func knownArchitecturesHaveTheirPublishedSizes() throws {
        for (name, billions) in [("opt-125m", 0.125), ("opt-1.3b", 1.3), ("opt-13b", 13.0), ("opt-175b", 175.0),
                                 ("llama-2-7b", 6.7), ("llama-2-70b", 69.0), ("llama-3-8b", 8.0)] {
            let config = try ModelConfig(json: KnownArchitectures.config(name), path: name)
            let parameters = KnownArchitectures.tensorSpecs(config).reduce(0) { $0 + $1.shape.reduce(1, *) }
            #expect(abs(Double(parameters) / 1e9 - billions) / billions < 0.06, "\(name): \(parameters)")
        }
        #expect(throws: StrataError.self) { try KnownArchitectures.config("gpt-5") }
    }

    @Test func randomStoreForATinyArchitectureRuns() throws {
        // The byte-level tokenizer random stores carry must load and round-trip text.
        let dir = Fixtures.scratch("bytetok")
        try Data(KnownArchitectures.byteLevelTokenizerJSON().serialized().utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
        let tokenizer = try Tokenizer.load(directory: dir)
        let ids = tokenizer.encode("héllo wörld", addSpecialTokens: false)
        #expect(tokenizer.decode(ids) == "héllo wörld")
    }
}
