import StrataCore
import StrataFormats

/// Published shapes of the models Strata's benchmarks and planners name (OPT 125m to 175b,
/// Llama 2 7b/13b/70b, Llama 3 8b/70b), as Hugging Face config.json contents, and the full
/// tensor list of an architecture (what `strata convert --random` writes).
public enum KnownArchitectures {
    struct Shape { var family: String; var hidden, layers, heads, kvHeads, ffn, vocab, positions: Int; var embedProj: Int? = nil }

    static let table: [String: Shape] = [
        "opt-125m": Shape(family: "opt", hidden: 768, layers: 12, heads: 12, kvHeads: 12, ffn: 3072, vocab: 50272, positions: 2048),
        "opt-350m": Shape(family: "opt", hidden: 1024, layers: 24, heads: 16, kvHeads: 16, ffn: 4096, vocab: 50272, positions: 2048, embedProj: 512),
        "opt-1.3b": Shape(family: "opt", hidden: 2048, layers: 24, heads: 32, kvHeads: 32, ffn: 8192, vocab: 50272, positions: 2048),
        "opt-2.7b": Shape(family: "opt", hidden: 2560, layers: 32, heads: 32, kvHeads: 32, ffn: 10240, vocab: 50272, positions: 2048),
        "opt-6.7b": Shape(family: "opt", hidden: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 16384, vocab: 50272, positions: 2048),
        "opt-13b": Shape(family: "opt", hidden: 5120, layers: 40, heads: 40, kvHeads: 40, ffn: 20480, vocab: 50272, positions: 2048),
        "opt-30b": Shape(family: "opt", hidden: 7168, layers: 48, heads: 56, kvHeads: 56, ffn: 28672, vocab: 50272, positions: 2048),
        "opt-66b": Shape(family: "opt", hidden: 9216, layers: 64, heads: 72, kvHeads: 72, ffn: 36864, vocab: 50272, positions: 2048),
        "opt-175b": Shape(family: "opt", hidden: 12288, layers: 96, heads: 96, kvHeads: 96, ffn: 49152, vocab: 50272, positions: 2048),
        "llama-2-7b": Shape(family: "llama", hidden: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008, vocab: 32000, positions: 4096),
        "llama-2-13b": Shape(family: "llama", hidden: 5120, layers: 40, heads: 40, kvHeads: 40, ffn: 13824, vocab: 32000, positions: 4096),
        "llama-2-70b": Shape(family: "llama", hidden: 8192, layers: 80, heads: 64, kvHeads: 8, ffn: 28672, vocab: 32000, positions: 4096),
        "llama-3-8b": Shape(family: "llama", hidden: 4096, layers: 32, heads: 32, kvHeads: 8, ffn: 14336, vocab: 128256, positions: 8192),
        "llama-3-70b": Shape(family: "llama", hidden: 8192, layers: 80, heads: 64, kvHeads: 8, ffn: 28672, vocab: 128256, positions: 8192),
    ]

    public static var names: [String] { table.keys.sorted() }

    /// config.json for a known name, or an error listing the known names.
    public static func config(_ name: String) throws -> JSONValue {
        guard let s = table[name.lowercased()] else {
            throw StrataError.invalidRequest("unknown architecture '\(name)'; known: \(names.joined(separator: ", "))")
        }
        func n(_ v: Int) -> JSONValue { .number(Double(v)) }
        if s.family == "opt" {
            return .object([
                "model_type": .string("opt"), "architectures": .array([.string("OPTForCausalLM")]), "hidden_size": n(s.hidden),
                "num_hidden_layers": n(s.layers), "num_attention_heads": n(s.heads), "ffn_dim": n(s.ffn), "vocab_size": n(s.vocab),
                "max_position_embeddings": n(s.positions), "word_embed_proj_dim": n(s.embedProj ?? s.hidden),
                "do_layer_norm_before": .bool(s.embedProj == nil), "activation_function": .string("relu"), "enable_bias": .bool(true),
                "layer_norm_elementwise_affine": .bool(true), "pad_token_id": n(1), "bos_token_id": n(2), "eos_token_id": n(2),
                "torch_dtype": .string("float16"), "tie_word_embeddings": .bool(true),
            ])
        }
        let llama3 = s.vocab > 100_000
        return .object([
            "model_type": .string("llama"), "architectures": .array([.string("LlamaForCausalLM")]), "hidden_size": n(s.hidden),
            "num_hidden_layers": n(s.layers), "num_attention_heads": n(s.heads), "num_key_value_heads": n(s.kvHeads),
            "intermediate_size": n(s.ffn), "vocab_size": n(s.vocab), "max_position_embeddings": n(s.positions),
            "rms_norm_eps": .number(1e-5), "rope_theta": .number(llama3 ? 500_000 : 10_000), "hidden_act": .string("silu"),
            "tie_word_embeddings": .bool(false), "bos_token_id": n(1), "eos_token_id": n(2), "torch_dtype": .string("float16"),
        ])
    }

