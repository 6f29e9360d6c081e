import StrataBackend
import StrataCore
@testable import StrataFormats
import StrataModels
import StrataRuntime
import Synchronization
import Testing
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Writes GGUF bytes field by field, so tests can build valid files and break them on purpose.
struct GGUFBytes {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
    mutating func kvString(_ key: String, _ value: String) { string(key); u32(8); string(value) }
    mutating func kvU32(_ key: String, _ value: UInt32) { string(key); u32(4); u32(value) }

    /// A one-tensor file: header, `kv` extra metadata, an F32 tensor `t` of `dims` at `offset`.
    static func file(magic: UInt32 = GGUFFile.magic, version: UInt32 = 3, tensorCount: UInt64 = 1, dims: [UInt64] = [4, 2],
                     type: UInt32 = 0, offset: UInt64 = 0, dataBytes: Int = 32, extraKVs: UInt64 = 0,
                     extra: (inout GGUFBytes) -> Void = { _ in }) -> [UInt8] {
        var b = GGUFBytes()
        b.u32(magic); b.u32(version); b.u64(tensorCount); b.u64(1 + extraKVs)
        b.kvString("general.architecture", "llama")
        extra(&b)
        for i in 0..<Int(min(tensorCount, 2)) {
            b.string("t\(i)"); b.u32(UInt32(dims.count)); for d in dims { b.u64(d) }
            b.u32(type); b.u64(offset + UInt64(i) * 32)
        }
        while b.bytes.count % 32 != 0 { b.bytes.append(0) }
        b.bytes += [UInt8](repeating: 0, count: dataBytes)
        return b.bytes
    }
}

@Suite struct GGUFTests {
    static let tiny = Fixtures.model("gguf-tiny/model.gguf")

    func write(_ bytes: [UInt8]) -> String {
        let path = Fixtures.scratch("gguf") + "/m.gguf"
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func error(_ bytes: [UInt8]) -> String {
        do { _ = try GGUFFile(path: write(bytes)); return "no error" } catch { return "\(error)" }
    }

    @Test func wellFormedFileParses() throws {
        let f = try GGUFFile(path: write(GGUFBytes.file()))
        #expect(f.version == 3)
        #expect(f.tensors.count == 1)
        #expect(f.tensors[0].shape == [2, 4])  // GGUF dims are innermost first
        #expect(f.tensors[0].range.count == 32)
        #expect(try f.string("general.architecture") == "llama")
    }

    /// Each malformed header is refused with an error naming the file and what is wrong,
    /// before anything the header claims is allocated.
    @Test func malformedHeadersAreRefusedByName() throws {
        #expect(error(GGUFBytes.file(magic: 0x1234)).contains("not a GGUF file"))
        #expect(error(GGUFBytes.file(version: 1)).contains("GGUF version 1 is not supported"))
        #expect(error(Array(GGUFBytes.file().prefix(12))).contains("truncated"))
        #expect(error(GGUFBytes.file(tensorCount: 1 << 40)).contains("tensor_count"))
        #expect(error(GGUFBytes.file(dims: [4, 0])).contains("tensor 't0': dimension 0"))
        #expect(error(GGUFBytes.file(dims: [1 << 39, 1 << 39])).contains("too many elements"))
        #expect(error(GGUFBytes.file(dims: [1, 2, 3, 4, 5])).contains("5 dimensions"))
        #expect(error(GGUFBytes.file(type: 99)).contains("ggml type 99 is unknown"))
        #expect(error(GGUFBytes.file(dims: [16, 2], type: 2)).contains("not whole Q4_0 blocks"))
        #expect(error(GGUFBytes.file(offset: 4)).contains("not a multiple of the alignment"))
        #expect(error(GGUFBytes.file(dataBytes: 16)).contains("run past the end"))
        #expect(error(GGUFBytes.file(tensorCount: 2, dims: [16, 1])).contains("overlaps") == false)
        #expect(error(GGUFBytes.file(tensorCount: 2, dims: [16, 2], dataBytes: 200)).contains("overlaps"))
        var huge = GGUFBytes.file(extraKVs: 1) { b in b.string("general.name"); b.u32(8); b.u64(1 << 62) }
        #expect(error(huge).contains("claims"))
        huge = GGUFBytes.file(extraKVs: 1) { b in b.string("tokenizer.ggml.tokens"); b.u32(9); b.u32(8); b.u64(1 << 30) }
        #expect(error(huge).contains("tokenizer.ggml.tokens"))
        let unknownValue = GGUFBytes.file(extraKVs: 1) { b in b.string("x"); b.u32(77) }
        #expect(error(unknownValue).contains("metadata 'x' has unknown value type 77"))
    }

    @Test func modelLevelErrorsNameTheKey() throws {
        // A valid file whose metadata lacks what a Llama needs.
        let path = write(GGUFBytes.file())
        #expect(throws: StrataError.invalidFile(path: path, detail: "metadata key 'llama.embedding_length' is missing")) {
            _ = try ModelConfig(directory: path)
        }
        let other = write(GGUFBytes.file(extraKVs: 1) { b in b.kvString("general.architecture", "mamba") })
        do { _ = try GGUFFile(path: other); Issue.record("duplicate key accepted") } catch {
            #expect("\(error)".contains("metadata key 'general.architecture' appears twice"))
        }
    }