    /// Every tensor the architecture's checkpoint holds, in Hugging Face naming.
    public static func tensorSpecs(_ c: ModelConfig) -> [(name: String, shape: [Int])] {
        var specs: [(String, [Int])] = []
        let h = c.hiddenSize
        switch c.family {
        case .opt:
            let p = c.wordEmbedProjDim, prefix = "model.decoder."
            specs.append((prefix + "embed_tokens.weight", [c.vocabSize, p]))
            specs.append((prefix + "embed_positions.weight", [c.maxPositions + OPTModel.positionOffset, h]))
            if p != h { specs += [(prefix + "project_in.weight", [h, p]), (prefix + "project_out.weight", [p, h])] }
            if c.doLayerNormBefore { specs += [(prefix + "final_layer_norm.weight", [h]), (prefix + "final_layer_norm.bias", [h])] }
            for i in 0..<c.numLayers { specs += OPTModel.layerSpecs(c, prefix: prefix, layer: i).map { ($0.name, $0.shape) } }
        case .llama:
            specs.append(("model.embed_tokens.weight", [c.vocabSize, h]))
            specs.append(("model.norm.weight", [h]))
            if !c.tieWordEmbeddings { specs.append(("lm_head.weight", [c.vocabSize, h])) }
            for i in 0..<c.numLayers { specs += LlamaModel.layerSpecs(c, prefix: "model.", layer: i).map { ($0.name, $0.shape) } }
        }
        return specs
    }

    /// A byte-level tokenizer with no merges (256 byte tokens and OPT-style specials): enough
    /// to run a random-weight benchmark model anywhere, with no files beyond the binary.
    public static func byteLevelTokenizerJSON() -> JSONValue {
        var vocab: [String: JSONValue] = ["<s>": .number(0), "<pad>": .number(1), "</s>": .number(2), "<unk>": .number(3)]
        for (i, s) in ByteLevel.byteToString.enumerated() { vocab[s] = .number(Double(4 + i)) }
        let special = { (id: Int, content: String) -> JSONValue in
            .object(["id": .number(Double(id)), "content": .string(content), "special": .bool(true), "single_word": .bool(false),
                     "lstrip": .bool(false), "rstrip": .bool(false), "normalized": .bool(false)])
        }
        return .object([
            "version": .string("1.0"),
            "added_tokens": .array([special(0, "<s>"), special(1, "<pad>"), special(2, "</s>"), special(3, "<unk>")]),
            "normalizer": .null,
            "pre_tokenizer": .object(["type": .string("ByteLevel"), "add_prefix_space": .bool(false), "trim_offsets": .bool(true),
                                      "use_regex": .bool(true)]),
            "post_processor": .null,
            "decoder": .object(["type": .string("ByteLevel"), "add_prefix_space": .bool(true), "trim_offsets": .bool(true),
                                "use_regex": .bool(true)]),
            "model": .object(["type": .string("BPE"), "dropout": .null, "unk_token": .null, "continuing_subword_prefix": .null,
                              "end_of_word_suffix": .null, "fuse_unk": .bool(false), "byte_fallback": .bool(false),
                              "ignore_merges": .bool(false), "vocab": .object(vocab), "merges": .array([])]),
        ])
    }
}