    /// Q4_0, Q4_1 and Q8_0 layers stay quantized (groups of 32, exactly the file's codes); the
    /// mixed layer of K-quants, Q5 and BF16 is decoded.
    @Test func exactTypesStayQuantized() throws {
        let model = try GGUFModel.open(Self.tiny)
        #expect(model.layerBits == [4, 4, 8, 16])
        let config = try ModelConfig(directory: Self.tiny)
        #expect(config.storedPrecision?.groupSize == 32)
        #expect(config.storedPrecision?.bits(forLayer: 2) == 8)
        #expect(config.tieWordEmbeddings == false)
        #expect(config.numKVHeads == 2 && config.headDim == 64)
        let source = try TensorSources.open(directory: Self.tiny)
        #expect(source.contains("model.layers.0.self_attn.q_proj.weight.qdata"))
        #expect(!source.contains("model.layers.0.self_attn.q_proj.weight"))
        #expect(source.tensor("model.layers.3.mlp.down_proj.weight")?.dtype == .bf16)
        #expect(source.tensor("model.layers.3.mlp.up_proj.weight")?.dtype == .f32)
        #expect(source.tensor("model.embed_tokens.weight")?.dtype == .f16)
    }

    /// The exact form decodes to the same values as ggml's block decoding, for every block.
    @Test func exactGroupsDecodeLikeGGML() throws {
        let model = try GGUFModel.open(Self.tiny)
        for (name, type) in [("blk.0.ffn_up.weight", GGMLType.q4_0), ("blk.1.ffn_up.weight", .q4_1), ("blk.2.ffn_up.weight", .q8_0)] {
            let t = try #require(model.file.tensorsByName[name])
            #expect(t.type == type)
            let bytes = model.file.bytes(of: t)
            var ggml = [Float](repeating: 0, count: t.elementCount)
            GGMLDequantize.toFloat(bytes.baseAddress!, type: t.type, count: t.elementCount, into: &ggml)
            let strata = GroupQuantizer.dequantize(GGUFExact.quantized(bytes, type: t.type, shape: t.shape))
            #expect(strata == ggml, "\(name)")
            // Q4_0 reference form: d * (q - 8).
            if type == .q4_0 {
                let d = Float(Float16(bitPattern: bytes.loadUnaligned(as: UInt16.self)))
                let q = bytes[2] & 0xF
                #expect(ggml[0] == d * Float(Int(q) - 8))
            }
        }
    }

    /// Every block decoder against gguf-py's decoding of the same random blocks (negative
    /// scales included): equal up to float rounding order (1e-6 relative).
    @Test(arguments: ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
    func blocksDecodeLikeGGUFPy(type: String) throws {
        let file = try GGUFFile(path: Fixtures.root + "/gguf/blocks.gguf")
        let t = try #require(file.tensorsByName[type])
        #expect(t.type.description == type && t.type.isSupported)
        let expected = try SafeTensorsFile(path: Fixtures.root + "/gguf/blocks_reference.safetensors").tensor(type)!.floats()
        #expect(expected.count == t.elementCount)
        var decoded = [Float](repeating: .nan, count: t.elementCount)
        GGMLDequantize.toFloat(file.bytes(of: t).baseAddress!, type: t.type, count: t.elementCount, into: &decoded)
        let worst = zip(decoded, expected).map { abs($0 - $1) / max(abs($1), 1e-3) }.max() ?? .infinity
        #expect(worst <= 1e-6, "\(type): worst relative difference \(worst)")
        if t.type.exactBits != nil {
            // The kept form decodes bit for bit like ggml.
            let q = GroupQuantizer.dequantize(GGUFExact.quantized(file.bytes(of: t), type: t.type, shape: t.shape))
            #expect(q == decoded)
        }
    }

    /// Q6_K blocks as 8-bit groups of 16 (the form a Q4_0 file's head is kept in): the codes are
    /// the file's, minimums -32 steps (so the dot kernel skips them), and each value is the
    /// file's within the rounding of its step to f16: 2^-11 relative, plus 2^-20 absolute for
    /// steps f16 holds as subnormals. gguf-py's random blocks include negative scales.
    @Test func q6KBlocksBecomeGroupsOfSixteen() throws {
        let file = try GGUFFile(path: Fixtures.root + "/gguf/blocks.gguf")
        let t = try #require(file.tensorsByName["Q6_K"])
        let bytes = file.bytes(of: t)
        #expect(GGUFHead.isRepresentable(bytes, type: .q6_K))
        let q = GGUFHead.quantized(bytes, type: .q6_K, shape: [t.elementCount / 256, 256])
        #expect(q.scheme == (try QuantizationScheme(bits: 8, groupSize: 16)))
        #expect(q.zeroCode == 32)
        #expect(q.data.allSatisfy { $0 < 64 })
        var ggml = [Float](repeating: .nan, count: t.elementCount)
        GGMLDequantize.toFloat(bytes.baseAddress!, type: .q6_K, count: t.elementCount, into: &ggml)
        let strata = GroupQuantizer.dequantize(q)
        let worst = zip(strata, ggml).map { abs($0 - $1) - abs($1) * 0x1p-11 }.max() ?? .infinity
        #expect(worst <= 0x1p-20, "largest excess over 2^-11 relative: \(worst)")
        #expect(zip(strata, ggml).contains { $0 != $1 }, "steps are rounded, so some values differ")
        // A scale whose minimum f16 cannot hold: the head is then decoded like any tensor.
        var huge = Array(UnsafeRawBufferPointer(rebasing: bytes[0..<GGMLType.q6_K.blockBytes]))
        huge.withUnsafeMutableBytes { $0.storeBytes(of: Float16(60000).bitPattern, toByteOffset: 208, as: UInt16.self) }
        #expect(huge.withUnsafeBytes { !GGUFHead.isRepresentable($0, type: .q6_K) })
    }

    /// gguf-tiny's Q6_K head is offered both ways; a backend holding weights in bf16 loads the
    /// quantized copy (its values the plain copy's within f16 step rounding), one computing in
    /// f32 the plain one; the stored map's `head` survives JSON and a bad one is refused by name.
    @Test func quantizedHeadIsTakenOnlyWhereWeightsAreRounded() throws {
        let config = try ModelConfig(directory: Self.tiny)
        let scheme = try #require(config.storedPrecision?.head)
        #expect(scheme == (try QuantizationScheme(bits: 8, groupSize: 16)))
        let source = try TensorSources.open(directory: Self.tiny)
        let shape = [config.vocabSize, config.hiddenSize]
        let plain = try #require(source.tensor("lm_head.weight")?.floats())
        let q = try QuantizedCheckpoint.read(source, name: "lm_head.weight", shape: shape, scheme: scheme)
        let values = GroupQuantizer.dequantize(q)
        #expect(zip(values, plain).allSatisfy { abs($0 - $1) <= abs($1) * 0x1p-11 + 0x1p-20 })

        final class Recorder: DelegatingBackend, @unchecked Sendable {
            let quantizedShapes = Mutex<[[Int]]>([])
            override func upload(quantized: QuantizedTensor) -> Tensor {
                quantizedShapes.withLock { $0.append(quantized.shape) }
                return super.upload(quantized: quantized)
            }
        }
        for format in [CPUBackend.WeightFormat.bf16, .asStored, .f32] {
            let recorder = Recorder(inner: CPUBackend(threads: 1, weightFormat: format))
            _ = try ModelLoader.load(directory: Self.tiny, backend: recorder)
            let heads = recorder.quantizedShapes.withLock { $0.filter { $0 == shape } }
            #expect(heads.count == (format == .bf16 ? 1 : 0), "\(format)")
        }

        let map = try #require(config.storedPrecision)
        #expect(try PrecisionMap(json: map.json, path: "m.json") == map)
        guard case .object(var fields) = map.json else { Issue.record("map JSON is not an object"); return }
        fields["head"] = .object(["bits": .number(6), "group_size": .number(16)])
        #expect(throws: StrataError.self) { _ = try PrecisionMap(json: .object(fields), path: "m.json") }
        do { _ = try PrecisionMap(json: .object(fields), path: "m.json") } catch { #expect("\(error)".contains("bits") && "\(error)".contains("head")) }
    }

    /// Llama 3.1/3.2-shaped rope_freqs (computed by llama.cpp's formula in Python) give back the
    /// rope_scaling they came from; factors no llama3 parameters produce are refused by name.
    @Test func ropeScalingIsRecoveredFromRopeFreqs() throws {
        let cases = try JSONValue.load(path: Fixtures.root + "/gguf/rope_factors.json").array ?? []
        #expect(cases.count == 4)
        for c in cases {
            let factors = c["factors"]!.array!.compactMap(\.double)
            let scaling = try #require(try RopeFactors.llama3Scaling(factors, theta: c["theta"]!.double!, headDim: c["head_dim"]!.int!,
                                                                     path: "f.gguf"))
            #expect(scaling["factor"] == c["factor"])
            #expect(scaling["original_max_position_embeddings"] == c["original_max_position_embeddings"], "\(c["head_dim"]!)")
            if let high = scaling["high_freq_factor"]?.double { #expect(abs(high - c["high_freq_factor"]!.double!) < 1e-3) }
        }
        #expect(try RopeFactors.llama3Scaling([1, 1, 1, 1], theta: 10000, headDim: 8, path: "f.gguf") == nil)
        #expect(throws: StrataError.self) { _ = try RopeFactors.llama3Scaling([1, 3, 1, 8], theta: 10000, headDim: 8, path: "f.gguf") }
        // The GGUF written as llama.cpp writes Llama 3.1 derives the original checkpoint's rope_scaling.
        let config = try ModelConfig(directory: Fixtures.model("gguf-llama3/model.gguf"))
        let original = try ModelConfig(directory: Fixtures.model("llama3-tied"))
        #expect(config.ropeScaling == original.ropeScaling)
        #expect(config.tieWordEmbeddings)
    }

    /// Tokenizer ids from the GGUF's `tokenizer.ggml.*` equal the source tokenizer.json's (Hugging
    /// Face tokenizers) on the tricky-string set, BOS included as `add_bos_token` says.
    @Test func tokenizerFromMetadataMatchesSource() throws {
        let tokenizer = try Tokenizer.load(directory: Self.tiny)
        let cases = try JSONValue.load(path: Fixtures.tokenizer("llama3-bpe") + "/reference_ids.json").array ?? []
        #expect(cases.count > 30)
        for c in cases {
            let text = c["text"]!.string!
            #expect(tokenizer.encode(text) == c["ids"]!.array!.compactMap(\.int), "\(text.debugDescription)")
        }
        let template = try TokenizerConfig(directory: Self.tiny).chatTemplate
        #expect(template?.contains("<|im_start|>") == true)
    }

    /// A SentencePiece-style GGUF vocabulary (tokens and scores, no merge list, byte tokens):
    /// ids equal transformers' tokenizer for the same file on the tricky-string set.
    @Test func sentencePieceVocabularyMatchesTransformers() throws {
        let path = Fixtures.model("gguf-spm/model.gguf")
        let tokenizer = try Tokenizer.load(directory: path)
        let cases = try JSONValue.load(path: Fixtures.model("gguf-spm") + "/reference_ids.json").array ?? []
        #expect(cases.count > 30)
        for c in cases {
            let text = c["text"]!.string!
            #expect(tokenizer.encode(text) == c["ids"]!.array!.compactMap(\.int), "\(text.debugDescription)")
        }
        #expect(tokenizer.bosTokenId == 1 && tokenizer.eosTokenId == 2)
        #expect(tokenizer.decode(tokenizer.encode("Hello wörld 😀")) == "Hello wörld 😀")
    }

    /// `strata convert` of a GGUF: a directory with layers kept quantized, a decoded f32 one
    /// (which transformers loads to bit-identical logits, checked when the fixture was made) and an
    /// offload store all give transformers' logits and greedy tokens.
    @Test func convertedCopiesMatchTransformers() throws {
        let reference = try Fixtures.reference("gguf-tiny/model.gguf")
        let quantized = Fixtures.scratch("gguf-q"), decoded = Fixtures.scratch("gguf-f32"), store = Fixtures.scratch("gguf-store")
        _ = try ModelConverter.convert(gguf: Self.tiny, output: quantized, dequantize: false)
        _ = try ModelConverter.convert(gguf: Self.tiny, output: decoded, dequantize: true)
        _ = try StoreConverter.convert(model: Self.tiny, out: store)
        #expect(try ModelConfig(directory: quantized).storedPrecision?.bits(forLayer: 1) == 4)
        #expect(try ModelConfig(directory: decoded).storedPrecision == nil)
        #expect(try TokenizerConfig(directory: quantized).chatTemplate == TokenizerConfig(directory: Self.tiny).chatTemplate)
        for directory in [quantized, decoded, store] {
            let bundle = try ModelBundle(directory: directory, backend: CPUBackend(threads: 2))
            let model = bundle.model
            let width = reference.promptIds.map(\.count).max()!
            let padding = reference.promptIds.map { width - $0.count }
            let tokens = reference.promptIds.enumerated().flatMap { b, ids in
                Array(repeating: Int32(reference.padTokenId), count: padding[b]) + ids.map(Int32.init)
            }
            let step = ForwardStep(tokens: tokens, batch: padding.count, length: width, pastLength: 0, padding: padding)
            let logits = model.backend.download(model.forward(step, cache: model.makeCache(batch: padding.count, capacity: width)))
            let maxError = zip(logits, reference.lastLogits).map { abs($0 - $1) }.max() ?? .infinity
            #expect(maxError <= 1e-4, "\(directory): max |strata - transformers| = \(maxError)")
            var timing = GenerationTiming()
            let requests = reference.promptIds.map { GenerationRequest(promptIds: $0, maxNewTokens: reference.maxNewTokens) }
            let results = try Generator(bundle: bundle).generate(requests, sampling: SamplingParameters(), timing: &timing)
            #expect(results.map(\.tokenIds) == reference.batchedGreedy, "\(directory)")
            #expect(reference.prompts.map { bundle.tokenizer.encode($0) } == reference.promptIds)
        }
    }
}
